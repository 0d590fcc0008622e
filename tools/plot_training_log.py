#!/usr/bin/env python3
"""Plot the learning curves of training logs into a PNG.

    python tools/plot_training_log.py lenet_curve.png examples/mnist/lenet.log

The code is torchcaffe.tools.plot_training_log (also installed as the ``plot_training_log`` console script).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from torchcaffe.tools.plot_training_log import main  # noqa: E402

if __name__ == '__main__':
    sys.exit(main())
