"""Converters of the spatial layers: Convolution, Deconvolution, Pooling, Crop, SPP
and Im2col (torchcaffe/layer_types/vision.py)."""
import numpy as np

from ..proto import caffe_pb2
from .core import FLT_MAX, TensorProto, converts

_Pool = caffe_pb2.PoolingParameter
_SPP = caffe_pb2.SPPParameter


@converts('Convolution', 'Deconvolution')
def _convolution(b, layer, bottoms, tops, params, shapes):
    axis, kernel, stride, pad, dilation = layer._geometry(tuple(shapes[0]))
    if axis != 1:
        raise layer.error('ONNX export needs the channel axis at 1, got axis %d' % axis)
    inputs = [b.weight(params[0], layer.name + '/weight')]
    if layer.bias_term:
        inputs.append(b.weight(params[1], layer.name + '/bias', (layer.num_output,)))
    # Both rules match Caffe's: Conv rounds down, ConvTranspose gives
    # stride (n - 1) + dilation (kernel - 1) + 1 - 2 pad; weights share Caffe's layout
    # (and a depthwise convolution is a Conv with group = channels, as in Caffe).
    op = 'Conv' if layer.type == 'Convolution' else 'ConvTranspose'
    for x, top in zip(bottoms, tops):
        b.op(op, [x] + inputs, layer.name, top=top, kernel_shape=list(kernel),
             strides=list(stride), pads=list(pad) * 2, dilations=list(dilation),
             group=layer.group)


@converts('Im2col')
def _im2col(b, layer, bottoms, tops, params, shapes):
    """Caffe's im2col as a grouped convolution with one-hot kernels: output channel
    ``c * K + k`` (K taps) takes input channel ``c`` under tap ``k``, exactly (each
    output is one input value plus zeros)."""
    shape = tuple(shapes[0])
    axis, kernel, stride, pad, dilation = layer.geometry(shape)
    if axis != 1:
        raise layer.error('ONNX export needs the channel axis at 1, got axis %d' % axis)
    channels, taps = shape[1], int(np.prod(kernel))
    one_hot = np.eye(taps, dtype=np.float32).reshape((taps, 1) + tuple(kernel))
    weight = b.array(np.tile(one_hot, (channels,) + (1,) * (len(kernel) + 1)),
                     layer.name + '/taps')
    b.op('Conv', [bottoms[0], weight], layer.name, top=tops[0], kernel_shape=list(kernel),
         strides=list(stride), pads=list(pad) * 2, dilations=list(dilation), group=channels)


@converts('Pooling')
def _pooling(b, layer, bottoms, tops, params, shapes):
    if layer.num_tops() > 1:
        raise layer.error('the argmax mask top has no ONNX export; drop it from the deploy net')
    p = layer.pool_param
    is_max = layer.method == _Pool.MAX
    x, top = bottoms[0], tops[0]
    if p.global_pooling:
        b.op('GlobalMaxPool' if is_max else 'GlobalAveragePool', [x], layer.name, top=top)
        return
    kernel, stride, pad, _ = layer.geometry(tuple(shapes[0]))
    pool(b, layer.name, x, top, kernel, stride, pad, is_max, p.round_mode == _Pool.FLOOR)


def pool(b, name, x, top, kernel, stride, pad, is_max, floor=False):
    """Caffe's MAX or AVE pooling of 2-D ``x`` with static geometry; returns the top."""
    op = 'MaxPool' if is_max else 'AveragePool'
    attrs = dict(kernel_shape=list(kernel), strides=list(stride))
    if floor:
        # Rounding down, every window ends inside image + pad: Caffe's AVE divisor is
        # the whole kernel, ONNX's count_include_pad.
        extra = {} if is_max else dict(count_include_pad=1)
        return b.op(op, [x], name, top=top, pads=list(pad) * 2, **attrs, **extra)
    if not any(pad) and all(k >= s for k, s in zip(kernel, stride)):
        # Without pad (FCN's and AlexNet's pools) ONNX's ceil mode is Caffe's rule:
        # the last window starts inside the image and is clipped to it, and AVE
        # divides by the clipped window.
        extra = {} if is_max else dict(count_include_pad=0)
        return b.op(op, [x], name, top=top, ceil_mode=1, **attrs, **extra)
    return _caffe_pool(b, name, x, top, kernel, stride, pad, is_max)


