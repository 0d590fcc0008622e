"""Net: construction, forward/backward semantics, weights I/O and sharing, devices.

Tiny nets are written inline as prototxt; expected values are computed by hand in
numpy, or by finite differences for the whole-net gradient check.
"""
import math
import os

import numpy as np
import pytest
import torch
from google.protobuf import text_format

import torchcaffe as caffe
from torchcaffe import blob as blob_module
from torchcaffe import io, mode
from torchcaffe.errors import CaffeError, ShapeError, UnknownLayerError
from torchcaffe.fillers import bilinear_kernel


def net_param(text):
    param = caffe.caffe_pb2.NetParameter()
    text_format.Merge(text, param)
    return param


def make_net(text, phase=caffe.TRAIN, **kwargs):
    return caffe.Net(net_param(text), phase, **kwargs)


@pytest.fixture(autouse=True, scope='module')
def one_thread():
    """Tiny nets run far faster on one thread than on a few contended ones."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def cpu_mode():
    caffe.set_mode_cpu()
    yield
    caffe.set_mode_cpu()


RNG = np.random.RandomState(0)
W = RNG.randn(4, 3).astype(np.float32)
C = RNG.randn(4).astype(np.float32)
V = RNG.randn(1, 4).astype(np.float32)
X = RNG.randn(2, 3).astype(np.float32)

# x -> ip (4) -> relu in place -> out (1) whose sum is the loss.
MLP = '''
name: "mlp"
layer { name: "input" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "ip"
        inner_product_param { num_output: 4 } }
layer { name: "relu" type: "ReLU" bottom: "ip" top: "ip" }
layer { name: "out" type: "InnerProduct" bottom: "ip" top: "out" loss_weight: %s
        inner_product_param { num_output: 1 bias_term: false } }
'''


def mlp(loss_weight=1, extra='', text=None, **kwargs):
    net = make_net(text or (extra + MLP % loss_weight), **kwargs)
    net.params['ip'][0].data[...] = W
    net.params['ip'][1].data[...] = C
    net.params['out'][0].data[...] = V
    net.blobs['x'].data[...] = X
    return net


def pre_relu():
    return X @ W.T + C


def mlp_grad_pre():
    """The gradient of the MLP's loss w.r.t. the pre-ReLU values."""
    return np.tile(V, (2, 1)) * (pre_relu() > 0)


# ---- construction -----------------------------------------------------------------

def test_constructor_forms_agree(tmp_path):
    proto = tmp_path / 'net.prototxt'
    proto.write_text(MLP % 1)
    weights = tmp_path / 'w.caffemodel'
    mlp().save(str(weights))
    nets = [caffe.Net(str(proto), str(weights), caffe.TEST),
            caffe.Net(str(proto), caffe.TEST, weights=str(weights)),
            caffe.Net(proto, phase=caffe.TEST, weights=str(weights))]
    for net in nets:
        assert net.phase == caffe.TEST
        np.testing.assert_array_equal(net.params['ip'][0].data, W)
    assert caffe.Net(str(proto), caffe.TRAIN).phase == caffe.TRAIN


def test_phase_is_required_for_a_file_and_must_be_valid(tmp_path):
    proto = tmp_path / 'net.prototxt'
    proto.write_text(MLP % 1)
    with pytest.raises(TypeError, match='phase'):
        caffe.Net(str(proto))
    with pytest.raises(CaffeError, match='phase'):
        caffe.Net(str(proto), 7)


def test_a_net_parameter_without_phase_uses_its_state():
    param = net_param(MLP % 1)
    param.state.phase = caffe.TEST
    assert caffe.Net(param).phase == caffe.TEST


def test_pycaffe_views_of_the_net():
    net = mlp()
    assert net.inputs == ['x'] and net.outputs == ['out']
    assert list(net.blobs) == ['x', 'ip', 'out']
    assert list(net.params) == ['ip', 'out']
    assert [b.shape for b in net.params['ip']] == [(4, 3), (4,)]
    assert net._layer_names == ['input', 'ip', 'relu', 'out']
    assert [layer.type for layer in net.layers] == ['Input', 'InnerProduct', 'ReLU',
                                                    'InnerProduct']
    assert net.layer_dict['ip'].blobs is net.params['ip']
    assert net.top_names['relu'] == ['ip'] and net.bottom_names['out'] == ['ip']
    assert net.blob_loss_weights == {'x': 0, 'ip': 0, 'out': 1}
    assert net.blobs['ip'].shape == (2, 4)  # known before any forward


