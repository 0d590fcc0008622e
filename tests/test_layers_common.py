"""InnerProduct, Eltwise, Scale, Concat, Slice, Flatten, Reshape, Softmax, ArgMax,
Silence, Split, Input, and the registry."""
import numpy as np
import pytest
import torch
from google.protobuf import text_format

from torchcaffe import caffe_pb2
from torchcaffe.errors import CaffeError, ShapeError, UnknownLayerError
from torchcaffe.layer_types import create_layer, known_types, Layer


def make_layer(text, phase=caffe_pb2.TEST, tops=1):
    param = caffe_pb2.LayerParameter()
    text_format.Merge(text, param)
    param.name = param.name or 'lyr'
    if not param.top:
        param.top.extend('t%d' % i for i in range(tops))
    return create_layer(param, phase)


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ---- registry ----------------------------------------------------------------------

def test_unknown_type_names_the_layer_and_lists_known_types():
    param = caffe_pb2.LayerParameter(name='mystery', type='Warp')
    with pytest.raises(UnknownLayerError) as info:
        create_layer(param, caffe_pb2.TRAIN)
    message = str(info.value)
    assert "'mystery'" in message and "'Warp'" in message
    for kind in ['Convolution', 'Deconvolution', 'Pooling', 'Crop', 'SoftmaxWithLoss']:
        assert kind in message
    assert isinstance(info.value, CaffeError)


def test_known_types_cover_the_fcn_layers():
    needed = {'Convolution', 'Deconvolution', 'Pooling', 'ReLU', 'Dropout', 'Crop', 'Eltwise',
              'Scale', 'SoftmaxWithLoss', 'Accuracy', 'LRN', 'Input', 'Split', 'Silence',
              'InnerProduct', 'Softmax', 'Concat', 'Slice', 'Flatten', 'Reshape', 'ArgMax'}
    assert needed <= set(known_types())
    assert known_types() == sorted(known_types())


def test_loss_weights_default_to_one_for_loss_layers_only():
    assert make_layer('type: "SoftmaxWithLoss"', tops=2).loss_weights() == [1.0, 0.0]
    assert make_layer('type: "Accuracy"').loss_weights() == [0.0]
    assert make_layer('type: "ReLU" loss_weight: 2').loss_weights() == [2.0]


def test_blob_count_checks_name_the_layer():
    crop = make_layer('name: "crop1" type: "Crop"')
    crop.check_blob_counts(2, 1)
    with pytest.raises(CaffeError, match="crop1.*2 bottom"):
        crop.check_blob_counts(1, 1)
    with pytest.raises(CaffeError, match="at least 2 bottom"):
        make_layer('type: "Eltwise"').check_blob_counts(1, 1)


def test_layer_without_params_has_none():
    relu = make_layer('type: "ReLU"')
    assert isinstance(relu, Layer)
    assert relu.param_shapes([(1, 2)]) == []
    relu.fill_params([], [(1, 2)])


# ---- InnerProduct --------------------------------------------------------------------

def test_inner_product_flattens_from_axis():
    ip = make_layer('type: "InnerProduct" inner_product_param { num_output: 3 }')
    x = rand(2, 2, 2, 2)
    assert ip.param_shapes([(2, 2, 2, 2)]) == [(3, 8), (3,)]
    assert ip.top_shapes([(2, 2, 2, 2)]) == [(2, 3)]
    w, b = rand(3, 8, seed=1), rand(3, seed=2)
    (y,) = ip.forward([x], [w, b])
    expected = x.numpy().reshape(2, 8) @ w.numpy().T + b.numpy()
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-12)


def test_inner_product_axis_and_transpose():
    ip = make_layer('type: "InnerProduct" inner_product_param '
                    '{ num_output: 4 axis: 2 transpose: true bias_term: false }')
    x = rand(2, 3, 5)
    assert ip.param_shapes([(2, 3, 5)]) == [(5, 4)]
    assert ip.top_shapes([(2, 3, 5)]) == [(2, 3, 4)]
    w = rand(5, 4, seed=1)
    (y,) = ip.forward([x], [w])
    np.testing.assert_allclose(y.numpy(), x.numpy() @ w.numpy(), rtol=1e-12)
    x.requires_grad_()
    w.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: ip.forward([a], [b])[0], (x, w))


