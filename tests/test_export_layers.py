"""ONNX export of every layer type with a deploy meaning, and of zoo-style deploy
nets (torchcaffe/onnx_export/): each model runs in onnxruntime and must give what
the engine gives on the same input, within 1e-4 of the output's scale (most agree
to float32 rounding), at the prototxt's size and at another where the net allows.
Weights are random (tests/random_weights.py) and BatchNorm statistics are Caffe's
running sums with a moving-average factor near 1000 (onnx_check.py).
"""
import subprocess
import sys

import numpy as np
import onnx
import pytest

import export as export_cli
import torchcaffe as caffe
from nets import deploy_zoo
from onnx_check import (assert_matches_engine, deploy_net, image, run_onnx,
                        RTOL, ATOL)
from torchcaffe import caffe_pb2, onnx_export
from torchcaffe.errors import UnknownLayerError

ROOT = __import__('pathlib').Path(__file__).resolve().parent.parent


def ops(model):
    return [n.op_type for n in model.graph.node]


def attrs(node):
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def exported(net, **kwargs):
    model = onnx_export.to_onnx(net, **kwargs)
    onnx_export.validate(model, full_check=True)
    return model


def one_layer(layer, shape=(2, 3, 5, 7), extra_inputs=()):
    """A net of an Input ``data`` (plus ``extra_inputs``: (name, shape)) and ``layer``
    (prototxt text of one or more layers reading them)."""
    text = 'layer { name: "data" type: "Input" top: "data" %s' % ''.join(
        ' top: "%s"' % name for name, _ in extra_inputs)
    text += ' input_param { %s } }\n' % ' '.join(
        'shape { %s }' % ' '.join('dim: %d' % d for d in s)
        for s in [shape] + [s for _, s in extra_inputs])
    return text + layer


# ------------------------------------------------------------------------ neuron layers

NEURONS = {
    'ReLU': 'type: "ReLU"',
    'ReLU_leaky': 'type: "ReLU" relu_param { negative_slope: 0.1 }',
    'Sigmoid': 'type: "Sigmoid"',
    'TanH': 'type: "TanH"',
    'AbsVal': 'type: "AbsVal"',
    'BNLL': 'type: "BNLL"',
    'ELU': 'type: "ELU" elu_param { alpha: 0.5 }',
    'PReLU': 'type: "PReLU"',
    'PReLU_shared': 'type: "PReLU" prelu_param { channel_shared: true }',
    'Exp': 'type: "Exp" exp_param { base: 2 scale: 0.05 shift: 0.5 }',
    'Exp_e': 'type: "Exp" exp_param { scale: -0.1 }',
    'Log': 'type: "Log" log_param { base: 10 scale: 0.5 shift: 100 }',
    'Log_nan': 'type: "Log"',   # of negative inputs: NaN in both
    'Power': 'type: "Power" power_param { power: 2 scale: 0.5 shift: 1 }',
    'Power_root': 'type: "Power" power_param { power: 0.5 }',
    'Threshold': 'type: "Threshold" threshold_param { threshold: 3 }',
    'Clip': 'type: "Clip" clip_param { min: -6 max: 6 }',
    'Swish': 'type: "Swish"',
    'Swish_beta': 'type: "Swish" swish_param { beta: 0.7 }',
    'Dropout': 'type: "Dropout" dropout_param { dropout_ratio: 0.4 }',
}


@pytest.mark.parametrize('case', sorted(NEURONS))
def test_each_neuron_layer_alone_matches_engine(case):
    # PReLU's slopes are random per channel, so the channels differ
    net = deploy_net(one_layer('layer { name: "n" %s bottom: "data" top: "y" }'
                               % NEURONS[case]), seed=len(case))
    model = exported(net)
    assert len(model.graph.node) >= 1
    for shape in [(2, 3, 5, 7), (1, 3, 9, 4)]:
        x = image(shape, seed=shape[2])
        got = assert_matches_engine(model, net, {'data': x})['y']
        assert np.unique(got).size > 1 or case == 'Threshold'


def test_neuron_layers_in_place_chain_matches_engine():
    layers = ''.join('layer { name: "n%d" %s bottom: "data2" top: "data2" }\n' % (i, t)
                     for i, t in enumerate(NEURONS[k] for k in
                                           ('Clip', 'ELU', 'PReLU', 'Swish', 'BNLL',
                                            'Dropout', 'ReLU_leaky', 'Power')))
    net = deploy_net(one_layer('layer { name: "copy" type: "Power" bottom: "data" '
                               'top: "data2" }\n' + layers))
    model = exported(net)
    assert [o.name for o in model.graph.output] == ['data2']
    assert_matches_engine(model, net, {'data': image((2, 3, 6, 5))})


