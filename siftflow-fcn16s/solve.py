"""Train the FCN-16s SIFT Flow net from the trained SIFT Flow FCN-32s.

    python solve.py --gpu 0                                   # from this folder
    python solve.py --gpu 0 --resume latest                   # continue after a stop
    python solve.py --weights other.caffemodel --max-iter 8000

Trains both heads on trainval and scores them on test every 2000 iterations, to
100,000 (the reference's 50 x 2000, though its solver says 300000); snapshots go
to snapshot/. The semantic head's mean accuracy and mean IU are over the classes
present in the test ground truth, as in the paper (see siftflow_layers).
Ctrl-C snapshots and stops.
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import siftflow_layers  # noqa: E402
import training  # noqa: E402

WEIGHTS = '../siftflow-fcn32s/snapshot/train_iter_100000.caffemodel'

if __name__ == '__main__':
    sys.exit(training.main(HERE, WEIGHTS, sys.argv[1:], test_every=2000, max_iter=100000,
                           heads=siftflow_layers.scoring_heads()))
