"""Train FCN-AlexNet from the fully convolutional CaffeNet on PASCAL VOC
(python surgery.py alexnet-fcn makes ../ilsvrc-nets/alexnet-fcn.caffemodel).

    python solve.py --gpu 0                                   # from this folder
    python solve.py --gpu 0 --resume latest                   # continue after a stop
    python solve.py --weights other.caffemodel --max-iter 8000

Trains on SBD train, scores on seg11valid every 4000 iterations (the reference's
schedule); snapshots go to snapshot/. Ctrl-C snapshots and stops. Unlike the
VGG16 FCNs its loss is normalised per pixel and each step accumulates the
gradients of 20 images (solver.prototxt's iter_size).
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import training  # noqa: E402

# The reference starts from CaffeNet cast into fully convolutional form.
WEIGHTS = '../ilsvrc-nets/alexnet-fcn.caffemodel'

if __name__ == '__main__':
    sys.exit(training.main(HERE, WEIGHTS, sys.argv[1:]))
