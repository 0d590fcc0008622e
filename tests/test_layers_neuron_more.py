"""ELU, PReLU, AbsVal, BNLL, Exp, Log, Threshold, Clip, Swish: values against
hand-computed arrays, Caffe's gradients at their edge cases, float64 finite
differences, and in-place use in a net (with Caffe's in-place quirks)."""
import math

import numpy as np
import pytest
import torch
from google.protobuf import text_format

import torchcaffe as caffe
from torchcaffe import caffe_pb2
from torchcaffe.errors import CaffeError
from test_layers_neuron import make_layer  # noqa: E402  (one LayerParameter-from-text helper)
from torchcaffe.layer_types.neuron import ThresholdBackwardError, exp_constants


def gradcheck(layer, x, params=()):
    n = len(params)
    return torch.autograd.gradcheck(
        lambda t, *ps: layer.forward([t], list(ps))[0], (x,) + tuple(params)) if n else \
        torch.autograd.gradcheck(lambda t: layer.forward([t], [])[0], (x,))


def grad_of(layer, values, params=()):
    x = torch.tensor(values, dtype=torch.float64, requires_grad=True)
    (y,) = layer.forward([x], list(params))
    y.backward(torch.ones_like(y))
    return y.detach(), x.grad


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def away_from_kinks(x, kinks, margin=1e-3):
    """Move values within ``margin`` of a kink off it, so finite differences are valid."""
    for k in kinks:
        near = (x - k).abs() < margin
        x = torch.where(near, x + 2 * margin, x)
    return x


# ---- ELU ---------------------------------------------------------------------------

def test_elu_values_and_gradient_alpha_at_zero():
    layer = make_layer('type: "ELU" elu_param { alpha: 0.5 }')
    y, g = grad_of(layer, [-2.0, 0.0, 3.0])
    assert y.tolist() == pytest.approx([0.5 * (math.exp(-2) - 1), 0.0, 3.0])
    # elu_layer.cpp: dx = dy * (x > 0 ? 1 : alpha + y); at 0 that is alpha, not 1.
    assert g.tolist() == pytest.approx([0.5 * math.exp(-2), 0.5, 1.0])


def test_elu_large_input_has_finite_gradient_and_default_alpha_one():
    layer = make_layer('type: "ELU"')
    y, g = grad_of(layer, [1000.0, -1000.0])
    assert y.tolist() == [1000.0, -1.0]
    assert g.tolist() == [1.0, 0.0]


def test_elu_gradient_matches_finite_differences():
    layer = make_layer('type: "ELU" elu_param { alpha: 0.7 }')
    assert gradcheck(layer, away_from_kinks(rand(2, 3, 4), [0]).requires_grad_())


# ---- PReLU -------------------------------------------------------------------------

def test_prelu_per_channel_slopes_values_and_gradients():
    layer = make_layer('type: "PReLU"')
    assert layer.param_shapes([(2, 3, 2)]) == [(3,)]
    slopes = torch.zeros(3)
    layer.fill_params([slopes], [(2, 3, 2)])
    assert slopes.tolist() == [0.25, 0.25, 0.25]          # the default filler
    a = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64, requires_grad=True)
    x = torch.tensor([[[1.0, -2.0], [0.0, -3.0], [-1.0, 4.0]]], dtype=torch.float64,
                     requires_grad=True)
    (y,) = layer.forward([x], [a])
    assert y.tolist() == [[[1.0, -1.0], [0.0, 3.0], [-2.0, 4.0]]]
    y.backward(torch.ones_like(y))
    # Bottom: 1 where x > 0, else the slope (x == 0 included).
    assert x.grad.tolist() == [[[1.0, 0.5], [-1.0, -1.0], [2.0, 1.0]]]
    # Slope: sum of x over x <= 0 in its channel.
    assert a.grad.tolist() == [-2.0, -3.0, -1.0]


def test_prelu_channel_shared_has_a_zero_axis_blob():
    layer = make_layer('type: "PReLU" prelu_param { channel_shared: true '
                       'filler { type: "constant" value: 0.1 } }')
    assert layer.param_shapes([(2, 3, 4, 4)]) == [()]
    a = torch.zeros(())
    layer.fill_params([a], [(2, 3, 4, 4)])
    assert a.item() == pytest.approx(0.1)
    x = away_from_kinks(rand(2, 3, 2, 2), [0]).requires_grad_()
    a = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    (y,) = layer.forward([x], [a])
    expected = np.where(x.detach().numpy() > 0, x.detach().numpy(), 0.3 * x.detach().numpy())
    np.testing.assert_allclose(y.detach().numpy(), expected, rtol=1e-15)
    assert gradcheck(layer, x, (a,))


