"""The engine's fast paths give what the plain paths give.

Each fast path is checked against the plain one: the grouped Deconvolution for
frozen channel-diagonal weights (FCN's bilinear upsamplers), the cached layer
geometry, the solver's graph-freeing backward, and SoftmaxWithLoss / Accuracy
counting on the device instead of the host.
"""
import numpy as np
import pytest
import torch
from google.protobuf import text_format
from torch.overrides import TorchFunctionMode

import surgery
import torchcaffe as caffe
from benchmarks.bench_engine import with_input_layer
from nets import voc
from torchcaffe import blob as blob_module
from torchcaffe import mode
from torchcaffe.layer_types import create_layer
from torchcaffe.layer_types import vision
from torchcaffe.layer_types.vision import Deconvolution, is_channel_diagonal


def make_net(text, phase=caffe.TRAIN):
    param = caffe.caffe_pb2.NetParameter()
    text_format.Merge(text, param)
    return caffe.Net(param, phase)


@pytest.fixture(autouse=True)
def cpu_mode():
    caffe.set_mode_cpu()
    yield
    caffe.set_mode_cpu()


@pytest.fixture(autouse=True)
def fast_upsampling(monkeypatch):
    """These tests exercise the opt-in grouped upsampling path."""
    monkeypatch.setattr(Deconvolution, 'diagonal_fast_path', True)


def test_the_grouped_upsampling_path_is_off_unless_asked_for(monkeypatch):
    monkeypatch.undo()  # the class default, without the fixture above
    net = make_net(UPSAMPLE % ('', 0))
    net.params['up'][0].data[...] = diagonal_weight()
    assert not net.layer_dict['up'].diagonal_fast_path
    with DeconvWeights() as seen:
        net.forward()
    assert seen.shapes == [(3, 3, 4, 4)]  # the dense weight: Caffe's numbers by default


class DeconvWeights(TorchFunctionMode):
    """Records the weight shape of every transposed convolution run inside it."""

    def __init__(self):
        super().__init__()
        self.shapes = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, '__name__', '') == 'conv_transpose2d':
            self.shapes.append(tuple(args[1].shape))
        return func(*args, **(kwargs or {}))


# x -> pre (1x1 conv, trained, so that the deconvolution's bottom diff is computed)
# -> up (Deconvolution, 3 -> 3 channels, stride 2), whose top has a loss weight so
# that the layers run backward (Caffe skips layers that feed no loss); backward(up=g)
# replaces that weight in the diff with g.
UPSAMPLE = '''
name: "upsample"
%s
layer { name: "input" type: "Input" top: "x"
        input_param { shape { dim: 2 dim: 3 dim: 5 dim: 4 } } }
layer { name: "pre" type: "Convolution" bottom: "x" top: "pre"
        convolution_param { num_output: 3 kernel_size: 1
                            weight_filler { type: "gaussian" std: 1 } } }
layer { name: "up" type: "Deconvolution" bottom: "pre" top: "up" loss_weight: 1
        param { lr_mult: %s }
        convolution_param { num_output: 3 kernel_size: 4 stride: 2 pad: 1 bias_term: false } }
'''

# The same with a loss: the sum of the upsampled values.
LOSSY = (UPSAMPLE % ('', 0)).replace(' loss_weight: 1', '').replace('bias_term: false } }', '''bias_term: false } }
layer { name: "loss" type: "Power" bottom: "up" top: "loss" loss_weight: 1 }''')

RNG = np.random.RandomState(3)
X = RNG.randn(2, 3, 5, 4).astype(np.float32)
TOP_DIFF = RNG.randn(2, 3, 10, 8).astype(np.float32)


def diagonal_weight(channels=3, kernel=4, seed=0):
    """Random kernels on the diagonal (each channel its own), zeros off it."""
    rng = np.random.RandomState(seed)
    w = np.zeros((channels, channels, kernel, kernel), np.float32)
    for i in range(channels):
        w[i, i] = rng.randn(kernel, kernel)
    return w


