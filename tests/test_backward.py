"""Caffe's backward, exactly: each layer's backward reads the blobs as they stand.

Which layers run backward is Caffe's Net::Init analysis (loss contribution,
force_backward, propagate_down, AllowForceBackward); the walk is the recorded autograd
graph where it holds and a per-layer recompute where it does not (no forward yet, a
start/end range, a bottom written since). Every expectation is computed by hand in
numpy from the blobs' values.
"""
import os
import sys
import uuid

import numpy as np
import pytest
import torch
from google.protobuf import text_format

import torchcaffe as caffe
from torchcaffe import backward as backward_walk

RNG = np.random.RandomState(22)


@pytest.fixture(autouse=True)
def cpu_mode():
    caffe.set_mode_cpu()
    yield


def make_net(text, phase=caffe.TRAIN):
    param = text_format.Parse(text, caffe.proto.caffe_pb2.NetParameter())
    param.state.phase = phase
    return caffe.Net(param)


# ------------------------------------------------------------------ Python layers, no forward

PY_LAYERS = '''
import torchcaffe as caffe


class SimpleLayer(caffe.Layer):
    """top = 10 * bottom (Caffe's python/caffe/test/test_python_layer.py)."""

    def setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = 10 * bottom[0].data

    def backward(self, top, propagate_down, bottom):
        bottom[0].diff[...] = 10 * top[0].diff


class SimpleParamLayer(caffe.Layer):
    """top = value * bottom, the value read from param_str."""

    def setup(self, bottom, top):
        self.value = float(self.param_str)

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = self.value * bottom[0].data

    def backward(self, top, propagate_down, bottom):
        bottom[0].diff[...] = self.value * top[0].diff
'''


@pytest.fixture
def py_module(tmp_path):
    name = 'backward_layers_%s' % uuid.uuid4().hex
    (tmp_path / (name + '.py')).write_text(PY_LAYERS)
    sys.path.insert(0, str(tmp_path))
    try:
        yield name
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop(name, None)


def python_net(tmp_path, module, layers):
    text = "name: 'pythonnet' force_backward: true\n" \
           "input: 'data' input_shape { dim: 10 dim: 9 dim: 8 }\n"
    bottom = 'data'
    for name, cls, param_str in layers:
        extra = " param_str: '%s'" % param_str if param_str else ''
        text += ("layer { type: 'Python' name: '%s' bottom: '%s' top: '%s' python_param { "
                 "module: '%s' layer: '%s'%s } }\n" % (name, bottom, name, module, cls, extra))
        bottom = name
    path = tmp_path / 'net.prototxt'
    path.write_text(text)
    return caffe.Net(str(path), caffe.TRAIN)


def test_python_layers_backward_with_no_forward_multiplies_the_written_diff(tmp_path, py_module):
    net = python_net(tmp_path, py_module, [(n, 'SimpleLayer', None)
                                           for n in ('one', 'two', 'three')])
    net.blobs['three'].diff[...] = 7
    net.backward()
    expected = np.full((10, 9, 8), 7.0 * 10 ** 3)
    np.testing.assert_array_equal(net.blobs['data'].diff, expected)
    np.testing.assert_array_equal(net.blobs['one'].diff, expected / 10)
    np.testing.assert_array_equal(net.blobs['two'].diff, expected / 100)


def test_python_layer_with_param_str_backward_with_no_forward(tmp_path, py_module):
    net = python_net(tmp_path, py_module, [('mul10', 'SimpleParamLayer', '10'),
                                           ('mul2', 'SimpleParamLayer', '2')])
    seed = RNG.randn(10, 9, 8).astype(np.float32)
    net.blobs['mul2'].diff[...] = seed
    net.backward()
    np.testing.assert_array_equal(net.blobs['data'].diff, 20 * seed)
    # After a forward (the recorded graph), the same numbers.
    net.blobs['data'].data[...] = 8
    net.forward()
    np.testing.assert_array_equal(net.blobs['mul2'].data, np.full((10, 9, 8), 160.0))
    net.blobs['mul2'].diff[...] = seed
    net.backward()
    np.testing.assert_array_equal(net.blobs['data'].diff, 20 * seed)


# ------------------------------------------------------------------ start / end, no forward