def test_inner_product_fillers():
    ip = make_layer('type: "InnerProduct" inner_product_param { num_output: 2 '
                    'weight_filler { type: "constant" value: 3 } bias_filler { type: "constant" value: -1 } }')
    w, b = torch.zeros(2, 4), torch.zeros(2)
    ip.fill_params([w, b], [(1, 4)])
    assert torch.all(w == 3) and torch.all(b == -1)


# ---- Eltwise -----------------------------------------------------------------------

def test_eltwise_sum_with_coefficients():
    layer = make_layer('type: "Eltwise" bottom: "a" bottom: "b" '
                       'eltwise_param { operation: SUM coeff: 1 coeff: -0.5 }')
    a, b = rand(2, 3), rand(2, 3, seed=1)
    (y,) = layer.forward([a, b], [])
    assert torch.allclose(y, a - 0.5 * b)
    a.requires_grad_()
    b.requires_grad_()
    assert torch.autograd.gradcheck(lambda p, q: layer.forward([p, q], [])[0], (a, b))


def test_eltwise_prod_and_its_gradient():
    layer = make_layer('type: "Eltwise" eltwise_param { operation: PROD }')
    a, b, c = (rand(4, seed=i).requires_grad_() for i in range(3))
    (y,) = layer.forward([a, b, c], [])
    assert torch.allclose(y, a * b * c)
    assert torch.autograd.gradcheck(lambda *xs: layer.forward(list(xs), [])[0], (a, b, c))


def test_eltwise_max_gradient_follows_caffe_tie_rule():
    layer = make_layer('type: "Eltwise" eltwise_param { operation: MAX }')
    a = torch.tensor([1.0, 2.0, 5.0, 3.0], requires_grad=True)
    b = torch.tensor([1.0, 3.0, 4.0, 3.0], requires_grad=True)
    c = torch.tensor([0.0, 3.0, 6.0, 3.0], requires_grad=True)
    (y,) = layer.forward([a, b, c], [])
    assert y.tolist() == [1.0, 3.0, 6.0, 3.0]
    y.backward(torch.tensor([10.0, 20.0, 30.0, 40.0]))
    # Caffe: bottom 0 beats bottom 1 only if strictly greater (a tie goes to bottom 1);
    # later bottoms must be strictly greater than the running max.
    assert a.grad.tolist() == [0.0, 0.0, 0.0, 0.0]
    assert b.grad.tolist() == [10.0, 20.0, 0.0, 40.0]
    assert c.grad.tolist() == [0.0, 0.0, 30.0, 0.0]


def test_eltwise_shapes_must_match():
    layer = make_layer('name: "fuse" type: "Eltwise"')
    with pytest.raises(ShapeError, match=r"fuse.*\(1, 2\).*\(1, 3\)"):
        layer.top_shapes([(1, 2), (1, 3)])


# ---- Scale -------------------------------------------------------------------------

def test_scale_one_factor_per_channel_filled_by_its_filler():
    layer = make_layer('type: "Scale" scale_param { filler { type: "constant" value: 0.01 } }')
    assert layer.param_shapes([(2, 3, 4, 4)]) == [(3,)]
    (s,) = [torch.zeros(3)]
    layer.fill_params([s], [(2, 3, 4, 4)])
    assert torch.allclose(s, torch.full((3,), 0.01))
    x = rand(2, 3, 4, 4)
    factors = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    (y,) = layer.forward([x], [factors])
    assert torch.allclose(y, x * factors.reshape(1, 3, 1, 1))
    x.requires_grad_()
    factors.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, f: layer.forward([a], [f])[0], (x, factors))


