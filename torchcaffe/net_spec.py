"""Caffe nets written in Python, as pycaffe's ``caffe.net_spec`` writes them.

``layers`` (usually imported as ``L``) makes a layer of any type by attribute:
``L.Convolution(bottom, num_output=64, kernel_size=3)`` returns a :class:`Top`.
``params`` (``P``) looks up the enum values of ``<Type>Parameter``:
``P.Pooling.MAX``. Assigning tops to a :class:`NetSpec` names them, and
``NetSpec.to_proto()`` returns the ``caffe_pb2.NetParameter`` whose ``str`` is
the prototxt::

    n = NetSpec()
    n.data, n.label = L.Python(module='voc_layers', layer='VOCSegDataLayer',
                               ntop=2, param_str='{}')
    n.conv = L.Convolution(n.data, num_output=21, kernel_size=1)
    print(n.to_proto())

Keywords are routed as pycaffe routes them: ``ntop`` and ``in_place`` shape the
layer; a keyword ending in ``param`` (``param``, ``convolution_param``,
``loss_param`` ...) goes straight into the ``LayerParameter``; any other keyword
goes into the layer type's own ``<type>_param`` message when that message has
such a field, and otherwise into the ``LayerParameter`` (``loss_weight``,
``include``, ``name`` ...). Unlike pycaffe, a keyword that fits neither raises
:class:`~torchcaffe.errors.NetSpecError` when the layer is made, naming the layer
type and the keyword.

Names follow pycaffe exactly, since generated prototxts are diffed against the
reference ones: a top takes the name it was assigned in the NetSpec, a layer
takes the name of its first top (an in-place layer: the name its own top was
assigned, while its top keeps the bottom's name), and anything unnamed gets
``<Type><count>`` with one counter per type, counted in the order layers are
emitted (bottoms before the layers that use them).
"""
from collections import Counter, OrderedDict

import numpy as np
from google.protobuf.message import Message

from .errors import NetSpecError, NetSpecTypeError
from .proto import caffe_pb2

__all__ = ['layers', 'params', 'NetSpec', 'Top', 'Function', 'to_proto',
           'param_name_dict', 'assign_proto', 'PARAM_ALIASES']

# Layer types whose Caffe implementation reads another type's parameter message.
# pycaffe has no such table, so there `L.Deconvolution(x, num_output=...)` fails;
# here flat keywords reach convolution_param, exactly where Caffe reads them.
PARAM_ALIASES = {'Deconvolution': 'convolution', 'Im2col': 'convolution'}


def param_name_dict():
    """Map each layer type name to the prefix of its ``*_param`` field.

    Built as pycaffe builds it: every ``LayerParameter`` field named ``<x>_param``
    whose message type is ``<T>Parameter`` gives ``T -> x``.

    Returns
    -------
    dict
        For example ``'Convolution' -> 'convolution'``,
        ``'InnerProduct' -> 'inner_product'``, ``'LRN' -> 'lrn'``,
        ``'Loss' -> 'loss'``.

    Examples
    --------
    >>> names = param_name_dict()
    >>> names['Convolution'], names['InnerProduct'], names['ReLU']
    ('convolution', 'inner_product', 'relu')
    >>> 'Deconvolution' in names   # Caffe's Deconvolution reads convolution_param
    False
    """
    names = {}
    for field in caffe_pb2.LayerParameter.DESCRIPTOR.fields:
        if field.name.endswith('_param') and field.message_type is not None:
            type_name = field.message_type.name
            if type_name.endswith('Parameter'):
                type_name = type_name[:-len('Parameter')]
            names[type_name] = field.name[:-len('_param')]
    return names


_PARAM_NAMES = param_name_dict()
_LAYER_FIELDS = caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name


def _is_sequence(value):
    return isinstance(value, (list, tuple, np.ndarray))


def _as_list(value):
    return value.tolist() if isinstance(value, np.ndarray) else list(value)


def _type_label(field):
    if field.message_type is not None:
        return field.message_type.name
    if field.enum_type is not None:
        return field.enum_type.name
    return field.name


def _fill_message(message, value, where):
    """Fill a sub-message from a dict, or copy a message of the same type."""
    if isinstance(value, dict):
        for key, item in value.items():
            _assign(message, key, item, '%s.%s' % (where, key))
    elif isinstance(value, Message) and value.DESCRIPTOR is message.DESCRIPTOR:
        message.MergeFrom(value)
    else:
        raise NetSpecError('%s expects a dict (or a %s), got %r'
                           % (where, message.DESCRIPTOR.name, value))


