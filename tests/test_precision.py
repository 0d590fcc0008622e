"""Opt-in precision: fp32 stays Caffe's arithmetic, tf32 and bf16 only when asked.

The net is tiny and written inline: Input -> Convolution -> ReLU -> Dropout (TRAIN)
-> 1x1 Convolution ``score`` -> SoftmaxWithLoss and Accuracy, with gaussian fillers
so that every layer computes something. bf16 results are compared with fp32 ones
within bfloat16's tolerance (8 bits of mantissa: relative error ~2^-8 per rounding).
"""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from google.protobuf import text_format

import demo
import infer
import score
import torchcaffe as caffe
import training
from torchcaffe import caffe_pb2
from torchcaffe.layer_types import create_layer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = 3

NET = '''
name: "tiny"
layer { name: "input" type: "Input" top: "data" top: "label"
  input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } shape { dim: 2 dim: 1 dim: 8 dim: 8 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
  convolution_param { num_output: 6 kernel_size: 3 pad: 1
    weight_filler { type: "gaussian" std: 0.3 } bias_filler { type: "gaussian" std: 0.1 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "drop1" type: "Dropout" bottom: "conv1" top: "conv1"
  dropout_param { dropout_ratio: 0.5 } include { phase: TRAIN } }
layer { name: "score" type: "Convolution" bottom: "conv1" top: "score"
  param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
  convolution_param { num_output: 3 kernel_size: 1
    weight_filler { type: "gaussian" std: 0.3 } bias_filler { type: "gaussian" std: 0.1 } } }
layer { name: "acc" type: "Accuracy" bottom: "score" bottom: "label" top: "acc"
  include { phase: TEST } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "score" bottom: "label" top: "loss" }
'''


@pytest.fixture(autouse=True)
def fp32_after():
    caffe.set_mode_cpu()
    yield
    caffe.set_precision('fp32')
    caffe.set_mode_cpu()


def net_param(phase):
    param = text_format.Parse(NET, caffe_pb2.NetParameter())
    param.state.phase = phase
    return param


def inputs(seed=0):
    rng = np.random.default_rng(seed)
    data = rng.normal(size=(2, 3, 8, 8)).astype(np.float32)
    label = rng.integers(0, CLASSES, (2, 1, 8, 8)).astype(np.float32)
    return data, label


def run_net(phase=caffe.TRAIN, backward=True, net=None):
    """A fresh net (same seeded fillers and dropout each call), forward and backward;
    returns the net and copies of every blob's data and diff and every param diff.
    Given ``net``, runs that one again instead, from the same dropout seed and with
    its param diffs cleared."""
    caffe.set_random_seed(11)
    if net is None:
        net = caffe.Net(net_param(phase))
    else:
        net.clear_param_diffs()
    data, label = inputs()
    net.blobs['data'].data[...] = data
    net.blobs['label'].data[...] = label
    net.forward()
    if backward:
        net.backward()
    blobs = {name: b.data.copy() for name, b in net.blobs.items()}
    diffs = {name: b.diff.copy() for name, b in net.blobs.items()
             if name not in ('label', 'loss')}
    grads = {name: [p.diff.copy() for p in ps] for name, ps in net.params.items()}
    return net, blobs, diffs, grads


def assert_bf16_close(actual, expected, what, tol=0.02):
    """Relative error in norm within ``tol``. Activations here are off by ~0.5%;
    gradients by up to ~4%, as a few units sit on the ReLU's kink in one precision
    and not the other."""
    error = np.linalg.norm(np.float64(actual) - expected)
    assert error <= tol * max(np.linalg.norm(expected), 1e-12), \
        '%s: relative error %.4f' % (what, error / np.linalg.norm(expected))


# ------------------------------------------------------------------------ the API

def test_torchcaffe_starts_in_fp32_with_tf32_off_for_cublas_and_cudnn():
    # torch's own default allows TF32 in cuDNN convolutions; importing the engine
    # turns it off, since Caffe computes in float32. A fresh process sees the default.
    code = ('import torch, torchcaffe; print(torchcaffe.precision(), '
            'torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)')
    out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout.split()
    assert out == ['fp32', 'False', 'False']


def test_set_precision_rejects_unknown_names_listing_the_choices():
    caffe.set_precision('bf16')
    with pytest.raises(ValueError, match=r"unknown precision 'fp16': choose one of "
                                         r"fp32, tf32, bf16"):
        caffe.set_precision('fp16')
    assert caffe.precision() == 'bf16'  # unchanged


def test_tf32_allows_tf32_in_torch_and_fp32_forbids_it_again():
    caffe.set_precision('tf32')
    assert caffe.precision() == 'tf32'
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    assert torch.get_float32_matmul_precision() == 'high'
    caffe.set_precision('fp32')
    assert caffe.precision() == 'fp32'
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    assert torch.get_float32_matmul_precision() == 'highest'


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the CPU-mode log line')
def test_tf32_on_the_cpu_says_in_its_log_line_that_it_changes_nothing(caplog):
    with caplog.at_level('INFO', logger='torchcaffe'):
        caffe.set_precision('tf32')
    assert 'Precision tf32' in caplog.text and 'no-op on the CPU' in caplog.text


