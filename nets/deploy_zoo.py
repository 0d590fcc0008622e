"""Deploy nets in the style of the Caffe model zoo's, narrow, for export checks.

Each function returns prototxt text laid out as the zoo's deploy files lay theirs:

- :func:`resnet`: the MSRA ResNet deploy style: convolutions without bias, each
  followed in place by BatchNorm (use_global_stats), Scale (bias_term) and ReLU;
  bottleneck blocks whose branch1 projects, summed by Eltwise; global average
  pooling, InnerProduct, Softmax.
- :func:`mobilenet_v1`: shicai/MobileNet-Caffe's style: 3 x 3 depthwise
  convolutions (group = channels) and 1 x 1 pointwise ones, each with BatchNorm,
  Scale and ReLU; the classifier a 1 x 1 convolution after global pooling.
- :func:`mobilenet_v2`: inverted residuals: 1 x 1 expansion, depthwise 3 x 3,
  linear 1 x 1 projection, ReLU6 as Clip [0, 6], Eltwise where the shapes agree.
- :func:`prelu_net` and :func:`elu_net`: small classifiers on PReLU (per channel
  and shared) and ELU.

Widths are a few channels so that tests run in seconds; the layer settings are
the zoo's.
"""

__all__ = ['resnet', 'mobilenet_v1', 'mobilenet_v2', 'prelu_net', 'elu_net']


def _input(shape, name='data'):
    dims = ' '.join('dim: %d' % d for d in shape)
    return ('layer { name: "%s" type: "Input" top: "%s" input_param { shape { %s } } }\n'
            % (name, name, dims))


def _conv(name, bottom, nout, kernel, stride=1, pad=0, group=1, bias=False, top=None):
    return ('layer { name: "%s" type: "Convolution" bottom: "%s" top: "%s"\n'
            '  convolution_param { num_output: %d kernel_size: %d stride: %d pad: %d%s%s } }\n'
            % (name, bottom, top or name, nout, kernel, stride, pad,
               ' group: %d' % group if group > 1 else '',
               '' if bias else ' bias_term: false'))


def _bn_scale(blob, bn, scale):
    """In-place BatchNorm (stored statistics) and Scale with bias, as the zoo's."""
    return ('layer { name: "%s" type: "BatchNorm" bottom: "%s" top: "%s"\n'
            '  batch_norm_param { use_global_stats: true } }\n'
            'layer { name: "%s" type: "Scale" bottom: "%s" top: "%s"\n'
            '  scale_param { bias_term: true } }\n' % (bn, blob, blob, scale, blob, blob))


def _relu(name, blob):
    return 'layer { name: "%s" type: "ReLU" bottom: "%s" top: "%s" }\n' % (name, blob, blob)


def _relu6(name, blob):
    return ('layer { name: "%s" type: "Clip" bottom: "%s" top: "%s"\n'
            '  clip_param { min: 0 max: 6 } }\n' % (name, blob, blob))


def _head(bottom, classes, fc='InnerProduct'):
    text = ('layer { name: "pool" type: "Pooling" bottom: "%s" top: "pool"\n'
            '  pooling_param { pool: AVE global_pooling: true } }\n' % bottom)
    if fc == 'InnerProduct':
        text += ('layer { name: "fc" type: "InnerProduct" bottom: "pool" top: "fc"\n'
                 '  inner_product_param { num_output: %d } }\n' % classes)
    else:
        text += _conv('fc', 'pool', classes, 1, bias=True)
    return text + 'layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }\n'


def resnet(shape=(1, 3, 64, 64), width=4, stages=(1, 2), classes=10):
    """ResNet-50's deploy style with ``stages`` bottleneck blocks per stage."""
    text = 'name: "ResNet-style"\n' + _input(shape)
    text += _conv('conv1', 'data', width * 2, 7, 2, 3) + _bn_scale('conv1', 'bn_conv1',
                                                                   'scale_conv1')
    text += _relu('conv1_relu', 'conv1')
    text += ('layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"\n'
             '  pooling_param { pool: MAX kernel_size: 3 stride: 2 } }\n')
    bottom, channels = 'pool1', width * 2
    for s, blocks in enumerate(stages, start=2):
        inner, out = width * 2 ** (s - 2), width * 2 ** s
        for k in range(blocks):
            tag = '%d%s' % (s, 'abcdef'[k])
            stride = 2 if k == 0 and s > 2 else 1
            shortcut = bottom
            if k == 0:
                name = 'res%s_branch1' % tag
                text += _conv(name, bottom, out, 1, stride)
                text += _bn_scale(name, 'bn%s_branch1' % tag, 'scale%s_branch1' % tag)
                shortcut = name
            x = bottom
            for part, (n, kernel, st, pad) in zip('abc', ((inner, 1, stride, 0),
                                                          (inner, 3, 1, 1), (out, 1, 1, 0))):
                name = 'res%s_branch2%s' % (tag, part)
                text += _conv(name, x, n, kernel, st, pad)
                text += _bn_scale(name, 'bn%s_branch2%s' % (tag, part),
                                  'scale%s_branch2%s' % (tag, part))
                if part != 'c':
                    text += _relu(name + '_relu', name)
                x = name
            text += ('layer { name: "res%s" type: "Eltwise" bottom: "%s" bottom: "%s" '
                     'top: "res%s" }\n' % (tag, shortcut, x, tag))
            text += _relu('res%s_relu' % tag, 'res' + tag)
            bottom, channels = 'res' + tag, out
    return text + _head(bottom, classes)