def _assign(proto, name, value, where):
    field = proto.DESCRIPTOR.fields_by_name.get(name)
    if field is None:
        raise NetSpecError('%s: %s has no field %r'
                           % (where, proto.DESCRIPTOR.name, name))
    try:
        if field.is_repeated:
            container = getattr(proto, name)
            # pycaffe: a single value for a repeated field means a list of one
            items = _as_list(value) if _is_sequence(value) else [value]
            for i, item in enumerate(items):
                if field.message_type is not None:
                    _fill_message(container.add(), item, '%s[%d]' % (where, i))
                else:
                    container.append(item)
        elif field.message_type is not None:
            _fill_message(getattr(proto, name), value, where)
        elif _is_sequence(value):
            raise NetSpecError('%s: %s.%s is not repeated, got %r'
                               % (where, proto.DESCRIPTOR.name, name, value))
        else:
            setattr(proto, name, value)
    except (TypeError, ValueError) as error:
        if isinstance(error, NetSpecError):
            raise
        raise NetSpecError('%s: cannot assign %r to %s.%s (%s): %s'
                           % (where, value, proto.DESCRIPTOR.name, name,
                              _type_label(field), error)) from None


def assign_proto(proto, name, value):
    """Assign a Python value to field ``name`` of a protobuf message, recursively.

    Dicts fill sub-messages; lists (or tuples, arrays) fill repeated fields, a
    list of dicts making one message each; a single value given to a repeated
    field is a list of one (``kernel_size=3`` means ``[3]``); other values are
    assigned directly. Enum fields take the number or the value's name.

    Parameters
    ----------
    proto : google.protobuf.message.Message
        The message to modify in place.
    name : str
        The field name.
    value : object
        Scalar, str, dict, list/tuple, or a message of the field's type.

    Raises
    ------
    NetSpecError
        If a field does not exist or a value does not fit it; the message gives
        the dotted path to the offending field.

    Examples
    --------
    >>> layer = caffe_pb2.LayerParameter()
    >>> assign_proto(layer, 'param', [dict(lr_mult=1), dict(lr_mult=2)])
    >>> [p.lr_mult for p in layer.param]
    [1.0, 2.0]
    >>> conv = caffe_pb2.ConvolutionParameter()
    >>> assign_proto(conv, 'kernel_size', 3)
    >>> assign_proto(conv, 'weight_filler', dict(type='gaussian', std=0.01))
    >>> list(conv.kernel_size), conv.weight_filler.type
    ([3], 'gaussian')
    """
    _assign(proto, name, value, name)


class Top(object):
    """One output blob of a layer: output number ``n`` of :class:`Function` ``fn``."""

    def __init__(self, fn, n):
        self.fn = fn
        self.n = n

    def to_proto(self):
        """Return a NetParameter of every layer this top needs, with automatic names."""
        return to_proto(self)

    def __repr__(self):
        return '<Top %d of %s>' % (self.n, self.fn.type_name)