def test_prelu_slopes_are_the_blob_per_channel():
    net = deploy_net(one_layer('layer { name: "p" type: "PReLU" bottom: "data" top: "y" }'))
    slopes = net.params['p'][0].data.copy()
    x = -np.ones((1, 3, 2, 2), np.float32)
    got = run_onnx(exported(net), {'data': x})['y']
    np.testing.assert_allclose(got, -slopes[None, :, None, None] * np.ones_like(x), rtol=1e-6)


def test_threshold_and_clip_boundaries_follow_caffe():
    net = deploy_net(one_layer(
        'layer { name: "t" type: "Threshold" bottom: "data" top: "t" '
        '        threshold_param { threshold: 1 } }\n'
        'layer { name: "c" type: "Clip" bottom: "data" top: "c" '
        '        clip_param { min: 0 max: 6 } }', shape=(1, 5)))
    x = np.array([[0.5, 1, 1.5, 6, 7]], np.float32)
    got = run_onnx(exported(net), {'data': x})
    np.testing.assert_array_equal(got['t'], [[0, 0, 1, 1, 1]])   # 1 where x > threshold
    np.testing.assert_array_equal(got['c'], [[0.5, 1, 1.5, 6, 6]])


# ------------------------------------------------------------------------ BatchNorm

BN = one_layer('layer { name: "bn" type: "BatchNorm" bottom: "data" top: "y" %s }',
               shape=(2, 4, 3, 5))


def test_batch_norm_divides_the_running_sums_by_the_scale_factor():
    net = deploy_net(BN % '', seed=2)
    mean_sum, var_sum, factor = (np.array(b.data, np.float64) for b in net.params['bn'])
    assert factor[0] not in (0, 1)
    x = image((2, 4, 3, 5))
    got = run_onnx(exported(net), {'data': x})['y']
    view = (1, 4, 1, 1)
    want = ((x - (mean_sum / factor[0]).reshape(view))
            / np.sqrt((var_sum / factor[0]).reshape(view) + 1e-5))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert_matches_engine(exported(net), net, {'data': x})


def test_batch_norm_with_a_zero_factor_uses_zero_statistics():
    net = deploy_net(BN % 'batch_norm_param { eps: 0.01 }')
    for blob in net.params['bn']:
        blob.data[...] = 0 if blob.data.size == 1 else 5.0
    x = image((2, 4, 3, 5))
    got = run_onnx(exported(net), {'data': x})['y']
    np.testing.assert_allclose(got, x / np.sqrt(np.float32(0.01)), rtol=1e-6)


def test_batch_norm_without_global_stats_uses_the_batch_statistics():
    net = deploy_net(BN % 'batch_norm_param { use_global_stats: false }')
    model = exported(net)
    x = image((2, 4, 3, 5))
    got = run_onnx(model, {'data': x})['y']
    mean = x.astype(np.float64).mean(axis=(0, 2, 3), keepdims=True)
    var = ((x - mean) ** 2).mean(axis=(0, 2, 3), keepdims=True)
    np.testing.assert_allclose(got, (x - mean) / np.sqrt(var + 1e-5), rtol=1e-4, atol=1e-5)
    assert_matches_engine(model, net, {'data': image((3, 4, 6, 2))})


def test_batch_norm_on_two_axes_matches_engine():
    net = deploy_net(one_layer('layer { name: "bn" type: "BatchNorm" bottom: "data" '
                               'top: "y" }', shape=(3, 6)))
    assert_matches_engine(exported(net), net, {'data': image((5, 6))})


# ------------------------------------------------------------------------ zoo-style nets

ZOO = {
    'resnet': (deploy_zoo.resnet, [(1, 3, 64, 64), (2, 3, 57, 70)]),
    'mobilenet_v1': (deploy_zoo.mobilenet_v1, [(1, 3, 48, 48), (2, 3, 41, 53)]),
    'mobilenet_v2': (deploy_zoo.mobilenet_v2, [(1, 3, 48, 48), (2, 3, 37, 50)]),
    'prelu': (deploy_zoo.prelu_net, [(1, 3, 24, 24), (3, 3, 24, 24)]),
    'elu': (deploy_zoo.elu_net, [(1, 3, 24, 24), (2, 3, 24, 24)]),
}


