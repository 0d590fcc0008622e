"""Converters of the layers that combine, reshape or route blobs
(torchcaffe/layer_types/common.py): InnerProduct, Eltwise, Scale, Bias, Concat,
Slice, Flatten, Reshape, Softmax, ArgMax, Split, Silence, Input, Embed, Tile,
Reduction, Filter, BatchReindex, Parameter.
"""
import numpy as np

from ..layer_types.common import broadcast_layout
from ..proto import caffe_pb2
from .core import INT64_MAX, INT64_MIN, TensorProto, converts, identity, nothing

_Eltwise = caffe_pb2.EltwiseParameter
_Reduction = caffe_pb2.ReductionParameter

converts('Split')(identity)
converts('Silence')(nothing)
# The Input layer becomes the graph's inputs (see model.to_onnx).
converts('Input')(nothing)


@converts('InnerProduct')
def _inner_product(b, layer, bottoms, tops, params, shapes):
    shape = tuple(shapes[0])
    axis = layer._axis(shape)
    p = layer.ip_param
    inputs = [b.op('Flatten', bottoms, layer.name + '/flat', axis=axis),
              b.weight(params[0], layer.name + '/weight', params[0].array.shape[-2:])]
    if p.bias_term:
        inputs.append(b.weight(params[1], layer.name + '/bias', (p.num_output,)))
    trans_b = 0 if p.transpose else 1
    if axis == 1:
        b.op('Gemm', inputs, layer.name, top=tops[0], transB=trans_b)
        return
    y = b.op('Gemm', inputs, layer.name + '/gemm', transB=trans_b)
    # Caffe's top is bottom.shape[:axis] + (num_output,)
    b.reshape_to(layer.name, y, tops[0], len(shape), axis, len(shape), [p.num_output],
                 source=bottoms[0])


@converts('Eltwise')
def _eltwise(b, layer, bottoms, tops, params, shapes):
    if layer.operation == _Eltwise.SUM:
        coeffs = layer.coeffs or [1.0] * len(bottoms)
        terms = [x if c == 1 else b.op('Mul', [x, b.fconst(c)], '%s/coeff%d' % (layer.name, i))
                 for i, (x, c) in enumerate(zip(bottoms, coeffs))]
        b.op('Sum', terms, layer.name, top=tops[0])
    elif layer.operation == _Eltwise.PROD:
        top = bottoms[0]
        for i, x in enumerate(bottoms[1:], start=2):
            top = b.op('Mul', [top, x], layer.name, top=tops[0] if i == len(bottoms) else None)
    else:
        b.op('Max', bottoms, layer.name, top=tops[0])


def _operand(b, layer, param, bottoms, params, shapes, what):
    """Scale's factor / Bias's bias as a value that broadcasts along bottom 0 (Caffe
    lays it from ``axis`` on), and the learnable blobs left after it.

    With two bottoms the operand is bottom 1, given trailing axes of size 1; else it
    is the first learnable blob, reshaped to the broadcast view.
    """
    shape = tuple(shapes[0])
    if len(bottoms) == 2:
        axis, operand_shape = broadcast_layout(layer, param, shape, tuple(shapes[1]), what)
        trailing = len(shape) - axis - len(operand_shape)
        value = bottoms[1]
        if trailing:
            first = len(operand_shape)
            value = b.unsqueeze(value, range(first, first + trailing),
                                '%s/%s' % (layer.name, what))
        return value, axis, operand_shape, list(params)
    axis, operand_shape = broadcast_layout(layer, param, shape, None, what)
    return (b.weight(params[0], '%s/%s' % (layer.name, what),
                     _view(shape, axis, operand_shape)), axis, operand_shape, list(params[1:]))


def _view(shape, axis, operand_shape):
    return (1,) * axis + tuple(operand_shape) + (1,) * (len(shape) - axis - len(operand_shape))


@converts('Scale')
def _scale(b, layer, bottoms, tops, params, shapes):
    scale, axis, scale_shape, rest = _operand(b, layer, layer.scale_param, bottoms, params,
                                              shapes, 'scale')
    bias = layer.scale_param.bias_term
    y = b.op('Mul', [bottoms[0], scale], layer.name + '/mul', top=None if bias else tops[0])
    if bias:
        view = _view(shapes[0], axis, scale_shape)
        b.op('Add', [y, b.weight(rest[0], layer.name + '/bias', view)], layer.name,
             top=tops[0])


