"""Layers that combine, reshape or route blobs, and the other non-spatial layers:
InnerProduct, Eltwise, Scale, Bias, Concat, Slice, Flatten, Reshape, Softmax, ArgMax,
Silence, Split, Input, Embed, Tile, Reduction, Filter, BatchReindex, Parameter.
"""
import torch

from .. import kernels
from ..proto import caffe_pb2
from .base import Layer, register, count

__all__ = ['InnerProduct', 'Eltwise', 'Scale', 'Bias', 'Concat', 'Slice', 'Flatten', 'Reshape',
           'Softmax', 'ArgMax', 'Silence', 'Split', 'Input', 'Embed', 'Tile', 'Reduction',
           'Filter', 'BatchReindex', 'Parameter']

_Eltwise = caffe_pb2.EltwiseParameter


@register
class InnerProduct(Layer):
    """Caffe's fully connected layer.

    Axes from ``axis`` on are flattened to K inputs; the top is
    ``bottom.shape[:axis] + (num_output,)``. Weights are (num_output, K), or
    (K, num_output) with ``transpose: true``; bias (num_output,).
    """
    type = 'InnerProduct'

    def __init__(self, layer_param, phase):
        super().__init__(layer_param, phase)
        self.ip_param = layer_param.inner_product_param
        if self.ip_param.num_output < 1:
            raise self.error('inner_product_param.num_output must be positive')
        self.kernels = {}  # pass -> kernel of the last run (torchcaffe.kernels)

    def _axis(self, shape):
        return self.canonical_axis(self.ip_param.axis, len(shape), shape)

    def param_shapes(self, bottom_shapes):
        shape = tuple(bottom_shapes[0])
        n, k = self.ip_param.num_output, count(shape, self._axis(shape))
        shapes = [(k, n) if self.ip_param.transpose else (n, k)]
        if self.ip_param.bias_term:
            shapes.append((n,))
        return shapes

    def param_fillers(self):
        specs = [self.ip_param.weight_filler]
        if self.ip_param.bias_term:
            specs.append(self.ip_param.bias_filler)
        return specs

    def top_shapes(self, bottom_shapes):
        shape = tuple(bottom_shapes[0])
        return [shape[:self._axis(shape)] + (self.ip_param.num_output,)]

    def forward(self, bottoms, params):
        x = bottoms[0]
        shape = tuple(x.shape)
        axis = self._axis(shape)
        flat = x.reshape(count(shape, 0, axis), count(shape, axis))
        weight = params[0]
        if weight.dim() != 2:
            # Old models store IP weights as 1 x 1 x N x K; the data is the same.
            weight = weight.reshape(weight.shape[-2:])
        bias = params[1].reshape(-1) if self.ip_param.bias_term else None
        y = kernels.inner_product(flat, weight, bias, self.ip_param.transpose, self.kernels)
        return [y.reshape(shape[:axis] + (y.shape[1],))]


class _EltwiseMax(torch.autograd.Function):
    """Element-wise max whose gradient goes to Caffe's winner.

    Caffe compares bottoms 0 and 1 with ``a > b`` (so a tie goes to bottom 1), then
    lets each later bottom win only if strictly greater.
    """

    @staticmethod
    def forward(ctx, *xs):
        top = torch.where(xs[0] > xs[1], xs[0], xs[1])
        winner = torch.where(xs[0] > xs[1], 0, 1).to(torch.uint8)
        for i, x in enumerate(xs[2:], start=2):
            better = x > top
            top = torch.where(better, x, top)
            winner = torch.where(better, torch.full_like(winner, i), winner)
        ctx.save_for_backward(winner)
        ctx.num = len(xs)
        return top

    @staticmethod
    def backward(ctx, grad):
        (winner,) = ctx.saved_tensors
        zero = torch.zeros((), dtype=grad.dtype, device=grad.device)
        return tuple(torch.where(winner == i, grad, zero) for i in range(ctx.num))


