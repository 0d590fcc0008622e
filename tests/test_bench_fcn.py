"""benchmarks/bench_fcn.py: the smoke run, the FLOP counter, and OpenCV as a second Caffe.

OpenCV's DNN module has its own importer and implementation of Caffe's layers,
written independently of this project, so running the same deploy prototxt and
caffemodel through it cross-checks the engine's Caffe semantics (Crop offsets,
Deconvolution, round-up pooling, grouped convolution, LRN). OpenCV cannot run
the train and val nets: it has no ``Python`` layer (the data layers) and no
``SoftmaxWithLoss``; both are pinned below.
"""
import contextlib
import json
import math
from io import StringIO

import cv2
import numpy as np
import pytest
import torch

import torchcaffe as caffe
from random_weights import randomize
from torchcaffe import io
from nets import alexnet, voc
from benchmarks import bench_fcn
from benchmarks.bench_fcn import conv_macs, device_peak, with_input_shape
from benchmarks.fcn_module import FCN, STAGES, count_macs

CLASSES = 5
WIDTH = 1 / 16
SHAPE = (1, 3, 37, 45)  # odd sizes exercise Caffe's round-up pooling and the crops


# -- the smoke run ---------------------------------------------------------------------

@pytest.fixture(scope='module')
def quick_run(tmp_path_factory):
    """One ``--quick`` run: its printed text and its JSON."""
    out = tmp_path_factory.mktemp('bench') / 'quick.json'
    printed = StringIO()
    with contextlib.redirect_stdout(printed):
        assert bench_fcn.main(['--quick', '--peak-tflops', '1', '--json', str(out)]) == 0
    return printed.getvalue(), json.loads(out.read_text())


def expected_rows():
    sizes = bench_fcn.QUICK['sizes'].split(',')
    impls = {'forward': ('engine', 'module', 'opencv', 'onnxruntime'),
             'fwd+bwd': ('engine', 'module'),
             'solver': ('engine', 'module')}
    return [(net, size, p, impl) for net in ('fcn32s', 'fcn8s') for size in sizes
            for p in bench_fcn.PASSES for impl in impls[p]]


def test_quick_run_has_a_row_for_every_net_size_pass_and_implementation(quick_run):
    printed, result = quick_run
    got = [(r['net'], r['size'], r['pass'], r['impl']) for r in result['rows']]
    assert got == expected_rows()
    table = [line.split()[:4] for line in printed.splitlines()]
    for row in expected_rows():
        assert list(row) in table, 'no table line for %s' % (row,)


def test_quick_run_numbers_are_finite_and_positive(quick_run):
    _, result = quick_run
    for row in result['rows']:
        keys = ['median_ms', 'min_ms', 'per_s', 'gflop', 'tflops', 'peak_percent', 'peak_mib']
        if row['impl'] != 'engine':
            keys.append('engine_ratio')
        for key in keys:
            value = row[key]
            assert value is not None and math.isfinite(value) and value > 0, (row, key)
        assert row['min_ms'] <= row['median_ms']
        assert row['per_s'] == pytest.approx(1e3 / row['median_ms'])
        assert row['peak_percent'] == pytest.approx(100 * row['tflops'])  # peak given as 1
        assert row['engine_ratio'] is None if row['impl'] == 'engine' else True


def test_quick_run_flops_are_three_forwards_for_training_passes(quick_run):
    _, result = quick_run
    gflop = {(r['net'], r['size'], r['pass']): r['gflop'] for r in result['rows']}
    for (net, size, p), value in gflop.items():
        assert value == pytest.approx((1 if p == 'forward' else 3) * gflop[net, size, 'forward'])


def test_quick_run_scores_agree_across_engine_module_opencv_and_onnxruntime(quick_run):
    _, result = quick_run
    assert len(result['checks']) == 4
    for check in result['checks']:
        assert check['score_max'] > 1
        assert check['module_max_abs_diff'] <= 1e-5 * check['score_max'], check
        assert check['opencv_max_abs_diff'] <= 1e-5 * check['score_max'], check
        assert check['onnxruntime_max_abs_diff'] <= 1e-5 * check['score_max'], check


