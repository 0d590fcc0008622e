"""Train FCN-32s from the fully convolutional VGG16 (python surgery.py vgg16-fcn makes it) on PASCAL VOC.

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
WEIGHTS = '../ilsvrc-nets/vgg16-fcn.caffemodel'

if __name__ == '__main__':
    sys.exit(training.main(HERE, WEIGHTS, sys.argv[1:]))