def test_outputs_are_listed_by_name_as_caffe_does():
    net = make_net('''
        layer { name: "input" type: "Input" top: "x" input_param { shape { dim: 1 } } }
        layer { name: "z" type: "Power" bottom: "x" top: "z" }
        layer { name: "a" type: "Power" bottom: "x" top: "a" }''')
    assert net.outputs == ['a', 'z']


def test_unknown_layer_type_lists_the_known_types():
    with pytest.raises(UnknownLayerError) as info:
        make_net('layer { name: "w" type: "Warp" top: "t" }')
    assert "'w'" in str(info.value) and 'Convolution' in str(info.value)


def test_a_bottom_not_produced_earlier_names_layer_and_blob():
    with pytest.raises(CaffeError, match="'relu'.*'nowhere'"):
        make_net('''
            layer { name: "input" type: "Input" top: "x" input_param { shape { dim: 1 } } }
            layer { name: "relu" type: "ReLU" bottom: "nowhere" top: "y" }''')


def test_a_top_produced_twice_is_an_error():
    with pytest.raises(CaffeError, match="'b'.*'x'.*multiple sources"):
        make_net('''
            layer { name: "input" type: "Input" top: "x" input_param { shape { dim: 1 } } }
            layer { name: "a" type: "Power" bottom: "x" top: "y" }
            layer { name: "b" type: "Power" bottom: "y" top: "x" }''')


def test_too_many_param_specs_is_an_error():
    with pytest.raises(CaffeError, match="'ip'.*too many"):
        make_net('''
            layer { name: "input" type: "Input" top: "x" input_param { shape { dim: 1 dim: 2 } } }
            layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y" param {} param {}
                    param {} inner_product_param { num_output: 1 } }''')


# ---- forward ----------------------------------------------------------------------

def test_forward_matches_numpy():
    out = mlp().forward()
    np.testing.assert_allclose(out['out'], np.maximum(pre_relu(), 0) @ V.T, rtol=1e-5)


def test_in_place_layer_leaves_its_result_in_the_blob():
    net = mlp()
    net.forward()
    np.testing.assert_allclose(net.blobs['ip'].data, np.maximum(pre_relu(), 0), rtol=1e-5)


def test_writes_into_arrays_change_the_next_forward():
    net = mlp()
    net.forward()
    net.params['out'][0].data.flat = [1, 1, 1, 1]
    net.params['ip'][1].data[...] = 0
    net.blobs['x'].data[0] = 0
    expected = np.maximum(np.vstack([np.zeros(3), X[1]]) @ W.T, 0).sum(1, keepdims=True)
    np.testing.assert_allclose(net.forward()['out'], expected, rtol=1e-5)


def test_forward_kwargs_set_the_inputs():
    net = mlp()
    x = X + 1
    out = net.forward(x=x)
    np.testing.assert_allclose(out['out'], np.maximum(x @ W.T + C, 0) @ V.T, rtol=1e-5)
    np.testing.assert_array_equal(net.blobs['x'].data, x)


def test_forward_kwargs_must_match_inputs_and_shapes():
    net = mlp()
    with pytest.raises(CaffeError, match='do not match net inputs'):
        net.forward(y=X)
    with pytest.raises(ShapeError, match=r"'x'.*\(3, 3\).*\(2, 3\)"):
        net.forward(x=np.zeros((3, 3)))


def test_forward_start_and_end_run_part_of_the_net():
    net = mlp()
    out = net.forward(end='ip')
    assert set(out) == {'ip'}
    np.testing.assert_allclose(out['ip'], pre_relu(), rtol=1e-5)  # relu has not run
    net.blobs['ip'].data[...] = 1
    out = net.forward(start='out', blobs=['ip'])
    np.testing.assert_allclose(out['out'], np.full((2, 1), V.sum()), rtol=1e-5)
    assert set(out) == {'out', 'ip'}
    with pytest.raises(CaffeError, match='no layer named'):
        net.forward(start='nope')


def test_loss_tops_are_scalars_holding_their_weight_in_the_diff():
    net = make_net('''
        layer { name: "input" type: "Input" top: "s" top: "l"
                input_param { shape { dim: 2 dim: 3 } shape { dim: 2 } } }
        layer { name: "loss" type: "SoftmaxWithLoss" bottom: "s" bottom: "l" top: "loss"
                loss_weight: 3 }''')
    out = net.forward()
    assert out['loss'].shape == () and net.blobs['loss'].shape == ()
    assert net.blobs['loss'].diff == 3
    assert math.isclose(float(out['loss']), math.log(3), rel_tol=1e-6)
    assert math.isclose(float(net.loss()), 3 * math.log(3), rel_tol=1e-6)


