"""Element-wise layers: ReLU, Sigmoid, TanH, Dropout, Power, ELU, PReLU, AbsVal, BNLL,
Exp, Log, Threshold, Clip, Swish.

Each maps one bottom to one top of the same shape and may run in place in the net.
Where Caffe's backward is not the autograd of the obvious torch expression (at a
kink, or where it has none), a ``torch.autograd.Function`` spells Caffe's out.
"""
import math

import torch

from .. import kernels
from ..errors import CaffeError
from ..proto import caffe_pb2
from .base import Layer, register

__all__ = ['ReLU', 'Sigmoid', 'TanH', 'Dropout', 'Power', 'ELU', 'PReLU', 'AbsVal', 'BNLL',
           'Exp', 'Log', 'Threshold', 'Clip', 'Swish', 'ThresholdBackwardError']


class _Neuron(Layer):
    def top_shapes(self, bottom_shapes):
        return [tuple(bottom_shapes[0])]

    @property
    def in_place(self):
        """Whether the prototxt runs the layer in place (top 0 is bottom 0)."""
        lp = self.layer_param
        return bool(lp.bottom) and bool(lp.top) and lp.bottom[0] == lp.top[0]


@register
class ReLU(_Neuron):
    """``max(x, 0) + negative_slope * min(x, 0)``.

    Caffe's gradient is ``negative_slope`` at x == 0 (its test is ``x > 0``), which is
    what torch's relu (slope 0) and leaky_relu give.
    """
    type = 'ReLU'

    def forward(self, bottoms, params):
        x = bottoms[0]
        slope = self.layer_param.relu_param.negative_slope
        if self.in_place and _may_overwrite(x):
            # Caffe overwrites the bottom of an in-place ReLU; without a gradient
            # graph to keep the bottom for, so can the engine (no new blob memory)
            if slope == 0:
                return [torch.relu_(x)]
            return [torch.nn.functional.leaky_relu_(x, slope)]
        if slope == 0:
            return [torch.relu(x)]
        return [torch.nn.functional.leaky_relu(x, slope)]


def _may_overwrite(x):
    """Whether an in-place layer may write into its bottom tensor: no gradient is
    being recorded, and the tensor is a plain one of its own (not a view: Split's
    tops are views of one tensor, and Caffe's in-place layers after a Split write
    into their own top only)."""
    return (not torch.is_grad_enabled() and not x.requires_grad and x._base is None
            and type(x) is torch.Tensor and not kernels.tracing())


@register
class Sigmoid(_Neuron):
    """``1 / (1 + exp(-x))``."""
    type = 'Sigmoid'

    def forward(self, bottoms, params):
        return [torch.sigmoid(bottoms[0])]


@register
class TanH(_Neuron):
    """``tanh(x)``."""
    type = 'TanH'

    def forward(self, bottoms, params):
        return [torch.tanh(bottoms[0])]


@register
class Power(_Neuron):
    """``(shift + scale * x) ^ power``."""
    type = 'Power'

    def forward(self, bottoms, params):
        p = self.layer_param.power_param
        y = bottoms[0]
        if p.scale != 1:
            y = y * p.scale
        if p.shift != 0:
            y = y + p.shift
        if p.power != 1:
            y = y.pow(p.power)
        elif p.scale == 1 and p.shift == 0:
            y = y.clone()
        return [y]