@register
class Eltwise(Layer):
    """Caffe's Eltwise: SUM (with one optional ``coeff`` per bottom), PROD, MAX."""
    type = 'Eltwise'
    bottom_counts = (2, None)

    def __init__(self, layer_param, phase):
        super().__init__(layer_param, phase)
        p = layer_param.eltwise_param
        self.operation = p.operation
        self.coeffs = list(p.coeff)
        if self.coeffs and self.operation != _Eltwise.SUM:
            raise self.error('coeff is only for SUM')
        if self.coeffs and len(self.coeffs) != len(layer_param.bottom):
            raise self.error('%d coeff values for %d bottoms'
                             % (len(self.coeffs), len(layer_param.bottom)))

    def top_shapes(self, bottom_shapes):
        first = tuple(bottom_shapes[0])
        if any(tuple(s) != first for s in bottom_shapes[1:]):
            raise self.shape_error('all bottoms must have the same shape', *bottom_shapes)
        return [first]

    def forward(self, bottoms, params):
        if self.operation == _Eltwise.SUM:
            coeffs = self.coeffs or [1.0] * len(bottoms)
            top = None
            for c, x in zip(coeffs, bottoms):
                term = x if c == 1 else x * c
                top = term if top is None else top + term
            return [top]
        if self.operation == _Eltwise.PROD:
            top = bottoms[0] * bottoms[1]
            for x in bottoms[2:]:
                top = top * x
            return [top]
        return [_EltwiseMax.apply(*bottoms)]


def broadcast_layout(layer, param, shape, operand_shape=None, what='scale'):
    """Where Scale's / Bias's operand lies along a bottom of ``shape``: (axis, its shape).

    ``param`` carries ``axis`` and ``num_axes``. With a second bottom of
    ``operand_shape`` its shape must equal ``shape[axis:axis + len]`` (axis 0 when it
    has no axes); otherwise the learnable blob takes ``shape[axis:axis + num_axes]``
    (to the end with ``num_axes: -1``). Raises ShapeError naming ``layer``.
    """
    if operand_shape is not None:
        operand_shape = tuple(operand_shape)
        axis = 0 if not operand_shape else layer.canonical_axis(param.axis, len(shape), shape)
        if shape[axis:axis + len(operand_shape)] != operand_shape:
            raise layer.shape_error('%s blob does not match bottom 0 from axis %d'
                                    % (what, axis), shape, operand_shape)
        return axis, operand_shape
    axis = layer.canonical_axis(param.axis, len(shape), shape) if shape else 0
    end = len(shape) if param.num_axes == -1 else axis + param.num_axes
    if end > len(shape):
        raise layer.shape_error('axis %d + num_axes %d exceeds the bottom axes'
                                % (axis, param.num_axes), shape)
    return axis, tuple(shape[axis:end])


def _broadcast_view(shape, axis, operand_shape):
    """The operand's shape padded with 1s to broadcast along a bottom of ``shape``."""
    return (1,) * axis + tuple(operand_shape) + (1,) * (len(shape) - axis - len(operand_shape))


