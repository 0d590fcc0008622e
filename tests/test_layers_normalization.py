"""BatchNorm, MVN and LRN: values against hand computations, Caffe's running
statistics over TRAIN iterations and their use at TEST, Caffe's backward formulas,
and float64 finite differences."""
import itertools

import numpy as np
import pytest
import torch
from google.protobuf import text_format

import torchcaffe as caffe
from torchcaffe import caffe_pb2
from torchcaffe.errors import CaffeError
from test_layers_neuron import make_layer  # noqa: E402  (one LayerParameter-from-text helper)


def make_net(text, phase):
    param = caffe_pb2.NetParameter()
    text_format.Merge(text, param)
    return caffe.Net(param, phase)


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def bn_blobs(channels, mean=None, var=None, factor=0.0):
    zeros = np.zeros(channels)
    return [torch.tensor(zeros if mean is None else mean, dtype=torch.float64),
            torch.tensor(zeros if var is None else var, dtype=torch.float64),
            torch.tensor([factor], dtype=torch.float64)]


# ---- BatchNorm ---------------------------------------------------------------------

def test_batch_norm_train_normalises_with_batch_mean_and_biased_variance():
    layer = make_layer('type: "BatchNorm" batch_norm_param { eps: 0.0625 }', caffe_pb2.TRAIN)
    assert layer.param_shapes([(2, 3, 2, 2)]) == [(3,), (3,), (1,)]
    x = rand(2, 3, 2, 2)
    (y,) = layer.forward([x], bn_blobs(3))
    a = x.numpy()
    mean = a.mean(axis=(0, 2, 3), keepdims=True)
    var = ((a - mean) ** 2).mean(axis=(0, 2, 3), keepdims=True)
    np.testing.assert_allclose(y.numpy(), (a - mean) / np.sqrt(var + 0.0625), rtol=1e-12)


def test_batch_norm_running_sums_over_two_train_iterations():
    layer = make_layer('type: "BatchNorm" batch_norm_param { moving_average_fraction: 0.875 }',
                       caffe_pb2.TRAIN)
    blobs = bn_blobs(2)
    x1 = np.array([[[1.0, 3.0]], [[5.0, 7.0]]]).transpose(0, 2, 1)   # (2, 2, 1)
    x2 = np.array([[[0.0, 2.0]], [[2.0, -6.0]]]).transpose(0, 2, 1)
    layer.forward([torch.tensor(x1)], blobs)
    # m = count / channels = 2: the variance is stored with the m / (m - 1) = 2 correction.
    assert blobs[2].tolist() == [1.0]
    assert blobs[0].tolist() == [3.0, 5.0]                   # channel means (1+5)/2, (3+7)/2
    assert blobs[1].tolist() == [8.0, 8.0]                   # biased var 4, times 2
    layer.forward([torch.tensor(x2)], blobs)
    assert blobs[2].tolist() == [0.875 + 1]
    assert blobs[0].tolist() == [0.875 * 3 + 1, 0.875 * 5 - 2]
    assert blobs[1].tolist() == [0.875 * 8 + 2 * 1, 0.875 * 8 + 2 * 16]


def test_batch_norm_global_stats_divide_the_sums_by_the_factor():
    layer = make_layer('type: "BatchNorm" batch_norm_param { eps: 0.25 }')   # TEST
    blobs = bn_blobs(2, mean=[2.0, -4.0], var=[6.0, 1.5], factor=2.0)
    x = rand(3, 2, 2)
    (y,) = layer.forward([x], blobs)
    mean = np.array([1.0, -2.0])[None, :, None]
    var = np.array([3.0, 0.75])[None, :, None]
    np.testing.assert_allclose(y.numpy(), (x.numpy() - mean) / np.sqrt(var + 0.25), rtol=1e-12)
    assert blobs[2].tolist() == [2.0]                        # TEST leaves the blobs alone


def test_batch_norm_zero_factor_means_zero_statistics():
    layer = make_layer('type: "BatchNorm" batch_norm_param { use_global_stats: true eps: 4 }',
                       caffe_pb2.TRAIN)
    x = rand(2, 2, 3)
    (y,) = layer.forward([x], bn_blobs(2, mean=[5.0, 5.0], var=[1.0, 1.0], factor=0.0))
    np.testing.assert_allclose(y.numpy(), x.numpy() / 2, rtol=1e-15)


