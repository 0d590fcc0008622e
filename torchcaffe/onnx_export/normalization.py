"""Converters of the normalisation layers (torchcaffe/layer_types/normalization.py):
BatchNorm, MVN, LRN."""
import numpy as np
import torch

from ..layer_types.normalization import batch_norm_statistics
from ..proto import caffe_pb2
from .core import converts

_LRN = caffe_pb2.LRNParameter


def batch_norm_constants(mean_sum, var_sum, factor, eps):
    """(mean, sqrt(var + eps)) in float32, as the engine computes them from Caffe's
    three blobs: :func:`~torchcaffe.layer_types.normalization.batch_norm_statistics`
    (the running sums times ``1 / factor``, 0 when the moving-average factor is 0,
    batch_norm_layer.cpp), then ``eps`` added in float32.

    >>> m, d = batch_norm_constants(np.float32([4]), np.float32([8]), np.float32([2]), 0)
    >>> float(m[0]), float(d[0])
    (2.0, 2.0)
    """
    as_tensor = lambda a: torch.from_numpy(np.asarray(a, np.float32))  # noqa: E731
    mean, var = (t.numpy() for t in batch_norm_statistics(
        as_tensor(mean_sum), as_tensor(var_sum), as_tensor(factor).reshape(())))
    return mean, np.sqrt(var + np.float32(eps))


@converts('BatchNorm')
def _batch_norm(b, layer, bottoms, tops, params, shapes):
    shape = tuple(shapes[0])
    x, name = bottoms[0], layer.name
    channels = 1 if len(shape) == 1 else shape[1]
    view = (1, channels) + (1,) * (len(shape) - 2) if len(shape) > 1 else (channels,)
    if layer.use_global_stats:
        # The stored statistics, divided by the scale factor at export time; the graph
        # is the engine's (x - mean) / sqrt(var + eps) with the same float32 constants.
        mean, denom = batch_norm_constants(params[0].array, params[1].array,
                                           params[2].array, layer.eps)
        centred = b.op('Sub', [x, b.array(mean.reshape(view), name + '/mean')],
                       name + '/centred')
        b.op('Div', [centred, b.array(denom.reshape(view), name + '/std')], name,
             top=tops[0])
        return
    # use_global_stats: false at TEST normalises with the batch's own statistics: the
    # mean and biased variance over every axis but the channels.
    axes = [d for d in range(len(shape)) if d != 1] if len(shape) > 1 else [0]
    mean = b.reduce('ReduceMean', x, axes, name + '/batch_mean')
    centred = b.op('Sub', [x, mean], name + '/centred')
    var = b.reduce('ReduceMean', b.op('Mul', [centred, centred], name + '/squares'), axes,
                   name + '/batch_var')
    denom = b.op('Sqrt', [b.op('Add', [var, b.fconst(layer.eps)], name + '/var_eps')],
                 name + '/std')
    b.op('Div', [centred, denom], name, top=tops[0])


@converts('MVN')
def _mvn(b, layer, bottoms, tops, params, shapes):
    """mvn_layer.cpp: per (num, channel) slice, or per num with across_channels,
    ``x - mean``, divided by ``sqrt(mean((x - mean)^2)) + eps`` (eps added to the
    standard deviation) with normalize_variance."""
    shape = tuple(shapes[0])
    x, name, p = bottoms[0], layer.name, layer.mvn_param
    if p.across_channels or len(shape) == 1:
        groups = b.op('Concat', [b.dims(x, 0, 1, name + '/num'), b.const([-1])],
                      name + '/groups', axis=0)
    else:
        groups = b.op('Concat', [b.dims(x, 0, 2, name + '/num'), b.const([-1])],
                      name + '/groups', axis=0)
    flat = b.op('Reshape', [x, groups], name + '/flat')
    last = 1 if p.across_channels or len(shape) == 1 else 2
    mean = b.reduce('ReduceMean', flat, [last], name + '/mean')
    y = b.op('Sub', [flat, mean], name + '/centred')
    if p.normalize_variance:
        var = b.reduce('ReduceMean', b.op('Mul', [y, y], name + '/squares'), [last],
                       name + '/var')
        denom = b.op('Add', [b.op('Sqrt', [var], name + '/std'), b.fconst(p.eps)],
                     name + '/std_eps')
        y = b.op('Div', [y, denom], name + '/normalised')
    b.op('Reshape', [y, b.op('Shape', [x], name + '/shape')], name, top=tops[0])


@converts('LRN')
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
    scaled = b.op('Mul', [mean, b.fconst(layer.alpha)], layer.name + '/scaled')
    base = b.op('Add', [scaled, b.fconst(1.0)], layer.name + '/base')
    scale = b.op('Pow', [base, b.fconst(-layer.beta)], layer.name + '/scale')
    b.op('Mul', [x, scale], layer.name, top=top)
