"""Coordinate maps between blobs, and the Crop layers that align them.

pycaffe's ``caffe.coord_map``: FCN's ``net.py`` scripts call
``crop(n.upscore, n.data)`` to make the Crop layer that lines the upsampled
scores up with the input. A coordinate map is a tuple ``(axis, scale, shift)``
meaning ``out = scale * in + shift`` on every spatial axis after ``axis``
(``axis`` is the last non-spatial axis, 1 for N x C x H x W blobs; ``None`` when
the map does not care, as for ReLU). ``scale`` and ``shift`` are numpy arrays
of one value (all spatial axes alike) or one value per spatial axis.

A layer with kernel extent ``k`` (dilation included), stride ``s`` and pad
``p`` maps the centre of its window: output ``y`` sits over input
``s * y + (k - 1) / 2 - p``, so Convolution and Pooling map ``x`` to
``x / s + (p - (k - 1) / 2) / s``, and Deconvolution is the inverse of that.
"""
import numpy as np

from .errors import CoordMapError
from .net_spec import layers as L

__all__ = ['PASS_THROUGH_LAYERS', 'UndefinedMapError', 'AxisMismatchError', 'UnconnectedTopsError',
           'conv_map', 'deconv_map', 'compose', 'inverse', 'conv_params',
           'crop_params', 'layer', 'coord_map', 'coord_map_from_to',
           'crop_offset', 'crop']

# pycaffe's list of layers that leave coordinates alone, plus Caffe's later
# element-wise layers Clip and Swish.
PASS_THROUGH_LAYERS = frozenset([
    'AbsVal', 'BatchNorm', 'Bias', 'BNLL', 'Clip', 'Dropout', 'Eltwise', 'ELU',
    'Exp', 'Log', 'LRN', 'MVN', 'Power', 'PReLU', 'ReLU', 'Scale', 'Sigmoid',
    'Split', 'Swish', 'TanH', 'Threshold'])

CONV_LIKE_LAYERS = frozenset(['Convolution', 'Pooling', 'Im2col'])

IDENTITY = (None, 1, 0)


class UndefinedMapError(CoordMapError):
    """A layer has no coordinate map (unknown type, global pooling, ...)."""


class AxisMismatchError(CoordMapError):
    """Two maps to compose work on different axes."""


class UnconnectedTopsError(CoordMapError, RuntimeError):
    """Two tops share no ancestor through layers with a map. pycaffe raises a
    RuntimeError here; this is one too (and, as every CoordMapError, an
    AssertionError)."""


# pycaffe's names for the same exceptions
UndefinedMapException = UndefinedMapError
AxisMismatchException = AxisMismatchError


def _array(value):
    return np.array(value, dtype=float, ndmin=1)


def conv_map(axis, kernel, stride=1, pad=0, dilation=1):
    """Coordinate map of a convolution or pooling window (bottom -> top).

    Parameters
    ----------
    axis : int
        Last non-spatial axis (Caffe's ``convolution_param.axis``, 1 by default).
    kernel, stride, pad, dilation : int or sequence of int
        One value for all spatial axes or one per axis.

    Returns
    -------
    tuple
        ``(axis, 1 / stride, (pad - (extent - 1) / 2) / stride)`` with
        ``extent = dilation * (kernel - 1) + 1``.

    Examples
    --------
    A 3x3 convolution padded by 1 keeps coordinates; padding adds offset:

    >>> conv_map(1, 3, pad=1)[1:]
    (array([1.]), array([0.]))
    >>> conv_map(1, 3, pad=100)[1:]
    (array([1.]), array([99.]))

    2x2 pooling at stride 2 halves them, shifting by a quarter:

    >>> conv_map(1, 2, stride=2)[1:]
    (array([0.5]), array([-0.25]))

    Dilation widens the window; per-axis values give per-axis maps:

    >>> conv_map(1, 3, dilation=2)[2]
    array([-2.])
    >>> conv_map(1, [3, 5], stride=[1, 2], pad=[0, 10])[1:]
    (array([1. , 0.5]), array([-1.,  4.]))
    """
    kernel, stride, pad, dilation = map(_array, (kernel, stride, pad, dilation))
    extent = dilation * (kernel - 1) + 1
    return axis, 1 / stride, (pad - (extent - 1) / 2) / stride