def test_scale_default_filler_is_one_and_bias_term_adds_a_blob():
    layer = make_layer('type: "Scale" scale_param { bias_term: true axis: 0 num_axes: 2 }')
    assert layer.param_shapes([(2, 3, 4)]) == [(2, 3), (2, 3)]
    s, b = torch.zeros(2, 3), torch.ones(2, 3)
    layer.fill_params([s, b], [(2, 3, 4)])
    assert torch.all(s == 1) and torch.all(b == 0)
    x = rand(2, 3, 4)
    (y,) = layer.forward([x], [rand(2, 3, seed=1), rand(2, 3, seed=2)])
    assert torch.allclose(y, x * rand(2, 3, seed=1)[..., None] + rand(2, 3, seed=2)[..., None])


def test_scale_by_a_second_bottom():
    layer = make_layer('type: "Scale" bottom: "x" bottom: "s"')
    x, s = rand(2, 3, 4), rand(3, 4, seed=1)
    assert layer.param_shapes([(2, 3, 4), (3, 4)]) == []
    (y,) = layer.forward([x, s], [])
    assert torch.allclose(y, x * s)
    with pytest.raises(ShapeError):
        layer.top_shapes([(2, 3, 4), (4, 3)])


# ---- Concat / Slice / Flatten / Reshape ----------------------------------------------

def test_concat_along_channels_and_mismatch_error():
    layer = make_layer('name: "cat" type: "Concat"')
    a, b = rand(1, 2, 3), rand(1, 4, 3, seed=1)
    assert layer.top_shapes([(1, 2, 3), (1, 4, 3)]) == [(1, 6, 3)]
    assert torch.equal(layer.forward([a, b], [])[0], torch.cat([a, b], 1))
    with pytest.raises(ShapeError, match="cat"):
        layer.top_shapes([(1, 2, 3), (1, 2, 4)])
    legacy = make_layer('type: "Concat" concat_param { concat_dim: 2 }')
    assert legacy.top_shapes([(1, 2, 3), (1, 2, 4)]) == [(1, 2, 7)]


def test_slice_at_points_and_equally():
    layer = make_layer('type: "Slice" slice_param { axis: 1 slice_point: 1 slice_point: 4 }', tops=3)
    x = rand(2, 6)
    assert layer.top_shapes([(2, 6)]) == [(2, 1), (2, 3), (2, 2)]
    parts = layer.forward([x], [])
    assert torch.equal(torch.cat(parts, 1), x)
    equal = make_layer('type: "Slice"', tops=3)
    assert equal.top_shapes([(2, 6)]) == [(2, 2)] * 3
    with pytest.raises(ShapeError, match="equal parts"):
        make_layer('type: "Slice"', tops=4).top_shapes([(2, 6)])


def test_flatten_axes():
    assert make_layer('type: "Flatten"').top_shapes([(2, 3, 4, 5)]) == [(2, 60)]
    layer = make_layer('type: "Flatten" flatten_param { axis: 1 end_axis: 2 }')
    assert layer.top_shapes([(2, 3, 4, 5)]) == [(2, 12, 5)]
    assert tuple(layer.forward([rand(2, 3, 4, 5)], [])[0].shape) == (2, 12, 5)


@pytest.mark.parametrize('param, expected', [
    ('shape { dim: 0 dim: -1 }', (2, 60)),
    ('shape { dim: 0 dim: 3 dim: 2 dim: -1 }', (2, 3, 2, 10)),
    ('axis: 1 shape { dim: 12 dim: 5 }', (2, 12, 5)),
    ('axis: 1 num_axes: 2 shape { dim: -1 }', (2, 12, 5)),
    ('axis: -1 shape { dim: 1 }', (2, 3, 4, 5, 1)),
    ('axis: 0 num_axes: 0 shape { dim: 1 }', (1, 2, 3, 4, 5)),
])
def test_reshape_rules(param, expected):
    layer = make_layer('type: "Reshape" reshape_param { %s }' % param)
    assert layer.top_shapes([(2, 3, 4, 5)]) == [expected]
    assert tuple(layer.forward([rand(2, 3, 4, 5)], [])[0].shape) == expected


