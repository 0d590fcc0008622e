"""Pure shape arithmetic of Caffe's spatial layers.

Each function takes and returns plain ints, so the engine, the coordinate-map code and
the net validator share one definition of every output-size rule.
"""
import math

from .errors import ShapeError


def effective_kernel(kernel, dilation=1):
    """Extent of a dilated kernel: ``dilation * (kernel - 1) + 1``.

    >>> effective_kernel(3, 2)
    5
    """
    return dilation * (kernel - 1) + 1


def conv_output_size(size, kernel, stride=1, pad=0, dilation=1):
    """Output size of a Convolution along one axis (Caffe rounds down).

    ``floor((size + 2 pad - (dilation (kernel - 1) + 1)) / stride) + 1``

    >>> conv_output_size(500, 3, pad=100)      # conv1_1 of the FCN nets
    698
    >>> conv_output_size(22, 7)                 # fc6 as a 7x7 convolution
    16
    >>> conv_output_size(7, 3, stride=2, dilation=2)
    2
    """
    _check_positive(kernel=kernel, stride=stride, dilation=dilation)
    span = size + 2 * pad - effective_kernel(kernel, dilation)
    if span < 0:
        raise ShapeError('convolution kernel %d (dilation %d) does not fit input %d with pad %d'
                         % (kernel, dilation, size, pad))
    return span // stride + 1


def deconv_output_size(size, kernel, stride=1, pad=0, dilation=1):
    """Output size of a Deconvolution along one axis: the inverse of :func:`conv_output_size`.

    ``stride (size - 1) + dilation (kernel - 1) + 1 - 2 pad``

    >>> deconv_output_size(16, 64, stride=32)   # FCN-32s upscore
    544
    >>> deconv_output_size(16, 4, stride=2)     # FCN-16s/8s upscore2
    34
    """
    _check_positive(kernel=kernel, stride=stride, dilation=dilation)
    out = stride * (size - 1) + effective_kernel(kernel, dilation) - 2 * pad
    if out <= 0:
        raise ShapeError('deconvolution with kernel %d stride %d pad %d gives empty output for input %d'
                         % (kernel, stride, pad, size))
    return out


def pool_output_size(size, kernel, stride=1, pad=0):
    """Output size of a Pooling layer along one axis.

    Caffe rounds UP, ``ceil((size + 2 pad - kernel) / stride) + 1``, and when there is
    padding drops the last window if it would start at or past ``size + pad``, so that
    every window starts inside the image or its leading pad.

    >>> pool_output_size(698, 2, stride=2)      # pool1 of the FCN nets
    349
    >>> pool_output_size(349, 2, stride=2)      # odd sizes round up
    175
    >>> pool_output_size(5, 3, stride=2, pad=1) # ceil(4/2)+1 = 3, last window starts at 4 < 6
    3
    >>> pool_output_size(4, 2, stride=2, pad=1) # ceil(4/2)+1 = 3, last window starts at 4 < 5
    3
    >>> pool_output_size(3, 2, stride=2, pad=1) # ceil(3/2)+1 = 3, but window 2 starts at 4 >= 4
    2
    """
    _check_positive(kernel=kernel, stride=stride)
    if pad >= kernel:
        raise ShapeError('pooling pad %d must be smaller than kernel %d' % (pad, kernel))
    span = size + 2 * pad - kernel
    if span < 0:
        raise ShapeError('pooling kernel %d does not fit input %d with pad %d' % (kernel, size, pad))
    out = int(math.ceil(span / stride)) + 1
    if pad > 0 and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def _check_positive(**values):
    for name, value in values.items():
        if value < 1:
            raise ShapeError('%s must be positive, got %r' % (name, value))
