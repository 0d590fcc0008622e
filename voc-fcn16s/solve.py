"""Train FCN-16s from the trained FCN-32s on PASCAL VOC.

    python solve.py --gpu 0                                   # from this folder
    python solve.py --gpu 0 --resume latest                   # continue after a stop
    python solve.py --weights other.caffemodel --max-iter 8000

Trains on SBD train, scores on seg11valid every 4000 iterations (the reference's
schedule); snapshots go to snapshot/. Ctrl-C snapshots and stops.
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import training  # noqa: E402

# The reference starts each stage from the previous one's final weights.
WEIGHTS = '../voc-fcn32s/snapshot/train_iter_100000.caffemodel'

if __name__ == '__main__':
    sys.exit(training.main(HERE, WEIGHTS, sys.argv[1:]))