# ------------------------------------------------------------------------ fp32 and tf32

def assert_bit_identical(expected, run):
    """Two run_net results hold the same blobs, diffs and param diffs, bit for bit."""
    _, blobs, diffs, grads = expected
    _, blobs2, diffs2, grads2 = run
    for ours, theirs in ((blobs, blobs2), (diffs, diffs2)):
        assert ours.keys() == theirs.keys()
        for name in ours:
            assert np.array_equal(ours[name], theirs[name]), name
    assert grads.keys() == grads2.keys()
    for name in grads:
        assert len(grads[name]) == len(grads2[name]) == 2, name
        for a, b in zip(grads[name], grads2[name]):
            assert np.array_equal(a, b), name


def test_fp32_after_other_precisions_is_bit_identical_to_the_default():
    default = run_net()  # no set_precision call yet in this test
    caffe.set_precision('bf16')
    net, blobs, _, _ = run_net()
    assert net.blobs['score']._data.tensor.dtype == torch.bfloat16
    assert not np.array_equal(blobs['score'], default[1]['score'])
    caffe.set_precision('tf32')
    run_net(net=net)
    caffe.set_precision('fp32')
    # The net that computed in bfloat16 and in tf32, then a fresh one.
    for again in (run_net(net=net), run_net()):
        assert again[0].blobs['score']._data.tensor.dtype == torch.float32
        assert_bit_identical(default, again)


@pytest.mark.skipif(torch.cuda.is_available(), reason='TF32 changes CUDA results')
def test_tf32_on_the_cpu_is_bit_identical_to_fp32():
    _, blobs, _, grads = run_net()
    caffe.set_precision('tf32')
    _, blobs2, _, grads2 = run_net()
    for name in blobs:
        assert np.array_equal(blobs[name], blobs2[name]), name
    for name in grads:
        assert all(np.array_equal(a, b)
                   for a, b in zip(grads[name], grads2[name], strict=True)), name


# ------------------------------------------------------------------------ bf16

def test_bf16_forward_computes_in_bfloat16_and_blobs_read_as_float32_arrays():
    _, blobs, diffs, _ = run_net()
    caffe.set_precision('bf16')
    net, blobs16, diffs16, _ = run_net()
    # Autocast really ran the convolutions in bfloat16...
    assert net.blobs['score']._data.tensor.dtype == torch.bfloat16
    assert not np.array_equal(blobs16['score'], blobs['score'])
    # ...yet what the user reads is float32, close to the float32 net's.
    for name in blobs:
        assert net.blobs[name].data.dtype == np.float32, name
        assert_bf16_close(blobs16[name], blobs[name], name)
    for name in diffs:
        assert diffs16[name].dtype == np.float32, name
        assert_bf16_close(diffs16[name], diffs[name], name + ' diff', tol=0.08)


def test_dropout_on_bfloat16_drops_the_units_it_drops_in_float32():
    # The masks are drawn in float32 whatever the input's dtype, so that the
    # precisions train on the same dropped units.
    layer = create_layer(net_param(caffe.TRAIN).layer[3], caffe.TRAIN)
    kept = {}
    for dtype in (torch.float32, torch.bfloat16):
        layer.generator = torch.Generator().manual_seed(5)
        out = layer.forward([torch.ones(4000, dtype=dtype)], [])[0]
        assert out.dtype == dtype
        kept[dtype] = (out != 0).numpy()
    assert 0.45 < kept[torch.float32].mean() < 0.55
    assert np.array_equal(kept[torch.bfloat16], kept[torch.float32])