def test_prelu_gradients_match_finite_differences():
    layer = make_layer('type: "PReLU"')
    x = away_from_kinks(rand(2, 3, 2, 2), [0]).requires_grad_()
    a = rand(3, seed=1).requires_grad_()
    assert gradcheck(layer, x, (a,))


def test_prelu_channel_shared_blob_saves_and_loads(tmp_path):
    text = (INPLACE_NET % ('PReLU', 'y', 'prelu_param { channel_shared: true }'))
    net = _net(text)
    assert net.params['n'][0].data.shape == ()
    net.blobs['x'].data[...] = X
    np.testing.assert_allclose(net.forward()['y'], np.where(X > 0, X, 0.25 * X), rtol=1e-7)
    net.backward(y=np.ones(X.shape))
    assert net.params['n'][0].diff == pytest.approx(X[X <= 0].sum())
    net.params['n'][0].data[...] = 0.5
    net.save(str(tmp_path / 'p.caffemodel'))
    loaded = _net(text, caffe.TEST)
    loaded.copy_from(str(tmp_path / 'p.caffemodel'))
    assert float(loaded.params['n'][0].data) == 0.5


def test_prelu_needs_two_axes():
    with pytest.raises(CaffeError, match='at least 2 axes'):
        make_layer('name: "pr" type: "PReLU"').top_shapes([(5,)])


# ---- AbsVal ------------------------------------------------------------------------

def test_absval_gradient_is_sign_with_zero_at_zero():
    y, g = grad_of(make_layer('type: "AbsVal"'), [-2.0, 0.0, 3.0])
    assert y.tolist() == [2.0, 0.0, 3.0]
    assert g.tolist() == [-1.0, 0.0, 1.0]


def test_absval_refuses_in_place():
    with pytest.raises(CaffeError, match="'abs'.*in-place"):
        make_layer('name: "abs" type: "AbsVal" bottom: "x" top: "x"')


# ---- BNLL --------------------------------------------------------------------------

def test_bnll_values_and_caffe_capped_gradient():
    layer = make_layer('type: "BNLL"')
    y, g = grad_of(layer, [-3.0, 0.0, 2.0, 60.0])
    expected = [math.log(1 + math.exp(-3)), math.log(2), 2 + math.log(1 + math.exp(-2)), 60.0]
    assert y.tolist() == pytest.approx(expected, rel=1e-15)
    e = math.exp(50)   # bnll_layer.cpp caps the exponent at 50
    assert g.tolist() == pytest.approx([1 / (1 + math.e ** 3), 0.5, 1 / (1 + math.e ** -2),
                                        e / (e + 1)], rel=1e-15)


def test_bnll_gradient_matches_finite_differences():
    assert gradcheck(make_layer('type: "BNLL"'), (3 * rand(3, 4)).requires_grad_())


# ---- Exp and Log -------------------------------------------------------------------

@pytest.mark.parametrize('base, scale, shift', [(-1, 1, 0), (2, 0.5, 1), (-1, -2, 0.25),
                                                (10, 1, -1)])
def test_exp_is_base_to_the_shifted_scaled_input(base, scale, shift):
    layer = make_layer('type: "Exp" exp_param { base: %g scale: %g shift: %g }'
                       % (base, scale, shift))
    x = rand(2, 5)
    (y,) = layer.forward([x], [])
    b = math.e if base == -1 else base
    np.testing.assert_allclose(y.numpy(), b ** (shift + scale * x.numpy()), rtol=1e-13)
    assert gradcheck(layer, x.requires_grad_())


def test_exp_constants_as_exp_layer_computes_them():
    inner, outer = exp_constants(2.0, 3.0, 0.5)
    assert inner == pytest.approx(math.log(2) * 3) and outer == pytest.approx(math.sqrt(2))
    assert exp_constants(-1, 1, 2) == (1.0, math.exp(2))