def deconv_map(axis, kernel, stride=1, pad=0, dilation=1):
    """Coordinate map of a deconvolution: the inverse of :func:`conv_map`.

    Padding a deconvolution subtracts offset where padding a convolution adds it.

    Examples
    --------
    >>> deconv_map(1, 4, stride=2)[1:]
    (array([2.]), array([1.5]))
    >>> deconv_map(1, 4, stride=2, pad=1)[1:]
    (array([2.]), array([0.5]))
    """
    return inverse(conv_map(axis, kernel, stride, pad, dilation))


def compose(base_map, next_map):
    """Compose two maps: apply ``next_map`` first, then ``base_map``.

    Scales multiply and ``next_map``'s shift is scaled by ``base_map``'s scale:
    ``(a1, b1) o (a2, b2) = (a1 * a2, a1 * b2 + b1)``. An axis of ``None``
    takes the other map's axis.

    Raises
    ------
    AxisMismatchError
        If both maps name an axis and the axes differ.

    Examples
    --------
    Pooling by 2 then upsampling by 2 (kernel 4) keeps the scale, shifting by 1:

    >>> pool = conv_map(1, 2, stride=2)
    >>> up = deconv_map(1, 4, stride=2)
    >>> compose(up, pool)[1:]
    (array([1.]), array([1.]))
    >>> compose((None, 1, 0), (1, 2, 3))
    (1, 2, 3)
    """
    ax1, a1, b1 = base_map
    ax2, a2, b2 = next_map
    if ax1 is None:
        axis = ax2
    elif ax2 is None or ax1 == ax2:
        axis = ax1
    else:
        raise AxisMismatchError('cannot compose coordinate maps on axis %s and '
                                'axis %s' % (ax1, ax2))
    return axis, a1 * a2, a1 * b2 + b1


def inverse(coord_map):
    """Invert a map: ``(axis, a, b) -> (axis, 1 / a, -b / a)``.

    Examples
    --------
    >>> inverse((1, 0.5, -0.25))
    (1, 2.0, 0.5)
    >>> compose(inverse((1, 0.5, -0.25)), (1, 0.5, -0.25))
    (1, 1.0, 0.0)
    """
    axis, a, b = coord_map
    return axis, 1 / a, -b / a


def _describe(fn):
    return '%s layer (bottoms: %d)' % (fn.type_name, len(fn.inputs))


def _positive(fn, what, values):
    if len(values) == 0 or min(values) <= 0:
        raise CoordMapError('%s: %s must be given and positive, got %s'
                            % (_describe(fn), what, list(values)))
    return values


def _convolution_shape(fn, p):
    """Caffe's BaseConvolutionLayer reading of kernel/stride/pad/dilation."""
    def pick(name, default):
        h, w = name + '_h', name + '_w'
        plural = list(getattr(p, name if name != 'kernel' else 'kernel_size'))
        if p.HasField(h) or p.HasField(w):
            if plural:
                raise CoordMapError('%s: give %s or %s/%s, not both'
                                    % (_describe(fn), name, h, w))
            return [getattr(p, h), getattr(p, w)]
        return plural or default
    kernel = _positive(fn, 'kernel size', pick('kernel', []))
    stride = _positive(fn, 'stride', pick('stride', [1]))
    dilation = _positive(fn, 'dilation', list(p.dilation) or [1])
    return p.axis, kernel, stride, pick('pad', [0]), dilation