def test_bf16_loss_is_computed_in_float32_from_the_bfloat16_scores():
    caffe.set_precision('bf16')
    net, blobs, _, _ = run_net(caffe.TEST, backward=False)
    assert net.blobs['loss']._data.tensor.dtype == torch.float32
    assert net.blobs['acc']._data.tensor.dtype == torch.float32
    # The scores as autocast left them (bfloat16 values, read as float32), then
    # Caffe's loss on them in float64: the layer's float32 result agrees closely,
    # which a loss computed in bfloat16 would not.
    s = np.float64(blobs['score'])
    labels = blobs['label'][:, 0].astype(int)
    p = np.exp(s - s.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    picked = np.take_along_axis(p, labels[:, None], 1)
    expected = -np.log(picked).sum() / labels.size
    assert float(blobs['loss']) == pytest.approx(expected, rel=1e-6)
    assert float(blobs['acc']) == pytest.approx((s.argmax(1) == labels).mean())


def solver(momentum=0.9):
    param = caffe_pb2.SolverParameter(base_lr=0.1, lr_policy='fixed', momentum=momentum,
                                      weight_decay=0.01, max_iter=10, display=0)
    param.net_param.CopyFrom(text_format.Parse(NET, caffe_pb2.NetParameter()))
    caffe.set_random_seed(11)
    s = caffe.SGDSolver(param)
    data, label = inputs()
    s.net.blobs['data'].data[...] = data
    s.net.blobs['label'].data[...] = label
    return s


def test_bf16_gradients_updates_and_history_stay_float32():
    fp32 = solver()
    fp32.step(1)
    caffe.set_precision('bf16')
    s = solver()
    before = [p.data.copy() for p in s.net.learnable_params]
    s.step(1)
    for i, p in enumerate(s.net.learnable_params):
        assert p._data.tensor.dtype == torch.float32 and p._diff.tensor.dtype == torch.float32
        assert s._history[i].dtype == torch.float32
        # Caffe's first update from zero history: diff becomes the history and the
        # data loses it -- in float32, bit for bit.
        assert np.array_equal(p.data, before[i] - p.diff), i
        assert_bf16_close(p.diff, fp32.net.learnable_params[i].diff, 'param %d' % i,
                          tol=0.08)
    assert s.net.blobs['loss']._data.tensor.dtype == torch.float32


def test_bf16_training_follows_fp32_training():
    fp32 = solver()
    fp32.step(5)
    caffe.set_precision('bf16')
    s = solver()
    s.step(5)
    pairs = zip(s.net.learnable_params, fp32.net.learnable_params, strict=True)
    for i, (a, b) in enumerate(pairs):
        assert_bf16_close(a.data, b.data, 'param %d after 5 steps' % i)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
@pytest.mark.parametrize('name', ['tf32', 'bf16'])
def test_cuda_precisions_are_close_to_fp32_and_read_as_float32(name):
    caffe.set_mode_gpu()
    _, blobs, diffs, grads = run_net()
    caffe.set_precision(name)
    net, blobs2, diffs2, grads2 = run_net()
    assert net.device.type == 'cuda'
    for name in blobs:
        assert blobs2[name].dtype == np.float32
        assert_bf16_close(blobs2[name], blobs[name], name)
    for name in grads:
        for a, b in zip(grads2[name], grads[name], strict=True):
            assert_bf16_close(a, b, name + ' grad', tol=0.08)


# ------------------------------------------------------------------------ command lines

CLIS = {
    'training': lambda extra: training.parse_args(extra, 'train'),
    'score': lambda extra: score.parse_args(['val.prototxt', 'w.caffemodel'] + extra),
    'infer': lambda extra: infer.parse_args(['deploy.prototxt', 'w.caffemodel', 'x.jpg']
                                            + extra),
    'demo': lambda extra: demo.parse_args(extra),
}


@pytest.mark.parametrize('cli', sorted(CLIS))
def test_each_command_line_takes_a_precision_defaulting_to_fp32(cli):
    assert CLIS[cli]([]).precision == 'fp32'
    for name in ('fp32', 'tf32', 'bf16'):
        assert CLIS[cli](['--precision', name]).precision == name


@pytest.mark.parametrize('cli', sorted(CLIS))
def test_each_command_line_rejects_an_unknown_precision(cli, capsys):
    with pytest.raises(SystemExit) as exit_:
        CLIS[cli](['--precision', 'fp16'])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'fp16'" in err and 'bf16' in err


def test_top_level_solve_passes_the_precision_to_the_folder_script(monkeypatch, capsys):
    import solve
    monkeypatch.setattr(sys, 'argv', list(sys.argv))  # solve.main replaces it
    with pytest.raises(SystemExit) as exit_:
        solve.main(['voc-fcn32s', '--precision', 'fp16'])
    assert exit_.value.code == 2
    assert "invalid choice: 'fp16'" in capsys.readouterr().err


def test_training_sets_the_precision_before_building_the_solver(tmp_path, capsys):
    # No solver.prototxt: the run fails after choosing the precision.
    assert training.main(str(tmp_path), None, ['--precision', 'bf16']) == 1
    assert caffe.precision() == 'bf16'


def test_score_sets_the_precision_before_running_the_net(tmp_path):
    with pytest.raises(SystemExit):
        score.main([str(tmp_path / 'none.prototxt'), 'w.caffemodel', '--precision', 'bf16'])
    assert caffe.precision() == 'bf16'


def test_infer_sets_the_precision_before_loading_the_net(tmp_path):
    image = os.path.join(ROOT, 'data', 'demo', 'image.jpg')
    with pytest.raises(SystemExit):
        infer.main([str(tmp_path / 'none.prototxt'), 'w.caffemodel', image,
                    '--out', str(tmp_path / 'out'), '--precision', 'tf32'])
    assert caffe.precision() == 'tf32'


def test_demo_trains_in_the_precision_asked_and_restores_it(monkeypatch, tmp_path):
    seen = []
    monkeypatch.setattr(demo, 'validate_nets', lambda *args: 0)
    monkeypatch.setattr(demo, 'run_pipeline', lambda args: seen.append(caffe.precision()) or 0)
    assert demo.main(['--out', str(tmp_path), '--precision', 'bf16']) == 0
    assert seen == ['bf16']
    assert caffe.precision() == 'fp32'