@pytest.mark.parametrize('base, scale, shift', [(-1, 1, 0), (2, 0.5, 1), (10, 3, 4)])
def test_log_is_log_base_of_the_shifted_scaled_input(base, scale, shift):
    layer = make_layer('type: "Log" log_param { base: %g scale: %g shift: %g }'
                       % (base, scale, shift))
    x = rand(2, 5).abs() + 0.5
    (y,) = layer.forward([x], [])
    b = math.e if base == -1 else base
    np.testing.assert_allclose(y.numpy(), np.log(shift + scale * x.numpy()) / math.log(b),
                               rtol=1e-13)
    assert gradcheck(layer, x.requires_grad_())


@pytest.mark.parametrize('kind', ['Exp', 'Log'])
def test_exp_and_log_reject_a_non_positive_base(kind):
    with pytest.raises(CaffeError, match="'e1'.*base"):
        make_layer('name: "e1" type: "%s" %s_param { base: 0 }' % (kind, kind.lower()))


# ---- Threshold ---------------------------------------------------------------------

def test_threshold_is_one_strictly_above():
    layer = make_layer('type: "Threshold" threshold_param { threshold: 0.5 }')
    (y,) = layer.forward([torch.tensor([0.2, 0.5, 0.7])], [])
    assert y.tolist() == [0.0, 0.0, 1.0]


def test_threshold_backward_raises_naming_the_layer():
    layer = make_layer('name: "thr" type: "Threshold"')
    x = torch.tensor([-1.0, 1.0], requires_grad=True)
    (y,) = layer.forward([x], [])
    with pytest.raises(ThresholdBackwardError, match="'thr'.*propagate_down"):
        y.sum().backward()
    assert isinstance(ThresholdBackwardError('m'), CaffeError)


THRESHOLD_NET = '''
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "ip"
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" } } }
layer { name: "thr" type: "Threshold" bottom: "ip" top: "t" loss_weight: 1 %s }
'''


def _net(text, phase=caffe.TRAIN):
    param = caffe_pb2.NetParameter()
    text_format.Merge(text, param)
    return caffe.Net(param, phase)


def test_threshold_in_a_net_raises_when_a_gradient_must_cross_it():
    net = _net(THRESHOLD_NET % '')
    net.blobs['x'].data[...] = np.arange(6).reshape(2, 3)
    net.forward()
    with pytest.raises(ThresholdBackwardError, match="'thr'"):
        net.backward()
    cut = _net(THRESHOLD_NET % 'propagate_down: false')
    cut.blobs['x'].data[...] = np.arange(6).reshape(2, 3)
    cut.forward()
    cut.backward()
    assert not cut.params['ip'][0].diff.any()


# ---- Clip --------------------------------------------------------------------------

def test_clip_values_and_gradient_inclusive_at_the_bounds():
    layer = make_layer('type: "Clip" clip_param { min: -1 max: 2 }')
    y, g = grad_of(layer, [-3.0, -1.0, 0.5, 2.0, 5.0])
    assert y.tolist() == [-1.0, -1.0, 0.5, 2.0, 2.0]
    assert g.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]   # clip_layer.cpp: min <= x <= max


def test_clip_gradient_matches_finite_differences():
    layer = make_layer('type: "Clip" clip_param { min: -0.5 max: 0.75 }')
    assert gradcheck(layer, away_from_kinks(rand(3, 4), [-0.5, 0.75]).requires_grad_())


def test_clip_needs_min_and_max():
    with pytest.raises(CaffeError, match="'c'.*min and max"):
        make_layer('name: "c" type: "Clip" clip_param { min: 0 }')


# ---- Swish -------------------------------------------------------------------------

@pytest.mark.parametrize('beta', [1.0, 2.5])
def test_swish_values_and_gradient(beta):
    layer = make_layer('type: "Swish" swish_param { beta: %g }' % beta)
    x = rand(3, 4)
    (y,) = layer.forward([x], [])
    a = x.numpy()
    np.testing.assert_allclose(y.numpy(), a / (1 + np.exp(-beta * a)), rtol=1e-14)
    xg = x.clone().requires_grad_()
    (y,) = layer.forward([xg], [])
    y.backward(torch.ones_like(y))
    s, out = 1 / (1 + np.exp(-beta * a)), y.detach().numpy()
    # swish_layer.cpp: dy * (beta * y + s * (1 - beta * y))
    np.testing.assert_allclose(xg.grad.numpy(), beta * out + s * (1 - beta * out), rtol=1e-12)
    assert gradcheck(layer, x.requires_grad_())