class Function(object):
    """A layer: its type, its bottoms (Tops of other layers) and its keywords.

    Parameters
    ----------
    type_name : str
        Caffe layer type, e.g. ``'Convolution'``.
    inputs : sequence of Top
        The bottoms, in order.
    params : dict
        Keyword arguments. ``ntop`` (default 1) and ``in_place`` (default False)
        are taken out; the rest stay in ``self.params``, as in pycaffe.

    Raises
    ------
    NetSpecError
        If a bottom is not a Top, or a keyword fits neither the LayerParameter
        nor the type's parameter message (checked here, so the traceback points
        at the line that made the layer).
    """

    def __init__(self, type_name, inputs, params):
        self.type_name = type_name
        self.inputs = tuple(inputs)
        self.params = dict(params)
        self.ntop = self.params.pop('ntop', 1)
        self.in_place = self.params.pop('in_place', False)
        self._check_shape()
        self.tops = tuple(Top(self, n) for n in range(self.ntop))
        self._apply_params(caffe_pb2.LayerParameter(type=type_name))

    def _check_shape(self):
        for i, bottom in enumerate(self.inputs):
            if not isinstance(bottom, Top):
                # pycaffe's text exactly (code matches it with an anchored regex); a
                # tuple here is a multi-top layer's tops, to unpack first.
                raise NetSpecTypeError('%s input %d is not a Top (type is %s)'
                                       % (self.type_name, i, type(bottom)))
        if not isinstance(self.ntop, int) or self.ntop < 0:
            raise NetSpecError('%s layer: ntop must be a non-negative int, got %r'
                               % (self.type_name, self.ntop))
        if self.in_place and not self.inputs:
            raise NetSpecError('%s layer: in_place=True needs a bottom'
                               % self.type_name)

    def param_field(self):
        """The ``*_param`` field this layer type's plain keywords go to, or None."""
        prefix = _PARAM_NAMES.get(self.type_name) or PARAM_ALIASES.get(self.type_name)
        return None if prefix is None else prefix + '_param'

    def _target(self, layer, key):
        """The message a keyword is assigned into (pycaffe's routing)."""
        if key.endswith('param'):
            return layer
        param_field = self.param_field()
        if param_field is not None:
            message = getattr(layer, param_field)
            if key in message.DESCRIPTOR.fields_by_name:
                return message
        if key in _LAYER_FIELDS:
            return layer
        if param_field is None:
            reason = ("type %r has no parameter message of its own; pass it "
                      "inside an explicit <name>_param=dict(...)" % self.type_name)
        else:
            reason = '%s (%s) has no such field either' % (
                param_field, getattr(layer, param_field).DESCRIPTOR.name)
        raise NetSpecError('%s layer: unknown keyword %r: not a LayerParameter '
                           'field, and %s' % (self.type_name, key, reason))

    def _apply_params(self, layer):
        for key, value in self.params.items():
            target = self._target(layer, key)
            try:
                assign_proto(target, key, value)
            except NetSpecError as error:
                raise NetSpecError('%s layer: keyword %r: %s'
                                   % (self.type_name, key, error)) from None
        return layer

    def layer_param(self):
        """Return a LayerParameter with this layer's type and keywords only.

        Names, bottoms and tops are left empty; tools that only need the
        parameters (such as :mod:`torchcaffe.coord_map`) read them here, with
        the message defaults Caffe would use.
        """
        return self._apply_params(caffe_pb2.LayerParameter(type=self.type_name))

    def __repr__(self):
        return '<Function %s, %d bottom(s), %d top(s)>' % (
            self.type_name, len(self.inputs), self.ntop)


def _function_of(value):
    """The Function behind a Top or a top-less Function."""
    if isinstance(value, Top):
        return value.fn
    if isinstance(value, Function):
        return value
    hint = ('; unpack a multi-top layer: n.a, n.b = L.X(..., ntop=2)'
            if isinstance(value, tuple) else '')
    raise NetSpecTypeError('expected a Top or a Function, got %r%s' % (value, hint))


def _top_name(top, names, autonames):
    if top not in names:
        autonames[top.fn.type_name] += 1
        names[top] = top.fn.type_name + str(autonames[top.fn.type_name])
    return names[top]


def _layer_name(fn, names, autonames):
    if fn not in names:
        if fn.ntop > 0:
            names[fn] = _top_name(fn.tops[0], names, autonames)
        else:
            autonames[fn.type_name] += 1
            names[fn] = fn.type_name + str(autonames[fn.type_name])
    return names[fn]


def _make_layer(fn, emitted, names, autonames):
    """Build fn's LayerParameter; its bottoms must already be in ``emitted``."""
    layer = caffe_pb2.LayerParameter(type=fn.type_name)
    layer.bottom.extend(emitted[top.fn].top[top.n] for top in fn.inputs)
    if fn.in_place:
        layer.top.extend(layer.bottom)
    else:
        layer.top.extend(_top_name(top, names, autonames) for top in fn.tops)
    layer.name = _layer_name(fn, names, autonames)
    # keywords last, so that name=... overrides the layer name as in pycaffe
    return fn._apply_params(layer)


def _emit(root, emitted, names, autonames):
    """Emit root and everything it needs, bottoms first (depth-first, in input order).

    Iterative rather than recursive so that very deep nets do not hit Python's
    recursion limit; the emission order (and so the automatic names) is the
    one pycaffe's recursion gives.
    """
    if root in emitted:
        return
    stack = [[root, 0]]
    on_stack = {root}
    while stack:
        frame = stack[-1]
        fn, i = frame
        if i < len(fn.inputs):
            frame[1] += 1
            child = fn.inputs[i].fn
            if child in emitted:
                continue
            if child in on_stack:
                raise NetSpecError('%s layer: its bottoms form a cycle' % fn.type_name)
            stack.append([child, 0])
            on_stack.add(child)
        else:
            stack.pop()
            on_stack.discard(fn)
            emitted[fn] = _make_layer(fn, emitted, names, autonames)