@register
class Dropout(_Neuron):
    """Caffe's (inverted) dropout.

    TRAIN keeps each unit with probability ``1 - dropout_ratio`` and scales kept units
    by ``1 / (1 - dropout_ratio)``; the gradient goes through the same mask and scale.
    TEST is the identity.

    Attributes
    ----------
    generator : torch.Generator or None
        Source of the masks (on any device); the global RNG of the bottom's device
        if None. The net sets it for reproducible training.
    """
    type = 'Dropout'

    def __init__(self, layer_param, phase):
        super().__init__(layer_param, phase)
        self.ratio = layer_param.dropout_param.dropout_ratio
        if not 0 <= self.ratio < 1:
            raise self.error('dropout_ratio must be in [0, 1), got %g' % self.ratio)
        self.generator = None

    def forward(self, bottoms, params):
        x = bottoms[0]
        if self.phase != caffe_pb2.TRAIN:
            if self.in_place and _may_overwrite(x):
                return [x]  # the identity, in place: no copy
            return [x.clone()]
        keep = 1.0 - self.ratio
        # Drawn in float32 under bf16 autocast, so that every precision drops the same units.
        dtype = torch.float32 if x.dtype == torch.bfloat16 else x.dtype
        if self.generator is None:
            uniform = torch.rand(x.shape, dtype=dtype, device=x.device)
        else:
            uniform = torch.rand(x.shape, dtype=dtype, device=self.generator.device,
                                 generator=self.generator).to(x.device)
        # Caffe keeps a unit when its random integer exceeds ratio * UINT_MAX.
        mask = (uniform >= self.ratio).to(x.dtype)
        return [x * (mask * (1.0 / keep))]


@register
class ELU(_Neuron):
    """``max(x, 0) + alpha * (exp(min(x, 0)) - 1)`` (elu_layer.cpp).

    Caffe's gradient is ``alpha + y`` for ``x <= 0``, so ``alpha`` at x == 0 (not 1);
    the expression below gives that under autograd, and clamping the exponent keeps
    a huge positive x from making inf * 0 in the unused branch.
    """
    type = 'ELU'

    def forward(self, bottoms, params):
        x = bottoms[0]
        alpha = self.layer_param.elu_param.alpha
        negative = alpha * (torch.exp(torch.clamp(x, max=0)) - 1)
        return [torch.where(x > 0, x, negative)]


@register
class PReLU(Layer):
    """``max(x, 0) + a_c * min(x, 0)`` with a learnable slope per channel (prelu_layer.cpp).

    The slope blob has shape ``(channels,)``, or no axes at all (one value) with
    ``channel_shared``; its filler defaults to constant 0.25. Caffe's gradients:
    ``dx = dy`` where ``x > 0``, else ``a * dy``; ``da = sum dy * x`` over the
    ``x <= 0`` positions (so x == 0 gives the bottom ``a`` and the slope nothing).
    """
    type = 'PReLU'

    def __init__(self, layer_param, phase):
        super().__init__(layer_param, phase)
        self.shared = layer_param.prelu_param.channel_shared

    def param_shapes(self, bottom_shapes):
        shape = tuple(bottom_shapes[0])
        if len(shape) < 2:
            raise self.shape_error('needs a bottom of at least 2 axes (num, channels, ...)',
                                   shape)
        return [()] if self.shared else [(shape[1],)]

    def param_fillers(self):
        p = self.layer_param.prelu_param
        if p.HasField('filler'):
            return [p.filler]
        return [caffe_pb2.FillerParameter(type='constant', value=0.25)]

    def top_shapes(self, bottom_shapes):
        self.param_shapes(bottom_shapes)
        return [tuple(bottom_shapes[0])]

    def forward(self, bottoms, params):
        x = bottoms[0]
        slope = params[0]
        if not self.shared:
            slope = slope.reshape((1, -1) + (1,) * (x.dim() - 2))
        return [torch.where(x > 0, x, x * slope)]


@register
class AbsVal(_Neuron):
    """``|x|``; the gradient is ``sign(x) * dy`` with Caffe's sign(0) = 0. Like
    absval_layer.cpp, it refuses to run in place (its backward needs the bottom)."""
    type = 'AbsVal'

    def __init__(self, layer_param, phase):
        super().__init__(layer_param, phase)
        if self.in_place:
            raise self.error('AbsVal does not allow in-place computation (top %r is its '
                             'bottom)' % layer_param.top[0])

    def forward(self, bottoms, params):
        return [torch.abs(bottoms[0])]


