"""torchcaffe.kernels: every kernel candidate against the plain path, the choice, the switch.

Geometries come from the prototxts of the FCN nets and the ILSVRC nets in the
repository, plus Caffe zoo nets that are not (GoogLeNet, ResNet, DeepLab's dilated
convolutions, asymmetric kernels), at toy channel counts and sizes: what is
tested is the kernel, stride, pad, dilation and group arithmetic.
"""
import hashlib
import itertools
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import torchcaffe as caffe
from torchcaffe import caffe_pb2, io, kernels
from torchcaffe.layer_types.vision import conv_geometry
from torchcaffe.layer_types import create_layer
from torchcaffe.tools import caffe_cli
from torchcaffe.tools.net_time import time_net

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Zoo geometries not in the repository's prototxts:
# (type, kernel (h, w), stride, pad, dilation, group, where)
ZOO = [
    ('Convolution', (7, 7), (2, 2), (3, 3), (1, 1), 1, 'GoogLeNet / ResNet conv1'),
    ('Convolution', (1, 1), (2, 2), (0, 0), (1, 1), 1, 'ResNet projection shortcut'),
    ('Convolution', (5, 5), (1, 1), (2, 2), (1, 1), 1, 'GoogLeNet inception 5x5'),
    ('Convolution', (3, 3), (1, 1), (2, 2), (2, 2), 1, 'DeepLab dilation 2'),
    ('Convolution', (3, 3), (1, 1), (12, 12), (12, 12), 1, 'DeepLab ASPP dilation 12'),
    ('Convolution', (1, 7), (1, 1), (0, 3), (1, 1), 1, 'Inception-v3 1x7'),
    ('Convolution', (3, 3), (1, 1), (1, 1), (1, 1), 4, 'ResNeXt grouped 3x3'),
    ('Deconvolution', (4, 4), (2, 2), (1, 1), (1, 1), 1, 'DeconvNet 2x upsampler, pad 1'),
    ('Deconvolution', (3, 3), (2, 2), (1, 1), (2, 2), 2, 'dilated grouped deconvolution'),
]

PROTOTXTS = ['voc-fcn8s/train.prototxt', 'voc-fcn32s/train.prototxt',
             'voc-fcn-alexnet/train.prototxt', 'pascalcontext-fcn8s/train.prototxt',
             'siftflow-fcn16s/trainval.prototxt', 'nyud-fcn32s-color/trainval.prototxt',
             'ilsvrc-nets/caffenet-deploy.prototxt', 'ilsvrc-nets/vgg16-deploy.prototxt']


def net_geometries():
    """Distinct (type, kernel, stride, pad, dilation, group, where) of the 2-D
    Convolution and Deconvolution layers in the repository's nets."""
    seen = {}
    for rel in PROTOTXTS:
        path = os.path.join(ROOT, rel)
        if not os.path.exists(path):
            continue
        for lp in io.read_net_prototxt(path).layer:
            if lp.type not in ('Convolution', 'Deconvolution'):
                continue
            layer = create_layer(lp, caffe.TEST)
            _, kernel, stride, pad, dilation = conv_geometry(layer, lp.convolution_param,
                                                             (1, 1, 8, 8))
            key = (lp.type, kernel, stride, pad, dilation, lp.convolution_param.group)
            seen.setdefault(key, '%s %s' % (rel.split('/')[0], lp.name))
    return [k + (where,) for k, where in seen.items()]


GEOMETRIES = net_geometries() + ZOO


def test_the_geometries_cover_what_the_issue_names():
    kinds = {(g[0], g[1], g[2]) for g in GEOMETRIES}
    assert len(net_geometries()) >= 8  # the prototxts were found and read
    assert ('Convolution', (7, 7), (1, 1)) in kinds      # fc6
    assert ('Convolution', (1, 1), (1, 1)) in kinds      # fc7, score layers
    assert ('Convolution', (11, 11), (4, 4)) in kinds    # AlexNet conv1
    assert ('Deconvolution', (64, 64), (32, 32)) in kinds  # FCN-32s upscore
    assert ('Deconvolution', (16, 16), (8, 8)) in kinds    # FCN-8s upscore8
    assert any(g[5] > 1 for g in GEOMETRIES)             # groups
    assert any(g[4] != (1, 1) for g in GEOMETRIES)       # dilation
    assert any(g[3] == (100, 100) for g in GEOMETRIES)   # FCN's conv1_1 pad