def test_batch_norm_use_global_stats_overrides_the_phase():
    train = make_layer('type: "BatchNorm" batch_norm_param { use_global_stats: true }',
                       caffe_pb2.TRAIN)
    test = make_layer('type: "BatchNorm" batch_norm_param { use_global_stats: false }')
    assert train.use_global_stats and not test.use_global_stats
    assert make_layer('type: "BatchNorm"').use_global_stats
    assert not make_layer('type: "BatchNorm"', caffe_pb2.TRAIN).use_global_stats


@pytest.mark.parametrize('global_stats', [False, True])
def test_batch_norm_gradient_matches_finite_differences(global_stats):
    layer = make_layer('type: "BatchNorm" batch_norm_param { use_global_stats: %s eps: 0.1 }'
                       % str(global_stats).lower(), caffe_pb2.TRAIN)
    blobs = bn_blobs(3, mean=[0.5, -1.0, 2.0], var=[1.0, 2.0, 0.5], factor=1.5)
    x = rand(2, 3, 2).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: layer.forward([t], blobs)[0], (x,))


def test_batch_norm_global_stats_gradient_is_dy_over_std():
    layer = make_layer('type: "BatchNorm" batch_norm_param { eps: 0 }')
    x = rand(2, 2).requires_grad_()
    (y,) = layer.forward([x], bn_blobs(2, mean=[1.0, 1.0], var=[4.0, 16.0], factor=1.0))
    y.backward(torch.ones_like(y))
    assert x.grad.tolist() == [[0.5, 0.25], [0.5, 0.25]]


def test_batch_norm_train_gradient_is_caffes_formula():
    layer = make_layer('type: "BatchNorm"', caffe_pb2.TRAIN)
    x = rand(4, 2, 3).requires_grad_()
    (y,) = layer.forward([x], bn_blobs(2))
    dy = rand(4, 2, 3, seed=5)
    y.backward(dy)
    a, g, t = x.detach().numpy(), dy.numpy(), y.detach().numpy()
    axes = (0, 2)
    std = np.sqrt(a.var(axis=axes, keepdims=True) + 1e-5)
    # batch_norm_layer.cpp: (dy - mean(dy) - mean(dy * y) * y) / sqrt(var + eps)
    expected = (g - g.mean(axis=axes, keepdims=True)
                - (g * t).mean(axis=axes, keepdims=True) * t) / std
    np.testing.assert_allclose(x.grad.numpy(), expected, rtol=1e-6, atol=1e-9)


BN_NET = '''
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 4 dim: 2 } } }
layer { name: "bn" type: "BatchNorm" bottom: "x" top: "x"
        batch_norm_param { moving_average_fraction: 0.5 eps: 0 } %s }
'''


def test_batch_norm_in_a_net_train_then_test():
    train = make_net(BN_NET % '', caffe.TRAIN)
    assert train.params_lr == [0.0, 0.0, 0.0]          # Caffe adds lr_mult: 0 params
    batches = [np.array([[1, 2], [3, 4], [5, 6], [7, 8]], float),
               np.array([[0, 0], [0, 4], [4, 0], [4, 4]], float)]
    for batch in batches:
        train.blobs['x'].data[...] = batch
        out = train.forward()['x']
        np.testing.assert_allclose(out, (batch - batch.mean(0)) / batch.std(0), rtol=1e-6)
    mean_sum, var_sum, factor = (b.data.copy() for b in train.params['bn'])
    assert factor.tolist() == [1.5]                          # 0.5 * 1 + 1
    np.testing.assert_allclose(mean_sum, 0.5 * np.array([4, 5]) + np.array([2, 2]))
    # m = 4 rows: variances 5 and 4, times 4 / 3
    np.testing.assert_allclose(var_sum, 0.5 * np.array([5, 5]) * 4 / 3 + np.array([4, 4]) * 4 / 3,
                               rtol=1e-6)
    test = make_net(BN_NET % '', caffe.TEST)
    for src, dst in zip(train.params['bn'], test.params['bn'], strict=True):
        dst.data[...] = src.data
    probe = np.array([[1, 1], [2, 2], [3, 3], [4, 4]], float)
    test.blobs['x'].data[...] = probe
    out = test.forward()['x']
    np.testing.assert_allclose(out, (probe - mean_sum / 1.5) / np.sqrt(var_sum / 1.5),
                               rtol=1e-6)
    assert test.params['bn'][2].data.tolist() == [1.5]


