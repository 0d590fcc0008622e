"""Train FCN-32s on PASCAL-Context (59 classes and background) from
the fully convolutional VGG16 with 60 score outputs, made by

    python surgery.py vgg16-fcn --fcn pascalcontext-fcn32s/deploy.prototxt \\
        --out ilsvrc-nets/vgg16-fcn-pascalcontext.caffemodel

(from the repository root; the VOC file, ilsvrc-nets/vgg16-fcn.caffemodel, holds a
21-class score_fr that does not fit this net).

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

# The reference starts FCN-32s from VGG16 in fully convolutional form.
WEIGHTS = '../ilsvrc-nets/vgg16-fcn-pascalcontext.caffemodel'
TEST_EVERY = 8000

if __name__ == '__main__':
    sys.exit(training.main(HERE, WEIGHTS, sys.argv[1:], test_every=TEST_EVERY))