def _caffe_pool(b, name, x, top, kernel, stride, pad, is_max):
    """Caffe's round-up pooling with padding, spelled out for any input size.

    ONNX before opset 22 leaves open whether a ceil-mode window may start in the
    trailing pad, so the graph computes Caffe's output size itself, pads explicitly
    (zeros for AVE, -FLT_MAX for MAX) and pools without padding. AVE then rescales
    each window's mean to Caffe's divisor, the window clipped to image + pad.
    """
    def c(values):
        return b.const(list(values))
    hw = b.dims(x, 2, 4, name)
    # out = ceil((n + 2p - k) / s) + 1, as (n + 2p - k + s - 1) div s + 1
    span = b.op('Add', [hw, c(2 * q - k + s - 1 for k, s, q in zip(kernel, stride, pad))],
                name + '/span')
    out = b.op('Add', [b.op('Div', [span, c(stride)], name + '/steps'), c([1, 1])],
               name + '/out')
    last = b.op('Mul', [b.op('Sub', [out, c([1, 1])], name + '/last'), c(stride)],
                name + '/last_start')
    if any(pad):
        # drop the last window when it would start at or past n + p (only with pad)
        late = b.op('GreaterOrEqual', [last, b.op('Add', [hw, c(pad)], name + '/bound')],
                    name + '/late')
        late = b.op('Cast', [late], name + '/late_int', to=TensorProto.INT64)
        late = b.op('Mul', [late, c(int(q > 0) for q in pad)], name + '/drop')
        out = b.op('Sub', [out, late], name + '/out_caffe')
        last = b.op('Mul', [b.op('Sub', [out, c([1, 1])], name + '/last2'), c(stride)],
                    name + '/last_start2')
    # pad after = (out - 1) s + k - p - n, at least 0
    after = b.op('Sub', [b.op('Add', [last, c(k - q for k, q in zip(kernel, pad))],
                              name + '/end'), hw], name + '/after')
    after = b.op('Max', [after, c([0, 0])], name + '/after_pos')
    pads = b.op('Concat', [c([0, 0, pad[0], pad[1], 0, 0]), after], name + '/pads', axis=0)
    fill = b.fconst(-FLT_MAX if is_max else 0.0)
    padded = b.op('Pad', [x, pads, fill], name + '/padded')
    attrs = dict(kernel_shape=list(kernel), strides=list(stride))
    if is_max:
        return b.op('MaxPool', [padded], name, top=top, **attrs)
    mean = b.op('AveragePool', [padded], name + '/mean', **attrs)
    lengths = []
    for i, (k, s, q) in enumerate(zip(kernel, stride, pad)):
        tag = '%s/window%d' % (name, i)
        n_out = b.op('Gather', [out, b.const(i)], tag + '/count', axis=0)
        index = b.op('Range', [b.const(0), n_out, b.const(1)], tag + '/index')
        start = b.op('Sub', [b.op('Mul', [index, b.const(s)], tag + '/mul'), b.const(q)],
                     tag + '/start')
        bound = b.op('Add', [b.op('Gather', [hw, b.const(i)], tag + '/size', axis=0),
                             b.const(q)], tag + '/bound')
        end = b.op('Min', [b.op('Add', [start, b.const(k)], tag + '/end'), bound],
                   tag + '/end_clipped')
        length = b.op('Cast', [b.op('Sub', [end, start], tag + '/length')], tag + '/length_f',
                      to=TensorProto.FLOAT)
        lengths.append(b.unsqueeze(length, [1 - i], tag + '/axis'))
    divisor = b.op('Mul', lengths, name + '/divisor')
    factor = b.op('Div', [b.fconst(float(kernel[0] * kernel[1])), divisor], name + '/factor')
    return b.op('Mul', [mean, factor], name, top=top)


@converts('SPP')
def _spp(b, layer, bottoms, tops, params, shapes):
    """Each pyramid level is Caffe's pooling with a kernel that follows the input's
    height and width (spp_layer.cpp), which an ONNX pooling's attributes cannot:
    the graph computes each level's geometry and pools by tiling (see _spp_level)."""
    is_max = layer.spp_param.pool == _SPP.MAX
    height = layer.spp_param.pyramid_height
    if height == 1:
        _spp_level(b, '%s/level0' % layer.name, bottoms[0], 0, is_max, top=tops[0])
        return
    flat = []
    for level in range(height):
        name = '%s/level%d' % (layer.name, level)
        pooled = _spp_level(b, name, bottoms[0], level, is_max)
        flat.append(b.op('Flatten', [pooled], name + '/flat', axis=1))
    b.op('Concat', flat, layer.name, top=tops[0], axis=1)


