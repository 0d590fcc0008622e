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
from onnx_check import (assert_matches_engine, deploy_net, image, inline_net, run_onnx,
                        RTOL, ATOL)
from torchcaffe import caffe_pb2, io, onnx_export
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
    model = exported(net)
    for k, shape in enumerate(sizes):
        got = assert_matches_engine(model, net, {'data': image(shape, seed=k)},
                                    rtol=RTOL, atol=ATOL)
        prob = got['prob'].reshape(shape[0], -1)
        np.testing.assert_allclose(prob.sum(axis=1), 1, rtol=1e-5)
        assert prob.max() > 1.5 / prob.shape[1]   # the input reaches the scores


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