def test_new_neurons_keep_the_shape():
    for kind in ['ELU', 'AbsVal', 'BNLL', 'Exp', 'Log', 'Threshold', 'Swish']:
        assert make_layer('type: "%s"' % kind).top_shapes([(2, 3, 4)]) == [(2, 3, 4)]
    clip = make_layer('type: "Clip" clip_param { min: 0 max: 1 }')
    assert clip.top_shapes([(5,)]) == [(5,)]


# ---- in place in a net -------------------------------------------------------------

INPLACE_NET = '''
force_backward: true
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 2 } } }
layer { name: "copy" type: "Power" bottom: "x" top: "y" }
layer { name: "n" type: "%s" bottom: "y" top: "%s" %s }
'''

X = np.array([[[-2.0, -0.5], [0.0, 0.25], [1.5, 3.0]],
              [[-1.0, 0.5], [2.0, -3.0], [0.75, -0.25]]])


def _run_neuron(kind, params, in_place):
    net = _net(INPLACE_NET % (kind, 'y' if in_place else 'z', params))
    net.blobs['x'].data[...] = X
    net.forward()
    top = 'y' if in_place else 'z'
    diff = np.linspace(-1, 1, X.size).reshape(X.shape)
    net.backward(**{top: diff})
    return net.blobs[top].data.copy(), net.blobs['x'].diff.copy(), net


@pytest.mark.parametrize('kind, params', [
    ('ELU', 'elu_param { alpha: 0.5 }'), ('PReLU', ''), ('Exp', 'exp_param { base: 2 }'),
    ('Swish', ''), ('Threshold', ''), ('BNLL', '')])
def test_neurons_in_place_give_the_out_of_place_results(kind, params):
    if kind == 'Threshold':   # forward only: Caffe has no backward for it
        net = _net(INPLACE_NET % (kind, 'y', params))
        net.blobs['x'].data[...] = X
        np.testing.assert_array_equal(net.forward()['y'], (X > 0).astype(np.float32))
        return
    y_out, dx_out, _ = _run_neuron(kind, params, in_place=False)
    y_in, _, net = _run_neuron(kind, params, in_place=True)
    np.testing.assert_array_equal(y_in, y_out)
    if kind in ('Threshold', 'BNLL'):
        return
    _, dx_in, _ = _run_neuron(kind, params, in_place=True)
    assert np.abs(dx_out).sum() > 1
    np.testing.assert_allclose(dx_in, dx_out, rtol=1e-6)


def test_prelu_in_place_learns_its_slope():
    _, _, out = _run_neuron('PReLU', '', in_place=False)
    _, _, inp = _run_neuron('PReLU', '', in_place=True)
    assert inp.params['n'][0].diff.any()
    np.testing.assert_allclose(inp.params['n'][0].diff, out.params['n'][0].diff, rtol=1e-6)


def test_clip_in_place_passes_the_whole_gradient_as_caffe_does():
    # In place, Caffe's backward tests the clipped top, always inside [min, max].
    params = 'clip_param { min: -1 max: 1 }'
    _, dx_out, _ = _run_neuron('Clip', params, in_place=False)
    _, dx_in, _ = _run_neuron('Clip', params, in_place=True)
    diff = np.linspace(-1, 1, X.size).reshape(X.shape).astype(np.float32)
    np.testing.assert_array_equal(dx_out, diff * ((X >= -1) & (X <= 1)))
    np.testing.assert_array_equal(dx_in, diff)


def test_bnll_and_log_in_place_read_the_overwritten_blobs_as_caffe_does():
    diff = np.linspace(-1, 1, X.size).reshape(X.shape)
    y, dx, _ = _run_neuron('BNLL', '', in_place=True)
    e = np.exp(np.minimum(y.astype(np.float64), 50))
    np.testing.assert_allclose(dx, diff * e / (e + 1), rtol=1e-5)
    params = 'log_param { scale: 2 shift: 7 }'
    y, dx, _ = _run_neuron('Log', params, in_place=True)
    # log_layer.cpp in place: the top diff is overwritten by g before it multiplies g.
    g = 2 / (2 * y.astype(np.float64) + 7)
    np.testing.assert_allclose(dx, g * g, rtol=1e-5)
    _, dx_out, _ = _run_neuron('Log', params, in_place=False)
    np.testing.assert_allclose(dx_out, diff * 2 / (2 * X + 7), rtol=1e-5)