@register
class Scale(Layer):
    """Caffe's Scale: ``top = bottom0 * s`` (+ bias), ``s`` broadcast from ``axis``.

    With one bottom, ``s`` is learnable with shape ``bottom.shape[axis:axis+num_axes]``
    (``num_axes: -1``: all remaining axes), filled by ``filler`` or constant 1; with
    two bottoms, ``s`` is bottom 1. ``bias_term`` adds a learnable bias of ``s``'s
    shape, filled by ``bias_filler`` (constant 0 by default). Learnable blobs are
    ordered [scale, bias].
    """
    type = 'Scale'
    bottom_counts = (1, 2)

    def __init__(self, layer_param, phase):
        super().__init__(layer_param, phase)
        self.scale_param = layer_param.scale_param
        self.two_bottoms = len(layer_param.bottom) == 2
        if self.scale_param.num_axes < -1:
            raise self.error('num_axes must be -1 or more')

    def _layout(self, shape, scale_shape=None):
        """(axis, scale shape) for a bottom of ``shape``."""
        return broadcast_layout(self, self.scale_param, shape, scale_shape, 'scale')

    def param_shapes(self, bottom_shapes):
        shape = tuple(bottom_shapes[0])
        if self.two_bottoms:
            _, scale_shape = self._layout(shape, bottom_shapes[1])
            return [scale_shape] if self.scale_param.bias_term else []
        _, scale_shape = self._layout(shape)
        return [scale_shape] * (2 if self.scale_param.bias_term else 1)

    def param_fillers(self):
        p = self.scale_param
        specs = []
        if not self.two_bottoms:
            if p.HasField('filler'):
                specs.append(p.filler)
            else:
                specs.append(caffe_pb2.FillerParameter(type='constant', value=1.0))
        if p.bias_term:
            specs.append(p.bias_filler)
        return specs

    def top_shapes(self, bottom_shapes):
        shape = tuple(bottom_shapes[0])
        self._layout(shape, bottom_shapes[1] if self.two_bottoms else None)
        return [shape]

    def forward(self, bottoms, params):
        x = bottoms[0]
        shape = tuple(x.shape)
        if self.two_bottoms:
            scale, rest = bottoms[1], list(params)
            axis, scale_shape = self._layout(shape, tuple(scale.shape))
        else:
            scale, rest = params[0], list(params[1:])
            axis, scale_shape = self._layout(shape)
        view = _broadcast_view(shape, axis, scale_shape)
        top = x * scale.reshape(view)
        if self.scale_param.bias_term:
            top = top + rest[0].reshape(view)
        return [top]


@register
class Bias(Layer):
    """Caffe's Bias: ``top = bottom0 + b``, ``b`` broadcast from ``axis`` as Scale's
    factor is (bias_layer.cpp).

    With one bottom, ``b`` is learnable with shape ``bottom.shape[axis:axis+num_axes]``
    (``num_axes: -1``: all remaining axes; 0: a single value), filled by ``filler``
    (constant 0 by default); with two bottoms, ``b`` is bottom 1 and gets the summed
    gradient. Runs in place.
    """
    type = 'Bias'
    bottom_counts = (1, 2)

    def __init__(self, layer_param, phase):
        super().__init__(layer_param, phase)
        self.bias_param = layer_param.bias_param
        self.two_bottoms = len(layer_param.bottom) == 2
        if self.bias_param.num_axes < -1:
            raise self.error('num_axes must be -1 or more')

    def param_shapes(self, bottom_shapes):
        if self.two_bottoms:
            return []
        return [broadcast_layout(self, self.bias_param, tuple(bottom_shapes[0]),
                                 what='bias')[1]]

    def param_fillers(self):
        return [] if self.two_bottoms else [self.bias_param.filler]

    def top_shapes(self, bottom_shapes):
        shape = tuple(bottom_shapes[0])
        broadcast_layout(self, self.bias_param, shape,
                         bottom_shapes[1] if self.two_bottoms else None, 'bias')
        return [shape]

    def forward(self, bottoms, params):
        x = bottoms[0]
        shape = tuple(x.shape)
        bias = bottoms[1] if self.two_bottoms else params[0]
        axis, bias_shape = broadcast_layout(
            self, self.bias_param, shape, tuple(bias.shape) if self.two_bottoms else None,
            'bias')
        return [x + bias.reshape(_broadcast_view(shape, axis, bias_shape))]


def _cat_axis(layer, param, legacy, shape):
    """Concat's / Slice's axis; the deprecated ``concat_dim`` / ``slice_dim`` wins when set."""
    if param.HasField(legacy):
        return layer.canonical_axis(getattr(param, legacy), len(shape), shape)
    return layer.canonical_axis(param.axis, len(shape), shape)