def _pooling_shape(fn, p):
    """Caffe's PoolingLayer reading: scalar fields, 2-D only, axis 1."""
    if p.global_pooling:
        raise UndefinedMapError('%s: global pooling has no coordinate map'
                                % _describe(fn))
    if p.HasField('kernel_size'):
        kernel = [p.kernel_size]
    elif p.HasField('kernel_h') and p.HasField('kernel_w'):
        kernel = [p.kernel_h, p.kernel_w]
    else:
        kernel = []
    kernel = _positive(fn, 'kernel size (kernel_size, or kernel_h and kernel_w)',
                       kernel)
    pad = [p.pad_h, p.pad_w] if p.HasField('pad_h') or p.HasField('pad_w') else [p.pad]
    stride = ([p.stride_h, p.stride_w]
              if p.HasField('stride_h') or p.HasField('stride_w') else [p.stride])
    return 1, kernel, _positive(fn, 'stride', stride), pad, [1]


def conv_params(fn):
    """Spatial parameters of a Convolution, Deconvolution, Im2col or Pooling layer.

    Reads the layer's parameters as Caffe does: ``kernel_size``/``stride``/
    ``pad``/``dilation`` (one value or one per axis) or the 2-D ``_h``/``_w``
    forms, from ``convolution_param`` or, for Pooling, ``pooling_param``.

    Parameters
    ----------
    fn : torchcaffe.net_spec.Function

    Returns
    -------
    tuple
        ``(axis, stride, extent, pad)``, the last three as float arrays;
        ``extent = dilation * (kernel - 1) + 1`` (as in pycaffe, dilation is
        folded into the kernel extent).

    Raises
    ------
    UndefinedMapError
        For global pooling.
    CoordMapError
        For a missing kernel size, a zero stride, or per-axis values that do
        not agree in length.
    """
    param = fn.layer_param()
    if fn.type_name == 'Pooling':
        axis, kernel, stride, pad, dilation = _pooling_shape(fn, param.pooling_param)
    else:
        axis, kernel, stride, pad, dilation = _convolution_shape(
            fn, param.convolution_param)
    try:
        extent = _array(dilation) * (_array(kernel) - 1) + 1
        np.broadcast(extent, _array(stride), _array(pad))
    except ValueError:
        raise CoordMapError('%s: kernel %s, stride %s, pad %s and dilation %s '
                            'disagree on the number of spatial axes'
                            % (_describe(fn), kernel, stride, pad, dilation)) from None
    return axis, _array(stride), extent, _array(pad)


def crop_params(fn):
    """Axis and offsets of a Crop layer (Caffe's defaults: axis 2, offset 0).

    Returns
    -------
    tuple
        ``(axis, offset)``, offset a float array of one value or one per axis.
    """
    p = fn.layer_param().crop_param
    if p.axis < 0:
        raise CoordMapError('%s: a negative crop axis (%d) has no coordinate map '
                            'without knowing the blob rank' % (_describe(fn), p.axis))
    return p.axis, _array(list(p.offset) or [0])


def layer(fn):
    """The coordinate map of one layer, from its bottoms to its tops.

    Parameters
    ----------
    fn : torchcaffe.net_spec.Function

    Returns
    -------
    tuple
        ``(axis, scale, shift)``.

    Raises
    ------
    UndefinedMapError
        For layer types without a map (InnerProduct, Python, ...), naming the type.
    """
    if fn.type_name in CONV_LIKE_LAYERS:
        axis, stride, extent, pad = conv_params(fn)
        return conv_map(axis, extent, stride, pad)
    if fn.type_name == 'Deconvolution':
        axis, stride, extent, pad = conv_params(fn)
        return deconv_map(axis, extent, stride, pad)
    if fn.type_name in PASS_THROUGH_LAYERS:
        return IDENTITY
    if fn.type_name == 'Crop':
        axis, offset = crop_params(fn)
        # a Crop axis is the first cropped axis; maps name the one before it
        return axis - 1, 1, -offset
    raise UndefinedMapError('%s: layer type %r has no coordinate map'
                            % (_describe(fn), fn.type_name))


coord_map = layer  # pycaffe's name


def _mappable_bottoms(top):
    # Crop's second bottom only gives the output size: its coordinates do not
    # flow to the output, so the walk must not follow it.
    bottoms = top.fn.inputs
    return bottoms[:1] if top.fn.type_name == 'Crop' else bottoms