def mobilenet_v1(shape=(1, 3, 48, 48), width=4, classes=10):
    """MobileNet v1: conv 3 x 3 / 2, then depthwise + pointwise pairs."""
    text = 'name: "MobileNet-v1-style"\n' + _input(shape)
    text += _conv('conv1', 'data', width, 3, 2, 1) + _bn_scale('conv1', 'conv1/bn',
                                                               'conv1/scale')
    text += _relu('relu1', 'conv1')
    bottom, channels = 'conv1', width
    for i, (out, stride) in enumerate(((2 * width, 1), (4 * width, 2), (4 * width, 1),
                                       (8 * width, 2)), start=2):
        dw, sep = 'conv%d_1/dw' % i, 'conv%d_1/sep' % i
        text += _conv(dw, bottom, channels, 3, stride, 1, group=channels)
        text += _bn_scale(dw, dw + '/bn', dw + '/scale') + _relu('relu%d_1/dw' % i, dw)
        text += _conv(sep, dw, out, 1)
        text += _bn_scale(sep, sep + '/bn', sep + '/scale') + _relu('relu%d_1/sep' % i, sep)
        bottom, channels = sep, out
    return text + _head(bottom, classes, fc='Convolution')


def mobilenet_v2(shape=(1, 3, 48, 48), width=4, classes=10, expansion=6):
    """MobileNet v2: inverted residual blocks with ReLU6 (Clip) and linear bottlenecks."""
    text = 'name: "MobileNet-v2-style"\n' + _input(shape)
    text += _conv('conv1', 'data', width, 3, 2, 1) + _bn_scale('conv1', 'conv1/bn',
                                                               'conv1/scale')
    text += _relu6('relu1', 'conv1')
    bottom, channels = 'conv1', width
    for i, (out, stride) in enumerate(((width, 1), (2 * width, 2), (2 * width, 1)), start=2):
        hidden = channels * expansion
        tag = 'conv%d' % i
        steps = (('expand', hidden, 1, 1, 0, 1), ('dwise', hidden, 3, stride, 1, hidden),
                 ('linear', out, 1, 1, 0, 1))
        x = bottom
        for part, n, kernel, st, pad, group in steps:
            name = '%s/%s' % (tag, part)
            text += _conv(name, x, n, kernel, st, pad, group=group)
            text += _bn_scale(name, name + '/bn', name + '/scale')
            if part != 'linear':
                text += _relu6(name + '/relu', name)
            x = name
        if stride == 1 and out == channels:
            text += ('layer { name: "block%d" type: "Eltwise" bottom: "%s" bottom: "%s" '
                     'top: "block%d" }\n' % (i, bottom, x, i))
            x = 'block%d' % i
        bottom, channels = x, out
    text += _conv('conv_last', bottom, 4 * width, 1) + _bn_scale('conv_last',
                                                                 'conv_last/bn',
                                                                 'conv_last/scale')
    text += _relu6('relu_last', 'conv_last')
    return text + _head('conv_last', classes, fc='Convolution')


def prelu_net(shape=(1, 3, 24, 24), width=6, classes=5):
    """Convolutions with per-channel and channel-shared PReLU, then InnerProduct."""
    text = 'name: "PReLU-net"\n' + _input(shape)
    text += _conv('conv1', 'data', width, 3, 1, 1, bias=True)
    text += 'layer { name: "prelu1" type: "PReLU" bottom: "conv1" top: "conv1" }\n'
    text += ('layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"\n'
             '  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }\n')
    text += _conv('conv2', 'pool1', width, 3, 1, 1, bias=True)
    text += ('layer { name: "prelu2" type: "PReLU" bottom: "conv2" top: "conv2"\n'
             '  prelu_param { channel_shared: true } }\n')
    text += ('layer { name: "fc" type: "InnerProduct" bottom: "conv2" top: "fc"\n'
             '  inner_product_param { num_output: %d } }\n' % classes)
    text += 'layer { name: "prelu3" type: "PReLU" bottom: "fc" top: "fc" }\n'
    return text + 'layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }\n'


def elu_net(shape=(1, 3, 24, 24), width=6, classes=5):
    """Convolutions with ELU (alpha 1 and 0.5), a BatchNorm, a dropout and a classifier."""
    text = 'name: "ELU-net"\n' + _input(shape)
    text += _conv('conv1', 'data', width, 3, 1, 1, bias=True)
    text += 'layer { name: "elu1" type: "ELU" bottom: "conv1" top: "conv1" }\n'
    text += _bn_scale('conv1', 'bn1', 'scale1')
    text += _conv('conv2', 'conv1', width, 3, 2, 1, bias=True)
    text += ('layer { name: "elu2" type: "ELU" bottom: "conv2" top: "conv2"\n'
             '  elu_param { alpha: 0.5 } }\n')
    text += ('layer { name: "drop" type: "Dropout" bottom: "conv2" top: "conv2"\n'
             '  dropout_param { dropout_ratio: 0.3 } }\n')
    text += ('layer { name: "fc" type: "InnerProduct" bottom: "conv2" top: "fc"\n'
             '  inner_product_param { num_output: %d } }\n' % classes)
    return text + 'layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }\n'
