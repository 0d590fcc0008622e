"""Write the ILSVRC classifiers beside this script: vgg16-deploy.prototxt and
caffenet-deploy.prototxt.

    python net.py            # into this folder, from any working directory
    python net.py OUT_DIR    # somewhere else (the tests regenerate and diff)

vgg16-deploy is the VGG16 gist's VGG_ILSVRC_16_layers_deploy.prototxt in current
format (Input layer instead of input/input_dim), the net whose weights
(caffemodel-url; VGG_ILSVRC_16_layers.caffemodel, 553,432,081 bytes) the VGG16
FCNs start from. caffenet-deploy is Caffe's models/bvlc_reference_caffenet/
deploy.prototxt (input/input_shape made an Input layer), whose weights
FCN-AlexNet starts from: bvlc_reference_caffenet.caffemodel, from
http://dl.caffe.berkeleyvision.org/bvlc_reference_caffenet.caffemodel
(SHA-1 4c8d77deb20ea792f84eb5e6d0a11ca0a8660a46, per the model's readme).
Both keep their batch of 10 (Caffe's ten-crop classification); reshape for
other batch sizes. ``python surgery.py vgg16-fcn`` / ``alexnet-fcn`` turn the
weights into the FCNs' initial weights.
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from nets import alexnet, vgg, write  # noqa: E402


def main(out_dir=HERE):
    return write.write_nets({'vgg16-deploy': vgg.classifier(),
                             'caffenet-deploy': alexnet.classifier()}, out_dir)


if __name__ == '__main__':
    main(*sys.argv[1:2])