def test_batch_norm_statistics_get_no_diff_even_under_force_backward():
    net = make_net('force_backward: true\n' + BN_NET % '', caffe.TEST)
    for b, value in zip(net.params['bn'], ([1.0, 2.0], [1.0, 4.0], [1.0]), strict=True):
        b.data[...] = value
    net.blobs['x'].data[...] = np.arange(8).reshape(4, 2)
    net.forward()
    net.backward(x=np.ones((4, 2)))
    assert all(not b.diff.any() for b in net.params['bn'])
    np.testing.assert_allclose(net.blobs['x'].diff, np.tile([1.0, 0.5], (4, 1)))


def test_batch_norm_rejects_a_learned_statistic():
    with pytest.raises(CaffeError, match="'bn'.*lr_mult"):
        make_net(BN_NET % 'param { lr_mult: 0 } param { lr_mult: 1 }', caffe.TRAIN)
    net = make_net(BN_NET % 'param { lr_mult: 0 decay_mult: 0 }', caffe.TRAIN)
    assert net.params_lr == [0.0, 0.0, 0.0]
    assert net.has_params_lr == [True, True, True]


# ---- MVN ---------------------------------------------------------------------------

def mvn_numpy(a, across, variance, eps):
    axes = tuple(range(1, a.ndim)) if across else tuple(range(2, a.ndim))
    centred = a - a.mean(axis=axes, keepdims=True)
    if not variance:
        return centred
    return centred / (np.sqrt((centred ** 2).mean(axis=axes, keepdims=True)) + eps)


@pytest.mark.parametrize('across, variance', list(itertools.product([False, True], repeat=2)))
def test_mvn_values_and_finite_difference_gradient(across, variance):
    layer = make_layer('type: "MVN" mvn_param { across_channels: %s normalize_variance: %s }'
                       % (str(across).lower(), str(variance).lower()))
    x = rand(2, 3, 2, 3)
    (y,) = layer.forward([x], [])
    np.testing.assert_allclose(y.numpy(), mvn_numpy(x.numpy(), across, variance, 1e-9),
                               rtol=1e-10)
    assert torch.autograd.gradcheck(lambda t: layer.forward([t], [])[0],
                                    (x.requires_grad_(),))


def test_mvn_adds_eps_to_the_standard_deviation():
    layer = make_layer('type: "MVN" mvn_param { eps: 1 }')
    x = torch.tensor([[[1.0, 3.0]]], dtype=torch.float64)       # mean 2, std 1
    (y,) = layer.forward([x], [])
    assert y.tolist() == [[[-0.5, 0.5]]]                          # / (1 + 1), not sqrt(1 + 1)


def test_mvn_backward_is_caffes_formula_without_the_eps_term():
    layer = make_layer('type: "MVN" mvn_param { eps: 0.5 across_channels: true }')
    x = rand(2, 2, 3).requires_grad_()
    (y,) = layer.forward([x], [])
    dy = rand(2, 2, 3, seed=3)
    y.backward(dy)
    a, g, t = x.detach().numpy(), dy.numpy(), y.detach().numpy()
    axes = (1, 2)
    denom = a.std(axis=axes, keepdims=True) + 0.5
    expected = (g - g.mean(axis=axes, keepdims=True)
                - (g * t).mean(axis=axes, keepdims=True) * t) / denom
    np.testing.assert_allclose(x.grad.numpy(), expected, rtol=1e-12)


def test_mvn_without_variance_gradient_subtracts_the_mean_of_dy():
    layer = make_layer('type: "MVN" mvn_param { normalize_variance: false }')
    x = rand(1, 2, 4).requires_grad_()
    (y,) = layer.forward([x], [])
    dy = rand(1, 2, 4, seed=9)
    y.backward(dy)
    g = dy.numpy()
    np.testing.assert_allclose(x.grad.numpy(), g - g.mean(axis=2, keepdims=True), rtol=1e-12)


# ---- LRN ---------------------------------------------------------------------------

def lrn_within_channel_loops(a, size, alpha, beta):
    """Caffe's WITHIN_CHANNEL LRN one value at a time: the AVE pool of the squares over
    the size x size window (pad (size - 1) / 2, divisor size * size), then power."""
    n, c, h, w = a.shape
    half = (size - 1) // 2
    out = np.empty_like(a)
    for i, j, y, x in itertools.product(range(n), range(c), range(h), range(w)):
        total = 0.0
        for yy in range(y - half, y + half + 1):
            for xx in range(x - half, x + half + 1):
                if 0 <= yy < h and 0 <= xx < w:
                    total += a[i, j, yy, xx] ** 2
        out[i, j, y, x] = a[i, j, y, x] * (1 + alpha * total / size ** 2) ** -beta
    return out


