"""Export a deploy net and its weights to ONNX, one Caffe layer at a time.

Each layer becomes a few standard ONNX operators that keep Caffe's semantics at
every input size, so the batch, height and width of the inputs stay dynamic: the
ends of a Crop and the geometry of Caffe's round-up pooling are computed in the
graph from the shapes of the tensors, never frozen at the prototxt's input size.
The graph is written with ``onnx.helper`` directly (no tracing), so an export is
deterministic and the mapping of every layer type is spelled out below.

Usage::

    from torchcaffe import onnx_export
    onnx_export.export('voc-fcn8s/deploy.prototxt', 'voc-fcn8s/fcn8s-heavy-pascal.caffemodel',
                       'fcn8s.onnx')

Value names: the value a blob holds at the end of the net (what ``net.blobs[name]``
holds after a forward) is named after the blob; earlier versions of a blob that
layers rewrite in place are named ``blob@layer``.
"""
import os
from collections import namedtuple

import numpy as np

from . import graph, io
from .errors import CaffeError, FormatError, UnknownLayerError
from .net import Net
from .proto import caffe_pb2

try:
    import onnx
    from onnx import helper, numpy_helper, TensorProto
except ImportError:  # onnx is an optional dependency (the "test" extra)
    onnx = None

__all__ = ['export', 'to_onnx', 'verify', 'validate', 'load_net', 'supported_types',
           'check_supported', 'DEFAULT_OPSET', 'MIN_OPSET']

# Opset 13 is the first whose Softmax normalises over one axis (as Caffe's) and
# whose Slice, Pad and Unsqueeze take their indices as tensors computed in-graph.
MIN_OPSET = 13
DEFAULT_OPSET = 17

# Caffe seeds a MAX pooling window with -FLT_MAX: padding with it is never the max
# of a window that holds an image value.
FLT_MAX = float(np.finfo(np.float32).max)
INT64_MAX = np.iinfo(np.int64).max

_Pool = caffe_pb2.PoolingParameter
_LRN = caffe_pb2.LRNParameter
_Eltwise = caffe_pb2.EltwiseParameter

# A learnable blob: ``key`` identifies its storage (shared params are written once).
_Param = namedtuple('_Param', 'key array')

_CONVERTERS = {}


def _converts(*types):
    def register(fn):
        for t in types:
            _CONVERTERS[t] = fn
        return fn
    return register


def supported_types():
    """The Caffe layer types this exporter translates, sorted."""
    return sorted(_CONVERTERS)


def _require_onnx():
    if onnx is None:
        raise CaffeError('ONNX export needs the onnx package (pip install onnx)')


# ------------------------------------------------------------------------ graph builder