@converts('Bias')
def _bias(b, layer, bottoms, tops, params, shapes):
    bias, *_ = _operand(b, layer, layer.bias_param, bottoms, params, shapes, 'bias')
    b.op('Add', [bottoms[0], bias], layer.name, top=tops[0])


@converts('Softmax')
def _softmax(b, layer, bottoms, tops, params, shapes):
    # From opset 13 ONNX's Softmax normalises along the one axis, as Caffe's.
    ndim = len(shapes[0])
    axis = layer.canonical_axis(layer.layer_param.softmax_param.axis, ndim, shapes[0])
    b.op('Softmax', bottoms, layer.name, top=tops[0], axis=axis)


@converts('Concat')
def _concat(b, layer, bottoms, tops, params, shapes):
    if len(bottoms) == 1:
        b.op('Identity', bottoms, layer.name, top=tops[0])
    else:
        b.op('Concat', bottoms, layer.name, top=tops[0], axis=layer._axis(tuple(shapes[0])))


@converts('Slice')
def _slice(b, layer, bottoms, tops, params, shapes):
    shape = tuple(shapes[0])
    axis, sizes = layer._sizes(shape)
    points = list(layer.layer_param.slice_param.slice_point)
    if not points and axis != 1:
        raise layer.error('slicing axis %d into equal parts depends on the input size; '
                          'give slice_point for ONNX export' % axis)
    bounds = [0] + (points or list(np.cumsum(sizes)[:-1])) + [INT64_MAX]
    for top, start, end in zip(tops, bounds, bounds[1:]):
        b.op('Slice', [bottoms[0], b.const([start]), b.const([end]), b.const([axis])],
             layer.name, top=top)


@converts('Flatten')
def _flatten(b, layer, bottoms, tops, params, shapes):
    shape = tuple(shapes[0])
    p = layer.layer_param.flatten_param
    start = layer.canonical_axis(p.axis, len(shape), shape)
    end = layer.canonical_axis(p.end_axis, len(shape), shape)
    b.reshape_to(layer.name, bottoms[0], tops[0], len(shape), start, end + 1, [-1])


@converts('Reshape')
def _reshape(b, layer, bottoms, tops, params, shapes):
    shape = tuple(shapes[0])
    layer.top_shapes([shape])  # validates the parameters
    p = layer.layer_param.reshape_param
    ndim = len(shape)
    start = p.axis if p.axis >= 0 else ndim + p.axis + 1
    end = ndim if p.num_axes == -1 else start + p.num_axes
    # Caffe's 0 copies the bottom's dimension at the same position, as ONNX's does.
    b.reshape_to(layer.name, bottoms[0], tops[0], ndim, start, end,
                 [int(d) for d in p.shape.dim])


def _caffe_topk(b, name, x, k, axis):
    """(values, indices) of the ``k`` largest along ``axis``, equal values ranked by
    index descending as Caffe's partial_sort with greater<pair>: TopK (which ranks the
    lower index first) on the axis reversed, the indices mapped back."""
    flipped = b.op('Slice', [x, b.const([-1]), b.const([INT64_MIN]), b.const([axis]),
                             b.const([-1])], name + '/flip')
    values, idx = b.ops('TopK', [flipped, b.const([k])], name + '/topk', 2, axis=axis,
                        largest=1, sorted=1)
    size = b.dims(x, axis, axis + 1, name + '/size')
    last = b.op('Sub', [size, b.const(1)], name + '/last')
    return values, b.op('Sub', [last, idx], name + '/index')


@converts('ArgMax')
def _argmax(b, layer, bottoms, tops, params, shapes):
    shape = tuple(shapes[0])
    name = layer.name
    if layer.has_axis:
        axis = layer.canonical_axis(layer.layer_param.argmax_param.axis, len(shape), shape)
        values, idx = _caffe_topk(b, name, bottoms[0], layer.top_k, axis)
        if layer.out_max_val:
            b.op('Identity', [values], name, top=tops[0])
        else:
            b.op('Cast', [idx], name, top=tops[0], to=TensorProto.FLOAT)
        return
    # Over each item's count(1) entries: (N, 1 or 2, top_k, 1 ...), indices then values.
    (out_shape,) = layer.top_shapes([shape])
    flat = b.reshape_to(name + '/items', bottoms[0], None, len(shape), 1, len(shape), [-1])
    values, idx = _caffe_topk(b, name, flat, layer.top_k, 1)
    parts = [b.op('Cast', [idx], name + '/index_f', to=TensorProto.FLOAT)]
    if layer.out_max_val:
        parts.append(values)
    both = parts[0] if len(parts) == 1 else b.op('Concat', parts, name + '/both', axis=1)
    target = b.op('Concat', [b.dims(bottoms[0], 0, 1, name + '/num'),
                             b.const(list(out_shape[1:]))], name + '/out_shape', axis=0)
    b.op('Reshape', [both, target], name, top=tops[0])