def _spp_level(b, name, x, level, is_max, top=None):
    """Pyramid level ``level`` of Caffe's SPP at any input size.

    With n the height (width), 2^level bins: kernel = stride = ceil(n / bins), pad
    = (kernel bins - n + 1) div 2 (spp_layer.cpp GetPoolingParam), and Caffe's
    pooled size (round up, then drop a window that would start at or past n + pad).
    Kernel equal to stride makes the windows tiles: the input padded by pad before
    and up to out * kernel after (never negative) is reshaped to (N, C, out_h,
    kernel_h, out_w, kernel_w) and reduced. MAX pads with -FLT_MAX; AVE pads with
    zeros and divides each sum by its window clipped to image + pad, as Caffe.
    """
    def c(values):
        return b.const(list(values))
    bins = 2 ** level
    hw = b.dims(x, 2, 4, name)
    kernel = b.op('Div', [b.op('Add', [hw, c([bins - 1] * 2)], name + '/n_up'), c([bins] * 2)],
                  name + '/kernel')
    spread = b.op('Sub', [b.op('Mul', [kernel, c([bins] * 2)], name + '/covered'), hw],
                  name + '/spread')
    pad = b.op('Div', [b.op('Add', [spread, c([1, 1])], name + '/spread1'), c([2, 2])],
               name + '/pad')
    # out = ceil((n + 2 pad - kernel) / kernel) + 1 = (n + 2 pad - 1) div kernel + 1
    span = b.op('Sub', [b.op('Add', [hw, b.op('Add', [pad, pad], name + '/pad2')],
                             name + '/padded_n'), c([1, 1])], name + '/span')
    out = b.op('Add', [b.op('Div', [span, kernel], name + '/steps'), c([1, 1])], name + '/out0')
    last = b.op('Mul', [b.op('Sub', [out, c([1, 1])], name + '/last'), kernel],
                name + '/last_start')
    late = b.op('GreaterOrEqual', [last, b.op('Add', [hw, pad], name + '/bound')],
                name + '/late')
    out = b.op('Sub', [out, b.op('Cast', [late], name + '/drop', to=TensorProto.INT64)],
               name + '/out')
    after = b.op('Sub', [b.op('Sub', [b.op('Mul', [out, kernel], name + '/extent'), pad],
                                name + '/end'), hw], name + '/after')
    pads = b.op('Concat', [c([0, 0]), pad, c([0, 0]), after], name + '/pads', axis=0)
    fill = b.fconst(-FLT_MAX if is_max else 0.0)
    padded = b.op('Pad', [x, pads, fill], name + '/padded')
    # (N, C) + (out_h, kernel_h, out_w, kernel_w)
    pairs = b.op('Concat', [b.unsqueeze(out, [1], name + '/out_col'),
                            b.unsqueeze(kernel, [1], name + '/kernel_col')], name + '/pairs',
                 axis=1)
    tiles = b.op('Concat', [b.dims(x, 0, 2, name + '/nc'),
                            b.op('Reshape', [pairs, c([-1])], name + '/tile_dims')],
                 name + '/tile_shape', axis=0)
    tiled = b.op('Reshape', [padded, tiles], name + '/tiled')
    if is_max:
        return b.reduce('ReduceMax', tiled, [3, 5], name, keepdims=0, top=top)
    sums = b.reduce('ReduceSum', tiled, [3, 5], name + '/sum', keepdims=0)
    lengths = []
    for i in range(2):
        tag = '%s/window%d' % (name, i)

        def at(v, what):
            return b.op('Gather', [v, b.const(i)], '%s/%s' % (tag, what), axis=0)
        k, q = at(kernel, 'k'), at(pad, 'p')
        index = b.op('Range', [b.const(0), at(out, 'count'), b.const(1)], tag + '/index')
        start = b.op('Sub', [b.op('Mul', [index, k], tag + '/mul'), q], tag + '/start')
        end = b.op('Min', [b.op('Add', [start, k], tag + '/end'),
                           b.op('Add', [at(hw, 'n'), q], tag + '/bound')], tag + '/end_clipped')
        length = b.op('Cast', [b.op('Sub', [end, start], tag + '/length')], tag + '/length_f',
                      to=TensorProto.FLOAT)
        lengths.append(b.unsqueeze(length, [1 - i], tag + '/axis'))
    divisor = b.op('Mul', lengths, name + '/divisor')
    return b.op('Div', [sums, divisor], name, top=top)


@converts('Crop')
def _crop(b, layer, bottoms, tops, params, shapes):
    data, ref = (tuple(s) for s in shapes)
    offsets = layer.offsets([data, ref])
    axis = layer.canonical_axis(layer.layer_param.crop_param.axis, len(data), data)
    # starts are Caffe's fixed offsets; ends follow the reference blob's shape
    starts = b.const(offsets[axis:])
    ref_dims = b.dims(bottoms[1], axis, len(data), layer.name + '/ref')
    ends = b.op('Add', [ref_dims, starts], layer.name + '/ends')
    b.op('Slice', [bottoms[0], starts, ends, b.const(list(range(axis, len(data))))],
         layer.name, top=tops[0])