def upsample_layer(channels=3, kernel=4, stride=2, bias=False):
    p = caffe.caffe_pb2.LayerParameter(name='up', type='Deconvolution')
    c = p.convolution_param
    c.num_output, c.kernel_size[:], c.stride[:], c.bias_term = channels, [kernel], [stride], bias
    return create_layer(p, caffe.TEST)


def upsample_net(weight, lr_mult=0, header='', fast=True):
    net = make_net(UPSAMPLE % (header, lr_mult))
    net.params['up'][0].data[...] = weight
    net.layer_dict['up'].diagonal_fast_path = fast
    return net


def run(net):
    """Forward, backward from TOP_DIFF; the shapes of the deconvolution weights used."""
    with DeconvWeights() as seen:
        out = net.forward(x=X)['up'].copy()
        net.backward(up=TOP_DIFF)
    return out, seen.shapes


# ------------------------------------------------------------------ the diagonal check

def test_only_zero_off_diagonal_kernels_count_as_diagonal():
    w = torch.from_numpy(diagonal_weight())
    assert is_channel_diagonal(w)
    for i, j in ((0, 1), (1, 0), (2, 1), (0, 2)):
        off = w.clone()
        off[i, j, 3, 0] = 1e-30
        assert not is_channel_diagonal(off), (i, j)
    nan = w.clone()
    nan[1, 2, 0, 0] = float('nan')
    assert not is_channel_diagonal(nan)
    negative_zero = w.clone()
    negative_zero[1, 2, 0, 0] = -0.0
    assert is_channel_diagonal(negative_zero)


# ------------------------------------------------------------------ the fast path

