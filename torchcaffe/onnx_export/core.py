"""What every converter shares: the graph builder, the registry of converters and
refusals, and the constants of Caffe's arithmetic that the graphs spell out.

A converter takes ``(builder, engine layer, bottom values, top names, params,
bottom shapes at the prototxt's size)`` and adds nodes whose outputs are the tops.
Static shapes are used for ranks, channel counts and the like, never for the
batch or spatial sizes, which stay dynamic in the graph.
"""
from collections import namedtuple

import numpy as np

from ..errors import CaffeError

try:
    import onnx
    from onnx import helper, numpy_helper, TensorProto
except ImportError:  # onnx is an optional dependency (the "test" extra)
    onnx = helper = numpy_helper = TensorProto = None

# Opset 13 is the first whose Softmax normalises over one axis (as Caffe's) and
# whose Slice, Pad, Squeeze and Unsqueeze take their indices as tensors.
MIN_OPSET = 13
DEFAULT_OPSET = 17

# Caffe seeds a MAX pooling window with -FLT_MAX: padding with it is never the max
# of a window that holds an image value.
FLT_MAX = float(np.finfo(np.float32).max)
INT64_MAX = np.iinfo(np.int64).max
INT64_MIN = np.iinfo(np.int64).min

# A learnable blob: ``key`` identifies its storage (shared params are written once).
Param = namedtuple('Param', 'key array')

CONVERTERS = {}
# type -> why it has no ONNX export (a sentence that ends with what to do instead)
REFUSALS = {}


def converts(*types):
    """Decorator: register a converter for the Caffe layer ``types``."""
    def register(fn):
        for t in types:
            CONVERTERS[t] = fn
        return fn
    return register


def refuses(reason, *types):
    """Record that layers of ``types`` have no ONNX export, and ``reason`` why."""
    for t in types:
        REFUSALS[t] = reason


def supported_types():
    """The Caffe layer types this exporter translates, sorted."""
    return sorted(CONVERTERS)


def refused_types():
    """{type: reason} for the registered layer types that are refused by design."""
    return dict(REFUSALS)


def require_onnx():
    if onnx is None:
        raise CaffeError('ONNX export needs the onnx package (pip install onnx)')


def identity(b, layer, bottoms, tops, params, shapes):
    """Every top is bottom 0 (Split; Dropout at TEST)."""
    for top in tops:
        b.op('Identity', [bottoms[0]], layer.name, top=top)


def nothing(b, layer, bottoms, tops, params, shapes):
    """No nodes (Silence; Input, whose tops are the graph's inputs)."""


class Builder:
    """The nodes and initializers of the graph being built, with unique names.

    Attributes
    ----------
    opset : int
        The default domain's opset the graph targets (a few operators changed
        their signature across the supported range).
    """

    def __init__(self, reserved=(), opset=DEFAULT_OPSET):
        self.opset = int(opset)
        self.nodes, self.initializers = [], []
        self._values = set(reserved)   # value names in use (blob names are reserved)
        self._node_names = set()
        self._consts = {}
        self._weights = {}
        self._shapes = {}

    def subgraph(self):
        """A builder for a subgraph body (Scan): its own node list, the names,
        constants and weights of this one (the body reads them from outer scope)."""
        child = Builder.__new__(Builder)
        child.__dict__.update(self.__dict__)
        child.nodes, child._shapes = [], {}
        return child

    def fresh(self, hint):
        """A value name not used yet: ``hint``, or ``hint_2``, ``hint_3``..."""
        return _unused(hint, self._values)

    def _node_name(self, hint):
        return _unused(hint, self._node_names)

    def op(self, op_type, inputs, hint, top=None, **attrs):
        """Add a node; return its output, ``top`` if given, else a fresh name from ``hint``."""
        return self.ops(op_type, inputs, hint, 1, [top], **attrs)[0]

    def ops(self, op_type, inputs, hint, count, tops=None, **attrs):
        """Add a node with ``count`` outputs, named ``tops[i]`` where given (not None)."""
        tops = list(tops or [None] * count)
        outs = [t if t is not None else self.fresh('%s/out%d' % (hint, i) if count > 1
                                                    else hint)
                for i, t in enumerate(tops)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs,
                                           name=self._node_name(hint), **attrs))
        return outs

    def const(self, values, dtype=np.int64):
        """An initializer holding ``values`` (shared by every use of the same values)."""
        arr = np.asarray(values, dtype=dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key not in self._consts:
            name = self.fresh('const_%d' % len(self._consts))
            self.initializers.append(numpy_helper.from_array(arr, name))
            self._consts[key] = name
        return self._consts[key]

    def fconst(self, value):
        """A float32 scalar constant (a Python float rounds as torch rounds it)."""
        return self.const(value, np.float32)

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

    def array(self, arr, hint):
        """An initializer holding a float32 array computed at export time."""
        name = self.fresh(hint)
        self.initializers.append(
            numpy_helper.from_array(np.ascontiguousarray(arr, dtype=np.float32), name))
        return name

    def dims(self, x, start, end, hint):
        """``Shape(x)[start:end]`` as a 1-D int64 tensor."""
        if x not in self._shapes:
            self._shapes[x] = self.op('Shape', [x], hint + '/shape')
        return self.op('Slice', [self._shapes[x], self.const([start]), self.const([end])],
                       hint + '/dims')

    def reduce(self, op_type, x, axes, hint, keepdims=1, top=None):
        """``op_type`` (ReduceSum, ReduceMean, ReduceMax ...) over ``axes``: an input
        from opset 13 for ReduceSum and from opset 18 for the others, else an attribute."""
        if op_type == 'ReduceSum' or self.opset >= 18:
            return self.op(op_type, [x, self.const(list(axes))], hint, top=top,
                           keepdims=keepdims)
        return self.op(op_type, [x], hint, top=top, axes=list(axes), keepdims=keepdims)

    def unsqueeze(self, x, axes, hint, top=None):
        return self.op('Unsqueeze', [x, self.const(list(axes))], hint, top=top)

    def squeeze(self, x, axes, hint, top=None):
        return self.op('Squeeze', [x, self.const(list(axes))], hint, top=top)

    def reshape_to(self, name, x, top, ndim, start, end, middle, source=None):
        """Reshape ``x`` to ``Shape(source)[:start] + middle + Shape(source)[end:]``.

        ``source`` (default ``x``) is a value of rank ``ndim``; ``name`` prefixes
        the nodes' names.
        """
        source = x if source is None else source
        parts = []
        if start > 0:
            parts.append(self.dims(source, 0, start, name + '/head'))
        parts.append(self.const(middle))
        if end < ndim:
            parts.append(self.dims(source, end, ndim, name + '/tail'))
        target = parts[0] if len(parts) == 1 else self.op('Concat', parts,
                                                          name + '/shape_to', axis=0)
        return self.op('Reshape', [x, target], name, top=top)


def _unused(hint, taken):
    """``hint``, or ``hint_2``, ``hint_3``... whichever is not in ``taken``; added to it."""
    name, i = hint, 1
    while name in taken:
        i += 1
        name = '%s_%d' % (hint, i)
    taken.add(name)
    return name