def test_reshape_count_mismatch_is_a_shape_error():
    layer = make_layer('name: "rs" type: "Reshape" reshape_param { shape { dim: 7 dim: -1 } }')
    with pytest.raises(ShapeError, match="rs"):
        layer.top_shapes([(2, 3)])


# ---- Softmax / ArgMax ----------------------------------------------------------------

def test_softmax_along_axis_and_gradient():
    layer = make_layer('type: "Softmax" softmax_param { axis: 2 }')
    x = rand(2, 3, 4)
    (y,) = layer.forward([x], [])
    e = np.exp(x.numpy() - x.numpy().max(axis=2, keepdims=True))
    np.testing.assert_allclose(y.numpy(), e / e.sum(axis=2, keepdims=True), rtol=1e-12)
    assert torch.autograd.gradcheck(lambda t: layer.forward([t], [])[0], (x.requires_grad_(),))


def test_argmax_over_each_item():
    layer = make_layer('type: "ArgMax" argmax_param { top_k: 2 out_max_val: true }')
    x = torch.tensor([[[[1.0, 7.0], [3.0, 5.0]]]])       # (1, 1, 2, 2): flattened 1 7 3 5
    assert layer.top_shapes([(1, 1, 2, 2)]) == [(1, 2, 2, 1)]
    (y,) = layer.forward([x], [])
    assert y.reshape(-1).tolist() == [1.0, 3.0, 7.0, 5.0]   # indices then values
    plain = make_layer('type: "ArgMax"')
    assert plain.top_shapes([(4, 10)]) == [(4, 1, 1)]


def test_argmax_along_axis_with_caffe_ties():
    layer = make_layer('type: "ArgMax" argmax_param { axis: 1 top_k: 2 }')
    x = torch.tensor([[[2.0], [5.0], [5.0], [1.0]]])        # (1, 4, 1)
    (y,) = layer.forward([x], [])
    # equal values rank the larger index first, as std::greater on (value, index) pairs
    assert y.reshape(-1).tolist() == [2.0, 1.0]
    values = make_layer('type: "ArgMax" argmax_param { axis: 1 out_max_val: true }')
    assert values.forward([x], [])[0].reshape(-1).tolist() == [5.0]


# ---- Silence / Split / Input --------------------------------------------------------

def test_silence_and_split():
    silence = make_layer('type: "Silence" bottom: "a"', tops=0)
    assert silence.top_shapes([(1, 2)]) == [] and silence.forward([rand(1, 2)], []) == []
    split = make_layer('type: "Split"', tops=3)
    x = rand(2, 2).requires_grad_()
    tops = split.forward([x], [])
    assert split.top_shapes([(2, 2)]) == [(2, 2)] * 3
    assert all(torch.equal(t, x) for t in tops)
    sum(t.sum() * (i + 1) for i, t in enumerate(tops)).backward()
    assert torch.all(x.grad == 6)


def test_input_shapes_one_per_top_or_shared():
    shared = make_layer('type: "Input" input_param { shape { dim: 1 dim: 3 dim: 5 dim: 5 } }', tops=2)
    assert shared.top_shapes([]) == [(1, 3, 5, 5)] * 2
    each = make_layer('type: "Input" top: "data" top: "label" input_param '
                      '{ shape { dim: 1 dim: 3 dim: 4 dim: 4 } shape { dim: 1 dim: 1 dim: 4 dim: 4 } }')
    assert each.top_shapes([]) == [(1, 3, 4, 4), (1, 1, 4, 4)]
    assert [tuple(t.shape) for t in each.forward([], [])] == [(1, 3, 4, 4), (1, 1, 4, 4)]
    bad = make_layer('name: "in" type: "Input" input_param { shape { dim: 1 } shape { dim: 2 } }', tops=3)
    with pytest.raises(CaffeError, match="in"):
        bad.top_shapes([])