def _walk_back(start, undefined):
    """Yield ``(blob, map from blob to start)`` for start and its ancestors.

    Breadth first, bottoms in order; the walk does not go through layers
    without a map, whose errors are collected in ``undefined``.
    """
    maps = {start: IDENTITY}
    queue = [start]
    for top in queue:
        yield top, maps[top]
        bottoms = _mappable_bottoms(top)
        if not bottoms:
            continue
        try:
            step = layer(top.fn)
        except UndefinedMapError as error:
            undefined.append(str(error))
            continue
        for bottom in bottoms:
            if bottom not in maps:
                maps[bottom] = compose(maps[top], step)
                queue.append(bottom)


def coord_map_from_to(top_from, top_to):
    """The coordinate map from ``top_from``'s coordinates to ``top_to``'s.

    Walks back from both tops through layers with coordinate maps until they
    meet at a common blob ``c``, then returns ``map(c -> to) o map(c -> from)^-1``.

    Parameters
    ----------
    top_from, top_to : torchcaffe.net_spec.Top

    Returns
    -------
    tuple
        ``(axis, scale, shift)``: a point at ``x`` in ``top_from`` lies at
        ``scale * x + shift`` in ``top_to``.

    Raises
    ------
    UnconnectedTopsError
        (a CoordMapError, AssertionError and RuntimeError) If the tops share no
        ancestor through mappable layers; the message
        names the layers without a map where the walk stopped.
    """
    undefined = []
    from_maps = dict(_walk_back(top_from, undefined))
    for top, to_map in _walk_back(top_to, undefined):
        if top in from_maps:
            return compose(to_map, inverse(from_maps[top]))
    stopped = ('; the walk stopped at: ' + '; '.join(sorted(set(undefined)))
               if undefined else '')
    raise UnconnectedTopsError('no coordinate map from %r to %r: they share no ancestor '
                               'through spatial layers%s' % (top_from, top_to, stopped))


def crop_offset(top_from, top_to, tolerance=1e-6):
    """The Crop ``axis`` and ``offset`` that align ``top_from`` to ``top_to``.

    Parameters
    ----------
    top_from : torchcaffe.net_spec.Top
        The blob to crop.
    top_to : torchcaffe.net_spec.Top
        The reference blob.
    tolerance : float
        How far from a whole number an offset may be (float rounding only).

    Returns
    -------
    tuple
        ``(axis, offsets)``: the first cropped axis and a list of ints, one
        for all spatial axes or one per axis.

    Raises
    ------
    CoordMapError
        If the scales differ (the tops have different strides), or an offset
        is negative (``top_from`` does not cover ``top_to``) or fractional;
        the message gives the offending values.
    """
    axis, scale, shift = coord_map_from_to(top_from, top_to)
    scale, offset = _array(scale), -_array(shift)
    where = 'cannot crop %r to %r' % (top_from, top_to)
    if np.any(np.abs(scale - 1) > tolerance):
        raise CoordMapError('%s: scale mismatch, the map scales by %s (the tops '
                            'have different strides)' % (where, scale.tolist()))
    whole = np.round(offset)
    if np.any(offset < -tolerance):
        raise CoordMapError('%s: negative offset %s (the cropped top is smaller '
                            'than the reference)' % (where, offset.tolist()))
    if np.any(np.abs(offset - whole) > tolerance):
        raise CoordMapError('%s: non-integer offset %s' % (where, offset.tolist()))
    return (2 if axis is None else axis + 1), [int(v) for v in whole]


def crop(top_from, top_to):
    """A Crop layer that crops ``top_from`` to the size and place of ``top_to``.

    Parameters
    ----------
    top_from, top_to : torchcaffe.net_spec.Top

    Returns
    -------
    torchcaffe.net_spec.Top
        ``L.Crop(top_from, top_to, crop_param=dict(axis=..., offset=[...]))``.

    Raises
    ------
    CoordMapError
        See :func:`crop_offset`.
    """
    axis, offsets = crop_offset(top_from, top_to)
    return L.Crop(top_from, top_to, crop_param=dict(axis=axis, offset=offsets))