def test_quick_run_states_onnxruntime_over_opencv_for_every_net_and_size(quick_run):
    printed, result = quick_run
    versus = result['onnxruntime_vs_opencv']
    assert [(v['net'], v['size']) for v in versus] == [
        (net, size) for net in ('fcn32s', 'fcn8s') for size in bench_fcn.QUICK['sizes'].split(',')]
    for v in versus:
        assert v['ratio'] == pytest.approx(v['onnxruntime_ms'] / v['opencv_ms'])
        assert 'onnxruntime / OpenCV DNN forward, %s %s: %.3f' % (
            v['net'], v['size'], v['ratio']) in printed


# -- counting FLOPs ------------------------------------------------------------------------

TINY = '''
layer { name: "input" type: "Input" top: "data"
        input_param { shape { dim: 1 dim: 4 dim: 5 dim: 5 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 6 kernel_size: 3 pad: 1 group: 2 } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "train_only" type: "Convolution" bottom: "pool" top: "extra"
        include { phase: TRAIN } convolution_param { num_output: 3 kernel_size: 1 } }
layer { name: "up" type: "Deconvolution" bottom: "pool" top: "up"
        convolution_param { num_output: 4 kernel_size: 4 stride: 2 group: 2 bias_term: false } }
'''


def test_conv_macs_of_a_tiny_net_are_the_hand_computed_ones():
    net = io.parse_prototxt(TINY, caffe.caffe_pb2.NetParameter)
    # conv: 6 x 5 x 5 outputs, each 4 / 2 channels x 3 x 3 taps = 150 x 18
    # pool: 5 x 5 rounds up to 3 x 3; up: 6 x 3 x 3 inputs each scatter 4 / 2 x 4 x 4 = 54 x 32
    assert conv_macs(net) == [('conv', 2700), ('up', 1728)]
    assert conv_macs(net, caffe.TRAIN) == [('conv', 2700), ('train_only', 3 * 3 * 3 * 6),
                                           ('up', 1728)]


@pytest.mark.parametrize('stage', ['fcn32s', 'fcn8s'])
def test_conv_macs_of_the_deploy_net_equal_the_modules_hook_count(stage):
    deploy = with_input_shape(voc.stage_nets(stage, classes=CLASSES, width=WIDTH)['deploy'],
                              SHAPE)
    hooks = count_macs(FCN(stage, CLASSES, WIDTH).to('meta'), torch.empty(SHAPE, device='meta'))
    assert conv_macs(deploy) == hooks


def test_device_peaks_pick_the_right_part():
    assert device_peak('NVIDIA H100 80GB HBM3', 'bf16') == 989.5
    assert device_peak('NVIDIA H100 PCIe', 'fp32') == 51.0
    assert device_peak('NVIDIA H200', 'tf32') == 494.5
    assert device_peak('NVIDIA A100-SXM4-80GB', 'tf32') == 156.0
    assert device_peak('NVIDIA H200 NVL', 'fp32') is None
    assert device_peak('Intel(R) Xeon(R) Processor', 'fp32') is None
    assert device_peak('Intel(R) Xeon(R) Processor', 'fp32', given=2.5) == 2.5


# -- OpenCV's DNN module as an independent Caffe ----------------------------------------------

def engine_and_opencv(deploy, tmp_path, seed=0):
    """The score of ``deploy`` (random weights) through the engine and through OpenCV."""
    prototxt, model = tmp_path / 'deploy.prototxt', tmp_path / 'random.caffemodel'
    io.write_prototxt(deploy, str(prototxt))
    net = caffe.Net(str(prototxt), caffe.TEST)
    randomize(net, seed)
    net.save(str(model))
    data = np.random.default_rng(seed + 1).normal(0, 20, SHAPE).astype(np.float32)
    score = net.forward(data=data)['score'].copy()
    cv_net = cv2.dnn.readNetFromCaffe(str(prototxt), str(model))
    cv_net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    cv_net.setInput(data)
    return score, cv_net.forward()


