"""Train FCN-32s on NYUDv2 color (BGR) from the fully convolutional VGG16
(python surgery.py vgg16-fcn makes it).

    python solve.py --gpu 0                                   # from this folder
    python solve.py --gpu 0 --resume latest                   # continue after a stop

Trains on trainval (795 images: train and val) and scores on test (654 images)
every 2000 iterations, to 100,000 (the reference's 50 x 2000, though its solver
says 300000); snapshots go to snapshot/ every 2000 iterations. Ctrl-C snapshots
and stops.

The VGG16 FCN's weights are transplanted by layer name: its 21-class score_fr
and upscore do not fit these 40-class nets and are left to the nets' own start
(zero scores, bilinear upsampling).
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import nyud_layers  # noqa: E402
import training  # noqa: E402

WEIGHTS = '../ilsvrc-nets/vgg16-fcn.caffemodel'
init = training.transplant_init

if __name__ == '__main__':
    sys.exit(training.main(HERE, WEIGHTS, sys.argv[1:], test_every=2000, max_iter=100000,
                           heads=nyud_layers.scoring_heads(), init=init))
