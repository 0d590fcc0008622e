#!/usr/bin/env python3
"""Parse a training log (Caffe's glog, torchcaffe's, training.py's) into train/test CSV tables.

    python tools/parse_log.py examples/mnist/lenet.log /tmp/   # /tmp/lenet.log.train, .test

The code is torchcaffe.tools.parse_log (also installed as the ``parse_log`` console script).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from torchcaffe.tools.parse_log import main  # noqa: E402

if __name__ == '__main__':
    sys.exit(main())