def test_each_forward_may_have_its_own_input_size():
    net = make_net('''
        layer { name: "input" type: "Input" top: "x" input_param { shape { dim: 1 dim: 1
                dim: 4 dim: 4 } } }
        layer { name: "pool" type: "Pooling" bottom: "x" top: "p"
                pooling_param { pool: MAX kernel_size: 2 stride: 2 } }''')
    for h, w in [(4, 4), (5, 7), (2, 3)]:
        net.blobs['x'].reshape(1, 1, h, w)
        net.blobs['x'].data[...] = np.arange(h * w).reshape(1, 1, h, w)
        out = net.forward()['p']
        assert out.shape == (1, 1, -(-(h - 2) // 2) + 1, -(-(w - 2) // 2) + 1)
        assert out[0, 0, -1, -1] == h * w - 1


def test_reshape_propagates_input_shapes_before_forward():
    net = make_net('''
        layer { name: "input" type: "Input" top: "x" input_param { shape { dim: 1 dim: 2
                dim: 4 dim: 4 } } }
        layer { name: "conv" type: "Convolution" bottom: "x" top: "c"
                convolution_param { num_output: 3 kernel_size: 3 } }''')
    net.blobs['x'].reshape(2, 2, 7, 9)
    net.reshape()
    assert net.blobs['c'].shape == (2, 3, 5, 7)


def test_shapes_that_do_not_fit_a_layer_name_it_at_forward():
    net = mlp()
    net.blobs['x'].reshape(2, 5)
    with pytest.raises(ShapeError, match="'ip'"):
        net.forward()


# ---- backward -----------------------------------------------------------------------

def test_in_place_diff_is_the_gradient_before_the_in_place_layer():
    net = mlp()
    net.forward()
    net.backward()
    grad_pre = mlp_grad_pre()  # what Caffe leaves in ip's diff
    np.testing.assert_allclose(net.blobs['ip'].diff, grad_pre, rtol=1e-5)
    np.testing.assert_allclose(net.params['ip'][0].diff, grad_pre.T @ X, rtol=1e-5)
    np.testing.assert_allclose(net.params['ip'][1].diff, grad_pre.sum(0), rtol=1e-5)
    np.testing.assert_allclose(net.params['out'][0].diff,
                               np.maximum(pre_relu(), 0).sum(0, keepdims=True), rtol=1e-5)


def test_a_blob_feeding_two_layers_gets_their_gradients_summed():
    net = make_net('''
        force_backward: true
        layer { name: "input" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
        layer { name: "a" type: "InnerProduct" bottom: "x" top: "a"
                inner_product_param { num_output: 4 bias_term: false } }
        layer { name: "b" type: "InnerProduct" bottom: "x" top: "b"
                inner_product_param { num_output: 4 bias_term: false } }
        layer { name: "prod" type: "Eltwise" bottom: "a" bottom: "b" top: "p" loss_weight: 1
                eltwise_param { operation: PROD } }''')
    A, B = RNG.randn(4, 3).astype(np.float32), RNG.randn(4, 3).astype(np.float32)
    net.params['a'][0].data[...] = A
    net.params['b'][0].data[...] = B
    net.forward(x=X)
    diffs = net.backward()
    a, b = X @ A.T, X @ B.T
    # loss = sum(a * b): d/dx = b A + a B, the two branches summed.
    np.testing.assert_allclose(diffs['x'], b @ A + a @ B, rtol=1e-4)
    np.testing.assert_allclose(net.blobs['a'].diff, b, rtol=1e-5)


def test_loss_weight_scales_every_diff():
    one, two = mlp(1), mlp(2)
    for net in (one, two):
        net.forward()
        net.backward()
    for name in ('ip', 'out'):
        for p1, p2 in zip(one.params[name], two.params[name], strict=True):
            np.testing.assert_allclose(p2.diff, 2 * p1.diff, rtol=1e-6)
            assert np.abs(p1.diff).sum() > 0


def test_param_diffs_accumulate_until_cleared():
    net = mlp()
    net.forward()
    net.backward()
    once = net.params['ip'][0].diff.copy()
    diff_view = net.params['ip'][0].diff
    net.forward()
    net.backward()
    np.testing.assert_allclose(net.params['ip'][0].diff, 2 * once, rtol=1e-6)
    np.testing.assert_allclose(diff_view, 2 * once, rtol=1e-6)  # the same memory
    net.clear_param_diffs()
    assert not net.params['ip'][0].diff.any()
    net.forward()
    net.backward()
    np.testing.assert_allclose(net.params['ip'][0].diff, once, rtol=1e-6)


def test_lr_mult_zero_params_get_no_diff_but_pass_gradient_down():
    net = mlp(text=(MLP % 1).replace('top: "out" loss_weight',
                                     'top: "out" param { lr_mult: 0 } loss_weight'))
    net.forward()
    net.backward()
    assert not net.params['out'][0].diff.any()
    assert np.abs(net.params['ip'][0].diff).sum() > 0
    assert not net.blobs['x'].diff.any()  # inputs need force_backward


def test_force_backward_computes_every_diff():
    net = mlp(text='force_backward: true\n' + (MLP % 1).replace(
        'top: "out" loss_weight', 'top: "out" param { lr_mult: 0 } loss_weight'))
    net.forward(x=X)
    diffs = net.backward()
    grad_pre = mlp_grad_pre()
    np.testing.assert_allclose(diffs['x'], grad_pre @ W, rtol=1e-5)
    np.testing.assert_allclose(net.params['out'][0].diff,
                               np.maximum(pre_relu(), 0).sum(0, keepdims=True), rtol=1e-5)


def test_propagate_down_false_stops_the_gradient_at_that_bottom():
    net = mlp()
    net2 = mlp(text=(MLP % 1).replace('bottom: "ip" top: "out"',
                                      'bottom: "ip" top: "out" propagate_down: false'))
    for n in (net, net2):
        n.forward(x=X)
        n.backward()
    assert np.abs(net.params['ip'][0].diff).sum() > 0
    assert not net2.params['ip'][0].diff.any()
    assert np.abs(net2.params['out'][0].diff).sum() > 0


def test_backward_from_a_layer_starts_from_its_top_diffs():
    net = mlp()
    net.forward()
    seed = RNG.randn(2, 4).astype(np.float32)
    net.blobs['ip'].diff[...] = seed
    net.backward(start='relu')  # the loss layer above is left out
    grad_pre = seed * (pre_relu() > 0)
    np.testing.assert_allclose(net.blobs['ip'].diff, grad_pre, rtol=1e-6)
    np.testing.assert_allclose(net.params['ip'][0].diff, grad_pre.T @ X, rtol=1e-5)
    assert not net.params['out'][0].diff.any()
    # From ip itself, whose top relu changes in place: ip reads that blob's diff as
    # it stands (Caffe's BackwardFromTo), and its param diffs add up.
    before = net.params['ip'][0].diff.copy()
    net.blobs['ip'].diff[...] = seed
    net.backward(start='ip')
    np.testing.assert_allclose(net.params['ip'][0].diff, before + seed.T @ X, rtol=1e-5)


def test_backward_kwargs_seed_the_outputs():
    net = mlp(extra='force_backward: true\n')
    net.forward()
    diffs = net.backward(out=np.array([[2.0], [0.0]]))
    grad_pre = np.vstack([2 * V, np.zeros((1, 4))]) * (pre_relu() > 0)
    np.testing.assert_allclose(diffs['x'], grad_pre @ W, rtol=1e-5)
    # end= stops at that layer (Caffe's BackwardFromTo): its bottoms get their diffs,
    # the layers below keep theirs.
    before = net.params['ip'][0].diff.copy()
    diffs = net.backward(end='relu', out=np.array([[2.0], [0.0]]))
    assert set(diffs) == {'ip'}
    np.testing.assert_allclose(diffs['ip'], grad_pre, rtol=1e-5)
    np.testing.assert_array_equal(net.params['ip'][0].diff, before)


GRAD_NET = '''
force_backward: true
layer { name: "input" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 1 dim: 2 dim: 6 dim: 7 } shape { dim: 1 dim: 1 dim: 6
        dim: 7 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 3 kernel_size: 3 pad: 1
        weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "gaussian" std: 0.1 } } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "up" type: "Deconvolution" bottom: "pool" top: "up"
        convolution_param { num_output: 3 kernel_size: 4 stride: 2
        weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "gaussian" std: 0.1 } } }
layer { name: "crop" type: "Crop" bottom: "up" bottom: "conv" top: "upc"
        crop_param { axis: 2 offset: 1 } }
layer { name: "skip" type: "Convolution" bottom: "conv" top: "skip"
        convolution_param { num_output: 3 kernel_size: 1
        weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "fuse" type: "Eltwise" bottom: "upc" bottom: "skip" top: "fuse" }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fuse" bottom: "label" top: "loss"
        loss_param { ignore_label: 255 } }
'''


def test_whole_net_gradient_matches_finite_differences():
    net = make_net(GRAD_NET).to(torch.float64)
    rng = np.random.RandomState(3)
    net.blobs['data'].data[...] = rng.randn(1, 2, 6, 7)
    label = rng.randint(0, 3, (1, 1, 6, 7)).astype(float)
    label[0, 0, 0, :3] = 255
    net.blobs['label'].data[...] = label

    def loss():
        return float(net.forward()['loss'])

    loss()
    net.backward()
    eps = 1e-6
    checked = [('data', net.blobs['data'])] + [
        ('%s[%d]' % (name, i), b) for name, blobs in net.params.items()
        for i, b in enumerate(blobs)]
    for name, blob in checked:
        analytic = blob.diff.copy()
        assert np.abs(analytic).sum() > 0, name
        flat = blob.data.reshape(-1)
        numeric = np.empty(flat.size)
        for i in range(flat.size):
            keep = flat[i]
            flat[i] = keep + eps
            up = loss()
            flat[i] = keep - eps
            down = loss()
            flat[i] = keep
            numeric[i] = (up - down) / (2 * eps)
        np.testing.assert_allclose(analytic.reshape(-1), numeric, rtol=1e-5, atol=1e-8,
                                   err_msg=name)


# ---- phases and states -----------------------------------------------------------

PHASED = '''
state { stage: "extra" }
layer { name: "input" type: "Input" top: "x" input_param { shape { dim: 1000 } } }
layer { name: "drop" type: "Dropout" bottom: "x" top: "x" include { phase: TRAIN } }
layer { name: "staged" type: "Power" bottom: "x" top: "s" include { stage: "extra" } }
layer { name: "deep" type: "Power" bottom: "x" top: "d" include { min_level: 1 } }
layer { name: "more" type: "Power" bottom: "x" top: "m" include { stage: "more" } }
'''


def test_phase_stage_and_level_rules_select_layers(tmp_path):
    proto = tmp_path / 'phased.prototxt'
    proto.write_text(PHASED)
    train = caffe.Net(str(proto), caffe.TRAIN)
    test = caffe.Net(str(proto), caffe.TEST)
    assert train._layer_names == ['input', 'drop', 'staged']
    assert test._layer_names == ['input', 'staged']
    # x has three readers there, so Caffe's InsertSplits puts a Split layer after it.
    assert caffe.Net(str(proto), caffe.TEST, level=1, stages=['more'])._layer_names == \
        ['input', 'x_input_0_split', 'staged', 'deep', 'more']


def test_dropout_runs_in_train_only():
    train = make_net(PHASED, caffe.TRAIN)
    test = make_net(PHASED, caffe.TEST)
    x = np.ones(1000, np.float32)
    dropped = train.forward(x=x, blobs=['x'])['x']
    assert set(np.unique(dropped)) == {0.0, 2.0}  # kept units scaled by 1 / (1 - 0.5)
    assert 350 < (dropped == 0).sum() < 650
    np.testing.assert_array_equal(test.forward(x=x, blobs=['x'])['x'], x)


# ---- weights: copy_from, save, share_with -------------------------------------------

def test_save_then_load_is_bit_identical_and_keeps_the_layers(tmp_path):
    net = make_net(GRAD_NET)
    path = str(tmp_path / 'w.caffemodel')
    net.save(path)
    other = make_net(GRAD_NET.replace('std: 0.5', 'std: 2'))
    other.copy_from(path)
    for name in net.params:
        for a, b in zip(net.params[name], other.params[name], strict=True):
            assert a.data.tobytes() == b.data.tobytes()
    saved = io.read_caffemodel(path)
    assert [layer.name for layer in saved.layer] == net._layer_names
    up = saved.layer[net._layer_names.index('up')]
    assert up.type == 'Deconvolution' and list(up.bottom) == ['pool']
    assert up.convolution_param.stride == [2] and len(up.blobs) == 2


def test_h5_weights_round_trip(tmp_path):
    net = make_net(GRAD_NET)
    path = str(tmp_path / 'w.caffemodel.h5')
    net.save(path)
    other = make_net(GRAD_NET.replace('std: 0.5', 'std: 2'))
    other.copy_from(path)
    np.testing.assert_array_equal(other.params['up'][0].data, net.params['up'][0].data)


def test_hdf5_weights_without_an_extension_are_known_by_their_content(tmp_path):
    # pycaffe's test_save_hdf5 / test_load_hdf5 use tempfile names: no suffix. Caffe's
    # CopyTrainedLayersFrom asks H5Fis_hdf5 of the content.
    import surgery
    net = make_net(GRAD_NET)
    path = str(tmp_path / 'weights_tmp')
    net.save_hdf5(path)
    with open(path, 'rb') as f:
        assert f.read(8) == b'\x89HDF\r\n\x1a\n'  # HDF5's signature
    for load in (lambda n: n.load_hdf5(path), lambda n: n.copy_from(path)):
        other = make_net(GRAD_NET.replace('std: 0.5', 'std: 2'))
        load(other)
        for name in net.params:
            assert len(net.params[name]) == len(other.params[name])
            for a, b in zip(net.params[name], other.params[name]):
                assert a.data.tobytes() == b.data.tobytes(), name
    param = net_param(GRAD_NET)
    param.state.phase = caffe.TRAIN
    built = caffe.Net(param, weights=path)
    assert built.params['up'][0].data.tobytes() == net.params['up'][0].data.tobytes()
    saved = surgery.SavedParams(path)  # what solve.py's --weights and surgery read
    np.testing.assert_array_equal(saved.params['up'][0].data, net.params['up'][0].data)
    # A binary caffemodel named .h5 is the binary proto it is.
    binary = str(tmp_path / 'binary.h5')
    net.save(str(tmp_path / 'binary.caffemodel'))
    os.replace(str(tmp_path / 'binary.caffemodel'), binary)
    other = make_net(GRAD_NET.replace('std: 0.5', 'std: 2'))
    other.copy_from(binary)
    assert other.params['up'][0].data.tobytes() == net.params['up'][0].data.tobytes()


def test_copy_from_ignores_layers_the_net_lacks(tmp_path):
    source = make_net(GRAD_NET)
    path = str(tmp_path / 'w.caffemodel')
    source.save(path)
    small = make_net('''
        layer { name: "input" type: "Input" top: "data"
                input_param { shape { dim: 1 dim: 2 dim: 6 dim: 7 } } }
        layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
                convolution_param { num_output: 3 kernel_size: 3 pad: 1 } }''')
    small.copy_from(path)
    np.testing.assert_array_equal(small.params['conv'][0].data, source.params['conv'][0].data)


def write_weights(path, layer_name, *blobs):
    param = caffe.caffe_pb2.NetParameter()
    layer = param.layer.add(name=layer_name, type='InnerProduct')
    layer.blobs.extend(blobs)
    io.write_caffemodel(param, path)


def test_copy_from_count_mismatch_names_the_layer(tmp_path):
    path = str(tmp_path / 'w.caffemodel')
    write_weights(path, 'ip', io.array_to_blobproto(W))
    with pytest.raises(CaffeError, match="'ip'.*has 1.*net 2"):
        mlp().copy_from(path)


def test_copy_from_shape_mismatch_names_layer_index_and_shapes(tmp_path):
    path = str(tmp_path / 'w.caffemodel')
    write_weights(path, 'ip', io.array_to_blobproto(np.zeros((3, 4))),
                  io.array_to_blobproto(C))
    with pytest.raises(CaffeError, match=r"param 0 .*'ip'.*\(3, 4\).*\(4, 3\)"):
        mlp().copy_from(path)


def test_copy_from_accepts_legacy_four_axis_shapes(tmp_path):
    weight = caffe.caffe_pb2.BlobProto(num=1, channels=1, height=4, width=3)
    weight.data.extend(W.ravel() + 1)
    bias = caffe.caffe_pb2.BlobProto(num=1, channels=1, height=1, width=4)
    bias.data.extend(C)
    path = str(tmp_path / 'legacy.caffemodel')
    write_weights(path, 'ip', weight, bias)
    net = mlp()
    net.copy_from(path)
    np.testing.assert_array_equal(net.params['ip'][0].data, W + 1)
    assert net.params['ip'][0].shape == (4, 3)


SHARED = '''
layer { name: "input" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "a" type: "InnerProduct" bottom: "x" top: "a" param { name: "w" }
        inner_product_param { num_output: 3 bias_term: false
        weight_filler { type: "gaussian" std: 1 } } }
layer { name: "b" type: "InnerProduct" bottom: "a" top: "b" param { name: "w" }
        inner_product_param { num_output: 3 bias_term: false } }
layer { name: "sum" type: "Power" bottom: "b" top: "loss" loss_weight: 1 }
'''


def test_params_shared_by_name_are_one_blob_with_summed_diffs():
    net = make_net(SHARED)
    assert net.params['a'][0] is net.params['b'][0]
    assert len(net.learnable_params) == 1
    M = net.params['a'][0].data.copy()
    net.forward(x=X)
    net.backward()
    a = X @ M.T
    ones = np.ones((2, 3))
    expected = ones.T @ a + (ones @ M).T @ X  # through b, then through a
    np.testing.assert_allclose(net.params['a'][0].diff, expected, rtol=1e-4)


def test_shared_params_must_have_the_owner_shape():
    text = SHARED.replace('bottom: "a" top: "b" param { name: "w" }\n'
                          '        inner_product_param { num_output: 3',
                          'bottom: "a" top: "b" param { name: "w" }\n'
                          '        inner_product_param { num_output: 2')
    assert text != SHARED
    with pytest.raises(CaffeError, match=r"'b'.*shares 'w'.*\(2, 3\).*\(3, 3\)"):
        make_net(text)


def test_h5_skips_the_placeholder_of_a_shared_param(tmp_path):
    net = make_net(SHARED)
    path = str(tmp_path / 'shared.caffemodel.h5')
    net.save(path)
    other = make_net(SHARED)
    other.params['a'][0].data[...] = 0
    other.copy_from(path)
    np.testing.assert_array_equal(other.params['b'][0].data, net.params['a'][0].data)


def test_share_with_shares_data_but_not_diffs():
    train, test = mlp(), mlp()
    test.share_with(train)
    train.params['ip'][0].data[...] = 5
    assert (test.params['ip'][0].data == 5).all()
    test.params['ip'][0].data[...] = W
    assert (train.params['ip'][0].data == W).all()
    train.forward()
    train.backward()
    np.testing.assert_allclose(train.params['ip'][0].diff, mlp_grad_pre().T @ X, rtol=1e-5)
    assert not test.params['ip'][0].diff.any()


def test_share_with_checks_shapes():
    other = make_net((MLP % 1).replace('num_output: 4', 'num_output: 5'))
    with pytest.raises(CaffeError, match=r"'ip'.*\(4, 3\).*\(5, 3\)"):
        mlp().share_with(other)


# ---- devices --------------------------------------------------------------------------

@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the error without CUDA')
def test_gpu_mode_without_cuda_fails_clearly_at_forward():
    net = mlp()
    caffe.set_mode_gpu()
    with pytest.raises(CaffeError, match='CUDA is not available'):
        net.forward()
    caffe.set_mode_cpu()
    net.forward()


def test_mirrored_memory_gives_the_same_results(monkeypatch):
    """The accelerator code path (host mirrors, SyncedMemory heads), run on the CPU."""
    expected_net = mlp()
    expected_net.forward()
    expected_net.backward()
    monkeypatch.setattr(blob_module, 'needs_mirror', lambda dev: True)
    net = mlp()
    net._move(torch.device('cpu'))
    assert net.params['ip'][0]._data.mirrored
    net.params['ip'][0].data[...] = W  # host writes before the forward
    out = net.forward(x=X)
    np.testing.assert_allclose(out['out'], expected_net.blobs['out'].data, rtol=1e-6)
    net.backward()
    net.backward()
    np.testing.assert_allclose(net.params['ip'][0].diff,
                               2 * expected_net.params['ip'][0].diff, rtol=1e-6)
    np.testing.assert_allclose(net.blobs['ip'].diff, expected_net.blobs['ip'].diff)
    net.clear_param_diffs()
    assert not net.params['ip'][0].diff.any()
    # A host write into an intermediate blob reaches the device for a partial
    # forward, and the backward still pending through it uses it, as in Caffe.
    net.blobs['ip'].data[...] = 1
    net.forward(start='out')
    net.backward()
    np.testing.assert_array_equal(net.params['out'][0].diff, [[2, 2, 2, 2]])


# ---- the FCN nets -------------------------------------------------------------------------

def fcn_with_input(stage, shape):
    from nets import voc
    train = voc.stage_nets(stage, width=1 / 16.)['train']
    param = caffe.caffe_pb2.NetParameter(name=train.name)
    data = param.layer.add(name='input', type='Input', top=['data', 'label'])
    data.input_param.shape.add().dim.extend(shape)
    data.input_param.shape.add().dim.extend((shape[0], 1) + tuple(shape[2:]))
    assert train.layer[0].type == 'Python'
    for layer in train.layer[1:]:
        param.layer.add().CopyFrom(layer)
    return caffe.Net(param, caffe.TRAIN)


def test_narrow_fcn8s_train_net_runs_forward_and_backward():
    net = fcn_with_input('fcn8s', (1, 3, 40, 50))
    for name, layer in net.layer_dict.items():  # bilinear upsampling, as surgery sets it
        if layer.type == 'Deconvolution':
            weight = net.params[name][0]
            weight.data[...] = 0
            weight.data[range(weight.num), range(weight.channels)] = \
                bilinear_kernel(weight.shape[-1])
    rng = np.random.RandomState(0)
    net.blobs['data'].data[...] = rng.randn(1, 3, 40, 50) * 50
    label = rng.randint(0, 21, (1, 1, 40, 50))
    label[..., :5] = 255
    net.blobs['label'].data[...] = label
    out = net.forward()
    assert net.blobs['score'].shape == (1, 21, 40, 50)
    # The score layers start at zero, so every pixel predicts 1 / 21; the loss is
    # summed over the 40 x 45 labelled pixels (normalize: false).
    assert math.isclose(float(out['loss']), 40 * 45 * math.log(21), rel_tol=1e-4)

    for name, layer in net.layer_dict.items():  # random convolutions: every path is live
        if layer.type == 'Convolution':
            weight = net.params[name][0]
            fan_in = weight.count // weight.num
            weight.data[...] = rng.randn(*weight.shape) * math.sqrt(2.0 / fan_in)
    out = net.forward()
    assert np.isfinite(out['loss']) and out['loss'] > 0
    net.backward()
    for name, blobs in net.params.items():
        trained = net.layer_dict[name].type != 'Deconvolution'  # lr_mult 0
        assert bool(np.abs(blobs[0].diff).sum() > 0) == trained, name
    assert net.blobs['conv1_1'].diff.shape == (1, 4, 238, 248)


def test_a_net_without_autograd_keeps_no_graph():
    net = mlp(phase=caffe.TEST)
    net.forward()
    net.backward()  # Caffe backpropagates through TEST nets too
    np.testing.assert_allclose(net.blobs['ip'].diff, mlp_grad_pre(), rtol=1e-5)
    net.autograd = False
    out = net.forward()
    np.testing.assert_allclose(out['out'], np.maximum(pre_relu(), 0) @ V.T, rtol=1e-5)
    assert net.blobs['out']._data.tensor.grad_fn is None
    net.clear_param_diffs()
    net.backward()  # no graph: each layer is recomputed from the blobs, as Caffe's
    np.testing.assert_allclose(net.blobs['ip'].diff, mlp_grad_pre(), rtol=1e-5)


def test_forward_all_runs_batches_and_drops_the_padding():
    net = mlp()
    xs = RNG.randn(5, 3).astype(np.float32)
    out = net.forward_all(x=xs)
    assert out['out'].shape == (5, 1)
    np.testing.assert_allclose(out['out'], np.maximum(xs @ W.T + C, 0) @ V.T, rtol=1e-5)


def test_backward_from_a_layer_includes_the_losses_below_it():
    net = make_net('''
        force_backward: true
        layer { name: "input" type: "Input" top: "x" input_param { shape { dim: 3 } } }
        layer { name: "a" type: "Power" bottom: "x" top: "a" loss_weight: 1 }
        layer { name: "b" type: "Power" bottom: "x" top: "b" power_param { scale: 2 } }
        layer { name: "c" type: "Power" bottom: "b" top: "c" loss_weight: 5 }''')
    net.forward(x=np.ones(3))
    net.blobs['b'].diff[...] = 1
    diffs = net.backward(start='b')  # c's loss is above b: left out
    np.testing.assert_array_equal(diffs['x'], [3, 3, 3])  # 1 from a, 2 through b
    diffs = net.backward()
    np.testing.assert_array_equal(diffs['x'], [11, 11, 11])  # 1 from a, 5 * 2 through c


def test_set_random_seed_makes_initial_weights_reproducible():
    try:
        caffe.set_random_seed(5)
        first = make_net(GRAD_NET).params['conv'][0].data.copy()
        make_net(GRAD_NET)
        caffe.set_random_seed(5)
        again = make_net(GRAD_NET).params['conv'][0].data
        np.testing.assert_array_equal(first, again)
        caffe.set_random_seed(6)
        assert not np.array_equal(make_net(GRAD_NET).params['conv'][0].data, first)
    finally:
        caffe.set_random_seed(mode.DEFAULT_SEED)
