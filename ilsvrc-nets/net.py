"""Write the ILSVRC VGG16 classifier beside this script as vgg16-deploy.prototxt.

    python net.py            # into this folder, from any working directory
    python net.py OUT_DIR    # somewhere else (the tests regenerate and diff)

It is the VGG16 gist's VGG_ILSVRC_16_layers_deploy.prototxt in current format
(Input layer instead of input/input_dim), the net whose weights
(caffemodel-url; VGG_ILSVRC_16_layers.caffemodel, 553,432,081 bytes) FCN
training starts from. The input keeps the gist's batch of 10 (Caffe's ten-crop
classification); reshape for other batch sizes.
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from nets import vgg, write  # noqa: E402


def main(out_dir=HERE):
    return write.write_nets({'vgg16-deploy': vgg.classifier()}, out_dir)


if __name__ == '__main__':
    main(*sys.argv[1:2])
