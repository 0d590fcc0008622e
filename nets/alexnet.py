"""AlexNet as Caffe's CaffeNet: the trunk of FCN-AlexNet and the ILSVRC classifier.

CaffeNet (BVLC's reference AlexNet) pools before it normalises, unlike the
AlexNet paper; FCN-AlexNet starts from CaffeNet's weights and keeps its order.
conv2, conv4 and conv5 are split into two groups, the two GPUs of the original.
Widths scale with ``width`` (1.0 gives CaffeNet's own) for narrow test variants;
every scaled width must stay divisible by its group (1/16 gives 6, 16, 24, 16, 256).
"""
import torchcaffe as caffe
from torchcaffe import layers as L, params as P

from . import voc
from .vgg import classifier_head, scaled

# (name, kernel, num_output, stride, pad, group) of the five convolutions.
CONVS = (('conv1', 11, 96, 4, 0, 1),
         ('conv2', 5, 256, 1, 2, 2),
         ('conv3', 3, 384, 1, 1, 1),
         ('conv4', 3, 384, 1, 1, 2),
         ('conv5', 3, 256, 1, 1, 2))
# pool<i> (3 x 3, stride 2) follows conv<i>; norm<i> follows pool<i> for i in NORMS.
POOLS = (1, 2, 5)
NORMS = (1, 2)
LRN = dict(local_size=5, alpha=1e-4, beta=0.75)
FC_OUTPUT = 4096
FC6_KERNEL = 6  # pool5 is 6 x 6 on CaffeNet's 227 x 227 input

# FCN-AlexNet: conv1's pad, as the VGG16 FCNs' conv1_1, lets any input through fc6.
FCN_PAD = 100
# 63, not the 64 (2f - f % 2) of the VGG16 FCN-32s: on AlexNet's strides and pads an
# even kernel puts the upsampled scores half a pixel off the input (crop offset
# 18.5); the odd one, still bilinear by 32, makes it a whole 18.
UPSCORE_KERNEL = 63

CLASSIFIER_INPUT = (10, 3, 227, 227)  # Caffe's ten crops of 227 x 227
ILSVRC_CLASSES = 1000


def conv_relu(bottom, ks, nout, stride=1, pad=0, group=1, explicit=True):
    """A convolution and its in-place ReLU.

    ``explicit`` writes stride, pad and group even at their defaults, as the
    reference's FCN-AlexNet net.py does; otherwise only the values CaffeNet's
    deploy prototxt sets (those not at their defaults) are written.
    """
    kwargs = dict(kernel_size=ks, num_output=nout)
    for key, value, default in (('stride', stride, 1), ('pad', pad, 0), ('group', group, 1)):
        if explicit or value != default:
            kwargs[key] = value
    conv = L.Convolution(bottom, **kwargs)
    return conv, L.ReLU(conv, in_place=True)


def max_pool(bottom):
    """CaffeNet's overlapping 3 x 3 stride 2 MAX pooling."""
    return L.Pooling(bottom, pool=P.Pooling.MAX, kernel_size=3, stride=2)


def conv_layers(n, bottom, width=1.0, first_pad=0, explicit=True):
    """Add conv1 ... conv5 with their ReLUs, pool1, norm1, pool2, norm2, pool5 to ``n``.

    Returns
    -------
    Top : pool5.
    """
    top = bottom
    for i, (name, ks, nout, stride, pad, group) in enumerate(CONVS, start=1):
        conv, relu = conv_relu(top, ks, scaled(nout, width), stride,
                               first_pad if i == 1 else pad, group, explicit)
        setattr(n, name, conv)
        setattr(n, 'relu%d' % i, relu)
        top = relu
        if i in POOLS:
            setattr(n, 'pool%d' % i, max_pool(top))
            top = getattr(n, 'pool%d' % i)
        if i in NORMS:
            setattr(n, 'norm%d' % i, L.LRN(top, **LRN))
            top = getattr(n, 'norm%d' % i)
    return top


def fcn_trunk(n, bottom, width=1.0, dropout=True):
    """Add AlexNet in fully convolutional form to ``n``: fc6 a 6 x 6 convolution, fc7 1 x 1.

    As the reference's voc-fcn-alexnet/net.py: conv1 padded by 100, no param specs
    (every weight and bias learns at the base rate, with weight decay), drop6 and
    drop7 in place when ``dropout``.

    Returns
    -------
    Top : the blob the score layer reads (drop7, or relu7 without dropout).
    """
    pool5 = conv_layers(n, bottom, width, first_pad=FCN_PAD)
    n.fc6, n.relu6 = conv_relu(pool5, FC6_KERNEL, scaled(FC_OUTPUT, width))
    top = n.relu6
    if dropout:
        n.drop6 = L.Dropout(n.relu6, dropout_ratio=0.5, in_place=True)
        top = n.drop6
    n.fc7, n.relu7 = conv_relu(top, 1, scaled(FC_OUTPUT, width))
    top = n.relu7
    if dropout:
        n.drop7 = L.Dropout(n.relu7, dropout_ratio=0.5, in_place=True)
        top = n.drop7
    return top


# FCN-AlexNet is FCN-32s on the AlexNet trunk, with the loss normalised by the
# number of labelled pixels (hence its ordinary learning rate, 1e-4).
FCN_ARGS = dict(trunk=fcn_trunk, normalize=True, kernel=UPSCORE_KERNEL)


def stage_nets(classes=voc.CLASSES, width=1.0):
    """FCN-AlexNet's train, val and deploy NetParameters on PASCAL VOC.

    The train and val nets are the reference's (SBD train, seg11valid); the deploy
    net, which the reference lacks, is the same net with an Input layer and
    without dropout and loss, as the VGG16 FCNs' deploy nets.

    Returns
    -------
    dict : {'train': NetParameter, 'val': ..., 'deploy': ...}
    """
    return voc.stage_nets('fcn32s', classes, width, **FCN_ARGS)


def classifier(shape=CLASSIFIER_INPUT, classes=ILSVRC_CLASSES, width=1.0):
    """The ILSVRC CaffeNet classifier as a current-format deploy net.

    Layer for layer Caffe's models/bvlc_reference_caffenet/deploy.prototxt with its
    ``input``/``input_shape`` made an Input layer named "input" (as Caffe upgrades
    it): no param specs, fc6-fc8 InnerProduct, "prob" a Softmax.

    Returns
    -------
    NetParameter
    """
    n = caffe.NetSpec()
    n.data = L.Input(name='input', shape=dict(dim=list(shape)))
    pool5 = conv_layers(n, n.data, width, explicit=False)
    classifier_head(n, pool5, scaled(FC_OUTPUT, width), classes)
    proto = n.to_proto()
    proto.name = 'CaffeNet'
    return proto