# bnll_layer.cpp caps the exponent of its gradient at this value.
BNLL_THRESHOLD = 50.0


class _BNLLFunction(torch.autograd.Function):
    """Caffe's BNLL: ``log(1 + exp(x))``, computed as its source does (not log1p,
    whose float32 results differ for large |x|), and its capped gradient, taken at
    the top instead of the bottom when ``in_place`` (Caffe reads the overwritten
    bottom then)."""

    @staticmethod
    def forward(ctx, x, in_place):
        positive = x + torch.log(1 + torch.exp(-x.clamp(min=0)))
        negative = torch.log(1 + torch.exp(x.clamp(max=0)))
        y = torch.where(x > 0, positive, negative)
        ctx.save_for_backward(y if in_place else x)
        return y

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        e = torch.exp(torch.clamp(x, max=BNLL_THRESHOLD))
        return grad * (e / (e + 1)), None


@register
class BNLL(_Neuron):
    """Binomial normal log likelihood, ``log(1 + exp(x))``; gradient
    ``e / (e + 1)`` with ``e = exp(min(x, 50))`` as bnll_layer.cpp.

    In place, Caffe's backward reads the bottom after the forward overwrote it, so
    ``x`` in the gradient is the top; so it is here.
    """
    type = 'BNLL'

    def forward(self, bottoms, params):
        return [_BNLLFunction.apply(bottoms[0], self.in_place)]


def exp_constants(base, scale, shift):
    """(inner, outer) with ``base ^ (shift + scale x) = outer * exp(inner * x)``, as
    exp_layer.cpp computes them (base -1 means e).

    >>> exp_constants(-1, 2, 0)
    (2.0, 1.0)
    >>> exp_constants(2, 1, 3)[1]
    8.0
    """
    log_base = 1.0 if base == -1 else math.log(base)
    inner = log_base * scale
    outer = 1.0 if shift == 0 else (math.pow(base, shift) if base != -1 else math.exp(shift))
    return inner, outer


def _check_base(layer, base):
    if base != -1 and base <= 0:
        raise layer.error('base must be strictly positive, or -1 for e; got %g' % base)


@register
class Exp(_Neuron):
    """``base ^ (shift + scale * x)`` (base -1: e), computed as Caffe does:
    ``outer * exp(inner * x)`` with the constants of :func:`exp_constants`."""
    type = 'Exp'

    def __init__(self, layer_param, phase):
        super().__init__(layer_param, phase)
        p = layer_param.exp_param
        _check_base(self, p.base)
        self.inner, self.outer = exp_constants(p.base, p.scale, p.shift)

    def forward(self, bottoms, params):
        x = bottoms[0]
        y = torch.exp(x * self.inner if self.inner != 1 else x)
        return [y * self.outer if self.outer != 1 else y]


class _InPlaceLogFunction(torch.autograd.Function):
    """Caffe's in-place Log backward. log_layer.cpp first writes
    ``g = scale / ln(base) / (scale * x + shift)`` into the bottom diff, reading the
    bottom data, then multiplies by the top diff. In place, the bottom data is the
    top ``y`` and the top diff is that same bottom diff, so Caffe gets ``g * g`` with
    ``x`` replaced by ``y``, whatever the incoming gradient (a Caffe bug, kept so that
    in-place nets train as they do in Caffe)."""

    @staticmethod
    def forward(ctx, x, scale, shift, base_scale):
        y = torch.log(x * scale + shift) * base_scale
        ctx.save_for_backward(y)
        ctx.constants = scale, shift, base_scale
        return y

    @staticmethod
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        scale, shift, base_scale = ctx.constants
        g = (scale * base_scale) / (y * scale + shift)
        return g * g, None, None, None