@pytest.mark.parametrize('name', sorted(ZOO))
def test_zoo_style_deploy_net_matches_engine(name):
    make, sizes = ZOO[name]
    net = deploy_net(make(), seed=7)
    # the logits too: a saturated softmax would hide their differences
    model = exported(net, outputs=['fc', 'prob'])
    logits = []
    for k, shape in enumerate(sizes):
        got = assert_matches_engine(model, net, {'data': image(shape, seed=k)},
                                    rtol=RTOL, atol=ATOL)
        prob = got['prob'].reshape(shape[0], -1)
        np.testing.assert_allclose(prob.sum(axis=1), 1, rtol=1e-5)
        logits.append(got['fc'].reshape(shape[0], -1))
    # the input reaches the scores: other images, other logits
    assert np.abs(logits[0][0] - logits[1][0]).max() > 1e-2 * np.abs(logits[0]).max()


def test_resnet_exports_batch_norm_scale_and_eltwise_in_place():
    net = deploy_net(deploy_zoo.resnet(), seed=1)
    model = exported(net)
    kinds = ops(model)
    # one Sub / Div per BatchNorm, one Mul / Add per Scale, Sum per Eltwise
    batch_norms = sum(layer.type == 'BatchNorm' for layer in net.layers)
    assert batch_norms == kinds.count('Div') == 1 + 4 + 7   # conv1, 2a (with branch1), 3a, 3b
    assert kinds.count('Sum') == 3
    assert 'BatchNormalization' not in kinds


def test_mobilenets_use_depthwise_convolutions_and_relu6_clips():
    for make, depthwise in ((deploy_zoo.mobilenet_v1, 4), (deploy_zoo.mobilenet_v2, 3)):
        net = deploy_net(make())
        model = exported(net)
        convs = [n for n in model.graph.node if n.op_type == 'Conv']
        grouped = [attrs(n)['group'] for n in convs if attrs(n).get('group', 1) > 1]
        assert len(grouped) == depthwise
        for node in convs:   # a depthwise weight is (channels, 1, 3, 3)
            if attrs(node).get('group', 1) > 1:
                weight = next(t for t in model.graph.initializer if t.name == node.input[1])
                assert list(weight.dims) == [attrs(node)['group'], 1, 3, 3]
    assert ops(model).count('Clip') == 8


# ------------------------------------------------------------------------ export.py --check

def write_net(tmp_path, text, seed=3):
    proto = tmp_path / 'deploy.prototxt'
    proto.write_text(text)
    net = deploy_net(text, seed=seed)
    weights = tmp_path / 'w.caffemodel'
    net.save(str(weights))
    return proto, weights


@pytest.mark.parametrize('name', sorted(ZOO))
def test_export_script_check_passes_on_zoo_nets(tmp_path, capsys, name):
    proto, weights = write_net(tmp_path, ZOO[name][0]())
    out = tmp_path / 'net.onnx'
    assert export_cli.main([str(proto), str(weights), str(out), '--check']) == 0
    printed = capsys.readouterr().out
    assert 'prob: max |onnx - caffe|' in printed and printed.rstrip().endswith('ok')