def simple_net(num_output=13):
    """pycaffe's simple_net_file (python/caffe/test/test_net.py)."""
    return make_net("""name: 'testnet' force_backward: true
    layer { type: 'DummyData' name: 'data' top: 'data' top: 'label'
      dummy_data_param { num: 5 channels: 2 height: 3 width: 4
        num: 5 channels: 1 height: 1 width: 1
        data_filler { type: 'gaussian' std: 1 }
        data_filler { type: 'constant' } } }
    layer { type: 'Convolution' name: 'conv' bottom: 'data' top: 'conv'
      convolution_param { num_output: 11 kernel_size: 2 pad: 3
        weight_filler { type: 'gaussian' std: 1 }
        bias_filler { type: 'constant' value: 2 } }
        param { decay_mult: 1 } param { decay_mult: 0 } }
    layer { type: 'InnerProduct' name: 'ip' bottom: 'conv' top: 'ip_blob'
      inner_product_param { num_output: %d
        weight_filler { type: 'gaussian' std: 2.5 }
        bias_filler { type: 'constant' value: -3 } } }
    layer { type: 'SoftmaxWithLoss' name: 'loss' bottom: 'ip_blob' bottom: 'label'
      top: 'loss' }""" % num_output)


def test_backward_start_end_over_a_layer_that_never_ran_forward():
    net = simple_net()
    conv, ip = net.blobs['conv'], net.blobs['ip_blob']
    g = RNG.uniform(size=ip.shape).astype(np.float32)
    ip.diff[...] = g
    x = RNG.randn(*conv.shape).astype(np.float32)
    conv.data[...] = x
    got = net.backward(start='ip', end='ip')
    assert set(got) == {'conv'}
    w = net.params['ip'][0].data.astype(np.float64)
    expected = np.stack([w.T @ g[i] for i in range(len(g))]).reshape(conv.shape)
    np.testing.assert_allclose(got['conv'], expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(net.params['ip'][0].diff, g.T @ x.reshape(len(x), -1),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(net.params['ip'][1].diff, g.sum(0), rtol=1e-6)
    assert not net.params['conv'][0].diff.any()  # below end: left alone
    assert not net.blobs['data'].diff.any()


def test_backward_start_end_after_a_forward_reads_a_bottom_written_since():
    net = simple_net()
    net.forward()
    conv, ip = net.blobs['conv'], net.blobs['ip_blob']
    x = RNG.randn(*conv.shape).astype(np.float32)
    conv.data[...] = x  # written after the forward: ip's backward reads it
    g = RNG.uniform(size=ip.shape).astype(np.float32)
    ip.diff[...] = g
    net.backward(start='ip', end='ip')
    np.testing.assert_allclose(net.params['ip'][0].diff, g.T @ x.reshape(len(x), -1),
                               rtol=1e-5, atol=1e-5)


def test_backward_from_a_layer_whose_top_is_changed_in_place_above_it():
    net = make_net("""force_backward: true
    input: 'x' input_shape { dim: 2 dim: 3 }
    layer { name: 'ip' type: 'InnerProduct' bottom: 'x' top: 'h'
      inner_product_param { num_output: 4 weight_filler { type: 'gaussian' std: 1 } } }
    layer { name: 'relu' type: 'ReLU' bottom: 'h' top: 'h' }""")
    x = RNG.randn(2, 3).astype(np.float32)
    net.blobs['x'].data[...] = x
    net.forward()
    g = RNG.randn(2, 4).astype(np.float32)
    net.blobs['h'].diff[...] = g
    net.backward(start='ip')  # Caffe: ip reads h's diff as it stands
    w = net.params['ip'][0].data
    np.testing.assert_allclose(net.blobs['x'].diff, g @ w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(net.params['ip'][0].diff, g.T @ x, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ which layers run backward

LOSS_FREE_IP = """%s
input: 'x' input_shape { dim: 3 dim: 4 }
layer { name: 'ip' type: 'InnerProduct' bottom: 'x' top: 't'
  inner_product_param { num_output: 2 weight_filler { type: 'gaussian' std: 1 }
    bias_filler { type: 'constant' value: 0.5 } } }
"""


@pytest.mark.parametrize('forward_first', [False, True])
def test_a_diff_written_into_a_loss_free_output_reaches_nothing(forward_first):
    net = make_net(LOSS_FREE_IP % '')
    x = RNG.randn(3, 4).astype(np.float32)
    net.blobs['x'].data[...] = x
    if forward_first:
        net.forward()
    net.blobs['t'].diff[...] = RNG.randn(3, 2)
    net.backward()
    assert not net.params['ip'][0].diff.any()
    assert not net.params['ip'][1].diff.any()
    assert not net.blobs['x'].diff.any()


@pytest.mark.parametrize('forward_first', [False, True])
def test_force_backward_sends_a_loss_free_output_diff_to_params_and_inputs(forward_first):
    net = make_net(LOSS_FREE_IP % 'force_backward: true')
    x = RNG.randn(3, 4).astype(np.float32)
    net.blobs['x'].data[...] = x
    if forward_first:
        net.forward()
    g = RNG.randn(3, 2).astype(np.float32)
    net.blobs['t'].diff[...] = g
    net.backward()
    w = net.params['ip'][0].data
    np.testing.assert_allclose(net.params['ip'][0].diff, g.T @ x, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(net.params['ip'][1].diff, g.sum(0), rtol=1e-6)
    np.testing.assert_allclose(net.blobs['x'].diff, g @ w, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('forward_first', [False, True])
def test_embed_with_a_loss_weight_gets_param_diffs_and_its_input_none(forward_first):
    net = make_net("""
    input: 'x' input_shape { dim: 2 dim: 3 }
    layer { name: 'embed' type: 'Embed' bottom: 'x' top: 'e' loss_weight: 2
      embed_param { input_dim: 5 num_output: 4 bias_term: true
        weight_filler { type: 'gaussian' std: 1 } } }""")
    idx = np.array([[0, 3, 3], [4, 0, 3]])
    net.blobs['x'].data[...] = idx
    if forward_first:
        net.forward()
    net.backward()
    counts = np.bincount(idx.ravel(), minlength=5).astype(np.float64)
    np.testing.assert_array_equal(net.params['embed'][0].diff,
                                  2 * counts[:, None] * np.ones((5, 4)))
    np.testing.assert_array_equal(net.params['embed'][1].diff, np.full(4, 2.0 * idx.size))
    assert not net.blobs['x'].diff.any()
    assert net.blob_loss_weights['e'] == 2


def test_propagate_down_false_stops_the_diff_and_the_layers_below_it():
    net = make_net("""
    input: 'x' input_shape { dim: 2 dim: 3 }
    layer { name: 'ip1' type: 'InnerProduct' bottom: 'x' top: 'h'
      inner_product_param { num_output: 4 weight_filler { type: 'gaussian' std: 1 } } }
    layer { name: 'ip2' type: 'InnerProduct' bottom: 'h' top: 'y' propagate_down: false
      loss_weight: 1
      inner_product_param { num_output: 1 weight_filler { type: 'gaussian' std: 1 } } }""")
    x = RNG.randn(2, 3).astype(np.float32)
    net.blobs['x'].data[...] = x
    net.forward()
    net.backward()
    h = x @ net.params['ip1'][0].data.T + net.params['ip1'][1].data
    np.testing.assert_allclose(net.params['ip2'][0].diff, np.ones((2, 1)).T @ h, rtol=1e-5)
    assert not net.blobs['h'].diff.any()
    assert not net.params['ip1'][0].diff.any()  # every reader of h refuses its diff
    steps = {s.name: s for s in net._steps}
    assert not steps['ip1'].need_backward and steps['ip2'].need_backward


def test_force_backward_reaches_inputs_but_never_a_softmax_loss_label():
    net = make_net("""force_backward: true
    input: 'score' input_shape { dim: 2 dim: 3 }
    input: 'label' input_shape { dim: 2 }
    input: 'a' input_shape { dim: 2 dim: 2 }
    input: 'b' input_shape { dim: 2 dim: 2 }
    layer { name: 'loss' type: 'SoftmaxWithLoss' bottom: 'score' bottom: 'label' top: 'l' }
    layer { name: 'euc' type: 'EuclideanLoss' bottom: 'a' bottom: 'b' top: 'e' }""")
    score = RNG.randn(2, 3).astype(np.float32)
    a, b = RNG.randn(2, 2).astype(np.float32), RNG.randn(2, 2).astype(np.float32)
    net.blobs['score'].data[...] = score
    net.blobs['label'].data[...] = [2, 0]
    net.blobs['a'].data[...] = a
    net.blobs['b'].data[...] = b
    net.forward()
    net.backward()
    p = np.exp(score - score.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[[0, 1], [2, 0]] -= 1
    np.testing.assert_allclose(net.blobs['score'].diff, p / 2, rtol=1e-5, atol=1e-7)
    assert not net.blobs['label'].diff.any()
    # EuclideanLoss lets force_backward reach both inputs (euclidean_loss_layer.hpp).
    np.testing.assert_allclose(net.blobs['a'].diff, (a - b) / 2, rtol=1e-5)
    np.testing.assert_allclose(net.blobs['b'].diff, -(a - b) / 2, rtol=1e-5)


def test_force_backward_overrides_propagate_down_false_as_caffe_does():
    # net.cpp: under force_backward a bottom gets a diff when it needs one OR the
    # layer allows it, so propagate_down: false gives way.
    net = make_net("""force_backward: true
    input: 'a' input_shape { dim: 2 }
    input: 'b' input_shape { dim: 2 }
    layer { name: 'sum' type: 'Eltwise' bottom: 'a' bottom: 'b' top: 'c'
      propagate_down: true propagate_down: false loss_weight: 3 }""")
    net.forward()
    net.backward()
    np.testing.assert_array_equal(net.blobs['a'].diff, [3, 3])
    np.testing.assert_array_equal(net.blobs['b'].diff, [3, 3])


# ------------------------------------------------------------------ the two walks agree

def _diffs(net):
    out = {('blob', k): b.diff.copy() for k, b in net.blobs.items()}
    for name, blobs in net.params.items():
        for j, p in enumerate(blobs):
            out[('param', name, j)] = p.diff.copy()
    return out


def _walk_both(net):
    """Backward through the recorded graph, then through the per-layer path after the
    same forward: both sets of diffs."""
    net.clear_param_diffs()
    net.forward()
    assert backward_walk._graph_covers(net, len(net._steps) - 1, 0)
    net.backward()
    fast = _diffs(net)
    net.clear_param_diffs()
    for k, blob in net.blobs.items():
        if net.blob_loss_weights[k] == 0 and k not in net.outputs:
            blob.diff[...] = 0
    backward_walk._per_layer_walk(net, len(net._steps) - 1, 0)
    return fast, _diffs(net)


FCN_FOLDERS = ['voc-fcn32s', 'voc-fcn8s']


@pytest.mark.parametrize('folder', FCN_FOLDERS)
def test_recorded_graph_and_per_layer_walk_give_identical_fcn_diffs(folder, tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    param = caffe.proto.caffe_pb2.NetParameter()
    with open(os.path.join(root, folder, 'train.prototxt')) as f:
        text_format.Merge(f.read(), param)
    narrow = _narrow_fcn(param)
    path = tmp_path / 'train.prototxt'
    path.write_text(text_format.MessageToString(narrow))
    torch.manual_seed(0)
    net = caffe.Net(str(path), caffe.TRAIN)
    for blobs in net.params.values():
        for p in blobs:  # He's scale, so that diffs reach the first layers
            fan_in = np.prod(p.shape[1:]) if len(p.shape) > 1 else 10
            p.data[...] = RNG.randn(*p.shape) * np.sqrt(2.0 / fan_in)
    net.blobs['data'].data[...] = RNG.randn(*net.blobs['data'].shape) * 50
    net.blobs['label'].data[...] = RNG.randint(0, 21, net.blobs['label'].shape)
    fast, slow = _walk_both(net)
    assert len(fast) == len(slow) and set(fast) == set(slow)
    for key in fast:
        np.testing.assert_array_equal(slow[key], fast[key], err_msg=str(key))
    assert np.abs(fast[('param', 'conv1_1', 0)]).sum() > 0


def _narrow_fcn(param):
    """The FCN train net with a small input layer and 4 channels per conv, so the
    walk stays fast: the Python data layer becomes Input blobs of one image."""
    out = caffe.proto.caffe_pb2.NetParameter()
    out.CopyFrom(param)
    del out.layer[:]
    inp = out.layer.add(name='input', type='Input', top=['data', 'label'])
    inp.input_param.shape.add(dim=[1, 3, 36, 44])
    inp.input_param.shape.add(dim=[1, 1, 36, 44])
    for lp in param.layer:
        if lp.type == 'Python':
            continue
        new = out.layer.add()
        new.CopyFrom(lp)
        if lp.type == 'Convolution' and not lp.name.startswith('score'):
            new.convolution_param.num_output = 4
        for p in new.param:
            if p.lr_mult == 0 and lp.type != 'Deconvolution':
                p.lr_mult = 1
    return out


def test_training_steps_take_the_recorded_graph(monkeypatch):
    def refuse(*args):
        raise AssertionError('the per-layer walk ran during training')
    monkeypatch.setattr(backward_walk, '_per_layer_walk', refuse)
    net = make_net("""
    input: 'x' input_shape { dim: 4 dim: 3 }
    input: 'y' input_shape { dim: 4 dim: 2 }
    layer { name: 'ip' type: 'InnerProduct' bottom: 'x' top: 'h'
      inner_product_param { num_output: 2 weight_filler { type: 'gaussian' std: 1 } } }
    layer { name: 'drop' type: 'Dropout' bottom: 'h' top: 'h' }
    layer { name: 'loss' type: 'EuclideanLoss' bottom: 'h' bottom: 'y' top: 'l' }""")
    for _ in range(3):
        net.blobs['x'].data[...] = RNG.randn(4, 3)
        net.blobs['y'].data[...] = RNG.randn(4, 2)
        net.forward_backward()
    assert np.abs(net.params['ip'][0].diff).sum() > 0


def test_a_recomputed_batch_norm_keeps_its_moving_averages():
    net = make_net("""force_backward: true
    input: 'x' input_shape { dim: 4 dim: 2 }
    layer { name: 'bn' type: 'BatchNorm' bottom: 'x' top: 'z' }""")
    x = RNG.randn(4, 2).astype(np.float32)
    net.blobs['x'].data[...] = x
    net.forward()
    stats = [p.data.copy() for p in net.params['bn']]
    np.testing.assert_allclose(stats[0], x.mean(0), rtol=1e-5)  # factor 1 after one pass
    net.blobs['x'].data[...] = x  # written since: the walk recomputes the layer
    g = RNG.randn(4, 2)
    net.blobs['z'].diff[...] = g
    net.backward()
    for before, p in zip(stats, net.params['bn']):
        np.testing.assert_array_equal(p.data, before)
    xd = x.astype(np.float64)
    std = np.sqrt(xd.var(0) + 1e-5)
    xhat = (xd - xd.mean(0)) / std
    want = (g - g.mean(0) - xhat * (g * xhat).mean(0)) / std
    np.testing.assert_allclose(net.blobs['x'].diff, want, rtol=1e-4, atol=1e-5)


def test_a_recurrent_layer_recomputes_from_the_state_its_forward_started_from():
    net = make_net("""force_backward: true
    input: 'x' input_shape { dim: 3 dim: 2 dim: 4 }
    input: 'cont' input_shape { dim: 3 dim: 2 }
    layer { name: 'lstm' type: 'LSTM' bottom: 'x' bottom: 'cont' top: 'h'
      recurrent_param { num_output: 3 weight_filler { type: 'gaussian' std: 0.5 }
        bias_filler { type: 'constant' value: 0.1 } } }""")
    net.blobs['cont'].data[...] = 1  # every step carries the state on, across forwards
    net.blobs['x'].data[...] = RNG.randn(3, 2, 4)
    net.forward()
    net.blobs['x'].data[...] = RNG.randn(3, 2, 4)
    g = RNG.randn(3, 2, 3).astype(np.float32)
    fast, slow = [], []
    for walk in ('graph', 'per layer'):
        net.clear_param_diffs()
        net.forward()  # starts from the state the first forward left
        net.blobs['h'].diff[...] = g
        if walk == 'graph':
            net.backward()
        else:
            backward_walk._per_layer_walk(net, len(net._steps) - 1, 0)
        (fast if walk == 'graph' else slow).extend(
            [net.blobs['x'].diff.copy()] + [p.diff.copy() for p in net.params['lstm']])
        net.layer_dict['lstm']._state = net.layer_dict['lstm']._state_before
    assert len(fast) == len(slow) == 1 + len(net.params["lstm"])
    for a, b in zip(fast, slow):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
    assert np.abs(fast[0]).sum() > 0