def _index(b, name, x):
    """Float indices as int64, truncated as Caffe's static_cast<int> (the engine
    refuses out-of-range ones; a graph cannot raise, so check inputs beforehand)."""
    return b.op('Cast', [x], name, to=TensorProto.INT64)


@converts('Embed')
def _embed(b, layer, bottoms, tops, params, shapes):
    p = layer.embed_param
    index = _index(b, layer.name + '/index', bottoms[0])
    weight = b.weight(params[0], layer.name + '/weight', (p.input_dim, p.num_output))
    rows = b.op('Gather', [weight, index], layer.name + '/rows', axis=0,
                top=None if p.bias_term else tops[0])
    if p.bias_term:
        b.op('Add', [rows, b.weight(params[1], layer.name + '/bias', (p.num_output,))],
             layer.name, top=tops[0])


@converts('Tile')
def _tile(b, layer, bottoms, tops, params, shapes):
    # Caffe repeats the block of axes axis.. along axis: ONNX's Tile of that axis.
    shape = tuple(shapes[0])
    repeats = [1] * len(shape)
    repeats[layer._axis(shape)] = layer.layer_param.tile_param.tiles
    b.op('Tile', [bottoms[0], b.const(repeats)], layer.name, top=tops[0])


@converts('Reduction')
def _reduction(b, layer, bottoms, tops, params, shapes):
    shape = tuple(shapes[0])
    ndim, name, x = len(shape), layer.name, bottoms[0]
    axis = layer._axis(shape)
    op = layer.operation
    if op == _Reduction.ASUM:
        x = b.op('Abs', [x], name + '/abs')
    elif op == _Reduction.SUMSQ:
        x = b.op('Mul', [x, x], name + '/square')
    # (outer, inner) rows summed, as reduction_layer.cpp
    flat = b.reshape_to(name + '/rows', x, None, ndim, axis, ndim, [-1]) if axis > 0 else \
        b.op('Reshape', [x, b.const([1, -1])], name + '/rows')
    coeff = layer.layer_param.reduction_param.coeff
    scaled = op == _Reduction.MEAN or coeff != 1
    total = b.reduce('ReduceSum', flat, [-1], name + '/sum', keepdims=0,
                     top=None if scaled or axis == 0 else tops[0])
    if op == _Reduction.MEAN:
        # float32 coeff / count, then one product, as the engine
        n = b.op('Cast', [b.reduce('ReduceProd', b.dims(bottoms[0], axis, ndim, name + '/inner'),
                                   [0], name + '/count', keepdims=0)],
                 name + '/count_f', to=TensorProto.FLOAT)
        factor = b.op('Div', [b.fconst(coeff), n], name + '/coeff')
    else:
        factor = b.fconst(coeff)
    if scaled:
        total = b.op('Mul', [total, factor], name + '/scaled', top=None if axis == 0 else tops[0])
    if axis == 0:
        # axis 0 reduces everything to a 0-axis blob
        b.op('Reshape', [total, b.const(np.zeros(0, np.int64))], name, top=tops[0])


@converts('Filter')
def _filter(b, layer, bottoms, tops, params, shapes):
    # the items whose selector (last bottom) is nonzero: ONNX's Compress along axis 0
    selector = b.op('Reshape', [bottoms[-1], b.const([-1])], layer.name + '/selector')
    zero = b.op('Equal', [selector, b.fconst(0.0)], layer.name + '/zero')
    keep = b.op('Not', [zero], layer.name + '/keep')
    for x, top in zip(bottoms[:-1], tops):
        b.op('Compress', [x, keep], layer.name, top=top, axis=0)


@converts('BatchReindex')
def _batch_reindex(b, layer, bottoms, tops, params, shapes):
    index = _index(b, layer.name + '/index', bottoms[1])
    b.op('Gather', [bottoms[0], index], layer.name, top=tops[0], axis=0)


@converts('Parameter')
def _parameter(b, layer, bottoms, tops, params, shapes):
    # the top is the learnable blob itself
    b.op('Identity', [b.weight(params[0], layer.name + '/blob')], layer.name, top=tops[0])