def case_tensors(geometry, dtype, seed=0, batch=2):
    """Input, weight, bias for a geometry at toy sizes (input at least as large as
    the dilated kernel, so that every tap is hit)."""
    kind, kernel, stride, pad, dilation, group, _ = geometry
    g = torch.Generator().manual_seed(seed)
    c_in, c_out = 2 * group, 3 * group
    size = [max(d * (k - 1) + 1 - 2 * p, 1) + 2 * s + 1
            for k, s, p, d in zip(kernel, stride, pad, dilation)]
    if kind == 'Deconvolution':
        size = [max(3, n // s) for n, s in zip(size, stride)]
        # the output must be positive: s (n - 1) + d (k - 1) + 1 - 2 p
        size = [max(n, (2 * p - d * (k - 1)) // s + 2)
                for n, k, s, p, d in zip(size, kernel, stride, pad, dilation)]
        wshape = (c_in, c_out // group) + kernel
    else:
        wshape = (c_out, c_in // group) + kernel
    x = torch.randn((batch, c_in) + tuple(size), generator=g, dtype=dtype)
    w = torch.randn(wshape, generator=g, dtype=dtype)
    b = torch.randn(c_out, generator=g, dtype=dtype)
    return x, w, b


def run_all(geometry, x, w, b, force):
    """Top and the three gradients through kernels.convolution (force None: the
    plain torch path), with a fixed random top diff."""
    kind, kernel, stride, pad, dilation, group, _ = geometry
    x, w, b = (t.clone().requires_grad_(True) for t in (x, w, b))
    transposed = kind == 'Deconvolution'
    if force is None:
        y = kernels._plain(x, w, b, stride, pad, dilation, group, transposed)
    else:
        record = {}
        y = kernels.convolution(x, w, b, stride, pad, dilation, group, transposed,
                                record=record, force=force)
    top_diff = torch.randn(y.shape, generator=torch.Generator().manual_seed(7),
                           dtype=y.dtype)
    gx, gw, gb = torch.autograd.grad(y, (x, w, b), top_diff)
    if isinstance(force, dict):
        assert record == force
    elif force is not None:
        assert record == {'forward': force, 'input': force, 'weight': force}
    return [y.detach(), gx, gw, gb]


def ids(geometry):
    kind, kernel, stride, pad, dilation, group, where = geometry
    return '%s-k%dx%d-s%d-p%d-d%d-g%d' % (kind[:6], kernel[0], kernel[1], stride[0], pad[0],
                                          dilation[0], group)


@pytest.fixture(autouse=True)
def auto_mode(monkeypatch):
    monkeypatch.setenv('TORCHCAFFE_KERNEL_FILE', 'none')
    previous = kernels.set_mode('auto')
    kernels.clear()
    yield
    kernels.set_mode(previous)
    kernels.clear()


@pytest.mark.parametrize('geometry', GEOMETRIES, ids=ids)
def test_gemm_kernels_match_the_plain_path_forward_and_backward(geometry):
    for dtype, rtol in ((torch.float64, 1e-12), (torch.float32, 2e-5)):
        x, w, b = case_tensors(geometry, dtype)
        plain = run_all(geometry, x, w, b, None)
        gemm = run_all(geometry, x, w, b, 'gemm')
        assert len(plain) == len(gemm) == 4
        for what, p, q in zip(('top', 'input grad', 'weight grad', 'bias grad'), plain, gemm):
            assert p.shape == q.shape, what
            scale = float(p.abs().max()) or 1.0
            torch.testing.assert_close(q, p, rtol=rtol, atol=rtol * scale,
                                       msg=lambda m: '%s %s: %s' % (geometry[-1], what, m))


@pytest.mark.parametrize('geometry', [GEOMETRIES[0], ZOO[1], ZOO[-1]], ids=ids)
def test_mixed_choices_of_the_two_gradients_each_match_the_plain_path(geometry):
    x, w, b = case_tensors(geometry, torch.float64, seed=5)
    plain = run_all(geometry, x, w, b, None)
    for forward, input_grad, weight_grad in itertools.product(kernels.CANDIDATES, repeat=3):
        force = {'forward': forward, 'input': input_grad, 'weight': weight_grad}
        mixed = run_all(geometry, x, w, b, force)
        assert len(mixed) == len(plain) == 4
        for what, p, q in zip(('top', 'input grad', 'weight grad', 'bias grad'), plain, mixed):
            torch.testing.assert_close(q, p, rtol=1e-12, atol=1e-12 * float(p.abs().max()),
                                       msg=lambda m: '%s %s: %s' % (force, what, m))


@pytest.mark.parametrize('geometry', GEOMETRIES[:6] + ZOO[-2:], ids=ids)
def test_the_torch_candidate_is_the_plain_path_bit_for_bit(geometry):
    x, w, b = case_tensors(geometry, torch.float32, seed=3)
    plain = run_all(geometry, x, w, b, None)
    chosen = run_all(geometry, x, w, b, 'torch')
    for p, q in zip(plain, chosen):
        assert torch.equal(p, q)


@pytest.mark.parametrize('geometry', [
    ('Convolution', (3, 3), (2, 1), (1, 0), (1, 2), 2, 'strided dilated grouped'),
    ('Convolution', (1, 1), (2, 2), (0, 0), (1, 1), 1, '1x1 stride 2'),
    ('Deconvolution', (4, 4), (2, 2), (1, 1), (1, 1), 2, 'grouped upsampler'),
], ids=ids)
def test_gemm_gradients_equal_float64_finite_differences(geometry):
    kind, kernel, stride, pad, dilation, group, _ = geometry
    x, w, b = (t.requires_grad_(True) for t in case_tensors(geometry, torch.float64,
                                                            batch=2))

    def f(x, w, b):
        return kernels.convolution(x, w, b, stride, pad, dilation, group,
                                   kind == 'Deconvolution', force='gemm')
    assert torch.autograd.gradcheck(f, (x, w, b), eps=1e-6, atol=1e-7)


def test_a_one_by_one_convolution_is_a_plain_matrix_product():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 5, 3, 4, generator=g, dtype=torch.float64)
    w = torch.randn(6, 5, 1, 1, generator=g, dtype=torch.float64)
    b = torch.randn(6, generator=g, dtype=torch.float64)
    y = kernels.convolution(x, w, b, (1, 1), (0, 0), (1, 1), 1, force='gemm')
    expected = np.einsum('oc,chw->ohw', w[:, :, 0, 0].numpy(), x[0].numpy()) \
        + b.numpy()[:, None, None]
    np.testing.assert_allclose(y[0].numpy(), expected, rtol=1e-13)


# ---------------------------------------------------------------- the choice

def big_case(dtype=torch.float32):
    """A convolution above MIN_MACS (so that 'auto' chooses)."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1, 64, 12, 12, generator=g, dtype=dtype, requires_grad=True)
    w = torch.randn(128, 64, 3, 3, generator=g, dtype=dtype, requires_grad=True)
    b = torch.randn(128, generator=g, dtype=dtype, requires_grad=True)
    assert 10 * 10 * 128 * 64 * 9 >= kernels.MIN_MACS
    return x, w, b


def conv(x, w, b, record=None):
    return kernels.convolution(x, w, b, (1, 1), (0, 0), (1, 1), 1, record=record)


def test_auto_measures_a_shape_once_and_keeps_its_choice(monkeypatch):
    x, w, b = big_case()
    record = {}
    y = conv(x, w, b, record)
    y.sum().backward()
    assert set(record) == {'forward', 'input', 'weight'}
    assert set(record.values()) <= set(kernels.CANDIDATES)
    made = kernels.choices()
    assert len(made) == 3 and sorted(k.rsplit('|', 1)[1] for k in made) == \
        ['forward', 'input', 'weight']

    def no_clock():
        raise AssertionError('measured again')
    monkeypatch.setattr(kernels.time, 'perf_counter', no_clock)
    again = {}
    conv(x, w, b, again).sum().backward()
    assert again == record


def test_a_candidate_must_beat_torch_by_the_margin(monkeypatch):
    clock = iter(range(1000))
    monkeypatch.setattr(kernels.time, 'perf_counter', lambda: next(clock))

    def timed(name, seconds):
        def run():
            for _ in range(seconds - 1):
                next(clock)  # each run advances the fake clock by ``seconds``
            return name
        return run
    # torch takes 10 ticks, gemm 9: within the margin, torch stays
    name, out = kernels._choose(('k1',), {'torch': timed('torch', 10), 'gemm': timed('gemm', 9)})
    assert (name, out) == ('torch', 'torch')
    # gemm takes 5: it wins, and the output returned is gemm's
    name, out = kernels._choose(('k2',), {'torch': timed('torch', 10), 'gemm': timed('gemm', 5)})
    assert (name, out) == ('gemm', 'gemm')
    # known now: nothing runs (the caller runs the choice)
    def ran():
        raise AssertionError('a known choice ran a candidate')
    assert kernels._choose(('k2',), {'torch': ran, 'gemm': ran}) == ('gemm', None)


def test_a_known_choice_runs_each_pass_once():
    calls = []
    original = kernels._torch_backward

    def counted(*args):
        calls.append(args[-1])
        return original(*args)
    x, w, b = big_case()
    for _ in range(2):
        calls.clear()
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(kernels, '_torch_backward', counted)
            y = kernels.convolution(x, w, b, (1, 1), (0, 0), (1, 1), 1, force='torch')
            y.sum().backward()
        assert calls == [(True, True, True)]  # one call for the three, as autograd's


def test_plain_mode_runs_torchs_op_and_chooses_nothing():
    x, w, b = big_case()
    kernels.set_mode('plain')
    record = {}
    y = conv(x, w, b, record)
    assert record == {'forward': 'plain'} and kernels.choices() == {}
    assert torch.equal(y, F.conv2d(x, w, b))
    assert y.grad_fn.name() == 'ConvolutionBackward0'


def test_small_convolutions_take_the_plain_path_in_auto_mode():
    x = torch.randn(1, 3, 8, 8, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, requires_grad=True)
    record = {}
    y = conv(x, w, None, record)
    assert record == {'forward': 'plain'} and kernels.choices() == {}
    assert torch.equal(y, F.conv2d(x, w))


def test_convolutions_with_more_positions_than_column_rows_take_the_plain_path_in_auto():
    x = torch.randn(1, 16, 64, 64, requires_grad=True)
    w = torch.randn(32, 16, 3, 3, requires_grad=True)
    assert 62 * 62 > 16 * 9 and 62 * 62 * 32 * 16 * 9 >= kernels.MIN_MACS
    record = {}
    y = conv(x, w, None, record)
    assert record == {'forward': 'plain'} and kernels.choices() == {}
    assert y.grad_fn.name() == 'ConvolutionBackward0'


def test_gemm_mode_forces_gemm_without_measuring(monkeypatch):
    kernels.set_mode('gemm')
    monkeypatch.setattr(kernels.time, 'perf_counter', lambda: 1 / 0)
    x = torch.randn(1, 3, 8, 8, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, requires_grad=True)
    record = {}
    conv(x, w, None, record).sum().backward()
    assert record == {'forward': 'gemm', 'input': 'gemm', 'weight': 'gemm'}


def test_the_environment_sets_the_mode_and_refuses_unknown_names(monkeypatch):
    monkeypatch.setenv('TORCHCAFFE_KERNELS', 'plain')
    assert kernels._env_mode() == 'plain'
    monkeypatch.setenv('TORCHCAFFE_KERNELS', 'fastest')
    with pytest.raises(ValueError, match='TORCHCAFFE_KERNELS'):
        kernels._env_mode()
    with pytest.raises(ValueError, match='unknown kernel mode'):
        kernels.set_mode('fast')


def test_fake_tensors_and_compilation_take_the_plain_path(monkeypatch):
    from torch._subclasses.fake_tensor import FakeTensorMode
    kernels.set_mode('gemm')
    with FakeTensorMode():
        x = torch.empty(1, 3, 8, 8)
        w = torch.empty(4, 3, 3, 3)
        record = {}
        y = conv(x, w, None, record)
    assert record == {'forward': 'plain'} and tuple(y.shape) == (1, 4, 6, 6)
    monkeypatch.setattr(torch.compiler, 'is_compiling', lambda: True)
    record = {}
    conv(torch.randn(1, 3, 8, 8), torch.randn(4, 3, 3, 3), None, record)
    assert record == {'forward': 'plain'}


def test_torch_export_records_the_plain_convolution():
    kernels.set_mode('gemm')

    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.randn(4, 3, 3, 3))

        def forward(self, x):
            return kernels.convolution(x, self.w, None, (1, 1), (1, 1), (1, 1), 1)
    program = torch.export.export(M(), (torch.randn(1, 3, 8, 8),))
    ops = {str(n.target) for n in program.graph.nodes if n.op == 'call_function'}
    assert any('conv' in op for op in ops), ops
    assert not any('im2col' in op or 'bmm' in op for op in ops), ops


def test_bfloat16_autocast_takes_the_plain_path():
    kernels.set_mode('gemm')
    record = {}
    with torch.autocast('cpu', dtype=torch.bfloat16):
        y = conv(torch.randn(1, 3, 8, 8), torch.randn(4, 3, 3, 3), None, record)
    assert record == {'forward': 'plain'} and y.dtype == torch.bfloat16


# ---------------------------------------------------------------- determinism

def test_a_pinned_choice_is_used_without_measuring_and_new_ones_are_written(
        tmp_path, monkeypatch):
    pin = tmp_path / 'kernels.json'
    monkeypatch.setenv('TORCHCAFFE_KERNEL_FILE', str(pin))
    x, w, b = big_case()
    conv(x, w, b).sum().backward()
    written = json.loads(pin.read_text())
    assert len(written) == 3 and set(written.values()) <= set(kernels.CANDIDATES)
    # pin every pass to gemm; a fresh process state must follow it without a clock
    pin.write_text(json.dumps({k: 'gemm' for k in written}))
    kernels.clear()
    monkeypatch.setattr(kernels.time, 'perf_counter', lambda: 1 / 0)
    record = {}
    conv(x, w, b, record).sum().backward()
    assert record == {'forward': 'gemm', 'input': 'gemm', 'weight': 'gemm'}


def test_the_pin_file_defaults_to_a_per_machine_cache_and_none_turns_it_off(
        tmp_path, monkeypatch):
    monkeypatch.delenv('TORCHCAFFE_KERNEL_FILE')
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path))
    path = kernels.pin_file()
    assert os.path.dirname(path) == str(tmp_path / 'torchcaffe')
    assert os.path.basename(path).startswith('kernels-' + torch.__version__.replace('+', '+'))
    kernels.clear()
    conv(*big_case()).sum().backward()
    assert len(json.loads(open(path).read())) == 3
    monkeypatch.setenv('TORCHCAFFE_KERNEL_FILE', 'none')
    assert kernels.pin_file() is None


DETERMINISM_SCRIPT = r'''
import hashlib, sys, torch
sys.path.insert(0, sys.argv[1])
torch.set_num_threads(2)
from torchcaffe import kernels
g = torch.Generator().manual_seed(5)
x = torch.randn(1, 96, 13, 13, generator=g, requires_grad=True)
w = torch.randn(128, 96, 7, 7, generator=g, requires_grad=True)
b = torch.randn(128, generator=g, requires_grad=True)
record = {}
y = kernels.convolution(x, w, b, (1, 1), (0, 0), (1, 1), 1, record=record)
y.backward(torch.randn(y.shape, generator=g))
h = hashlib.sha256()
for t in (y, x.grad, w.grad, b.grad):
    h.update(t.detach().numpy().tobytes())
print(sorted(record.items()), h.hexdigest())
'''


def test_same_pin_file_and_threads_give_the_same_kernels_and_bytes_across_processes(
        tmp_path):
    env = dict(os.environ, TORCHCAFFE_KERNEL_FILE=str(tmp_path / 'k.json'),
               TORCHCAFFE_KERNELS='auto')
    outs = []
    for _ in range(3):
        done = subprocess.run([sys.executable, '-c', DETERMINISM_SCRIPT, ROOT], env=env,
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        outs.append(done.stdout)
    assert outs[0] and outs[0] == outs[1] == outs[2]
    assert "'forward'" in outs[0]


def test_a_fixed_choice_gives_the_same_bytes_on_every_run():
    kernels.set_mode('gemm')
    x, w, b = big_case()
    digests = set()
    for _ in range(3):
        x.grad = w.grad = b.grad = None
        y = conv(x, w, b)
        y.backward(torch.ones_like(y))
        digests.add(hashlib.sha256(b''.join(t.detach().numpy().tobytes()
                                            for t in (y, x.grad, w.grad, b.grad))).hexdigest())
    assert len(digests) == 1


# ---------------------------------------------------------------- InnerProduct, Crop

def test_inner_product_candidates_agree_and_gemm_mode_fuses_the_bias():
    g = torch.Generator().manual_seed(4)
    flat = torch.randn(8, 512, generator=g, requires_grad=True)
    weight = torch.randn(1024, 512, generator=g, requires_grad=True)
    bias = torch.randn(1024, generator=g, requires_grad=True)
    plain = flat @ weight.t() + bias
    for name in kernels.MODES:
        kernels.set_mode(name)
        record = {}
        y = kernels.inner_product(flat, weight, bias, False, record)
        assert record['forward'] == {'plain': 'plain', 'gemm': 'addmm'}.get(name,
                                                                             record['forward'])
        torch.testing.assert_close(y, plain, rtol=2e-5, atol=2e-4)
        grads = torch.autograd.grad(y.sum(), (flat, weight, bias))
        expected = torch.autograd.grad(plain.sum(), (flat, weight, bias), retain_graph=True)
        for a, e in zip(grads, expected):
            torch.testing.assert_close(a, e, rtol=2e-5, atol=2e-4)


def crop_net():
    proto = caffe_pb2.NetParameter()
    from google.protobuf import text_format
    text_format.Merge('''
        force_backward: true
        layer { name: "in" type: "Input" top: "big" top: "ref"
          input_param { shape { dim: 1 dim: 2 dim: 7 dim: 9 } shape { dim: 1 dim: 2 dim: 3 dim: 4 } } }
        layer { name: "crop" type: "Crop" bottom: "big" bottom: "ref" top: "out"
          crop_param { axis: 2 offset: 2 offset: 3 } }''', proto)
    return caffe.Net(proto, caffe.TRAIN)


def test_crop_backward_puts_the_top_diff_at_the_offsets_and_zeros_elsewhere():
    net = crop_net()
    big = np.arange(126, dtype=np.float32).reshape(1, 2, 7, 9)
    net.blobs['big'].data[...] = big
    net.forward()
    np.testing.assert_array_equal(net.blobs['out'].data, big[:, :, 2:5, 3:7])
    top = np.random.default_rng(0).standard_normal((1, 2, 3, 4)).astype(np.float32)
    net.blobs['out'].diff[...] = top
    net.backward()
    expected = np.zeros_like(big)
    expected[:, :, 2:5, 3:7] = top
    np.testing.assert_array_equal(net.blobs['big'].diff, expected)
    assert not net.blobs['ref'].diff.any()


def test_crop_backward_is_one_function_not_a_chain_of_slice_scatters():
    net = crop_net()
    net.forward()
    fn = net.blobs['out'].data_tensor().grad_fn
    assert 'CropFunction' in type(fn).__name__


# ---------------------------------------------------------------- caffe time, GPU switch

def test_caffe_time_lists_each_layers_kernels():
    kernels.set_mode('gemm')
    proto = caffe_pb2.NetParameter()
    from google.protobuf import text_format
    text_format.Merge('''
        force_backward: true
        layer { name: "in" type: "Input" top: "data"
          input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
        layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
          convolution_param { num_output: 4 kernel_size: 3
            weight_filler { type: "gaussian" std: 0.1 } } }
        layer { name: "ip" type: "InnerProduct" bottom: "conv" top: "ip"
          inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.1 } } }
        ''', proto)
    net = caffe.Net(proto, caffe.TEST)
    times = time_net(net, 1)
    assert times.kernels['conv'] == {'forward': 'gemm', 'input': 'gemm', 'weight': 'gemm'}
    assert times.kernels['ip'] == {'forward': 'addmm'}
    per_layer, _ = caffe_cli.time_table(times)
    assert 'Kernel per layer (torchcaffe.kernels, mode gemm):' in per_layer
    assert '      conv\tforward: gemm, input: gemm, weight: gemm' in per_layer


def test_cudnn_benchmark_follows_the_switch_and_stays_off_for_fp32(monkeypatch):
    before = torch.backends.cudnn.benchmark
    try:
        assert kernels.apply_cudnn_benchmark('fp32') is False
        assert torch.backends.cudnn.benchmark is False
        assert kernels.apply_cudnn_benchmark('tf32') is True
        assert torch.backends.cudnn.benchmark is True
        assert kernels.apply_cudnn_benchmark('bf16') is True
        for name in ('plain', 'gemm'):
            kernels.set_mode(name)
            assert kernels.apply_cudnn_benchmark('tf32') is False
    finally:
        torch.backends.cudnn.benchmark = before


def test_net_results_in_gemm_mode_match_plain_mode_to_rounding():
    proto = io.read_net_prototxt(os.path.join(ROOT, 'ilsvrc-nets', 'caffenet-deploy.prototxt'))
    proto.force_backward = True
    shape = proto.layer[0].input_param.shape[0]
    del shape.dim[:]
    shape.dim.extend([1, 3, 67, 67])  # conv1 11x11 s4 ... pool5 of 1x1
    del proto.layer[-1]  # Softmax: keep fc8's raw scores
    results = {}
    for name in ('plain', 'gemm'):
        kernels.set_mode(name)
        caffe.set_random_seed(3)
        net = caffe.Net(proto, caffe.TEST)
        net.blobs['data'].data[...] = np.random.default_rng(1).standard_normal((1, 3, 67, 67))
        net.forward()
        net.blobs['fc8'].diff[...] = 1
        net.backward()
        results[name] = ({k: b.data.copy() for k, b in net.blobs.items()},
                         {k: b.diff.copy() for k, b in net.blobs.items()},
                         {k: [p.diff.copy() for p in ps] for k, ps in net.params.items()})
        kinds = {n: l.kernels.get('forward') for n, l in net.layer_dict.items()
                 if hasattr(l, 'kernels')}
        assert set(kinds.values()) == ({'plain'} if name == 'plain' else {'gemm', 'addmm'})
    for part_plain, part_gemm in zip(results['plain'], results['gemm']):
        assert part_plain.keys() == part_gemm.keys()
        for key in part_plain:
            plain = part_plain[key] if isinstance(part_plain[key], list) else [part_plain[key]]
            gemm = part_gemm[key] if isinstance(part_gemm[key], list) else [part_gemm[key]]
            assert len(plain) == len(gemm)
            for a, b in zip(plain, gemm):
                scale = float(np.abs(a).max()) or 1.0
                np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5 * scale, err_msg=key)
