"""``Net.to(torch.float64)``: the documented way to check a net's gradients in double."""
import os
import sys

import numpy as np
import pytest
import torch

import torchcaffe as caffe
from torchcaffe.errors import CaffeError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from benchmarks import grad_precision  # noqa: E402

NET = '''
name: "tiny"
force_backward: true
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2 dim: 6 dim: 6 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 1 dim: 1 dim: 3 dim: 3 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 3 kernel_size: 3 pad: 1
                            weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "pool" bottom: "label" top: "loss" }
'''


def make_net(tmp_path):
    path = tmp_path / 'tiny.prototxt'
    path.write_text(NET)
    caffe.set_random_seed(3)
    return caffe.Net(str(path), caffe.TEST)


def inputs():
    rng = np.random.default_rng(0)
    return rng.normal(0, 1, (1, 2, 6, 6)), rng.integers(0, 3, (1, 1, 3, 3)).astype(float)


@pytest.mark.parametrize('dtype', [torch.float64, np.float64, 'float64'])
def test_to_float64_makes_every_blob_and_param_double(tmp_path, dtype):
    net = make_net(tmp_path).to(dtype)
    data, label = inputs()
    net.forward(data=data, label=label)
    net.backward()
    for name, blob in net.blobs.items():
        assert blob.data.dtype == np.float64 and blob.diff.dtype == np.float64, name
    for name, blobs in net.params.items():
        assert all(b.data.dtype == np.float64 for b in blobs), name


def test_float64_gradients_match_finite_differences_to_double_precision(tmp_path):
    net = make_net(tmp_path).to(torch.float64)
    data, label = inputs()
    net.forward(data=data, label=label)
    net.backward()
    weight = net.params['conv'][0]
    analytic = weight.diff.copy()
    data_diff = net.blobs['data'].diff.copy()
    eps = 1e-6

    def loss_at(array, index, delta):
        array[index] += delta
        out = float(net.forward(data=data, label=label)['loss'])
        array[index] -= delta
        return out
    for index in [(0, 0, 0, 0), (1, 1, 2, 1), (2, 0, 1, 2)]:
        numeric = (loss_at(weight.data, index, eps) - loss_at(weight.data, index, -eps)) / (2 * eps)
        assert abs(numeric - analytic[index]) <= 1e-7 * max(1.0, abs(numeric))
    for index in [(0, 0, 2, 3), (0, 1, 4, 4)]:
        numeric = (loss_at(data, index, eps) - loss_at(data, index, -eps)) / (2 * eps)
        assert abs(numeric - data_diff[index]) <= 1e-7 * max(1.0, abs(numeric))


def test_back_to_float32_keeps_the_values_rounded_to_float32(tmp_path):
    net = make_net(tmp_path)
    before = net.params['conv'][0].data.copy()
    net.to(torch.float64).to(torch.float32)
    after = net.params['conv'][0].data
    assert after.dtype == np.float32
    np.testing.assert_array_equal(after, before)


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16, 'int32'])
def test_to_other_types_is_refused_naming_the_net(tmp_path, dtype):
    with pytest.raises(CaffeError, match="net 'tiny': Net.to takes float32 or float64"):
        make_net(tmp_path).to(dtype)


def test_fcn_float32_diffs_above_the_last_max_pool_agree_with_float64_to_rounding():
    # Below pool5 MAX-pool ties in the padded region may break differently in float32
    # (benchmarks/grad_precision.py); above it only rounding separates the two.
    names, rel = grad_precision.relative_differences('fcn8s', width=1 / 16, size=24,
                                                     classes=5)
    above = names[names.index('pool5'):]
    assert 'score' in above
    for name in above:
        assert rel[name][0] < 1e-4, (name, rel[name])