def assert_scores_match(expected, actual):
    assert actual.shape == expected.shape
    scale = np.abs(expected).max()
    assert scale > 0.1 and np.abs(expected).std() > 0.01 * scale  # not a trivial score
    diff = np.abs(actual - expected)
    assert (diff <= 1e-5 * scale + 1e-4 * np.abs(expected)).all(), \
        'max abs diff %.3g, scores up to %.3g' % (diff.max(), scale)


@pytest.mark.parametrize('stage', STAGES)
def test_opencv_runs_every_vgg_fcn_deploy_net_as_the_engine(stage, tmp_path):
    deploy = voc.stage_nets(stage, classes=CLASSES, width=WIDTH)['deploy']
    assert_scores_match(*engine_and_opencv(with_input_shape(deploy, SHAPE), tmp_path))


def test_opencv_runs_fcn_alexnet_with_grouped_convolution_and_lrn(tmp_path):
    deploy = alexnet.stage_nets(classes=CLASSES, width=WIDTH)['deploy']
    types = {layer.type for layer in deploy.layer}
    assert {'LRN', 'Crop', 'Deconvolution'} <= types
    assert any(layer.convolution_param.group == 2 for layer in deploy.layer)
    assert_scores_match(*engine_and_opencv(with_input_shape(deploy, SHAPE), tmp_path))


@pytest.mark.parametrize('layer_type, layer', [
    ('Python', 'layer { name: "py" type: "Python" bottom: "data" top: "out" '
               'python_param { module: "voc_layers" layer: "SBDDSegDataLayer" } }'),
    ('SoftmaxWithLoss', 'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "data" '
                        'bottom: "label" top: "loss" loss_param { ignore_label: 255 } }'),
])
def test_opencv_cannot_create_the_train_nets_data_and_loss_layers(layer_type, layer, tmp_path):
    path = tmp_path / 'net.prototxt'
    path.write_text('layer { name: "input" type: "Input" top: "data" top: "label" input_param { '
                    'shape { dim: 1 dim: 3 dim: 4 dim: 4 } shape { dim: 1 dim: 1 dim: 4 dim: 4 '
                    '} } } ' + layer)
    net = cv2.dnn.readNetFromCaffe(str(path))  # the importer accepts any type name...
    net.setInput(np.zeros((1, 3, 4, 4), np.float32), 'data')
    net.setInput(np.zeros((1, 1, 4, 4), np.float32), 'label')
    with pytest.raises(cv2.error, match='of type "%s"' % layer_type):
        net.forward()  # ...and fails when the net is set up


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
@pytest.mark.parametrize('precision', ['fp32', 'bf16'])
def test_quick_run_on_cuda_measures_device_memory(precision, tmp_path):
    out = tmp_path / 'gpu.json'
    try:
        assert bench_fcn.main(['--quick', '--gpu', '--nets', '8s', '--precision', precision,
                               '--json', str(out)]) == 0
    finally:
        caffe.set_mode_cpu()
        caffe.set_precision('fp32')
    rows = json.loads(out.read_text())['rows']
    assert {r['impl'] for r in rows} == {'engine', 'module'}  # no OpenCV on the GPU
    assert all(r['peak_mib'] > 0 and r['median_ms'] > 0 for r in rows)


def test_target_lines_give_issue_21s_ratios_and_whether_each_is_met():
    def row(pass_, impl, ms):
        return dict(net='fcn8s', size='500x375', pass_=pass_, impl=impl, median_ms=ms)
    rows = [row('forward', 'engine', 900.0), row('forward', 'module', 1000.0),
            row('forward', 'opencv', 1200.0), row('forward', 'onnxruntime', 800.0),
            row('fwd+bwd', 'engine', 3000.0), row('fwd+bwd', 'module', 3200.0)]
    assert bench_fcn.target_lines(rows) == [
        'target fcn8s 500x375 fwd+bwd: engine / module = 0.938 (<= 0.85: not met)',
        'target fcn8s 500x375 forward: engine / module = 0.900 (<= 0.85: not met)',
        'target fcn8s 500x375 forward: engine / opencv = 0.750 (<= 1.00: met)',
        'target fcn8s 500x375 forward: onnxruntime / opencv = 0.667 (<= 0.75: met)']
