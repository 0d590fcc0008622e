"""ReLU, Sigmoid, TanH, Power and Dropout: values, Caffe's gradients, phases."""
import math

import pytest
import torch
from google.protobuf import text_format

from torchcaffe import caffe_pb2
from torchcaffe.errors import CaffeError
from torchcaffe.layer_types import create_layer


def make_layer(text, phase=caffe_pb2.TEST):
    param = caffe_pb2.LayerParameter()
    text_format.Merge(text, param)
    param.name = param.name or 'lyr'
    if not param.top:
        param.top.append('out')
    return create_layer(param, phase)


def gradcheck(layer, x):
    return torch.autograd.gradcheck(lambda t: layer.forward([t], [])[0], (x,))


def test_relu_values_and_gradient_at_zero():
    relu = make_layer('type: "ReLU"')
    x = torch.tensor([-2.0, 0.0, 3.0], dtype=torch.float64, requires_grad=True)
    (y,) = relu.forward([x], [])
    assert y.tolist() == [0.0, 0.0, 3.0]
    y.sum().backward()
    assert x.grad.tolist() == [0.0, 0.0, 1.0]   # Caffe tests x > 0


def test_leaky_relu_gets_negative_slope_at_and_below_zero():
    relu = make_layer('type: "ReLU" relu_param { negative_slope: 0.25 }')
    x = torch.tensor([-2.0, 0.0, 3.0], dtype=torch.float64, requires_grad=True)
    (y,) = relu.forward([x], [])
    assert y.tolist() == [-0.5, 0.0, 3.0]
    y.sum().backward()
    assert x.grad.tolist() == [0.25, 0.25, 1.0]


def test_sigmoid_and_tanh_values_and_gradients():
    x = torch.tensor([-1.0, 0.0, 2.0], dtype=torch.float64, requires_grad=True)
    (s,) = make_layer('type: "Sigmoid"').forward([x], [])
    (t,) = make_layer('type: "TanH"').forward([x], [])
    assert s.tolist() == pytest.approx([1 / (1 + math.e), 0.5, 1 / (1 + math.exp(-2))])
    assert t.tolist() == pytest.approx([math.tanh(-1), 0.0, math.tanh(2)])
    assert gradcheck(make_layer('type: "Sigmoid"'), x)
    assert gradcheck(make_layer('type: "TanH"'), x)


def test_power_is_shift_plus_scale_times_x_to_the_power():
    layer = make_layer('type: "Power" power_param { power: 2 scale: 0.5 shift: 1 }')
    x = torch.tensor([0.0, 2.0, 4.0], dtype=torch.float64, requires_grad=True)
    (y,) = layer.forward([x], [])
    assert y.tolist() == [1.0, 4.0, 9.0]
    assert gradcheck(layer, x)
    identity = make_layer('type: "Power"')
    (z,) = identity.forward([x], [])
    assert torch.equal(z, x) and z is not x


def test_dropout_test_phase_is_identity():
    layer = make_layer('type: "Dropout" dropout_param { dropout_ratio: 0.5 }', caffe_pb2.TEST)
    x = torch.randn(4, 5)
    assert torch.equal(layer.forward([x], [])[0], x)


def test_dropout_train_scales_kept_units_and_routes_gradient_through_mask():
    layer = make_layer('type: "Dropout" dropout_param { dropout_ratio: 0.75 }', caffe_pb2.TRAIN)
    layer.generator = torch.Generator().manual_seed(0)
    x = (torch.rand(20000, dtype=torch.float64) + 1).requires_grad_()
    (y,) = layer.forward([x], [])
    kept = y != 0
    assert torch.allclose(y[kept], x[kept] * 4)                 # 1 / (1 - 0.75)
    assert abs(kept.double().mean().item() - 0.25) < 0.02
    y.backward(torch.ones_like(y))
    assert torch.equal(x.grad, kept.double() * 4)


def test_dropout_masks_are_reproducible_with_a_generator():
    layer = make_layer('type: "Dropout"', caffe_pb2.TRAIN)
    x = torch.ones(100)
    layer.generator = torch.Generator().manual_seed(7)
    first = layer.forward([x], [])[0]
    layer.generator = torch.Generator().manual_seed(7)
    assert torch.equal(layer.forward([x], [])[0], first)
    assert not torch.equal(layer.forward([x], [])[0], first)


def test_dropout_rejects_ratio_one():
    with pytest.raises(CaffeError, match="drop6"):
        make_layer('name: "drop6" type: "Dropout" dropout_param { dropout_ratio: 1 }')


def test_neurons_keep_the_shape():
    for kind in ['ReLU', 'Sigmoid', 'TanH', 'Power', 'Dropout']:
        assert make_layer('type: "%s"' % kind).top_shapes([(2, 3, 4)]) == [(2, 3, 4)]
