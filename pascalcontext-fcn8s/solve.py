"""Train FCN-8s on PASCAL-Context (59 classes and background) from
the trained PASCAL-Context FCN-16s.

    python solve.py --gpu 0                                   # from this folder
    python solve.py --gpu 0 --resume latest                   # continue after a stop
    python solve.py --weights other.caffemodel --max-iter 8000

Trains on VOC2010 train (4,998 images), scores on VOC2010 val (5,105) every 8000
iterations (the reference's schedule) up to the solver's max_iter, 300,000 (the
reference's loop, 50 steps of 8000, ran on to 400,000: Caffe's step() does not
stop at max_iter). Snapshots go to snapshot/. Ctrl-C snapshots and stops.
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import training  # noqa: E402

# The reference starts each stage from the previous one's final weights.
WEIGHTS = '../pascalcontext-fcn16s/snapshot/train_iter_300000.caffemodel'
TEST_EVERY = 8000

if __name__ == '__main__':
    sys.exit(training.main(HERE, WEIGHTS, sys.argv[1:], test_every=TEST_EVERY))