@register
class Log(_Neuron):
    """``log_base(shift + scale * x)`` (base -1: natural log), as log_layer.cpp:
    ``ln(scale * x + shift) / ln(base)``.

    In place, Caffe's backward reads the overwritten bottom (the top) and the top diff
    it has already overwritten (see :class:`_InPlaceLogFunction`); so it does here.
    """
    type = 'Log'

    def __init__(self, layer_param, phase):
        super().__init__(layer_param, phase)
        p = layer_param.log_param
        _check_base(self, p.base)
        self.base_scale = 1.0 / (1.0 if p.base == -1 else math.log(p.base))
        self.scale, self.shift = p.scale, p.shift

    def forward(self, bottoms, params):
        y = bottoms[0]
        if self.in_place and y.requires_grad:
            return [_InPlaceLogFunction.apply(y, self.scale, self.shift, self.base_scale)]
        if self.scale != 1:
            y = y * self.scale
        if self.shift != 0:
            y = y + self.shift
        y = torch.log(y)
        return [y * self.base_scale if self.base_scale != 1 else y]


class ThresholdBackwardError(CaffeError):
    """A gradient reached a Threshold layer, which has no backward in Caffe."""


class _ThresholdFunction(torch.autograd.Function):
    """``x > t`` as 0 / 1; backward raises, as Caffe's NOT_IMPLEMENTED aborts."""

    @staticmethod
    def forward(ctx, x, threshold, name):
        ctx.name = name
        return (x > threshold).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        raise ThresholdBackwardError(
            'layer %r (Threshold): Caffe has no backward for Threshold (threshold_layer.cpp '
            'Backward_cpu is NOT_IMPLEMENTED) and a gradient must flow through it; set '
            '"propagate_down: false" on the layer to cut the gradient there' % ctx.name)


@register
class Threshold(_Neuron):
    """``1`` where ``x > threshold``, else ``0``.

    Caffe implements no backward for it and aborts when the net needs one; here a
    backward that reaches the layer raises :class:`ThresholdBackwardError` (a
    CaffeError) naming it. With ``propagate_down: false``, or a bottom that needs no
    gradient, nothing flows and nothing is raised.
    """
    type = 'Threshold'

    def forward(self, bottoms, params):
        x = bottoms[0]
        threshold = self.layer_param.threshold_param.threshold
        if not x.requires_grad:
            return [(x > threshold).to(x.dtype)]
        return [_ThresholdFunction.apply(x, threshold, self.name)]


class _InPlaceClipFunction(torch.autograd.Function):
    """Clamp forward; the gradient passes unmasked (Caffe's in-place Clip backward)."""

    @staticmethod
    def forward(ctx, x, low, high):
        return torch.clamp(x, low, high)

    @staticmethod
    def backward(ctx, grad):
        return grad, None, None


@register
class Clip(_Neuron):
    """``max(min, min(x, max))``; the gradient passes where ``min <= x <= max``,
    boundaries included, as clip_layer.cpp.

    In place, Caffe tests the top (every value of which lies in [min, max]) instead of
    the overwritten bottom, so the whole gradient passes; so it does here.
    """
    type = 'Clip'

    def __init__(self, layer_param, phase):
        super().__init__(layer_param, phase)
        p = layer_param.clip_param
        if not (p.HasField('min') and p.HasField('max')):
            raise self.error('clip_param needs both min and max')
        self.low, self.high = p.min, p.max

    def forward(self, bottoms, params):
        x = bottoms[0]
        if self.in_place and self.low <= self.high:
            return [_InPlaceClipFunction.apply(x, self.low, self.high)]
        return [torch.clamp(x, self.low, self.high)]


@register
class Swish(_Neuron):
    """``x * sigmoid(beta * x)``; gradient ``beta y + s (1 - beta y)`` (swish_layer.cpp),
    the derivative of the same expression."""
    type = 'Swish'

    def forward(self, bottoms, params):
        x = bottoms[0]
        beta = self.layer_param.swish_param.beta
        return [x * torch.sigmoid(x * beta if beta != 1 else x)]