def _net_param(roots, names):
    emitted = OrderedDict()
    autonames = Counter()
    for root in roots:
        _emit(_function_of(root), emitted, names, autonames)
    net = caffe_pb2.NetParameter()
    net.layer.extend(emitted.values())
    return net


def to_proto(*tops):
    """Return a NetParameter of every layer needed to compute ``tops``.

    Every top and layer gets an automatic ``<Type><count>`` name; use a
    :class:`NetSpec` to choose names.

    Parameters
    ----------
    *tops : Top or Function

    Returns
    -------
    caffe_pb2.NetParameter
    """
    return _net_param(tops, {})


class NetSpec(object):
    """A set of named tops; ``to_proto()`` writes every layer they need.

    Assign tops as attributes (``n.conv1 = L.Convolution(...)``) or items
    (``n['conv1'] = ...``); the attribute name becomes the top's name and the
    name of the layer whose first top it is. ``tops`` is the ordered dict of
    assignments; layers come out in dependency order, walking the tops in the
    order they were first assigned.
    """

    def __init__(self):
        super(NetSpec, self).__setattr__('tops', OrderedDict())

    def __setattr__(self, name, value):
        _function_of(value)
        self.tops[name] = value

    def __getattr__(self, name):
        tops = self.__dict__.get('tops')
        if tops is None or name not in tops:
            raise AttributeError('NetSpec has no top named %r' % name)
        return tops[name]

    def __setitem__(self, name, value):
        self.__setattr__(name, value)

    def __getitem__(self, name):
        return self.tops[name]

    def __contains__(self, name):
        return name in self.tops

    def keys(self):
        """The assigned names, in assignment order."""
        return list(self.tops.keys())

    def to_proto(self):
        """Return the NetParameter with every layer the assigned tops need.

        Returns
        -------
        caffe_pb2.NetParameter
            ``str()`` of it is the prototxt.
        """
        names = {value: name for name, value in self.tops.items()}
        return _net_param(self.tops.values(), names)


class Layers(object):
    """Pseudo-module of layer makers: ``layers.<Type>(*bottoms, **keywords)``.

    Any attribute is a layer type. The maker returns the single Top, a tuple of
    Tops when ``ntop > 1``, or the Function itself when ``ntop == 0``.
    """

    def __getattr__(self, type_name):
        if type_name.startswith('_'):
            raise AttributeError(type_name)

        def layer_fn(*bottoms, **keywords):
            fn = Function(type_name, bottoms, keywords)
            if fn.ntop == 0:
                return fn
            if fn.ntop == 1:
                return fn.tops[0]
            return fn.tops
        layer_fn.__name__ = type_name
        return layer_fn


class _UnknownParam(NetSpecError, AttributeError):
    """``params.X.Y`` names no enum value (or no ``XParameter`` message)."""


class _EnumValues(object):
    """The enum values declared inside one ``<Type>Parameter`` message."""

    def __init__(self, message_name):
        self._descriptor = getattr(caffe_pb2, message_name).DESCRIPTOR

    def __getattr__(self, value_name):
        if value_name.startswith('_'):
            raise AttributeError(value_name)
        values = self._descriptor.enum_values_by_name
        if value_name not in values:
            raise _UnknownParam('%s has no enum value %r; it has %s' % (
                self._descriptor.name, value_name, ', '.join(sorted(values)) or 'none'))
        return values[value_name].number

    def __dir__(self):
        return sorted(self._descriptor.enum_values_by_name)


class Parameters(object):
    """Pseudo-module of enum constants: ``params.Pooling.MAX`` is
    ``caffe_pb2.PoolingParameter.MAX``."""

    def __getattr__(self, type_name):
        if type_name.startswith('_'):
            raise AttributeError(type_name)
        message_name = type_name + 'Parameter'
        if not hasattr(caffe_pb2, message_name):
            raise _UnknownParam('caffe_pb2 has no message %s' % message_name)
        return _EnumValues(message_name)


layers = Layers()
params = Parameters()
