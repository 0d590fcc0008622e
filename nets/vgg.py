"""VGG16: the trunk of the FCN nets and the ILSVRC classifier it starts from.

Widths scale with ``width`` (1.0 gives VGG16's own) so that a narrow variant of
the same nets can share this code; class counts never scale.
"""
import torchcaffe as caffe
from torchcaffe import layers as L, params as P

# Every learned FCN convolution: weights learn at the base rate and are decayed,
# biases learn twice as fast and are not decayed (Caffe's usual convention).
LEARNED = [dict(lr_mult=1, decay_mult=1), dict(lr_mult=2, decay_mult=0)]

# VGG16's five convolution blocks as (convolutions, num_output); each ends in pool<i>.
BLOCKS = ((2, 64), (2, 128), (3, 256), (3, 512), (3, 512))
FC_OUTPUT = 4096

# The classifier's input: Caffe's ILSVRC deploy nets take a batch of 10 crops
# (the centre, four corners and their mirrors) of 224 x 224.
CLASSIFIER_INPUT = (10, 3, 224, 224)
ILSVRC_CLASSES = 1000


def scaled(num_output, width):
    """``num_output`` times ``width``, rounded, and at least 1.

    >>> scaled(512, 1.0), scaled(512, 0.25), scaled(64, 0.001)
    (512, 128, 1)
    """
    return max(1, int(round(num_output * width)))


def conv_relu(bottom, nout, ks=3, stride=1, pad=1, param=LEARNED, weight_filler=None):
    """A convolution and its in-place ReLU; ``None`` leaves a field unset.

    ``weight_filler`` (a FillerParameter as a dict) is unset in the reference nets:
    their weights come from a caffemodel, and Caffe's default filler is constant 0.

    Returns
    -------
    (conv, relu) : the two tops, to assign as ``n.convX_Y, n.reluX_Y``.
    """
    kwargs = dict(kernel_size=ks, stride=stride, num_output=nout, pad=pad, param=param,
                  weight_filler=weight_filler)
    conv = L.Convolution(bottom, **{k: v for k, v in kwargs.items() if v is not None})
    return conv, L.ReLU(conv, in_place=True)


def max_pool(bottom, ks=2, stride=2):
    """Caffe MAX pooling (output size rounds up)."""
    return L.Pooling(bottom, pool=P.Pooling.MAX, kernel_size=ks, stride=stride)


def conv_blocks(n, bottom, width=1.0, first_pad=1, stride=1, param=LEARNED, suffix='',
                weight_filler=None, first_filler=None):
    """Add conv1_1 ... conv5_3 with their ReLUs and pool1 ... pool5 to ``n``.

    Parameters
    ----------
    n : NetSpec
    bottom : Top
        The image blob.
    width : float
        Multiplier on every num_output.
    first_pad : int
        Padding of conv1_1; the FCN nets use 100 so that any input size survives
        the 7 x 7 fc6 and the score map can be cropped back to the input.
    stride, param :
        Convolution stride and param specs; ``None`` leaves them unset, as the
        ILSVRC classifier does.
    suffix : str
        Appended to every layer name (``conv1_1color`` in a late-fusion net).
    weight_filler, first_filler : dict, optional
        Fillers of the convolutions' weights, for nets trained from scratch;
        ``first_filler`` is conv1_1's (it sees raw pixel values, not unit-scale
        activations), ``weight_filler`` by default. Unset (None): Caffe's constant 0.

    Returns
    -------
    Top : pool5.
    """
    top = bottom
    for b, (convs, nout) in enumerate(BLOCKS, start=1):
        for c in range(1, convs + 1):
            pad = first_pad if (b, c) == (1, 1) else 1
            filler = (first_filler or weight_filler) if (b, c) == (1, 1) else weight_filler
            conv, relu = conv_relu(top, scaled(nout, width), stride=stride, pad=pad,
                                   param=param, weight_filler=filler)
            n['conv%d_%d%s' % (b, c, suffix)] = conv
            n['relu%d_%d%s' % (b, c, suffix)] = relu
            top = relu
        n['pool%d%s' % (b, suffix)] = max_pool(top)
        top = n['pool%d%s' % (b, suffix)]
    return top


def fcn_trunk(n, bottom, width=1.0, dropout=True, suffix='', weight_filler=None,
              first_filler=None):
    """Add VGG16 in fully convolutional form to ``n``: fc6 and fc7 as convolutions.

    fc6 is a 7 x 7 convolution without padding and fc7 a 1 x 1 one, so the
    ILSVRC fc weights load into them by reshaping. The reference deploy net has
    no Dropout layers (Dropout is the identity at test time). ``suffix`` ends
    every layer name, and ``weight_filler`` / ``first_filler`` fill the weights
    (fc6 and fc7 take ``weight_filler``), as for :func:`conv_blocks`.

    Returns
    -------
    Top : the blob the score layer reads (drop7, or relu7 without dropout).
    """
    pool5 = conv_blocks(n, bottom, width, first_pad=100, suffix=suffix,
                        weight_filler=weight_filler, first_filler=first_filler)
    top = pool5
    for i, ks in ((6, 7), (7, 1)):
        fc, relu = conv_relu(top, scaled(FC_OUTPUT, width), ks=ks, pad=0,
                             weight_filler=weight_filler)
        n['fc%d%s' % (i, suffix)], n['relu%d%s' % (i, suffix)] = fc, relu
        top = relu
        if dropout:
            n['drop%d%s' % (i, suffix)] = L.Dropout(relu, dropout_ratio=0.5, in_place=True)
            top = n['drop%d%s' % (i, suffix)]
    return top


def classifier(shape=CLASSIFIER_INPUT, classes=ILSVRC_CLASSES, width=1.0):
    """The ILSVRC VGG16 classifier as a current-format deploy net.

    Layer for layer the VGG16 gist's ``VGG_ILSVRC_16_layers_deploy.prototxt`` as
    Caffe upgrades it: its V1 ``input``/``input_dim`` become an Input layer named
    "input", convolutions are 3 x 3 pad 1 without param specs, fc6-fc8 are
    InnerProduct, and "prob" is a Softmax.

    Returns
    -------
    NetParameter
    """
    n = caffe.NetSpec()
    n.data = L.Input(name='input', shape=dict(dim=list(shape)))
    pool5 = conv_blocks(n, n.data, width, stride=None, param=None)
    classifier_head(n, pool5, scaled(FC_OUTPUT, width), classes)
    proto = n.to_proto()
    proto.name = 'VGG_ILSVRC_16_layers'
    return proto


def classifier_head(n, bottom, fc_output, classes):
    """The ILSVRC classifiers' head (VGG16's and CaffeNet's alike): fc6 and fc7
    InnerProduct of ``fc_output`` with ReLU and Dropout 0.5 in place, fc8 of
    ``classes``, and the Softmax "prob"."""
    n.fc6 = L.InnerProduct(bottom, num_output=fc_output)
    n.relu6 = L.ReLU(n.fc6, in_place=True)
    n.drop6 = L.Dropout(n.relu6, dropout_ratio=0.5, in_place=True)
    n.fc7 = L.InnerProduct(n.drop6, num_output=fc_output)
    n.relu7 = L.ReLU(n.fc7, in_place=True)
    n.drop7 = L.Dropout(n.relu7, dropout_ratio=0.5, in_place=True)
    n.fc8 = L.InnerProduct(n.drop7, num_output=classes)
    n.prob = L.Softmax(n.fc8)