class _Builder:
    """The nodes and initializers of the graph being built, with unique names."""

    def __init__(self, reserved=()):
        self.nodes, self.initializers = [], []
        self._values = set(reserved)   # value names in use (blob names are reserved)
        self._node_names = set()
        self._consts = {}
        self._weights = {}
        self._shapes = {}

    def fresh(self, hint):
        """A value name not used yet: ``hint``, or ``hint_2``, ``hint_3``..."""
        name, i = hint, 1
        while name in self._values:
            i += 1
            name = '%s_%d' % (hint, i)
        self._values.add(name)
        return name

    def op(self, op_type, inputs, hint, top=None, **attrs):
        """Add a node; return its output, ``top`` if given, else a fresh name from ``hint``."""
        out = top if top is not None else self.fresh(hint)
        node_name, i = hint, 1
        while node_name in self._node_names:
            i += 1
            node_name = '%s_%d' % (hint, i)
        self._node_names.add(node_name)
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=node_name,
                                           **attrs))
        return out

    def const(self, values, dtype=np.int64):
        """An initializer holding ``values`` (shared by every use of the same values)."""
        arr = np.asarray(values, dtype=dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key not in self._consts:
            name = self.fresh('const_%d' % len(self._consts))
            self.initializers.append(numpy_helper.from_array(arr, name))
            self._consts[key] = name
        return self._consts[key]

    def weight(self, param, hint, shape=None):
        """The initializer of a learnable blob, reshaped to ``shape`` if given."""
        arr = param.array if shape is None else param.array.reshape(shape)
        key = (param.key, arr.shape)
        if key not in self._weights:
            name = self.fresh(hint)
            self.initializers.append(
                numpy_helper.from_array(np.ascontiguousarray(arr, dtype=np.float32), name))
            self._weights[key] = name
        return self._weights[key]

    def dims(self, x, start, end, hint):
        """``Shape(x)[start:end]`` as a 1-D int64 tensor."""
        if x not in self._shapes:
            self._shapes[x] = self.op('Shape', [x], hint + '/shape')
        return self.op('Slice', [self._shapes[x], self.const([start]), self.const([end])],
                       hint + '/dims')


# ------------------------------------------------------------------------ layer converters
# Each converter takes (builder, engine layer, bottom values, top names, params,
# bottom shapes at the prototxt's size) and adds nodes whose outputs are the tops.
# Static shapes are used only for ranks and channel counts, never for spatial sizes.

def _identity(b, layer, bottoms, tops, params, shapes):
    for top in tops:
        b.op('Identity', [bottoms[0]], layer.name, top=top)


_converts('Dropout', 'Split')(_identity)  # Dropout is the identity at TEST


@_converts('Silence')
def _silence(b, layer, bottoms, tops, params, shapes):
    pass


@_converts('ReLU')
def _relu(b, layer, bottoms, tops, params, shapes):
    slope = layer.layer_param.relu_param.negative_slope
    if slope == 0:
        b.op('Relu', bottoms, layer.name, top=tops[0])
    else:
        b.op('LeakyRelu', bottoms, layer.name, top=tops[0], alpha=float(slope))


@_converts('Sigmoid', 'TanH')
def _unary(b, layer, bottoms, tops, params, shapes):
    b.op({'Sigmoid': 'Sigmoid', 'TanH': 'Tanh'}[layer.type], bottoms, layer.name, top=tops[0])


@_converts('Power')
def _power(b, layer, bottoms, tops, params, shapes):
    p = layer.layer_param.power_param
    steps = [('Mul', p.scale, 1.0), ('Add', p.shift, 0.0), ('Pow', p.power, 1.0)]
    steps = [(op, v) for op, v, neutral in steps if v != neutral]
    x = bottoms[0]
    if not steps:
        b.op('Identity', [x], layer.name, top=tops[0])
    for i, (op, value) in enumerate(steps):
        last = i == len(steps) - 1
        x = b.op(op, [x, b.const(value, np.float32)], '%s/%s' % (layer.name, op.lower()),
                 top=tops[0] if last else None)


@_converts('Convolution', 'Deconvolution')
def _convolution(b, layer, bottoms, tops, params, shapes):
    axis, kernel, stride, pad, dilation = layer._geometry(tuple(shapes[0]))
    if axis != 1:
        raise layer.error('ONNX export needs the channel axis at 1, got axis %d' % axis)
    inputs = [b.weight(params[0], layer.name + '/weight')]
    if layer.bias_term:
        inputs.append(b.weight(params[1], layer.name + '/bias', (layer.num_output,)))
    # Both rules match Caffe's: Conv rounds down, ConvTranspose gives
    # stride (n - 1) + dilation (kernel - 1) + 1 - 2 pad; weights share Caffe's layout.
    op = 'Conv' if layer.type == 'Convolution' else 'ConvTranspose'
    for x, top in zip(bottoms, tops):
        b.op(op, [x] + inputs, layer.name, top=top, kernel_shape=list(kernel),
             strides=list(stride), pads=list(pad) * 2, dilations=list(dilation),
             group=layer.group)


@_converts('Pooling')
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
    op = 'MaxPool' if is_max else 'AveragePool'
    attrs = dict(kernel_shape=list(kernel), strides=list(stride))
    if p.round_mode == _Pool.FLOOR:
        # Rounding down, every window ends inside image + pad: Caffe's AVE divisor is
        # the whole kernel, ONNX's count_include_pad.
        extra = {} if is_max else dict(count_include_pad=1)
        b.op(op, [x], layer.name, top=top, pads=list(pad) * 2, **attrs, **extra)
    elif not any(pad) and all(k >= s for k, s in zip(kernel, stride)):
        # Without pad (FCN's and AlexNet's pools) ONNX's ceil mode is Caffe's rule:
        # the last window starts inside the image and is clipped to it, and AVE
        # divides by the clipped window.
        extra = {} if is_max else dict(count_include_pad=0)
        b.op(op, [x], layer.name, top=top, ceil_mode=1, **attrs, **extra)
    else:
        _caffe_pool(b, layer.name, x, top, kernel, stride, pad, is_max)


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
    fill = b.const(-FLT_MAX if is_max else 0.0, np.float32)
    padded = b.op('Pad', [x, pads, fill], name + '/padded')
    attrs = dict(kernel_shape=list(kernel), strides=list(stride))
    if is_max:
        b.op('MaxPool', [padded], name, top=top, **attrs)
        return
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
        lengths.append(b.op('Unsqueeze', [length, b.const([1 - i])], tag + '/axis'))
    divisor = b.op('Mul', lengths, name + '/divisor')
    factor = b.op('Div', [b.const(float(kernel[0] * kernel[1]), np.float32), divisor],
                  name + '/factor')
    b.op('Mul', [mean, factor], name, top=top)


@_converts('LRN')
def _lrn(b, layer, bottoms, tops, params, shapes):
    x, top = bottoms[0], tops[0]
    if layer.region == _LRN.ACROSS_CHANNELS:
        # ONNX's LRN is Caffe's formula: x / (k + alpha / n * sum of n squares) ^ beta,
        # the window centred on the channel and zero beyond the edges.
        b.op('LRN', [x], layer.name, top=top, size=int(layer.size), alpha=float(layer.alpha),
             beta=float(layer.beta), bias=float(layer.k))
        return
    # WITHIN_CHANNEL: x (1 + alpha mean) ^ -beta, the mean Caffe's AVE pooling with pad
    # (n - 1) / 2 and stride 1, whose windows all end inside image + pad: divisor n^2.
    half = (layer.size - 1) // 2
    squares = b.op('Mul', [x, x], layer.name + '/squares')
    mean = b.op('AveragePool', [squares], layer.name + '/mean',
                kernel_shape=[layer.size] * 2, pads=[half] * 4, count_include_pad=1)
    scaled = b.op('Mul', [mean, b.const(layer.alpha, np.float32)], layer.name + '/scaled')
    base = b.op('Add', [scaled, b.const(1.0, np.float32)], layer.name + '/base')
    scale = b.op('Pow', [base, b.const(-layer.beta, np.float32)], layer.name + '/scale')
    b.op('Mul', [x, scale], layer.name, top=top)


@_converts('Crop')
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


@_converts('Eltwise')
def _eltwise(b, layer, bottoms, tops, params, shapes):
    if layer.operation == _Eltwise.SUM:
        coeffs = layer.coeffs or [1.0] * len(bottoms)
        terms = [x if c == 1 else b.op('Mul', [x, b.const(c, np.float32)],
                                         '%s/coeff%d' % (layer.name, i))
                 for i, (x, c) in enumerate(zip(bottoms, coeffs))]
        b.op('Sum', terms, layer.name, top=tops[0])
    elif layer.operation == _Eltwise.PROD:
        top = bottoms[0]
        for i, x in enumerate(bottoms[1:], start=2):
            top = b.op('Mul', [top, x], layer.name, top=tops[0] if i == len(bottoms) else None)
    else:
        b.op('Max', bottoms, layer.name, top=tops[0])


@_converts('Scale')
def _scale(b, layer, bottoms, tops, params, shapes):
    shape = tuple(shapes[0])
    if layer.two_bottoms:
        axis, scale_shape = layer._layout(shape, tuple(shapes[1]))
        scale, rest = bottoms[1], list(params)
        trailing = len(shape) - axis - len(scale_shape)
        if trailing:
            first = len(scale_shape)
            scale = b.op('Unsqueeze', [scale, b.const(list(range(first, first + trailing)))],
                         layer.name + '/scale')
    else:
        axis, scale_shape = layer._layout(shape)
        scale, rest = None, list(params[1:])
    view = (1,) * axis + scale_shape + (1,) * (len(shape) - axis - len(scale_shape))
    if scale is None:
        scale = b.weight(params[0], layer.name + '/scale', view)
    bias = layer.scale_param.bias_term
    y = b.op('Mul', [bottoms[0], scale], layer.name + '/mul', top=None if bias else tops[0])
    if bias:
        b.op('Add', [y, b.weight(rest[0], layer.name + '/bias', view)], layer.name,
             top=tops[0])


@_converts('Softmax')
def _softmax(b, layer, bottoms, tops, params, shapes):
    ndim = len(shapes[0])
    axis = layer.canonical_axis(layer.layer_param.softmax_param.axis, ndim, shapes[0])
    b.op('Softmax', bottoms, layer.name, top=tops[0], axis=axis)


@_converts('Concat')
def _concat(b, layer, bottoms, tops, params, shapes):
    if len(bottoms) == 1:
        b.op('Identity', bottoms, layer.name, top=tops[0])
    else:
        b.op('Concat', bottoms, layer.name, top=tops[0], axis=layer._axis(tuple(shapes[0])))


@_converts('Slice')
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


def _reshape_to(b, layer, x, top, ndim, start, end, middle, source=None):
    """Reshape ``x`` to ``Shape(source)[:start] + middle + Shape(source)[end:]``.

    ``source`` (default ``x``) is a value of rank ``ndim``.
    """
    source = x if source is None else source
    parts = []
    if start > 0:
        parts.append(b.dims(source, 0, start, layer.name + '/head'))
    parts.append(b.const(middle))
    if end < ndim:
        parts.append(b.dims(source, end, ndim, layer.name + '/tail'))
    target = parts[0] if len(parts) == 1 else b.op('Concat', parts, layer.name + '/shape_to',
                                                   axis=0)
    return b.op('Reshape', [x, target], layer.name, top=top)


@_converts('Flatten')
def _flatten(b, layer, bottoms, tops, params, shapes):
    shape = tuple(shapes[0])
    p = layer.layer_param.flatten_param
    start = layer.canonical_axis(p.axis, len(shape), shape)
    end = layer.canonical_axis(p.end_axis, len(shape), shape)
    _reshape_to(b, layer, bottoms[0], tops[0], len(shape), start, end + 1, [-1])


@_converts('Reshape')
def _reshape(b, layer, bottoms, tops, params, shapes):
    shape = tuple(shapes[0])
    layer.top_shapes([shape])  # validates the parameters
    p = layer.layer_param.reshape_param
    ndim = len(shape)
    start = p.axis if p.axis >= 0 else ndim + p.axis + 1
    end = ndim if p.num_axes == -1 else start + p.num_axes
    # Caffe's 0 copies the bottom's dimension at the same position, as ONNX's does.
    _reshape_to(b, layer, bottoms[0], tops[0], ndim, start, end,
                [int(d) for d in p.shape.dim])


@_converts('InnerProduct')
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
    _reshape_to(b, layer, y, tops[0], len(shape), axis, len(shape), [p.num_output],
                source=bottoms[0])


# The Input layer becomes the graph's inputs (see _graph_inputs).
_converts('Input')(_silence)


# ------------------------------------------------------------------------ the net

def check_supported(layers):
    """Raise UnknownLayerError naming the first layer of ``layers`` with no ONNX export.

    Parameters
    ----------
    layers : iterable of caffe_pb2.LayerParameter
    """
    for lp in layers:
        if lp.type not in _CONVERTERS:
            raise UnknownLayerError(
                'layer %r has type %r, which has no ONNX export; supported types: %s'
                % (lp.name, lp.type, ', '.join(supported_types())))


def _dim_names(shape, prefix=''):
    """Symbolic names of the dynamic axes: batch, then height and width (or dimN)."""
    names = []
    for i, d in enumerate(shape):
        if i == 0:
            names.append(prefix + 'batch')
        elif i == 1:
            names.append(int(d))
        elif len(shape) == 4:
            names.append(prefix + ('height' if i == 2 else 'width'))
        else:
            names.append('%sdim%d' % (prefix, i))
    return names


def _output_dims(steps, outputs, shapes):
    """Declared dims of each output: fixed sizes, ``'batch'``, or None (follows H, W).

    Shapes are propagated once more with every input axis but the channels grown:
    a dim that stays put is fixed (channels, classes); one that moves is dynamic. If
    the grown inputs do not fit the net, only the ranks are declared.
    """
    layers = []
    for lp, _ in steps:
        if lp.type == 'Input':
            lp = caffe_pb2.LayerParameter.FromString(lp.SerializeToString())
            for shape in lp.input_param.shape:
                for i in range(len(shape.dim)):
                    if i != 1:
                        shape.dim[i] += 1 if i == 0 else 32
        layers.append(lp)
    try:
        grown = graph.infer_shapes(layers)
    except CaffeError:
        grown = {}
    dims = []
    for name in outputs:
        shape, other = shapes[name], grown.get(name)
        if other is None or len(other) != len(shape):
            dims.append([None] * len(shape))
            continue
        dims.append([int(d) if d == e else ('batch' if i == 0 else None)
                     for i, (d, e) in enumerate(zip(shape, other))])
    return dims


def _steps(net):
    """(LayerParameter, engine layer) of every layer of ``net``, in order."""
    return [(step.lp, step.layer) for step in net._steps]


def to_onnx(net, opset=DEFAULT_OPSET, outputs=None):
    """Translate a :class:`~torchcaffe.Net` and its current weights to an ONNX model.

    Parameters
    ----------
    net : torchcaffe.Net
        A TEST-phase net whose data comes from Input layers.
    opset : int
        ONNX opset of the default domain, at least ``MIN_OPSET`` (13).
    outputs : list of str, optional
        Blobs to output; default the net's outputs (tops no layer consumes, as Caffe's).

    Returns
    -------
    onnx.ModelProto
        Inputs named as the Input layers' tops with dynamic axes ``batch``, ``height``,
        ``width``; outputs named as the blobs; float32 throughout.

    Raises
    ------
    UnknownLayerError
        A layer type with no ONNX translation (the message names the layer).
    CaffeError
        A bad opset, an unknown output blob, or a layer setting with no exact export.
    """
    _require_onnx()
    max_opset = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= int(opset) <= max_opset:
        raise CaffeError('opset %s is not supported: give %d to %d'
                         % (opset, MIN_OPSET, max_opset))
    if net.phase != caffe_pb2.TEST:
        raise CaffeError('net %r is in the TRAIN phase; export a TEST-phase (deploy) net, '
                         'where Dropout is the identity' % net.name)
    steps = _steps(net)
    check_supported(lp for lp, _ in steps)
    outputs = list(net.outputs if outputs is None else outputs)
    missing = [o for o in outputs if o not in net.blobs]
    if missing:
        raise CaffeError('net %r has no blob %r to output; its blobs: %s'
                         % (net.name, missing[0], ', '.join(net.blobs)))
    if not outputs:
        raise CaffeError('net %r has no outputs to export' % net.name)

    b = _Builder(reserved=net.blobs)
    last_write = {}
    for i, (lp, _) in enumerate(steps):
        for top in lp.top:
            last_write[top] = i
    inputs = set(net.inputs)
    current, graph_inputs = {}, []
    for i, (lp, layer) in enumerate(steps):
        if lp.type == 'Input':
            for top in lp.top:
                graph_inputs.append(helper.make_tensor_value_info(
                    top, TensorProto.FLOAT, _dim_names(net.blobs[top].shape,
                                                       '' if not graph_inputs else top + '_')))
                current[top] = top
            continue
        shapes = [tuple(net.blobs[name].shape) for name in lp.bottom]
        bottoms = [current[name] for name in lp.bottom]
        tops = [top if last_write[top] == i and top not in inputs
                else b.fresh('%s@%s' % (top, lp.name)) for top in lp.top]
        params = [_Param(id(blob), np.asarray(blob.data).reshape(shape))
                  for blob, shape in zip(layer.blobs, layer.param_shapes(shapes))]
        _CONVERTERS[lp.type](b, layer, bottoms, tops, params, shapes)
        current.update(zip(lp.top, tops))

    shapes = {name: tuple(blob.shape) for name, blob in net.blobs.items()}
    out_infos = [helper.make_tensor_value_info(current[o], TensorProto.FLOAT, dims)
                 for o, dims in zip(outputs, _output_dims(steps, outputs, shapes))]
    g = helper.make_graph(b.nodes, net.name or 'net', graph_inputs, out_infos,
                          initializer=b.initializers)
    opset_ids = [helper.make_opsetid('', int(opset))]
    model = helper.make_model(g, opset_imports=opset_ids, producer_name='torchcaffe',
                              doc_string='Caffe net %r exported layer by layer' % net.name)
    # The oldest IR version that carries the opset, so older runtimes load the file.
    model.ir_version = helper.find_min_ir_version_for(opset_ids)
    return model


def load_net(prototxt, weights=None):
    """A TEST-phase Net of ``prototxt`` (path or NetParameter) with ``weights``.

    Layer types are checked for an ONNX export before the weights are read, and
    missing files are errors naming them (FormatError).
    """
    if isinstance(prototxt, caffe_pb2.NetParameter):
        net_param = caffe_pb2.NetParameter()
        net_param.CopyFrom(prototxt)
        where = net_param.name or '<NetParameter>'
    else:
        where = os.fspath(prototxt)
        if not os.path.isfile(where):
            raise FormatError(where, 'no such prototxt file')
        net_param = io.read_net_prototxt(where)
    if io.needs_upgrade(net_param):
        net_param = io.upgrade_net_param(net_param)
    net_param.state.phase = caffe_pb2.TEST
    # Fail on an unsupported layer before reading (possibly large) weights.
    try:
        check_supported(graph.filter_layers(net_param, net_param.state))
    except UnknownLayerError as err:
        raise UnknownLayerError('%s: %s' % (where, err)) from None
    if weights is not None and not os.path.isfile(os.fspath(weights)):
        raise FormatError(os.fspath(weights), 'no such weights file')
    return Net(net_param, phase=caffe_pb2.TEST, weights=weights)


def export(net_or_prototxt, weights, path, opset=DEFAULT_OPSET, outputs=None):
    """Export a deploy net and its weights to an ONNX file, written atomically.

    Parameters
    ----------
    net_or_prototxt : torchcaffe.Net, str, path or caffe_pb2.NetParameter
        A Net (its current weights are exported), or a deploy prototxt read in the
        TEST phase.
    weights : str or path or None
        ``.caffemodel`` (or ``.caffemodel.h5``) for a prototxt; None with a Net (or
        to export a prototxt's filler values).
    path : str or path
        The ``.onnx`` file to write.
    opset, outputs :
        As for :func:`to_onnx`.

    Returns
    -------
    onnx.ModelProto
        The model written, after ``onnx.checker`` passed on it.
    """
    _require_onnx()
    if isinstance(net_or_prototxt, Net):
        if weights is not None:
            raise CaffeError('export(net, weights, ...): give weights=None with a Net; its '
                             'current params are exported')
        net = net_or_prototxt
    else:
        net = load_net(net_or_prototxt, weights)
    model = to_onnx(net, opset, outputs)
    validate(model)
    with io.atomic_path(path) as tmp:
        onnx.save_model(model, tmp)
    return model


def validate(model, full_check=False):
    """Run ``onnx.checker`` on ``model``; a failure is a CaffeError.

    ``full_check`` adds ONNX's strict shape inference.
    """
    _require_onnx()
    try:
        onnx.checker.check_model(model, full_check=full_check)
    except onnx.checker.ValidationError as err:
        raise CaffeError('the exported model fails onnx.checker: %s'
                         % str(err).strip().splitlines()[0]) from None


def verify(model, net, inputs=None, seed=0):
    """Run ``model`` in onnxruntime and ``net`` in the engine on the same inputs.

    Parameters
    ----------
    model : onnx.ModelProto or str or path
    net : torchcaffe.Net
        The exported net; its input blobs are reshaped to the inputs' shapes.
    inputs : dict, optional
        Input blob name -> float32 array; default random N(0, 50) values (about the
        spread of mean-subtracted pixels) at the net's current input shapes.
    seed : int

    Returns
    -------
    dict
        Output name -> (max |onnx - engine|, max |engine|), for the model's outputs
        (the blob a ``blob@layer`` output name comes from is compared).
    """
    import onnxruntime
    if inputs is None:
        rng = np.random.default_rng(seed)
        inputs = {name: rng.normal(0, 50, net.blobs[name].shape).astype(np.float32)
                  for name in net.inputs}
    inputs = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in inputs.items()}
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load_model(os.fspath(model))
    names = [o.name for o in model.graph.output]
    blobs = [name.split('@')[0] for name in names]
    for name, value in inputs.items():
        net.blobs[name].reshape(*value.shape)
    net.reshape()
    expected = net.forward(blobs=blobs, **inputs)
    session = onnxruntime.InferenceSession(model.SerializeToString(),
                                           providers=['CPUExecutionProvider'])
    got = session.run(names, inputs)
    result = {}
    for name, blob, value in zip(names, blobs, got):
        ref = np.asarray(expected[blob])
        if value.shape != ref.shape:
            raise CaffeError('output %r: onnxruntime gives shape %s, the engine %s'
                             % (name, value.shape, ref.shape))
        result[name] = (float(np.abs(value - ref).max(initial=0)),
                        float(np.abs(ref).max(initial=0)))
    return result
