"""Normalisation layers: BatchNorm, MVN, LRN.

BatchNorm keeps running statistics in its three blobs and updates them during a
TRAIN forward; MVN and LRN have no blobs.
"""
import contextlib

import torch
import torch.nn.functional as F

from ..proto import caffe_pb2
from .base import Layer, register, count
from .vision import _ave_pool

__all__ = ['BatchNorm', 'MVN', 'LRN', 'batch_norm_statistics']

_LRN = caffe_pb2.LRNParameter


# ------------------------------------------------------------------------ BatchNorm

def batch_norm_statistics(mean_sum, var_sum, factor):
    """The stored statistics: the running sums divided by the scale factor, or zeros
    when the factor is 0 (batch_norm_layer.cpp, use_global_stats).

    >>> m, v = batch_norm_statistics(torch.tensor([2.0]), torch.tensor([4.0]),
    ...                              torch.tensor([2.0]))
    >>> m.item(), v.item()
    (1.0, 2.0)
    """
    scale = torch.where(factor == 0, torch.zeros_like(factor), 1 / factor)
    return mean_sum * scale, var_sum * scale


def unbiased_factor(m):
    """Caffe's bias correction of the variance it stores, ``m / (m - 1)`` (1 if m is 1).

    >>> unbiased_factor(4), unbiased_factor(1)
    (1.3333333333333333, 1.0)
    """
    return m / (m - 1) if m > 1 else 1.0