def test_frozen_diagonal_deconvolution_runs_grouped_with_the_dense_results():
    fast, plain = upsample_net(diagonal_weight()), upsample_net(diagonal_weight(), fast=False)
    plain.params['pre'][0].data[...] = fast.params['pre'][0].data
    out_fast, shapes_fast = run(fast)
    out_plain, shapes_plain = run(plain)
    assert shapes_fast == [(3, 1, 4, 4)] and shapes_plain == [(3, 3, 4, 4)]
    np.testing.assert_allclose(out_fast, out_plain, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(fast.blobs['pre'].diff, plain.blobs['pre'].diff,
                               rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(fast.params['pre'][0].diff, plain.params['pre'][0].diff,
                               rtol=1e-5, atol=1e-5)
    assert np.abs(fast.blobs['pre'].diff).sum() > 0
    assert not fast.params['up'][0].diff.any()  # lr_mult 0: no diff, as Caffe


def test_grouped_layer_gives_the_dense_result_for_bilinear_kernels_with_bias():
    layer = upsample_layer(channels=4, kernel=16, stride=8, bias=True)
    weight = torch.zeros(4, 4, 16, 16)
    weight[range(4), range(4)] = torch.from_numpy(caffe.fillers.bilinear_kernel(16))
    bias = torch.randn(4, generator=torch.Generator().manual_seed(0))
    x = torch.randn(2, 4, 6, 5, generator=torch.Generator().manual_seed(1))
    (fast,) = layer.forward([x], [weight, bias])
    layer.diagonal_fast_path = False
    (plain,) = layer.forward([x], [weight, bias])
    assert fast.shape == plain.shape == (2, 4, 56, 48)
    torch.testing.assert_close(fast, plain, rtol=1e-6, atol=1e-5)


def test_a_weight_with_an_off_diagonal_value_runs_densely():
    weight = diagonal_weight()
    weight[0, 2, 1, 1] = 0.5
    net, plain = upsample_net(weight), upsample_net(weight, fast=False)
    plain.params['pre'][0].data[...] = net.params['pre'][0].data
    out, shapes = run(net)
    assert shapes == [(3, 3, 4, 4)]
    np.testing.assert_array_equal(out, run(plain)[0])


def test_a_trained_or_force_backward_weight_runs_densely_with_its_full_diff():
    for lr_mult, header in ((1, ''), (0, 'force_backward: true')):
        net = upsample_net(diagonal_weight(), lr_mult=lr_mult, header=header)
        plain = upsample_net(diagonal_weight(), lr_mult=lr_mult, header=header, fast=False)
        plain.params['pre'][0].data[...] = net.params['pre'][0].data
        out, shapes = run(net)
        assert shapes == [(3, 3, 4, 4)], header
        run(plain)
        diff = net.params['up'][0].diff
        assert np.abs(diff[0, 1]).sum() > 0  # off-diagonal diffs are not zero
        np.testing.assert_array_equal(diff, plain.params['up'][0].diff)


def test_writes_through_numpy_are_seen_even_through_a_held_view():
    net = upsample_net(diagonal_weight())
    reference = upsample_net(diagonal_weight(), fast=False)
    reference.params['pre'][0].data[...] = net.params['pre'][0].data
    assert run(net)[1] == [(3, 1, 4, 4)]
    net.params['up'][0].data[1, 0, 2, 2] = 3.0  # a write through a fresh view
    reference.params['up'][0].data[1, 0, 2, 2] = 3.0
    out, shapes = run(net)
    assert shapes == [(3, 3, 4, 4)]
    np.testing.assert_array_equal(out, run(reference)[0])
    held = net.params['up'][0].data
    held[1, 0, 2, 2] = 0.0  # diagonal again
    assert run(net)[1] == [(3, 1, 4, 4)]
    held[2, 1, 0, 0] = -1.0  # a write through the held view, after the last forward
    reference.params['up'][0].data[1, 0, 2, 2] = 0.0
    reference.params['up'][0].data[2, 1, 0, 0] = -1.0
    out, shapes = run(net)
    assert shapes == [(3, 3, 4, 4)]
    np.testing.assert_array_equal(out, run(reference)[0])


def test_the_check_runs_again_only_when_the_weight_may_have_changed(monkeypatch):
    calls = []

    def counting(weight):
        calls.append(1)
        return is_channel_diagonal(weight)
    monkeypatch.setattr(vision, 'is_channel_diagonal', counting)
    net = upsample_net(diagonal_weight())
    for _ in range(3):
        run(net)
    assert len(calls) == 1
    net.params['up'][0].data_tensor().mul_(2)  # an in-place torch op
    run(net)
    assert len(calls) == 2
    net.params['up'][0].set_data(diagonal_weight(seed=1))
    run(net)
    assert len(calls) == 3


def test_the_solver_does_not_force_a_check_for_a_frozen_weight(monkeypatch, tmp_path):
    calls = []

    def counting(weight):
        calls.append(1)
        return is_channel_diagonal(weight)
    monkeypatch.setattr(vision, 'is_channel_diagonal', counting)
    solver_param = caffe.caffe_pb2.SolverParameter(base_lr=0.01, momentum=0.9,
                                                   lr_policy='fixed', display=0)
    text_format.Merge(LOSSY, solver_param.net_param)
    solver = caffe.SGDSolver(solver_param)
    solver.net.params['up'][0].data[...] = diagonal_weight()
    solver.net.blobs['x'].data[...] = X
    trained, frozen = (solver.net.params[name][0].data.copy() for name in ('pre', 'up'))
    solver.step(3)
    assert len(calls) == 1
    assert not np.array_equal(solver.net.params['pre'][0].data, trained)  # it moved
    assert np.array_equal(solver.net.params['up'][0].data, frozen)


def test_mirrored_weights_are_checked_again_after_a_host_write(monkeypatch):
    monkeypatch.setattr(blob_module, 'needs_mirror', lambda dev: True)
    net = upsample_net(diagonal_weight())
    net._move(torch.device('cpu'))
    reference = upsample_net(diagonal_weight(), fast=False)
    reference.params['pre'][0].data[...] = net.params['pre'][0].data
    assert run(net)[1] == [(3, 1, 4, 4)]
    net.params['up'][0].data[0, 1, 0, 0] = 2.0  # the host mirror, pushed before the forward
    reference.params['up'][0].data[0, 1, 0, 0] = 2.0
    out, shapes = run(net)
    assert shapes == [(3, 3, 4, 4)]
    np.testing.assert_array_equal(out, run(reference)[0])


def test_non_finite_inputs_stay_in_their_channel_on_the_fast_path():
    """The one documented difference: the dense op spreads NaN through 0 * NaN."""
    layer = upsample_layer()
    weight = torch.from_numpy(diagonal_weight())
    x = torch.from_numpy(X.copy())
    x[0, 1, 2, 2] = float('nan')
    (fast,) = layer.forward([x], [weight])
    layer.diagonal_fast_path = False
    (plain,) = layer.forward([x], [weight])
    assert fast[0, 1].isnan().any() and not fast[0, [0, 2]].isnan().any()
    assert plain[0, [0, 2]].isnan().any()
    finite = ~plain.isnan()
    torch.testing.assert_close(fast[finite], plain[finite], rtol=1e-6, atol=1e-6)


def test_fcn8s_fast_and_plain_paths_agree_on_every_blob_and_param():
    proto = voc.stage_nets('fcn8s', classes=5, width=1 / 32)['train']
    nets = []
    for fast in (True, False):
        net = caffe.Net(with_input_layer(proto, (1, 3, 24, 24)), caffe.TRAIN)
        rng = np.random.RandomState(0)
        for blobs in net.params.values():
            for b in blobs:
                b.data[...] = rng.randn(*b.shape) * np.sqrt(2.0 / max(1, b.count // b.shape[0]))
        surgery.interp(net, ['upscore2', 'upscore_pool4', 'upscore8'])
        net.blobs['data'].data[...] = rng.randn(1, 3, 24, 24) * 50
        net.blobs['label'].data[...] = rng.randint(0, 5, (1, 1, 24, 24))
        net.blobs['label'].data[0, 0, :3] = 255  # some ignored pixels
        for layer in net.layers:
            if isinstance(layer, Deconvolution):
                layer.diagonal_fast_path = fast
        nets.append(net)
    state = mode.random_state()
    with DeconvWeights() as seen:
        nets[0].forward_backward()
    assert all(s[1] == 1 for s in seen.shapes) and len(seen.shapes) == 3
    mode.set_random_state(state)  # the same Dropout masks
    nets[1].forward_backward()
    fast, plain = nets
    for name in fast.blobs:
        a, b = fast.blobs[name], plain.blobs[name]
        scale = max(1.0, float(np.abs(b.data).max()))
        np.testing.assert_allclose(a.data, b.data, rtol=1e-5, atol=1e-5 * scale, err_msg=name)
        dscale = max(1e-3, float(np.abs(b.diff).max()))
        np.testing.assert_allclose(a.diff, b.diff, rtol=1e-4, atol=1e-4 * dscale, err_msg=name)
    for name in fast.params:
        for a, b in zip(fast.params[name], plain.params[name], strict=True):
            dscale = max(1e-3, float(np.abs(b.diff).max()))
            np.testing.assert_allclose(a.diff, b.diff, rtol=1e-4, atol=1e-4 * dscale,
                                       err_msg=name)


# ------------------------------------------------------------------ graphs and memory

def test_forward_backward_frees_the_graph_and_a_second_backward_recomputes_the_layers():
    net = upsample_net(diagonal_weight())
    net.forward(x=X)
    net.backward(up=TOP_DIFF)
    net.backward(up=TOP_DIFF)  # pycaffe's backward keeps the graph: twice is fine
    lossy = make_net(LOSSY)
    lossy.params['up'][0].data[...] = diagonal_weight()
    lossy.blobs['x'].data[...] = X
    lossy.forward_backward()
    assert lossy._graph_freed
    once = lossy.params['pre'][0].diff.copy()
    assert np.abs(once).sum() > 0
    lossy.backward()  # the graph is gone: each layer is recomputed from its blobs
    np.testing.assert_array_equal(lossy.params['pre'][0].diff, 2 * once)
    lossy.clear_param_diffs()
    lossy.forward()
    lossy.backward()
    np.testing.assert_array_equal(lossy.params['pre'][0].diff, once)


# ------------------------------------------------------------------ cached geometry

def test_crop_and_pooling_follow_every_new_input_size():
    net = make_net('''
        layer { name: "input" type: "Input" top: "x"
                input_param { shape { dim: 1 dim: 1 dim: 9 dim: 9 } } }
        layer { name: "pool" type: "Pooling" bottom: "x" top: "pool"
                pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 } }
        layer { name: "crop" type: "Crop" bottom: "x" bottom: "pool" top: "crop"
                crop_param { axis: 2 offset: 1 } }''', caffe.TEST)
    for size in list(range(3, 80)) + [9, 4]:  # more sizes than the caches keep
        x = np.arange(size * size, dtype=np.float32).reshape(1, 1, size, size)
        net.blobs['x'].reshape(*x.shape)
        net.reshape()
        out = net.forward(x=x, blobs=['pool'])
        n = -(-(size + 2 - 3) // 2) + 1
        if (n - 1) * 2 >= size + 1:
            n -= 1
        assert out['pool'].shape == (1, 1, n, n), size
        np.testing.assert_array_equal(out['crop'], x[:, :, 1:1 + n, 1:1 + n])


# ------------------------------------------------------------------ losses count on the device

LOSS = '''
layer { name: "input" type: "Input" top: "score" top: "label"
        input_param { shape { dim: 2 dim: 4 dim: 3 dim: 3 }
                      shape { dim: 2 dim: 1 dim: 3 dim: 3 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "score" bottom: "label" top: "loss"
        loss_param { ignore_label: 255 %s } }
layer { name: "acc" type: "Accuracy" bottom: "score" bottom: "label" top: "acc" top: "per_class"
        accuracy_param { ignore_label: 255 } }
'''


def test_valid_normalisation_and_accuracy_match_float32_by_hand_without_reading_counts(
        monkeypatch):
    rng = np.random.RandomState(5)
    score = (rng.randn(2, 4, 3, 3) * 3).astype(np.float32)
    label = rng.randint(0, 4, (2, 1, 3, 3)).astype(np.float32)
    label[0, 0, 0] = 255
    label[1, 0, :, 1] = 255
    net = make_net('force_backward: true\n' + LOSS % 'normalization: VALID')

    def no_host_read(*args):
        raise AssertionError('a count was read on the host')
    monkeypatch.setattr(torch.Tensor, '__int__', no_host_read)
    monkeypatch.setattr(torch.Tensor, 'item', no_host_read)
    out = net.forward(score=score, label=label)
    net.backward()
    monkeypatch.undo()
    valid = label[:, 0] != 255
    flat = score.transpose(0, 2, 3, 1)[valid].astype(np.float64)
    truth = label[:, 0][valid].astype(int)
    prob = np.exp(flat - flat.max(1, keepdims=True))
    prob /= prob.sum(1, keepdims=True)
    count = np.float32(valid.sum())
    expected = np.float32(-np.log(prob[np.arange(len(truth)), truth]).sum()) / count
    np.testing.assert_allclose(out['loss'], expected, rtol=1e-6)
    grad = prob.copy()
    grad[np.arange(len(truth)), truth] -= 1
    np.testing.assert_allclose(net.blobs['score'].diff.transpose(0, 2, 3, 1)[valid],
                               grad / count, rtol=1e-5, atol=1e-7)
    assert not net.blobs['score'].diff.transpose(0, 2, 3, 1)[~valid].any()
    hit = flat.argmax(1) == truth
    np.testing.assert_allclose(out['acc'], hit.mean(), rtol=1e-6)
    per_class = [hit[truth == c].mean() if (truth == c).any() else 0 for c in range(4)]
    np.testing.assert_allclose(out['per_class'], per_class, rtol=1e-6)


def test_accuracy_with_every_label_ignored_is_zero():
    net = make_net(LOSS % '', caffe.TEST)
    out = net.forward(score=np.ones((2, 4, 3, 3), np.float32),
                      label=np.full((2, 1, 3, 3), 255, np.float32))
    assert out['acc'] == 0 and not out['per_class'].any()
    assert out['loss'] == 0