def test_export_script_check_in_a_subprocess_on_a_mobilenet(tmp_path):
    proto, weights = write_net(tmp_path, deploy_zoo.mobilenet_v2())
    out = tmp_path / 'mnv2.onnx'
    done = subprocess.run([sys.executable, str(ROOT / 'export.py'), str(proto), str(weights),
                           str(out), '--check'], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.rstrip().endswith('ok') and out.is_file()


def test_export_script_check_passes_on_each_neuron_layer(tmp_path, capsys):
    for case in sorted(NEURONS):
        proto, weights = write_net(tmp_path, one_layer(
            'layer { name: "n" %s bottom: "data" top: "y" }' % NEURONS[case]))
        assert export_cli.main([str(proto), str(weights), str(tmp_path / 'n.onnx'),
                                '--check']) == 0, case
        assert capsys.readouterr().out.rstrip().endswith('ok'), case


# ------------------------------------------------------------------------ common layers

def check_layer(layer, shape=(2, 3, 5, 7), extra_inputs=(), inputs=None, sizes=None,
                seed=0):
    """Export a one-layer net, check it, compare with the engine on ``inputs``
    (default random images at ``shape`` and at each of ``sizes``)."""
    net = deploy_net(one_layer(layer, shape, extra_inputs), seed=seed)
    model = exported(net)
    runs = inputs or [{'data': image(s, seed=i)} for i, s in enumerate([shape] + (sizes or []))]
    outs = [assert_matches_engine(model, net, feed) for feed in runs]
    return model, net, outs


@pytest.mark.parametrize('param', [
    '', 'axis: 0 num_axes: -1', 'axis: 2 num_axes: 2', 'axis: -1', 'num_axes: 0',
    'bias_term: true', 'axis: 1 num_axes: 2 bias_term: true'])
def test_scale_with_a_learned_factor_broadcasts_from_axis(param):
    check_layer('layer { name: "s" type: "Scale" bottom: "data" top: "y" scale_param { %s } }'
                % param)


def _broadcast(operand, axis, ndim=4):
    return operand.reshape((1,) * axis + operand.shape + (1,) * (ndim - axis - operand.ndim))


@pytest.mark.parametrize('operand,axis', [((2, 3), 0), ((3,), 1), ((3, 5), 1), ((5, 7), 2),
                                          ((), 1)])
@pytest.mark.parametrize('kind', ['Scale', 'Bias'])
def test_scale_and_bias_with_a_second_bottom(kind, operand, axis):
    field = {'Scale': 'scale_param', 'Bias': 'bias_param'}[kind]
    layer = ('layer { name: "s" type: "%s" bottom: "data" bottom: "w" top: "y" %s { axis: %d } }'
             % (kind, field, axis))
    x, w = image((2, 3, 5, 7)), image(operand, seed=9)
    _, _, (out,) = check_layer(layer, extra_inputs=[('w', operand)],
                               inputs=[{'data': x, 'w': w}])
    # Caffe lays a 0-axis operand at axis 0
    view = _broadcast(w, axis if operand else 0)
    np.testing.assert_allclose(out['y'], x * view if kind == 'Scale' else x + view, rtol=1e-6)


def test_scale_with_a_second_bottom_and_a_learned_bias():
    x, w = image((2, 3, 5, 7)), image((3, 5), seed=9)
    _, net, (out,) = check_layer(
        'layer { name: "s" type: "Scale" bottom: "data" bottom: "w" top: "y" '
        'scale_param { bias_term: true } }', extra_inputs=[('w', (3, 5))],
        inputs=[{'data': x, 'w': w}])
    bias = net.params['s'][0].data
    np.testing.assert_allclose(out['y'], x * _broadcast(w, 1) + _broadcast(bias, 1),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('param,axis', [('', 1), ('axis: 0 num_axes: 2', 0),
                                        ('axis: 2 num_axes: -1', 2), ('num_axes: 0', 1)])
def test_bias_with_a_learned_blob(param, axis):
    _, net, (out,) = check_layer(
        'layer { name: "b" type: "Bias" bottom: "data" top: "y" bias_param { %s } }' % param)
    bias = net.params['b'][0].data
    np.testing.assert_allclose(out['y'], image((2, 3, 5, 7), seed=0) + _broadcast(bias, axis),
                               rtol=1e-6)


@pytest.mark.parametrize('param', ['', 'normalize_variance: false', 'across_channels: true',
                                   'across_channels: true eps: 0.5'])
def test_mvn_matches_engine_and_numpy(param):
    model, _, (out, _) = check_layer(
        'layer { name: "m" type: "MVN" bottom: "data" top: "y" mvn_param { %s } }' % param,
        sizes=[(1, 3, 4, 9)])
    x = image((2, 3, 5, 7), seed=0).astype(np.float64)
    axes = (1, 2, 3) if 'across' in param else (2, 3)
    y = x - x.mean(axis=axes, keepdims=True)
    if 'normalize_variance' not in param:
        eps = 0.5 if 'eps: 0.5' in param else 1e-9
        y /= np.sqrt((y * y).mean(axis=axes, keepdims=True)) + eps
    np.testing.assert_allclose(out['y'], y, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('operation', ['SUM', 'ASUM', 'SUMSQ', 'MEAN'])
@pytest.mark.parametrize('axis', [0, 1, 2, -1])
def test_reduction_matches_engine_and_numpy(operation, axis):
    model, _, (out, _) = check_layer(
        'layer { name: "r" type: "Reduction" bottom: "data" top: "y" '
        'reduction_param { operation: %s axis: %d coeff: 0.5 } }' % (operation, axis),
        sizes=[(3, 3, 4, 6)])
    x = image((2, 3, 5, 7), seed=0).astype(np.float64)
    a = axis % 4
    f = {'SUM': x, 'ASUM': np.abs(x), 'SUMSQ': x * x, 'MEAN': x}[operation]
    want = f.reshape(x.shape[:a] + (-1,)).sum(-1) * 0.5
    if operation == 'MEAN':
        want /= np.prod(x.shape[a:])
    assert out['y'].shape == x.shape[:a]
    np.testing.assert_allclose(out['y'], want, rtol=1e-5)


@pytest.mark.parametrize('axis,tiles', [(1, 3), (2, 2), (0, 2), (-1, 4)])
def test_tile_repeats_the_trailing_block(axis, tiles):
    _, _, (out, _) = check_layer(
        'layer { name: "t" type: "Tile" bottom: "data" top: "y" '
        'tile_param { axis: %d tiles: %d } }' % (axis, tiles), sizes=[(1, 3, 2, 3)])
    x = image((2, 3, 5, 7), seed=0)
    reps = [1] * 4
    reps[axis] = tiles
    np.testing.assert_array_equal(out['y'], np.tile(x, reps))


@pytest.mark.parametrize('param', ['', 'top_k: 3', 'out_max_val: true', 'top_k: 2 out_max_val: true',
                                   'axis: 1', 'axis: 1 top_k: 2', 'axis: 3 out_max_val: true',
                                   'axis: -2 top_k: 3 out_max_val: true'])
def test_argmax_ranks_ties_by_the_larger_index_as_caffe(param):
    # integers in [0, 3): many ties, which Caffe's sort breaks toward the larger index
    rng = np.random.default_rng(4)
    feeds = [{'data': rng.integers(0, 3, s).astype(np.float32)}
             for s in [(2, 3, 5, 7), (3, 3, 4, 6)]]
    _, _, outs = check_layer('layer { name: "a" type: "ArgMax" bottom: "data" top: "y" '
                             'argmax_param { %s } }' % param, inputs=feeds)
    if param == '':
        flat = feeds[0]['data'].reshape(2, -1)
        last_max = flat.shape[1] - 1 - np.argmax(flat[:, ::-1], axis=1)
        np.testing.assert_array_equal(outs[0]['y'].reshape(2), last_max)


def test_softmax_over_any_axis():
    for axis in (0, 1, 2, -1):
        _, _, (out, _) = check_layer(
            'layer { name: "s" type: "Softmax" bottom: "data" top: "y" '
            'softmax_param { axis: %d } }' % axis, sizes=[(3, 3, 4, 2)])
        np.testing.assert_allclose(out['y'].sum(axis=axis), 1, rtol=1e-5)


def test_embed_gathers_rows_and_adds_the_bias():
    layer = ('layer { name: "e" type: "Embed" bottom: "data" top: "y" embed_param { '
             'num_output: 4 input_dim: 10 bias_term: %s } }')
    for bias in ('true', 'false'):
        net = deploy_net(one_layer(layer % bias, shape=(3, 5)))
        model = exported(net)
        index = np.random.default_rng(0).integers(0, 10, (3, 5)).astype(np.float32)
        got = assert_matches_engine(model, net, {'data': index})['y']
        weight = net.params['e'][0].data
        want = weight[index.astype(int)] + (net.params['e'][1].data if bias == 'true' else 0)
        np.testing.assert_allclose(got, want, rtol=1e-6)
        assert_matches_engine(model, net, {'data': index[:2].copy()})


def test_parameter_layer_outputs_its_blob():
    net = deploy_net(one_layer(
        'layer { name: "p" type: "Parameter" top: "p" '
        '        parameter_param { shape { dim: 3 dim: 5 dim: 1 dim: 1 } } }\n'
        'layer { name: "s" type: "Eltwise" bottom: "data" bottom: "p" top: "y" '
        '        eltwise_param { operation: PROD } }', shape=(3, 5, 1, 1)))
    net.params['p'][0].data[...] = np.arange(15).reshape(3, 5, 1, 1)
    model = exported(net)
    got = assert_matches_engine(model, net, {'data': np.ones((3, 5, 1, 1), np.float32)})
    np.testing.assert_array_equal(got['y'].ravel(), np.arange(15))


def test_filter_keeps_the_selected_items():
    net = deploy_net(one_layer(
        'layer { name: "f" type: "Filter" bottom: "data" bottom: "sel" top: "y" }',
        shape=(4, 3, 2, 2), extra_inputs=[('sel', (4, 1))]))
    model = exported(net)
    x = image((4, 3, 2, 2))
    for sel in ([1, 0, 0, 1], [0, 1, 1, 1], [0, 0, 0, 0]):
        feed = {'data': x, 'sel': np.array(sel, np.float32).reshape(4, 1)}
        got = assert_matches_engine(model, net, feed)['y']
        np.testing.assert_array_equal(got, x[np.array(sel) != 0])


def test_batch_reindex_gathers_items():
    net = deploy_net(one_layer(
        'layer { name: "r" type: "BatchReindex" bottom: "data" bottom: "idx" top: "y" }',
        shape=(4, 3, 2, 2), extra_inputs=[('idx', (5,))]))
    x = image((4, 3, 2, 2))
    idx = np.array([3, 0, 0, 2, 1], np.float32)
    got = assert_matches_engine(exported(net), net, {'data': x, 'idx': idx})['y']
    np.testing.assert_array_equal(got, x[idx.astype(int)])


# ------------------------------------------------------------------------ vision layers

@pytest.mark.parametrize('param', ['kernel_size: 3', 'kernel_size: 3 stride: 2 pad: 1',
                                   'kernel_h: 2 kernel_w: 3 dilation: 2 pad: 1'])
def test_im2col_is_a_one_hot_grouped_convolution(param):
    model, _, _ = check_layer('layer { name: "i" type: "Im2col" bottom: "data" top: "y" '
                              'convolution_param { %s } }' % param, shape=(2, 3, 7, 8),
                              sizes=[(1, 3, 9, 6)])
    assert ops(model) == ['Conv']


@pytest.mark.parametrize('param', ['pyramid_height: 1', 'pyramid_height: 3',
                                   'pyramid_height: 3 pool: AVE', 'pyramid_height: 2 pool: AVE'])
def test_spp_computes_its_pyramid_geometry_at_every_size(param):
    # sizes whose levels pad (7 into 4 bins: kernel 2, pad 1) and drop a window
    # (9 into 2 bins: kernel 5, pad 1, ceil(6 / 5) + 1 = 3 windows, the last
    # starting at 10 >= 9 + 1)
    check_layer('layer { name: "s" type: "SPP" bottom: "data" top: "y" spp_param { %s } }'
                % param, shape=(2, 3, 9, 9), sizes=[(1, 3, 7, 11), (3, 3, 13, 8), (1, 3, 16, 16)])


def test_spp_ave_divides_by_the_window_clipped_to_image_plus_pad():
    """Level 1 of a 3 x 3 ones image: 2 x 2 bins of kernel 2, pad (4 - 3 + 1) / 2 = 1,
    windows [-1, 1) and [1, 3) along each axis: image counts 1, 2 over divisors 2, 2."""
    model, _, _ = check_layer('layer { name: "s" type: "SPP" bottom: "data" top: "y" '
                              'spp_param { pyramid_height: 2 pool: AVE } }', shape=(1, 1, 3, 3))
    got = run_onnx(model, {'data': np.ones((1, 1, 3, 3), np.float32)})['y']
    level1 = np.outer([0.5, 1], [0.5, 1]).ravel()
    np.testing.assert_allclose(got[0], np.concatenate([[1.0], level1]), rtol=1e-6)


# ------------------------------------------------------------------------ recurrent layers

def recurrent_net(kind, expose=False, static=False, t=5, n=3, k=4, hidden=6):
    tops = [('cont', (t, n))] + ([('static', (n, 2))] if static else [])
    states = (['h0'] if kind == 'RNN' else ['h0', 'c0']) if expose else []
    tops += [(s, (1, n, hidden)) for s in states]
    bottoms = ''.join(' bottom: "%s"' % name for name, _ in tops)
    finals = ''.join(' top: "%s_T"' % s[0] for s in states)
    text = one_layer('layer { name: "r" type: "%s" bottom: "data"%s top: "y"%s '
                     'recurrent_param { num_output: %d expose_hidden: %s '
                     'weight_filler { type: "gaussian" std: 0.3 } } }'
                     % (kind, bottoms, finals, hidden, 'true' if expose else 'false'),
                     shape=(t, n, k), extra_inputs=tops)
    return deploy_net(text), [name for name, _ in tops], dict(tops)


def recurrent_feed(names, shapes, t=5, n=3, k=4, seed=0):
    rng = np.random.default_rng(seed)
    feed = {'data': rng.normal(0, 1, (t, n, k)).astype(np.float32)}
    for name in names:
        shape = (t,) + shapes[name][1:] if name == 'cont' else shapes[name]
        feed[name] = rng.normal(0, 0.5, shape).astype(np.float32)
    # each stream starts a sequence at t = 0, and stream 1 again at t = 2
    cont = np.ones((t, n), np.float32)
    cont[0] = 0
    cont[2, 1] = 0
    feed['cont'] = cont
    return feed


@pytest.mark.parametrize('kind', ['RNN', 'LSTM'])
@pytest.mark.parametrize('expose,static', [(False, False), (True, False), (False, True),
                                           (True, True)])
def test_recurrent_layers_run_as_a_scan_that_keeps_cont(kind, expose, static):
    net, names, shapes = recurrent_net(kind, expose, static)
    model = exported(net)
    assert 'Scan' in ops(model)
    for t in (5, 3):
        feed = recurrent_feed(names, shapes, t=t, seed=t)
        for layer in net.layers:    # the graph starts from zero states, a fresh net's
            if hasattr(layer, 'reset'):
                layer.reset()
        got = assert_matches_engine(model, net, feed)
        assert got['y'].shape == (t, 3, 6)


@pytest.mark.parametrize('kind', ['RNN', 'LSTM'])
def test_a_zero_cont_starts_the_stream_over(kind):
    """Stream 1 restarts at t = 2: its outputs from there equal a run on x[2:] alone."""
    net, names, shapes = recurrent_net(kind)
    model = exported(net)
    feed = recurrent_feed(names, shapes)
    whole = run_onnx(model, feed)['y']
    tail = {'data': feed['data'][2:].copy(), 'cont': feed['cont'][2:].copy()}
    tail['cont'][0] = 0
    np.testing.assert_allclose(whole[2:, 1], run_onnx(model, tail)['y'][:, 1], rtol=1e-6)
    assert np.abs(whole[2:, 0] - run_onnx(model, tail)['y'][:, 0]).max() > 1e-3


def test_lstm_unit_matches_engine():
    text = one_layer('layer { name: "u" type: "LSTMUnit" bottom: "data" bottom: "gates" '
                     'bottom: "cont" top: "c" top: "h" }', shape=(1, 3, 4),
                     extra_inputs=[('gates', (1, 3, 16)), ('cont', (1, 3))])
    net = deploy_net(text)
    feed = {'data': image((1, 3, 4)), 'gates': image((1, 3, 16), seed=2, spread=2),
            'cont': np.array([[1, 0, 1]], np.float32)}
    assert_matches_engine(exported(net), net, feed)


# ------------------------------------------------------------------------ refusals

@pytest.mark.parametrize('kind', sorted(onnx_export.refused_types()))
def test_data_loss_accuracy_and_python_layers_are_refused_by_name(kind):
    lp = caffe_pb2.LayerParameter(name='the_%s' % kind.lower(), type=kind)
    with pytest.raises(UnknownLayerError) as err:
        onnx_export.check_supported([lp])
    message = str(err.value)
    assert "layer 'the_%s' has type '%s'" % (kind.lower(), kind) in message
    assert ('deploy net' in message) != (kind == 'Python')


def test_every_registered_type_is_exported_or_refused_with_a_reason():
    supported, refused = set(onnx_export.supported_types()), onnx_export.refused_types()
    assert not supported & set(refused)
    assert supported | set(refused) == set(caffe.layer_type_list())
    assert all(len(reason) > 40 for reason in refused.values())


def test_a_train_val_file_fails_naming_its_data_layer(tmp_path):
    proto = tmp_path / 'train_val.prototxt'
    proto.write_text('''
        layer { name: "input" type: "DummyData" top: "data" top: "label"
                dummy_data_param { shape { dim: 2 dim: 3 } shape { dim: 2 } } }
        layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc"
                inner_product_param { num_output: 2 } }
        layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "l" }
    ''')
    with pytest.raises(UnknownLayerError) as err:
        onnx_export.export(str(proto), None, str(tmp_path / 'x.onnx'))
    message = str(err.value)
    assert message.startswith(str(proto)) and "layer 'input' has type 'DummyData'" in message
    assert 'export the deploy net' in message and 'Input layer' in message
    assert not (tmp_path / 'x.onnx').exists()


def test_default_inputs_fit_index_and_flag_bottoms():
    net, _, _ = recurrent_net('LSTM')
    feed = onnx_export.default_inputs(net)
    assert set(np.unique(feed['cont'])) <= {0, 1}
    net = deploy_net(one_layer('layer { name: "e" type: "Embed" bottom: "data" top: "y" '
                               'embed_param { num_output: 4 input_dim: 7 } }', shape=(3, 5)))
    index = onnx_export.default_inputs(net)['data']
    assert index.min() >= 0 and index.max() < 7 and np.all(index == np.round(index))
    (diff, scale), = onnx_export.verify(exported(net), net).values()
    assert scale > 0 and diff <= 1e-6 * scale


@pytest.mark.parametrize('opset', [onnx_export.MIN_OPSET, 18, 21])
def test_reductions_and_scans_export_at_other_opsets(opset):
    """ReduceMean / ReduceProd take their axes as an input from opset 18 and as an
    attribute before; Squeeze / Unsqueeze / Scan across the range."""
    text = one_layer(
        'layer { name: "bn" type: "BatchNorm" bottom: "data" top: "bn" '
        '        batch_norm_param { use_global_stats: false } }\n'
        'layer { name: "mvn" type: "MVN" bottom: "bn" top: "mvn" }\n'
        'layer { name: "mean" type: "Reduction" bottom: "mvn" top: "mean" '
        '        reduction_param { operation: MEAN axis: 1 } }\n'
        'layer { name: "top" type: "ArgMax" bottom: "mvn" top: "top" '
        '        argmax_param { top_k: 2 axis: 1 } }\n'
        'layer { name: "rnn" type: "LSTM" bottom: "mvn" bottom: "cont" top: "h" '
        '        recurrent_param { num_output: 3 weight_filler { type: "gaussian" std: 0.3 } } }',
        shape=(4, 2, 5), extra_inputs=[('cont', (4, 2))])
    net = deploy_net(text)
    model = exported(net, opset=opset)
    assert model.opset_import[0].version == opset
    feed = {'data': image((4, 2, 5)), 'cont': np.array([[0, 0], [1, 1], [1, 0], [1, 1]],
                                                        np.float32)}
    assert_matches_engine(model, net, feed)


CHECKED_LAYERS = {
    'Embed': one_layer('layer { name: "e" type: "Embed" bottom: "data" top: "y" '
                       'embed_param { num_output: 4 input_dim: 9 bias_term: true } }',
                       shape=(3, 5)),
    'BatchReindex': one_layer('layer { name: "r" type: "BatchReindex" bottom: "data" '
                              'bottom: "idx" top: "y" }', shape=(4, 3, 2, 2),
                              extra_inputs=[('idx', (6,))]),
    'Filter': one_layer('layer { name: "f" type: "Filter" bottom: "data" bottom: "sel" '
                        'top: "y" }', shape=(6, 3, 2, 2), extra_inputs=[('sel', (6, 1))]),
    'RNN': one_layer('layer { name: "r" type: "RNN" bottom: "data" bottom: "cont" top: "y" '
                     'recurrent_param { num_output: 5 weight_filler { type: "gaussian" '
                     'std: 0.1 } } }', shape=(6, 2, 3), extra_inputs=[('cont', (6, 2))]),
    'LSTM exposed': one_layer(
        'layer { name: "r" type: "LSTM" bottom: "data" bottom: "cont" bottom: "h0" '
        'bottom: "c0" top: "y" top: "hT" top: "cT" recurrent_param { num_output: 5 '
        'expose_hidden: true weight_filler { type: "gaussian" std: 0.1 } } }',
        shape=(6, 2, 3), extra_inputs=[('cont', (6, 2)), ('h0', (1, 2, 5)), ('c0', (1, 2, 5))]),
    'SPP': one_layer('layer { name: "s" type: "SPP" bottom: "data" top: "y" '
                     'spp_param { pyramid_height: 3 pool: AVE } }', shape=(2, 3, 11, 13)),
    'ArgMax': one_layer('layer { name: "a" type: "ArgMax" bottom: "data" top: "y" '
                        'argmax_param { top_k: 3 out_max_val: true } }'),
    'Reduction': one_layer('layer { name: "r" type: "Reduction" bottom: "data" top: "y" '
                           'reduction_param { operation: SUMSQ axis: 2 } }'),
    'MVN+Tile': one_layer('layer { name: "m" type: "MVN" bottom: "data" top: "m" }\n'
                          'layer { name: "t" type: "Tile" bottom: "m" top: "y" '
                          'tile_param { axis: 1 tiles: 2 } }'),
}


@pytest.mark.parametrize('case', sorted(CHECKED_LAYERS))
def test_export_script_check_passes_with_index_and_flag_inputs(tmp_path, capsys, case):
    proto, weights = write_net(tmp_path, CHECKED_LAYERS[case])
    assert export_cli.main([str(proto), str(weights), str(tmp_path / 'n.onnx'), '--check']) == 0
    printed = capsys.readouterr().out
    assert printed.rstrip().endswith('ok') and 'TOO LARGE' not in printed