@register
class BatchNorm(Layer):
    """Caffe's BatchNorm: ``(x - mean) / sqrt(var + eps)`` per channel (axis 1), no
    affine part (a Scale layer with bias_term follows it in Caffe nets).

    Blobs, each filled with 0: the running mean sum and variance sum (channels,),
    and the scale factor (1,). Caffe never learns them: a missing ParamSpec gets
    ``lr_mult: 0`` added to the layer parameter, and a nonzero one is an error.

    ``use_global_stats`` (default: phase is TEST) normalises with the stored
    statistics (:func:`batch_norm_statistics`); the gradient is then
    ``dy / sqrt(var + eps)``. Otherwise the batch mean and biased variance over
    every axis but 1 are used, the gradient is that of the whole expression, and the
    forward updates the blobs in place: ``factor = maf * factor + 1``,
    ``mean_sum = maf * mean_sum + mean``, ``var_sum = maf * var_sum + m / (m - 1) var``
    with ``m = count / channels`` and ``maf = moving_average_fraction``. The blobs
    never get a gradient, even under force_backward (Caffe's backward writes none).
    """
    type = 'BatchNorm'
    _replaying = False  # inside recompute(): the moving averages were updated already

    def __init__(self, layer_param, phase):
        super().__init__(layer_param, phase)
        p = layer_param.batch_norm_param
        self.use_global_stats = (p.use_global_stats if p.HasField('use_global_stats')
                                 else phase == caffe_pb2.TEST)
        self.maf = p.moving_average_fraction
        self.eps = p.eps
        # batch_norm_layer.cpp LayerSetUp: mask the statistics from the solver.
        for i in range(3):
            if len(layer_param.param) == i:
                layer_param.param.add(lr_mult=0)
            elif layer_param.param[i].lr_mult != 0:
                raise self.error('param %d has lr_mult %g: batch normalization statistics '
                                 'cannot be configured as learned parameters (give lr_mult '
                                 '0 or no param)' % (i, layer_param.param[i].lr_mult))

    def _channels(self, shape):
        return 1 if len(shape) == 1 else shape[1]

    def param_shapes(self, bottom_shapes):
        shape = tuple(bottom_shapes[0])
        if not shape:
            raise self.shape_error('needs a bottom with at least one axis', shape)
        channels = self._channels(shape)
        return [(channels,), (channels,), (1,)]

    def param_fillers(self):
        return [caffe_pb2.FillerParameter(type='constant', value=0.0)] * 3

    def top_shapes(self, bottom_shapes):
        self.param_shapes(bottom_shapes)
        return [tuple(bottom_shapes[0])]

    def forward(self, bottoms, params):
        x = bottoms[0]
        channels = self._channels(tuple(x.shape))
        view = (1, channels) + (1,) * (x.dim() - 2) if x.dim() > 1 else (channels,)
        mean_sum, var_sum, factor = (p.detach() for p in params)
        if self.use_global_stats:
            mean, var = batch_norm_statistics(mean_sum, var_sum, factor.reshape(()))
            mean, var = mean.to(x.dtype).reshape(view), var.to(x.dtype).reshape(view)
            return [(x - mean) / torch.sqrt(var + self.eps)]
        dims = [d for d in range(x.dim()) if d != 1] if x.dim() > 1 else [0]
        mean = x.mean(dim=dims, keepdim=True)
        centred = x - mean
        var = (centred * centred).mean(dim=dims, keepdim=True)
        top = centred / torch.sqrt(var + self.eps)
        if not self._replaying:
            self._update(mean_sum, var_sum, factor, mean.detach().reshape(-1),
                         var.detach().reshape(-1), x.numel() // channels)
        return [top]

    @contextlib.contextmanager
    def recompute(self):
        """The last forward again, for a per-layer backward: the moving averages it
        updated are not updated a second time."""
        self._replaying = True
        try:
            yield
        finally:
            self._replaying = False

    def _update(self, mean_sum, var_sum, factor, mean, var, m):
        """Caffe's moving averages, written into the blobs' storage."""
        with torch.no_grad():
            factor.mul_(self.maf).add_(1)
            mean_sum.mul_(self.maf).add_(mean.to(mean_sum.dtype))
            var_sum.mul_(self.maf).add_(var.to(var_sum.dtype) * unbiased_factor(m))
        for blob in getattr(self, 'blobs', None) or ():
            blob.mutable_data_tensor()  # the host mirror, if any, is stale now


# ------------------------------------------------------------------------------ MVN

class _MVNFunction(torch.autograd.Function):
    """mvn_layer.cpp with normalize_variance: ``y = (x - mean) / (std + eps)`` and
    Caffe's backward ``(dy - mean(dy) - mean(dy * y) * y) / (std + eps)``, which
    leaves out the eps term of the exact derivative. ``x`` is (groups, dim)."""

    @staticmethod
    def forward(ctx, x, eps):
        centred = x - x.mean(dim=1, keepdim=True)
        std = torch.sqrt((centred * centred).mean(dim=1, keepdim=True))
        denom = std + eps
        y = centred / denom
        ctx.save_for_backward(y, denom)
        return y

    @staticmethod
    def backward(ctx, grad):
        y, denom = ctx.saved_tensors
        dim = y.shape[1]
        total = (grad * y).sum(dim=1, keepdim=True) * y + grad.sum(dim=1, keepdim=True)
        return (grad - total / dim) / denom, None


@register
class MVN(Layer):
    """Mean-variance normalisation (mvn_layer.cpp).

    Over each (num, channel) slice, or each num with ``across_channels``: subtract
    the mean, then with ``normalize_variance`` (default) divide by
    ``sqrt(E[(x - mean)^2]) + eps``: Caffe adds eps to the standard deviation, not
    under the root. Without normalize_variance the gradient is ``dy - mean(dy)``.
    """
    type = 'MVN'

    def __init__(self, layer_param, phase):
        super().__init__(layer_param, phase)
        self.mvn_param = layer_param.mvn_param

    def _groups(self, shape):
        if self.mvn_param.across_channels:
            return shape[0]
        return shape[0] * (shape[1] if len(shape) > 1 else 1)

    def top_shapes(self, bottom_shapes):
        shape = tuple(bottom_shapes[0])
        if not shape or count(shape) == 0:
            raise self.shape_error('needs a non-empty bottom', shape)
        return [shape]

    def forward(self, bottoms, params):
        x = bottoms[0]
        shape = tuple(x.shape)
        flat = x.reshape(self._groups(shape), -1)
        if self.mvn_param.normalize_variance:
            y = _MVNFunction.apply(flat, self.mvn_param.eps)
        else:
            y = flat - flat.mean(dim=1, keepdim=True)
        return [y.reshape(shape)]


# ------------------------------------------------------------------------------ LRN

@register
class LRN(Layer):
    """Caffe's local response normalisation.

    ACROSS_CHANNELS: ``y = x / (k + alpha / n * sum_{window} x^2) ^ beta`` with a
    window of n channels centred on each channel, zero beyond the edges.
    WITHIN_CHANNEL: ``y = x / (1 + alpha * mean_{n x n} x^2) ^ beta``, the mean
    taken as Caffe's AVE pooling with pad (n - 1) / 2 (k is not used). Caffe builds
    it as split, square (Power), AVE Pooling, Power(power -beta, scale alpha,
    shift 1), Eltwise PROD (lrn_layer.cpp); the pooling divides by the window
    clipped to the image plus its pad, which with stride 1 and pad (n - 1) / 2 is
    always n * n.
    """
    type = 'LRN'

    def __init__(self, layer_param, phase):
        super().__init__(layer_param, phase)
        p = layer_param.lrn_param
        self.size, self.alpha, self.beta, self.k = p.local_size, p.alpha, p.beta, p.k
        self.region = p.norm_region
        if self.size % 2 == 0:
            raise self.error('LRN only supports odd local_size, got %d' % self.size)

    def top_shapes(self, bottom_shapes):
        shape = tuple(bottom_shapes[0])
        if len(shape) != 4:
            raise self.shape_error('needs a 4-axis bottom (num, channels, height, width)', shape)
        return [shape]

    def forward(self, bottoms, params):
        x = bottoms[0]
        half = (self.size - 1) // 2
        if self.region == _LRN.WITHIN_CHANNEL:
            kernel, stride, pad = (self.size,) * 2, (1, 1), (half, half)
            out = tuple(x.shape[-2:])
            mean = _ave_pool(x * x, kernel, stride, pad, out)
            return [x * (1 + self.alpha * mean).pow(-self.beta)]
        squares = F.pad((x * x).unsqueeze(1), (0, 0, 0, 0, half, half))
        window_sum = F.avg_pool3d(squares, (self.size, 1, 1), stride=1,
                                  divisor_override=1).squeeze(1)
        scale = self.k + (self.alpha / self.size) * window_sum
        return [x * scale.pow(-self.beta)]