@register
class Concat(Layer):
    """Caffe's Concat along ``axis`` (or the deprecated ``concat_dim``)."""
    type = 'Concat'
    bottom_counts = (1, None)

    def _axis(self, shape):
        return _cat_axis(self, self.layer_param.concat_param, 'concat_dim', shape)

    def top_shapes(self, bottom_shapes):
        first = tuple(bottom_shapes[0])
        axis = self._axis(first)
        total = 0
        for shape in bottom_shapes:
            shape = tuple(shape)
            if len(shape) != len(first) or shape[:axis] + shape[axis + 1:] != \
                    first[:axis] + first[axis + 1:]:
                raise self.shape_error('bottoms must agree on every axis but %d' % axis,
                                       *bottom_shapes)
            total += shape[axis]
        return [first[:axis] + (total,) + first[axis + 1:]]

    def forward(self, bottoms, params):
        if len(bottoms) == 1:
            return [bottoms[0].clone()]
        return [torch.cat(bottoms, dim=self._axis(tuple(bottoms[0].shape)))]


@register
class Slice(Layer):
    """Caffe's Slice along ``axis`` at ``slice_point`` s, or into equal parts."""
    type = 'Slice'
    top_counts = (1, None)

    def _sizes(self, shape):
        p = self.layer_param.slice_param
        axis = _cat_axis(self, p, 'slice_dim', shape)
        dim, tops = shape[axis], self.num_tops()
        points = list(p.slice_point)
        if points:
            if len(points) != tops - 1:
                raise self.error('%d slice points for %d tops' % (len(points), tops))
            bounds = [0] + points + [dim]
            sizes = [b - a for a, b in zip(bounds, bounds[1:])]
            if min(sizes) <= 0:
                raise self.shape_error('slice points %s do not split axis %d of size %d'
                                       % (points, axis, dim), shape)
        else:
            if dim % tops:
                raise self.shape_error('axis %d of size %d does not split into %d equal parts'
                                       % (axis, dim, tops), shape)
            sizes = [dim // tops] * tops
        return axis, sizes

    def top_shapes(self, bottom_shapes):
        shape = tuple(bottom_shapes[0])
        axis, sizes = self._sizes(shape)
        return [shape[:axis] + (n,) + shape[axis + 1:] for n in sizes]

    def forward(self, bottoms, params):
        x = bottoms[0]
        axis, sizes = self._sizes(tuple(x.shape))
        return list(torch.split(x, sizes, dim=axis))


@register
class Flatten(Layer):
    """Caffe's Flatten: axes ``axis`` .. ``end_axis`` (inclusive) become one."""
    type = 'Flatten'

    def top_shapes(self, bottom_shapes):
        shape = tuple(bottom_shapes[0])
        p = self.layer_param.flatten_param
        start = self.canonical_axis(p.axis, len(shape), shape)
        end = self.canonical_axis(p.end_axis, len(shape), shape)
        if end < start:
            raise self.shape_error('end_axis %d comes before axis %d' % (end, start), shape)
        return [shape[:start] + (count(shape, start, end + 1),) + shape[end + 1:]]

    def forward(self, bottoms, params):
        (shape,) = self.top_shapes([tuple(bottoms[0].shape)])
        return [bottoms[0].reshape(shape)]


@register
class Reshape(Layer):
    """Caffe's Reshape.

    ``shape`` replaces bottom axes ``axis`` .. ``axis + num_axes`` (``num_axes: -1``:
    to the end; a negative ``axis`` counts from the end, -1 meaning after the last
    axis). A 0 copies the bottom's dimension at that position; one -1 is inferred.
    """
    type = 'Reshape'

    def top_shapes(self, bottom_shapes):
        shape = tuple(bottom_shapes[0])
        p = self.layer_param.reshape_param
        ndim = len(shape)
        start = p.axis if p.axis >= 0 else ndim + p.axis + 1
        if not 0 <= start <= ndim:
            raise self.shape_error('axis %d out of range' % p.axis, shape)
        end = ndim if p.num_axes == -1 else start + p.num_axes
        if p.num_axes < -1 or end > ndim:
            raise self.shape_error('num_axes %d out of range from axis %d'
                                   % (p.num_axes, start), shape)
        dims = [int(d) for d in p.shape.dim]
        if dims.count(-1) > 1:
            raise self.error('at most one -1 in reshape_param.shape')
        middle = []
        for i, d in enumerate(dims):
            if d == 0:
                if start + i >= ndim:
                    raise self.shape_error('dimension %d is 0 (copy) past the bottom axes' % i,
                                           shape)
                d = shape[start + i]
            elif d < -1:
                raise self.error('bad dimension %d in reshape_param.shape' % d)
            middle.append(d)
        kept = shape[:start] + shape[end:]
        known = count(kept) * count([d for d in middle if d != -1])
        total = count(shape)
        if -1 in middle:
            if known == 0 or total % known:
                raise self.shape_error('cannot infer -1 in %s' % (dims,), shape)
            middle[middle.index(-1)] = total // known
        new = shape[:start] + tuple(middle) + shape[end:]
        if count(new) != total:
            raise self.shape_error('reshape to %s changes the count %d' % (new, total), shape)
        return [new]

    def forward(self, bottoms, params):
        (shape,) = self.top_shapes([tuple(bottoms[0].shape)])
        return [bottoms[0].reshape(shape)]


@register
class Softmax(Layer):
    """Caffe's Softmax along ``axis`` (default 1, the channels)."""
    type = 'Softmax'

    def top_shapes(self, bottom_shapes):
        shape = tuple(bottom_shapes[0])
        self.canonical_axis(self.layer_param.softmax_param.axis, len(shape), shape)
        return [shape]

    def forward(self, bottoms, params):
        x = bottoms[0]
        axis = self.canonical_axis(self.layer_param.softmax_param.axis, x.dim(), x.shape)
        return [torch.softmax(x, dim=axis)]


def caffe_topk(values, k, dim):
    """Top k along ``dim`` ordered as Caffe's ``partial_sort`` with ``greater<pair>``:
    by value descending, equal values by index descending. Returns (values, indices)."""
    size = values.shape[dim]
    flipped = values.flip(dim)
    top, idx = torch.sort(flipped, dim=dim, descending=True, stable=True)
    top, idx = top.narrow(dim, 0, k), idx.narrow(dim, 0, k)
    return top, size - 1 - idx


@register
class ArgMax(Layer):
    """Caffe's ArgMax: indices (or values) of the ``top_k`` largest entries.

    With ``axis``, along that axis (``out_max_val`` gives values instead of indices).
    Without, over each item's flattened ``count(1)`` entries, giving shape
    (N, 1, top_k, ...) or, with ``out_max_val``, (N, 2, top_k, ...) holding indices
    then values. Ties rank the larger index first, as Caffe's sort does. No gradient.
    """
    type = 'ArgMax'

    def __init__(self, layer_param, phase):
        super().__init__(layer_param, phase)
        p = layer_param.argmax_param
        self.top_k, self.out_max_val = p.top_k, p.out_max_val
        self.has_axis = p.HasField('axis')
        if self.top_k < 1:
            raise self.error('top_k must be at least 1')

    def top_shapes(self, bottom_shapes):
        shape = tuple(bottom_shapes[0])
        if self.has_axis:
            axis = self.canonical_axis(self.layer_param.argmax_param.axis, len(shape), shape)
            if self.top_k > shape[axis]:
                raise self.shape_error('top_k %d exceeds axis %d of size %d'
                                       % (self.top_k, axis, shape[axis]), shape)
            return [shape[:axis] + (self.top_k,) + shape[axis + 1:]]
        if self.top_k > count(shape, 1):
            raise self.shape_error('top_k %d exceeds the %d entries per item'
                                   % (self.top_k, count(shape, 1)), shape)
        out = [1] * max(len(shape), 3)
        out[0], out[2] = shape[0], self.top_k
        if self.out_max_val:
            out[1] = 2
        return [tuple(out)]

    def forward(self, bottoms, params):
        x = bottoms[0].detach()
        (out_shape,) = self.top_shapes([tuple(x.shape)])
        if self.has_axis:
            axis = self.canonical_axis(self.layer_param.argmax_param.axis, x.dim(), x.shape)
            values, idx = caffe_topk(x, self.top_k, axis)
            return [values if self.out_max_val else idx.to(x.dtype)]
        values, idx = caffe_topk(x.reshape(x.shape[0], -1), self.top_k, 1)
        parts = [idx.to(x.dtype)] + ([values] if self.out_max_val else [])
        return [torch.cat(parts, dim=1).reshape(out_shape)]


@register
class Silence(Layer):
    """Consumes its bottoms and produces nothing (their gradient is zero)."""
    type = 'Silence'
    bottom_counts = (1, None)
    top_counts = (0, 0)

    def top_shapes(self, bottom_shapes):
        return []

    def forward(self, bottoms, params):
        return []


@register
class Split(Layer):
    """Copies its bottom to every top; the net sums the tops' gradients."""
    type = 'Split'
    top_counts = (1, None)

    def top_shapes(self, bottom_shapes):
        return [tuple(bottom_shapes[0])] * self.num_tops()

    def forward(self, bottoms, params):
        x = bottoms[0]
        return [x.view(x.shape) for _ in range(self.num_tops())]


@register
class Input(Layer):
    """Caffe's Input: tops shaped by ``input_param.shape`` (one per top, or one for all).

    The net writes the input data into these blobs; :meth:`forward` gives what a
    fresh Caffe blob holds, zeros. Without a shape a top is empty, shape (0,).
    """
    type = 'Input'
    bottom_counts = (0, 0)
    top_counts = (1, None)

    def top_shapes(self, bottom_shapes):
        shapes = [tuple(int(d) for d in s.dim) for s in self.layer_param.input_param.shape]
        tops = self.num_tops()
        if not shapes:
            return [(0,)] * tops
        if len(shapes) == 1:
            return shapes * tops
        if len(shapes) != tops:
            raise self.error('%d input shapes for %d tops; give 1 or one per top'
                             % (len(shapes), tops))
        return shapes

    def forward(self, bottoms, params):
        return [torch.zeros(shape) for shape in self.top_shapes([])]


# ---- Embed, Tile, Reduction, Filter, BatchReindex, Parameter ---------------------------

def _indices(layer, values, upper, what, integral):
    """Float blob ``values`` as int64 indices (Caffe's static_cast<int> truncation),
    each in [0, ``upper``); with ``integral``, non-integers are an error too.

    Raises a CaffeError naming the layer and the first bad value.
    """
    values = values.detach()
    bad = (values < 0) | (values >= upper) | torch.isnan(values)
    if integral:
        bad = bad | (values != torch.trunc(values))
    if bool(bad.any()):
        raise layer.error('%s %r at position %d is not %s in [0, %d)'
                          % (what, float(values.reshape(-1)[bad.reshape(-1)][0]),
                             int(torch.nonzero(bad.reshape(-1))[0]),
                             'an integer' if integral else 'a value', upper))
    return values.to(torch.int64)


@register
class Embed(Layer):
    """Caffe's Embed: each bottom value, an integer index in [0, ``input_dim``), picks
    a row of the (input_dim, num_output) weight; the top is ``bottom.shape +
    (num_output,)``, plus the (num_output,) bias with ``bias_term``.

    The weight's gradient adds each top row's diff into the row it came from, so
    repeated indices accumulate (src/caffe/layers/embed_layer.cpp). The indices get
    no gradient; a non-integer or out-of-range index is an error naming the layer
    (Caffe only DCHECKs them).
    """
    type = 'Embed'

    def __init__(self, layer_param, phase):
        super().__init__(layer_param, phase)
        p = layer_param.embed_param
        if p.num_output < 1:
            raise self.error('embed_param.num_output must be positive')
        if p.input_dim < 1:
            raise self.error('embed_param.input_dim must be positive')
        self.embed_param = p

    def param_shapes(self, bottom_shapes):
        p = self.embed_param
        return [(p.input_dim, p.num_output)] + ([(p.num_output,)] if p.bias_term else [])

    def param_fillers(self):
        p = self.embed_param
        return [p.weight_filler] + ([p.bias_filler] if p.bias_term else [])

    def top_shapes(self, bottom_shapes):
        return [tuple(bottom_shapes[0]) + (self.embed_param.num_output,)]

    def forward(self, bottoms, params):
        p = self.embed_param
        x = bottoms[0]
        index = _indices(self, x, p.input_dim, 'index', integral=True).reshape(-1)
        weight = params[0].reshape(p.input_dim, p.num_output)
        top = weight.index_select(0, index)
        if p.bias_term:
            top = top + params[1].reshape(1, p.num_output)
        return [top.reshape(tuple(x.shape) + (p.num_output,))]


@register
class Tile(Layer):
    """Caffe's Tile: the block of axes ``axis``.. repeated ``tiles`` times along
    ``axis`` (torch's ``repeat``); the gradient sums the copies."""
    type = 'Tile'

    def __init__(self, layer_param, phase):
        super().__init__(layer_param, phase)
        if layer_param.tile_param.tiles < 1:
            raise self.error('tile_param.tiles must be positive, got %d'
                             % layer_param.tile_param.tiles)

    def _axis(self, shape):
        return self.canonical_axis(self.layer_param.tile_param.axis, len(shape), shape)

    def top_shapes(self, bottom_shapes):
        shape = tuple(bottom_shapes[0])
        axis = self._axis(shape)
        return [shape[:axis] + (shape[axis] * self.layer_param.tile_param.tiles,)
                + shape[axis + 1:]]

    def forward(self, bottoms, params):
        x = bottoms[0]
        reps = [1] * x.dim()
        reps[self._axis(tuple(x.shape))] = self.layer_param.tile_param.tiles
        return [x.repeat(reps)]


_Reduction = caffe_pb2.ReductionParameter


@register
class Reduction(Layer):
    """Caffe's Reduction: every axis from ``axis`` on reduced by SUM, ASUM (sum of
    absolute values), SUMSQ (sum of squares) or MEAN, times ``coeff``.

    The top keeps the axes before ``axis`` (a scalar for axis 0). Gradients, as
    Caffe's: ``coeff``, ``coeff sign(x)`` (0 at 0), ``2 coeff x``, ``coeff / count``
    times the top diff (src/caffe/layers/reduction_layer.cpp).
    """
    type = 'Reduction'

    def __init__(self, layer_param, phase):
        super().__init__(layer_param, phase)
        self.operation = layer_param.reduction_param.operation
        if self.operation not in (_Reduction.SUM, _Reduction.ASUM, _Reduction.SUMSQ,
                                  _Reduction.MEAN):
            raise self.error('unknown reduction operation %d' % self.operation)

    def _axis(self, shape):
        return self.canonical_axis(self.layer_param.reduction_param.axis, len(shape), shape)

    def top_shapes(self, bottom_shapes):
        shape = tuple(bottom_shapes[0])
        return [shape[:self._axis(shape)]]

    def forward(self, bottoms, params):
        x = bottoms[0]
        shape = tuple(x.shape)
        axis = self._axis(shape)
        flat = x.reshape(count(shape, 0, axis), count(shape, axis))
        if self.operation == _Reduction.ASUM:
            top = flat.abs().sum(1)
        elif self.operation == _Reduction.SUMSQ:
            top = (flat * flat).sum(1)
        else:
            top = flat.sum(1)
        # Caffe keeps coeff in the blob's precision and divides it by the count for MEAN.
        coeff = self.layer_param.reduction_param.coeff
        if self.operation == _Reduction.MEAN:
            coeff = (torch.tensor(coeff, dtype=x.dtype) / flat.shape[1]).item()
        if coeff != 1:
            top = top * coeff
        return [top.reshape(shape[:axis])]


@register
class Filter(Layer):
    """Caffe's Filter: the items (first-axis entries) of bottoms 0..k-1 whose
    selector, the last bottom (N, 1, ...), is nonzero; top i is bottom i filtered.

    Before the first forward the tops have N items (Caffe's first Reshape); after,
    as many as were selected. With nothing selected the tops are empty (0 items),
    as Caffe's; their backward gives zero diffs (Caffe's divides by the empty top's
    item count). Unselected items get zero gradient; the selector gets none
    (src/caffe/layers/filter_layer.cpp).
    """
    type = 'Filter'
    bottom_counts = (2, None)
    top_counts = (1, None)

    def __init__(self, layer_param, phase):
        super().__init__(layer_param, phase)
        if len(layer_param.top) != len(layer_param.bottom) - 1:
            raise self.error('needs one top per filtered bottom: %d bottoms (the last is '
                             'the selector) but %d tops'
                             % (len(layer_param.bottom), len(layer_param.top)))

    def top_shapes(self, bottom_shapes):
        shapes = [tuple(s) for s in bottom_shapes]
        selector = shapes[-1]
        if not selector or any(d != 1 for d in selector[1:]):
            raise self.shape_error('selector blob dimensions must be singletons (1), '
                                   'except the first', selector)
        for shape in shapes[:-1]:
            if not shape or shape[0] != selector[0]:
                raise self.shape_error('each bottom should have the same 0th dimension as '
                                       'the selector blob', shape, selector)
        return shapes[:-1]

    def forward(self, bottoms, params):
        selector = bottoms[-1].detach().reshape(-1)
        picked = torch.nonzero(selector != 0).reshape(-1)
        return [b.index_select(0, picked) for b in bottoms[:-1]]


@register
class BatchReindex(Layer):
    """Caffe's BatchReindex: top item i is bottom 0's item ``index[i]``, with the
    indices a 1-axis second bottom; repeated indices accumulate in the gradient.

    Indices must be in [0, N) (Caffe's CHECKs) and truncate to int; they get no
    gradient (src/caffe/layers/batch_reindex_layer.cpp).
    """
    type = 'BatchReindex'
    bottom_counts = (2, 2)

    def top_shapes(self, bottom_shapes):
        data, index = (tuple(s) for s in bottom_shapes)
        if len(index) != 1:
            raise self.shape_error('the index bottom must have one axis', data, index)
        if not data:
            raise self.shape_error('the data bottom needs a first axis', data)
        return [(index[0],) + data[1:]]

    def forward(self, bottoms, params):
        data, index = bottoms
        picked = _indices(self, index, data.shape[0], 'batch index', integral=False)
        return [data.index_select(0, picked.reshape(-1))]


@register
class Parameter(Layer):
    """Caffe's Parameter: no bottoms; its one top is its learnable blob, shaped by
    ``parameter_param.shape`` and zero at first (Caffe fills it with nothing), so
    that the top's diff becomes the blob's (src/caffe/layers/parameter_layer.cpp)."""
    type = 'Parameter'
    bottom_counts = (0, 0)

    def _shape(self):
        return tuple(int(d) for d in self.layer_param.parameter_param.shape.dim)

    def param_shapes(self, bottom_shapes):
        return [self._shape()]

    def param_fillers(self):
        return [caffe_pb2.FillerParameter(type='constant', value=0.0)]

    def top_shapes(self, bottom_shapes):
        return [self._shape()]

    def forward(self, bottoms, params):
        # A view: the top shares the blob's storage, as Caffe's ShareData/ShareDiff.
        return [params[0].view(self._shape())]
