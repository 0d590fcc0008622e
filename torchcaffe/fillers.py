"""Caffe's weight fillers: ``FillerParameter.type`` -> how a parameter blob starts.

Each filler writes into a torch tensor in place, drawing random numbers from an
optional CPU ``torch.Generator`` so that initialisation is reproducible. The values
follow Caffe's definitions (``include/caffe/filler.hpp``); the random streams are
PyTorch's, so random fills match Caffe in distribution, not bit for bit.
"""
import math

import numpy as np
import torch

from .errors import CaffeError
from .proto import caffe_pb2

__all__ = ['fill', 'known_fillers', 'bilinear_kernel', 'fan_in_out']

_VarianceNorm = caffe_pb2.FillerParameter


def fill(tensor, filler_param, generator=None):
    """Fill ``tensor`` in place as Caffe's filler ``filler_param`` would.

    Parameters
    ----------
    tensor : torch.Tensor
        The parameter blob, in Caffe's layout; any device and float dtype.
    filler_param : caffe_pb2.FillerParameter
        ``type`` is one of :func:`known_fillers`; the default is ``constant`` 0.
    generator : torch.Generator, optional
        CPU generator for the random fillers; the global one if omitted.

    Returns
    -------
    torch.Tensor
        ``tensor`` itself.
    """
    kind = filler_param.type
    if kind not in _FILLERS:
        raise CaffeError('unknown filler type %r; known fillers: %s'
                         % (kind, ', '.join(known_fillers())))
    if kind != 'gaussian' and filler_param.sparse != -1:
        raise CaffeError('filler %r does not support sparse (got sparse: %d)'
                         % (kind, filler_param.sparse))
    shape = tuple(tensor.shape)
    values = _FILLERS[kind](shape, filler_param, generator)
    with torch.no_grad():
        if isinstance(values, torch.Tensor):
            tensor.copy_(values.reshape(shape))
        else:
            tensor.fill_(values)
    return tensor


def known_fillers():
    """Names of the filler types :func:`fill` understands, sorted."""
    return sorted(_FILLERS)


def fan_in_out(shape):
    """Caffe's fans of a blob: ``count / num`` and ``count / channels``.

    ``num`` and ``channels`` are Caffe's legacy accessors: axes 0 and 1, or 1 when
    the blob has fewer axes. So an InnerProduct weight (out, in) has fan_in = in and
    fan_out = out, and a convolution weight (out, in, kh, kw) has fan_in = in kh kw.

    >>> fan_in_out((64, 3, 3, 3))
    (27, 576)
    >>> fan_in_out((4096, 25088))
    (25088, 4096)
    """
    count = _count(shape)
    num = shape[0] if len(shape) > 0 else 1
    channels = shape[1] if len(shape) > 1 else 1
    return count // num, count // channels


def bilinear_kernel(size):
    """The (size, size) interpolation kernel of Caffe's ``bilinear`` filler.

    ``f = ceil(size / 2)``, ``c = (2 f - 1 - f % 2) / (2 f)``, and the value at
    (y, x) is ``(1 - |x / f - c|) (1 - |y / f - c|)``, evaluated in single precision
    as Caffe evaluates it.

    >>> bilinear_kernel(4)[0].tolist()
    [0.0625, 0.1875, 0.1875, 0.0625]
    """
    f = int(math.ceil(size / 2.0))
    c = np.float32((2 * f - 1 - f % 2) / (2.0 * f))
    coords = np.arange(size, dtype=np.float32)
    profile = np.float32(1) - np.abs(coords / np.float32(f) - c)
    return np.outer(profile, profile).astype(np.float32)


def _count(shape):
    return int(np.prod(shape, dtype=np.int64)) if len(shape) else 1


def _uniform(shape, low, high, generator):
    values = torch.rand(shape, generator=generator, dtype=torch.float64)
    return values * (high - low) + low


def _gaussian_values(shape, mean, std, generator):
    return torch.randn(shape, generator=generator, dtype=torch.float64) * std + mean


def _variance_n(shape, filler_param):
    fan_in, fan_out = fan_in_out(shape)
    if filler_param.variance_norm == _VarianceNorm.AVERAGE:
        return (fan_in + fan_out) / 2.0
    if filler_param.variance_norm == _VarianceNorm.FAN_OUT:
        return float(fan_out)
    return float(fan_in)


def _constant(shape, p, generator):
    return float(p.value)


def _uniform_filler(shape, p, generator):
    return _uniform(shape, p.min, p.max, generator)


def _gaussian(shape, p, generator):
    values = _gaussian_values(shape, p.mean, p.std, generator)
    if p.sparse >= 0:
        # Caffe keeps each weight with probability sparse / num_outputs, where
        # num_outputs is the blob's first axis.
        if len(shape) < 1:
            raise CaffeError('sparse gaussian filler needs a blob with at least one axis')
        keep = torch.full(shape, p.sparse / float(shape[0]), dtype=torch.float64)
        values = values * torch.bernoulli(keep.clamp(0, 1), generator=generator)
    return values


def _positive_unitball(shape, p, generator):
    values = _uniform(shape, 0.0, 1.0, generator)
    num = shape[0] if len(shape) > 0 else 1
    rows = values.reshape(num, -1)
    return rows / rows.sum(dim=1, keepdim=True)


def _xavier(shape, p, generator):
    scale = math.sqrt(3.0 / _variance_n(shape, p))
    return _uniform(shape, -scale, scale, generator)


def _msra(shape, p, generator):
    std = math.sqrt(2.0 / _variance_n(shape, p))
    return _gaussian_values(shape, 0.0, std, generator)


def _bilinear(shape, p, generator):
    if len(shape) != 4:
        raise CaffeError('bilinear filler needs a 4-axis blob, got shape %s' % (shape,))
    if shape[2] != shape[3]:
        raise CaffeError('bilinear filler needs a square kernel, got shape %s' % (shape,))
    # The same kernel in every (n, c) slice, as Caffe's index arithmetic gives.
    kernel = torch.from_numpy(bilinear_kernel(shape[3]))
    return kernel.expand(shape).clone()


_FILLERS = {
    'constant': _constant,
    'uniform': _uniform_filler,
    'gaussian': _gaussian,
    'positive_unitball': _positive_unitball,
    'xavier': _xavier,
    'msra': _msra,
    'bilinear': _bilinear,
}