@pytest.mark.parametrize('size', [1, 3, 5])
def test_lrn_within_channel_matches_loops(size):
    layer = make_layer('type: "LRN" lrn_param { local_size: %d alpha: 0.75 beta: 0.625 '
                       'k: 7 norm_region: WITHIN_CHANNEL }' % size)
    x = rand(2, 2, 4, 3)
    (y,) = layer.forward([x], [])
    np.testing.assert_allclose(y.numpy(), lrn_within_channel_loops(x.numpy(), size, 0.75, 0.625),
                               rtol=1e-12)
    assert torch.autograd.gradcheck(lambda t: layer.forward([t], [])[0],
                                    (x[:1, :1].clone().requires_grad_(),))


def test_lrn_lives_in_normalization():
    from torchcaffe.layer_types import normalization, vision
    assert type(make_layer('type: "LRN"')) is normalization.LRN
    assert not hasattr(vision, 'LRN')


def test_onnx_export_accepts_batch_norm():
    from torchcaffe.onnx_export import check_supported, supported_types
    param = caffe_pb2.NetParameter()
    text_format.Merge(BN_NET % '', param)
    assert 'BatchNorm' in supported_types()
    check_supported(param.layer)   # raises on a layer type with no export


# ---- Bias --------------------------------------------------------------------------

def test_bias_one_value_per_channel_filled_by_its_filler():
    layer = make_layer('type: "Bias" bias_param { filler { type: "constant" value: 0.5 } }')
    assert layer.param_shapes([(2, 3, 4)]) == [(3,)]
    b = torch.zeros(3)
    layer.fill_params([b], [(2, 3, 4)])
    assert b.tolist() == [0.5, 0.5, 0.5]
    x, bias = rand(2, 3, 4), rand(3, seed=1)
    (y,) = layer.forward([x], [bias])
    np.testing.assert_array_equal(y.numpy(), x.numpy() + bias.numpy()[None, :, None])
    assert torch.autograd.gradcheck(lambda a, c: layer.forward([a], [c])[0],
                                    (x.requires_grad_(), bias.requires_grad_()))


def test_bias_default_filler_is_zero_and_axes_follow_axis_and_num_axes():
    layer = make_layer('type: "Bias" bias_param { axis: 0 num_axes: 2 }')
    assert layer.param_shapes([(2, 3, 4)]) == [(2, 3)]
    b = torch.ones(2, 3)
    layer.fill_params([b], [(2, 3, 4)])
    assert not b.any()
    assert make_layer('type: "Bias" bias_param { axis: -2 num_axes: -1 }').param_shapes(
        [(2, 3, 4)]) == [(3, 4)]
    scalar = make_layer('type: "Bias" bias_param { num_axes: 0 }')
    assert scalar.param_shapes([(2, 3)]) == [()]
    (y,) = scalar.forward([torch.zeros(2, 3)], [torch.tensor(1.5)])
    assert y.tolist() == [[1.5] * 3] * 2


def test_bias_from_a_second_bottom_gets_the_summed_gradient():
    layer = make_layer('type: "Bias" bottom: "x" bottom: "b" bias_param { axis: 1 }')
    assert layer.param_shapes([(2, 3, 4), (3, 4)]) == []
    x, b = rand(2, 3, 4).requires_grad_(), rand(3, 4, seed=2).requires_grad_()
    (y,) = layer.forward([x, b], [])
    np.testing.assert_array_equal(y.detach().numpy(), x.detach().numpy() + b.detach().numpy())
    dy = rand(2, 3, 4, seed=4)
    y.backward(dy)
    np.testing.assert_array_equal(b.grad.numpy(), dy.numpy().sum(axis=0))
    np.testing.assert_array_equal(x.grad.numpy(), dy.numpy())
    with pytest.raises(CaffeError, match="'lyr'.*bias blob does not match"):
        layer.top_shapes([(2, 3, 4), (4, 4)])


def test_bias_runs_in_place_in_a_net_and_learns():
    net = make_net('''
        force_backward: true
        layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
        layer { name: "bias" type: "Bias" bottom: "x" top: "x"
                bias_param { filler { type: "constant" value: 1 } } }''', caffe.TRAIN)
    net.blobs['x'].data[...] = np.arange(6).reshape(2, 3)
    np.testing.assert_array_equal(net.forward()['x'], np.arange(6).reshape(2, 3) + 1)
    net.backward(x=np.ones((2, 3)))
    np.testing.assert_array_equal(net.params['bias'][0].diff, [2, 2, 2])
