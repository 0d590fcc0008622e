"""FCN-32s and FCN-8s speed and memory: the engine against a hand-written nn.Module and OpenCV.

    python benchmarks/bench_fcn.py --quick                          # smoke run, seconds
    python benchmarks/bench_fcn.py --sizes 500x375 --repeats 3      # CPU, the real nets
    python benchmarks/bench_fcn.py --gpu --precision tf32 --json fcn-gpu.json

Sizes are WIDTHxHEIGHT (SBD and VOC images are at most 500 on a side; 500x375 is
the most common). For each net and size three passes, each by two or three
implementations that share one set of random weights:

- forward: the deploy net through ``torchcaffe.Net``; ``benchmarks/fcn_module.FCN``
  in eval mode under no_grad; on the CPU, OpenCV's DNN module reading the same
  deploy prototxt and caffemodel (always in float32, whatever ``--precision``).
  Each takes a numpy image and gives the score as a host array (pycaffe's
  ``forward`` always does).
- forward+backward: the train net with its loss (an Input layer in place of the
  data layer) forward and backward; the module in train mode with the same loss.
- solver: one SGD iteration of the reference's solver settings with the real
  ``voc_layers.SBDDSegDataLayer`` reading generated JPEG / ``.mat`` files in SBD's
  layout (a temporary folder); the module with torch SGD set up with Caffe's
  multipliers, reading the same files inline, as ports do.

The implementations of a pass are timed in alternation (A, B, C, A, B, C, ...)
so that a noisy machine slows them alike; the table gives medians. Peak memory
is measured per implementation while it is built and run once: on the GPU
``torch.cuda.max_memory_allocated`` above what was allocated before; on the CPU
the peak resident set (VmHWM, reset through ``/proc/self/clear_refs``) above the
resident set before. FLOPs are 2 x the multiply-accumulates of the Convolution
and Deconvolution layers, from the net's shapes (:func:`conv_macs`); a backward
pass is counted as twice the forward.
"""
import argparse
import contextlib
import ctypes
import gc
import itertools
import json
import logging
import math
import os
import platform
import re
import statistics
import sys
import tempfile

import numpy as np
import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import torchcaffe as caffe  # noqa: E402
from torchcaffe import caffe_pb2, graph, io  # noqa: E402
from torchcaffe.layer_types import create_layer  # noqa: E402
from nets import voc  # noqa: E402
from demo import load_generator  # noqa: E402
from benchmarks.bench_engine import interleaved, set_mode, with_input_layer  # noqa: E402
from benchmarks.fcn_module import (FCN, bilinear_weight, caffe_sgd, freeze_fixed,  # noqa: E402
                                   load_arrays, softmax_loss)

CLASSES = 21
PASSES = ('forward', 'fwd+bwd', 'solver')
NETS = {'32s': 'fcn32s', '16s': 'fcn16s', '8s': 'fcn8s', '8s-atonce': 'fcn8s-atonce'}
QUICK = dict(sizes='48x40,40x32', width=1 / 16, repeats=1, warmup=0, images=2)
DEFAULTS = dict(sizes='500x500,500x375', width=1.0, repeats=5, warmup=1, images=4)

# The reference's solver settings (voc-fcn*/solver.prototxt): the lr is for an
# unnormalized softmax, the momentum high.
SOLVER = dict(base_lr=1e-14, momentum=0.99, weight_decay=0.0005)

# Dense peak TFLOP/s from NVIDIA's datasheets, for CUDA cores (fp32) and tensor
# cores (tf32, bf16; the datasheets' larger figures assume 2:4 sparsity). The
# first entry whose key is in the device's name applies; NVL parts clock lower
# and are left out.
GPU_PEAKS = (
    ('NVL', None),
    ('H100 PCIe', {'fp32': 51.0, 'tf32': 378.0, 'bf16': 756.0}),
    ('H100', {'fp32': 67.0, 'tf32': 494.5, 'bf16': 989.5}),  # SXM5 ("H100 80GB HBM3")
    ('H200', {'fp32': 67.0, 'tf32': 494.5, 'bf16': 989.5}),  # SXM
    ('A100', {'fp32': 19.5, 'tf32': 156.0, 'bf16': 312.0}),  # SXM4 and PCIe
)


# ------------------------------------------------------------------------ arguments

def parse_size(text):
    """'500x375' (width x height) as (height, width).

    >>> parse_size('500x375')
    (375, 500)
    """
    match = re.fullmatch(r'\s*(\d+)\s*[xX]\s*(\d+)\s*', text)
    if not match or min(int(match.group(1)), int(match.group(2))) < 1:
        raise argparse.ArgumentTypeError('size %r is not WIDTHxHEIGHT, e.g. 500x375' % text)
    return int(match.group(2)), int(match.group(1))


def size_name(size):
    return '%dx%d' % (size[1], size[0])


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--nets', default='32s,8s',
                   help='comma-separated, of %s (default %%(default)s)' % ', '.join(NETS))
    p.add_argument('--sizes', help='comma-separated WIDTHxHEIGHT (default %s)'
                   % DEFAULTS['sizes'])
    p.add_argument('--repeats', type=int, help='timed runs of each (default %d)'
                   % DEFAULTS['repeats'])
    p.add_argument('--warmup', type=int, help='untimed rounds first (default %d)'
                   % DEFAULTS['warmup'])
    p.add_argument('--width', type=float, help='channel multiplier (default 1: the real nets)')
    p.add_argument('--images', type=int, help='generated SBD images per size (default %d)'
                   % DEFAULTS['images'])
    p.add_argument('--gpu', action='store_true', help='run on CUDA device 0')
    p.add_argument('--precision', choices=('fp32', 'tf32', 'bf16'), default='fp32',
                   help="arithmetic (torchcaffe.set_precision); 'fp32' is Caffe's")
    p.add_argument('--threads', type=int, help="torch and OpenCV CPU threads (default torch's)")
    p.add_argument('--peak-tflops', type=float,
                   help='the device peak for the %%peak column (GPUs in GPU_PEAKS are known)')
    p.add_argument('--quick', action='store_true',
                   help='smoke run: sizes %s, width 1/16, 1 repeat, no warmup' % QUICK['sizes'])
    p.add_argument('--json', metavar='PATH', help='also write the results as JSON')
    p.add_argument('--passes', default=','.join(PASSES),
                   help='comma-separated, of %s (default all)' % ', '.join(PASSES))
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--kernels', choices=('auto', 'plain', 'gemm'),
                   help="the engine's kernel switch (torchcaffe.kernels; default: "
                   "TORCHCAFFE_KERNELS, else auto); 'plain' is the engine before it")
    args = p.parse_args(argv)
    bad = [x for x in args.passes.split(',') if x not in PASSES]
    if bad:
        p.error('unknown pass %r; known: %s' % (bad[0], ', '.join(PASSES)))
    for key, value in (QUICK if args.quick else DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    unknown = [n for n in args.nets.split(',') if n not in NETS]
    if unknown:
        p.error('unknown net %r; known: %s' % (unknown[0], ', '.join(NETS)))
    args.net_list = [NETS[n] for n in args.nets.split(',')]
    try:
        args.size_list = [parse_size(s) for s in args.sizes.split(',')]
    except argparse.ArgumentTypeError as err:
        p.error(str(err))
    if args.repeats < 1 or args.warmup < 0 or args.images < 1:
        p.error('need --repeats >= 1, --warmup >= 0, --images >= 1')
    return args


# ------------------------------------------------------------------------ arithmetic

def conv_macs(net_param, phase=caffe.TEST):
    """Multiply-accumulates of each Convolution and Deconvolution layer of a net.

    Shapes come from the NetParameter alone (its Input layers give the input
    shapes; nothing is allocated). Caffe's weights are (out, in / group, kh, kw)
    for a convolution, each output element costing ``in / group x kh x kw``, and
    (in, out / group, kh, kw) for a deconvolution, each input element scattering
    ``out / group x kh x kw``.

    Parameters
    ----------
    net_param : caffe_pb2.NetParameter
        A net whose inputs are Input layers (a deploy net).
    phase : int

    Returns
    -------
    list of (layer name, macs), in net order.
    """
    layers = graph.filter_layers(net_param, graph.make_state(phase))
    shapes = graph.infer_shapes(layers, phase=phase)
    counts = []
    for lp in layers:
        if lp.type not in ('Convolution', 'Deconvolution'):
            continue
        layer = create_layer(lp, phase)
        macs = 0
        for bottom, top in zip(lp.bottom, lp.top):
            weight = layer.param_shapes([shapes[bottom]])[0]
            spread = shapes[top] if lp.type == 'Convolution' else shapes[bottom]
            macs += math.prod(spread) * math.prod(weight[1:])
        counts.append((lp.name, macs))
    return counts


def device_peak(name, precision, given=None):
    """Peak TFLOP/s of the device called ``name`` at ``precision``, or None if unknown."""
    if given:
        return given
    for key, peaks in GPU_PEAKS:
        if key in name:
            return peaks and peaks[precision]
    return None


# ------------------------------------------------------------------------ memory

def _trim_heap():
    """Return freed heap memory to the OS (glibc), so RSS falls back between cases."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL('libc.so.6').malloc_trim(0)


def _status_kib(field):
    with open('/proc/self/status') as f:
        match = re.search(r'^%s:\s+(\d+) kB' % field, f.read(), re.M)
    return int(match.group(1))


class PeakMemory:
    """Peak memory of what runs between :meth:`start` and :meth:`peak_mib`, in MiB.

    CUDA: allocated tensor memory above what was allocated at start. CPU: the
    peak resident set (VmHWM, reset by writing 5 to ``/proc/self/clear_refs``,
    Linux 4.0 and later) above the resident set at start; None where that
    cannot be reset.
    """

    def __init__(self, device):
        self.device = device
        self.base = None

    def start(self):
        _trim_heap()
        if self.device == 'cuda':
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            return
        try:
            with open('/proc/self/clear_refs', 'w') as f:
                f.write('5')
            self.base = _status_kib('VmRSS') * 1024
        except (OSError, AttributeError):
            self.base = None

    def peak_mib(self):
        if self.base is None:
            return None
        if self.device == 'cuda':
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
        else:
            peak = _status_kib('VmHWM') * 1024
        return (peak - self.base) / 2 ** 20


# ------------------------------------------------------------------------ inputs

def make_sbd_tree(root, size, count, seed=0):
    """An SBD ``dataset`` folder of ``count`` images of one size: ``img/*.jpg``,
    ``cls/*.mat`` and ``train.txt``. Images are smooth colour fields with noise,
    labels blocks of random classes. Returns the folder."""
    from PIL import Image
    writers = load_generator()  # its JPEG and SBD .mat encoders
    h, w = size
    sbdd = os.path.join(root, 'sbdd-' + size_name(size))
    for sub in ('img', 'cls'):
        os.makedirs(os.path.join(sbdd, sub), exist_ok=True)
    rng = np.random.default_rng(seed)
    ids = ['bench_%06d' % (i + 1) for i in range(count)]
    for sample_id in ids:
        coarse = rng.integers(0, 256, (h // 16 + 2, w // 16 + 2, 3), dtype=np.uint8)
        image = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BILINEAR), np.int16)
        image = np.clip(image + rng.integers(-8, 9, image.shape), 0, 255).astype(np.uint8)
        blocks = rng.integers(0, CLASSES, (h // 32 + 1, w // 32 + 1)).astype(np.uint8)
        label = np.kron(blocks, np.ones((32, 32), np.uint8))[:h, :w]
        with open(os.path.join(sbdd, 'img', sample_id + '.jpg'), 'wb') as f:
            f.write(writers.encode_jpeg(image))
        with open(os.path.join(sbdd, 'cls', sample_id + '.mat'), 'wb') as f:
            f.write(writers.encode_sbd_mat(label))
    with open(os.path.join(sbdd, 'train.txt'), 'w') as f:
        f.write(''.join(i + '\n' for i in ids))
    return sbdd


def with_input_shape(net_param, shape):
    """A copy of a deploy net whose Input layer gives ``data`` the shape ``shape``."""
    proto = caffe_pb2.NetParameter()
    proto.CopyFrom(net_param)
    first = proto.layer[0]
    if first.type != 'Input':
        raise ValueError('expected an Input layer first, got %s %r' % (first.type, first.name))
    del first.input_param.shape[:]
    first.input_param.shape.add(dim=list(shape))
    return proto


def randomize(net, seed):
    """Random weights of a sensible scale: He-normal convolutions, zero biases,
    bilinear upsamplers (as FCN training starts), Scale factors kept."""
    rng = np.random.default_rng(seed)
    for name, blobs in net.params.items():
        kind = net.layer_dict[name].type
        weight = blobs[0].data
        if kind == 'Deconvolution':
            weight[...] = bilinear_weight(weight.shape[0], weight.shape[-1]).numpy()
        elif kind == 'Convolution':
            fan_in = math.prod(weight.shape[1:])
            weight[...] = rng.standard_normal(weight.shape, np.float32) * math.sqrt(2 / fan_in)
        for blob in blobs[1:]:
            blob.data[...] = 0


def read_arrays(caffemodel):
    """Layer name -> [weight arrays] of a caffemodel."""
    proto = io.read_caffemodel(caffemodel)
    return {lp.name: [io.blobproto_to_array(b) for b in lp.blobs]
            for lp in proto.layer if lp.blobs}


class Setup:
    """What the implementations of one net at one size share: prototxts, the
    caffemodel of random weights, an input image and label, an SBD folder."""

    def __init__(self, stage, size, args, tmp, device):
        self.stage, self.size, self.args, self.device = stage, size, args, device
        h, w = size
        self.shape = (1, 3, h, w)
        nets = voc.stage_nets(stage, classes=CLASSES, width=args.width)
        self.deploy = with_input_shape(nets['deploy'], self.shape)
        self.deploy_path = os.path.join(tmp, '%s-%s-deploy.prototxt' % (stage, size_name(size)))
        io.write_prototxt(self.deploy, self.deploy_path)
        self.train = with_input_layer(nets['train'], self.shape)
        self.weights = os.path.join(tmp, '%s.caffemodel' % stage)
        if not os.path.exists(self.weights):
            net = caffe.Net(self.deploy, caffe.TEST)
            randomize(net, args.seed)
            net.save(self.weights)
            del net
        sbdd = os.path.join(tmp, 'sbdd-' + size_name(size))
        if not os.path.isdir(sbdd):
            sbdd = make_sbd_tree(tmp, size, args.images, args.seed)
        self.solver_net = caffe_pb2.NetParameter()
        self.solver_net.CopyFrom(nets['train'])
        self.solver_net.layer[0].python_param.param_str = str(dict(
            sbdd_dir=sbdd, seed=voc.SEED, split='train', mean=voc.MEAN))
        self.sbdd, self.tmp = sbdd, tmp
        rng = np.random.default_rng(args.seed + 1)
        self.data = rng.normal(0, 50, self.shape).astype(np.float32)
        self.label = rng.integers(0, CLASSES, (1, 1, h, w)).astype(np.float32)
        self.macs = sum(m for _, m in conv_macs(self.deploy))

    def module(self):
        """The nn.Module with the caffemodel's weights, on the device."""
        model = FCN(self.stage, classes=CLASSES, width=self.args.width)
        load_arrays(model, read_arrays(self.weights))
        return model.to(self.device)

    def autocast(self):
        if self.args.precision != 'bf16':
            return contextlib.nullcontext()
        return torch.autocast(self.device, dtype=torch.bfloat16)


# ------------------------------------------------------------------------ implementations
#
# Each builder makes its implementation and returns a function that runs it once
# and returns the score as a host array (forward) or None.

def engine_forward(s):
    net = caffe.Net(s.deploy_path, caffe.TEST, weights=s.weights)
    net.autograd = False  # inference, as infer.py and score.py run it
    return lambda: net.forward(data=s.data)['score']


def module_forward(s):
    model = s.module().eval()

    def run():
        with torch.no_grad(), s.autocast():
            score = model(torch.from_numpy(s.data).to(s.device))
        return score.float().cpu().numpy()
    return run


def opencv_forward(s):
    import cv2
    cv2.setNumThreads(torch.get_num_threads())
    net = cv2.dnn.readNetFromCaffe(s.deploy_path, s.weights)
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)

    def run():
        net.setInput(s.data)
        return net.forward()
    return run


def onnxruntime_forward(s):
    """The deploy net exported by the engine and run by onnxruntime, as
    ``infer.py --backend onnxruntime`` runs it (same thread count as torch)."""
    from torchcaffe.ort_backend import OnnxRuntimeNet
    net = OnnxRuntimeNet(s.deploy_path, s.weights, gpu=0 if s.device == 'cuda' else None,
                         threads=torch.get_num_threads())
    return lambda: net.forward(data=s.data)['score']


def _has_onnxruntime(device):
    try:
        import onnxruntime
    except ImportError:
        return False
    return device == 'cpu' or 'CUDAExecutionProvider' in onnxruntime.get_available_providers()


def engine_train(s):
    net = caffe.Net(s.train, caffe.TRAIN, weights=s.weights)

    def run():
        net.forward(data=s.data, label=s.label)
        net.backward()
    return run


def module_train(s):
    model = s.module().train()
    freeze_fixed(model)

    def run():
        model.zero_grad(set_to_none=True)
        with s.autocast():
            score = model(torch.from_numpy(s.data).to(s.device))
        softmax_loss(score.float(), torch.from_numpy(s.label).to(s.device)).backward()
    return run


def engine_solver(s):
    param = caffe_pb2.SolverParameter(
        train_net_param=s.solver_net, lr_policy='fixed', display=0, average_loss=20,
        max_iter=10 ** 8, snapshot_prefix=os.path.join(s.tmp, 'snapshot'), **SOLVER)
    solver = caffe.SGDSolver(param)
    solver.net.copy_from(s.weights)
    return lambda: solver.step(1)


def module_solver(s):
    from voc_layers import preprocess, read_rgb, read_sbd_label
    model = s.module().train()
    optimizer = caffe_sgd(model, **SOLVER)
    with open(os.path.join(s.sbdd, 'train.txt')) as f:
        ids = f.read().split()
    mean = np.array(voc.MEAN)
    order = itertools.count()

    def run():
        sample = ids[next(order) % len(ids)]
        image = preprocess(read_rgb(os.path.join(s.sbdd, 'img', sample + '.jpg')), mean)
        label = read_sbd_label(os.path.join(s.sbdd, 'cls', sample + '.mat'))
        x = torch.from_numpy(image[np.newaxis]).to(s.device)
        y = torch.from_numpy(label[np.newaxis]).to(s.device)
        optimizer.zero_grad(set_to_none=True)
        with s.autocast():
            score = model(x)
        loss = softmax_loss(score.float(), y)
        loss.backward()
        optimizer.step()
        loss.item()  # as a training loop logs it (and Caffe's solver reads it)
    return run


def pass_builders(device):
    """pass -> {implementation: builder}; OpenCV only on the CPU, onnxruntime where it
    is installed (on CUDA: onnxruntime-gpu)."""
    forward = {'engine': engine_forward, 'module': module_forward}
    if device == 'cpu':
        forward['opencv'] = opencv_forward
    if _has_onnxruntime(device):
        forward['onnxruntime'] = onnxruntime_forward
    return {'forward': forward,
            'fwd+bwd': {'engine': engine_train, 'module': module_train},
            'solver': {'engine': engine_solver, 'module': module_solver}}


# ------------------------------------------------------------------------ measuring

def measure(builders, setup, args, device):
    """Build and run each implementation once (measuring its memory), then time
    them in alternation. Returns {impl: (first output, peak MiB, [wall seconds])}."""
    memory = PeakMemory(device)
    runs, outputs, peaks = {}, {}, {}
    for impl, build in builders.items():
        memory.start()
        runs[impl] = build(setup)
        out = runs[impl]()
        outputs[impl] = None if out is None else np.array(out)  # a copy: blobs are reused
        peaks[impl] = memory.peak_mib()
    times = interleaved(runs, args.repeats, args.warmup, device)
    return {impl: (outputs[impl], peaks[impl], [wall for wall, _ in times[impl]])
            for impl in builders}


def rows_for(stage, size, pass_name, measured, flops, peak):
    rows = []
    engine = statistics.median(measured['engine'][2])
    for impl, (_, mib, walls) in measured.items():
        median = statistics.median(walls)
        tflops = flops / median / 1e12
        rows.append(dict(
            net=stage, size=size_name(size), pass_=pass_name, impl=impl,
            median_ms=1e3 * median, min_ms=1e3 * min(walls), runs=len(walls),
            per_s=1 / median, gflop=flops / 1e9, tflops=tflops,
            peak_percent=100 * tflops / peak if peak else None, peak_mib=mib,
            engine_ratio=None if impl == 'engine' else engine / median))
    return rows


def onnxruntime_vs_opencv(rows):
    """Per net and size, onnxruntime's median forward time over OpenCV DNN's."""
    forward = {(r['net'], r['size'], r['impl']): r['median_ms'] for r in rows
               if r['pass_'] == 'forward'}
    out = []
    for (net, size, impl), ms in forward.items():
        opencv = forward.get((net, size, 'opencv'))
        if impl == 'onnxruntime' and opencv:
            out.append(dict(net=net, size=size, onnxruntime_ms=ms, opencv_ms=opencv,
                            ratio=ms / opencv))
    return out


# Issue 21's targets: (pass, numerator, denominator, most). 'fastest' is the
# fastest of the engine, the module and onnxruntime.
TARGETS = (('fwd+bwd', 'engine', 'module', 0.85), ('forward', 'engine', 'module', 0.85),
           ('forward', 'engine', 'opencv', 1.0), ('forward', 'fastest', 'opencv', 0.75))


def target_lines(rows):
    """One line per net, size and target of :data:`TARGETS` that the rows can
    answer: the ratio of median times, and whether it meets the target."""
    ms = {(r['net'], r['size'], r['pass_'], r['impl']): r['median_ms'] for r in rows}
    cases = sorted({(r['net'], r['size']) for r in rows}, key=lambda c: (c[0], c[1]))
    lines = []
    for net, size in cases:
        for pass_name, top, bottom, most in TARGETS:
            if top == 'fastest':
                found = [(ms[(net, size, pass_name, impl)], impl) for impl in
                         ('engine', 'module', 'onnxruntime') if (net, size, pass_name, impl) in ms]
                if not found:
                    continue
                top_ms, top = min(found)
            else:
                top_ms = ms.get((net, size, pass_name, top))
            bottom_ms = ms.get((net, size, pass_name, bottom))
            if top_ms is None or not bottom_ms:
                continue
            ratio = top_ms / bottom_ms
            lines.append('target %s %s %s: %s / %s = %.3f (<= %.2f: %s)'
                         % (net, size, pass_name, top, bottom, ratio, most,
                            'met' if ratio <= most else 'not met'))
    return lines


def check_line(stage, size, measured):
    """Max abs differences of the other implementations' scores from the engine's."""
    engine = np.asarray(measured['engine'][0], np.float64)
    check = dict(net=stage, size=size_name(size), score_max=float(np.abs(engine).max()))
    for impl in OTHERS:
        if impl in measured:
            other = np.asarray(measured[impl][0], np.float64)
            check[impl + '_max_abs_diff'] = float(np.abs(other - engine).max())
    return check


# ------------------------------------------------------------------------ output

OTHERS = ('module', 'opencv', 'onnxruntime')

def check_text(check):
    """'score of engine vs module: max abs diff 0, vs opencv 0.00076 (scores up to 479)'"""
    diffs = ['vs %s %.3g' % (impl, check[impl + '_max_abs_diff'])
             for impl in OTHERS if impl + '_max_abs_diff' in check]
    return 'engine score max abs diff %s (scores up to %.3g)' % (', '.join(diffs),
                                                                check['score_max'])


# (row key, width, format, title); text columns are left-aligned.
COLUMNS = (('net', 12, '%s', 'net'), ('size', 8, '%s', 'size'), ('pass_', 8, '%s', 'pass'),
           ('impl', 11, '%s', 'impl'), ('median_ms', 10, '%.1f', 'median ms'),
           ('min_ms', 9, '%.1f', 'min ms'), ('per_s', 8, '%.2f', 'per s'),
           ('tflops', 8, '%.3f', 'TFLOP/s'), ('peak_percent', 6, '%.1f', '%peak'),
           ('peak_mib', 9, '%.0f', 'peak MiB'), ('engine_ratio', 12, '%.3f', 'engine/impl'))


def format_table(rows):
    """The rows as a fixed-width text table; None prints as 'n/a' ('-' for the
    engine's own ratio)."""
    def cell(width, text, left):
        return text.ljust(width) if left else text.rjust(width)

    lines = [' '.join(cell(w, title, fmt == '%s') for _, w, fmt, title in COLUMNS)]
    lines.append('-' * len(lines[0]))
    for row in rows:
        cells = []
        for key, w, fmt, _ in COLUMNS:
            value = row[key]
            text = (fmt % value if value is not None
                    else '-' if key == 'engine_ratio' else 'n/a')
            cells.append(cell(w, text, fmt == '%s'))
        lines.append(' '.join(cells))
    return '\n'.join(lines)


def device_name(device):
    if device == 'cuda':
        return torch.cuda.get_device_name()
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        with open('/proc/cpuinfo') as f:
            found = re.search(r'^model name\s*:\s*(.+)$', f.read(), re.M)
        model = found.group(1) if found else model
    return '%s (%d torch threads)' % (model, torch.get_num_threads())


def apply_precision(precision):
    """The engine's ``set_precision`` (which also sets torch's TF32 switches that
    the module obeys)."""
    set_precision = getattr(caffe, 'set_precision', None)
    if set_precision is None:
        if precision != 'fp32':
            sys.exit('--precision %s needs torchcaffe.set_precision (torchcaffe/mode.py), '
                     'which this checkout lacks; only fp32 can run' % precision)
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        return
    set_precision(precision)


def preload(device):
    """Import what the implementations import lazily on first use (torch.optim pulls
    in torch._dynamo, seconds), so that neither a timing nor a memory peak holds it;
    then freeze the objects so far out of the collector's way (each memory
    measurement starts with a full collection)."""
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.0)
    # the first convolution, pooling and backward set up thread pools and kernels
    x = torch.ones(1, 3, 9, 9, device=device, requires_grad=True)
    y = F.max_pool2d(F.conv2d(x, torch.ones(4, 3, 3, 3, device=device)), 2, ceil_mode=True)
    F.conv_transpose2d(y, torch.ones(4, 4, 4, 4, device=device), stride=2).sum().backward()
    if device == 'cpu':
        import cv2  # noqa: F401
    import voc_layers  # noqa: F401
    gc.collect()
    gc.freeze()


@contextlib.contextmanager
def quiet_engine_logs():
    """The solver logs its whole parameter (with the train net) at INFO; keep the
    table readable, and restore the level afterwards."""
    logger = logging.getLogger('torchcaffe')
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def main(argv=None):
    args = parse_args(argv)
    try:
        with quiet_engine_logs():
            return run(args)
    finally:
        gc.unfreeze()  # see preload


def run(args):
    """The benchmark of ``args`` (see :func:`parse_args`); prints the table."""
    device = 'cuda' if args.gpu else 'cpu'
    if args.gpu and not torch.cuda.is_available():
        sys.exit('--gpu: CUDA is not available to torch')
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.kernels:
        from torchcaffe import kernels
        kernels.set_mode(args.kernels)
    set_mode(device)
    apply_precision(args.precision)
    preload(device)
    name = device_name(device)
    peak = device_peak(name, args.precision, args.peak_tflops)
    versions = 'torch %s' % torch.__version__
    if device == 'cpu':
        import cv2
        versions += ', OpenCV %s' % cv2.__version__
    if _has_onnxruntime(device):
        import onnxruntime
        versions += ', onnxruntime %s' % onnxruntime.__version__
    print('FCN benchmark on %s; %s; width %g, precision %s, %d warmup + %d timed runs; '
          'peak %s' % (name, versions, args.width, args.precision, args.warmup, args.repeats,
                       '%g TFLOP/s' % peak if peak else 'n/a (give --peak-tflops)'), flush=True)
    from torchcaffe import kernels
    print("engine kernels: %s (torchcaffe.kernels)" % kernels.mode())
    if device == 'cuda':
        print('(OpenCV DNN is not run on the GPU: the pip wheel has no CUDA backend)')
    rows, checks = [], []

    def write_json(versus=(), complete=False):
        # after every net and size too, so that a run stopped by a time limit
        # (benchmarks/gpu_check.sh) leaves what it measured
        if args.json:
            result = dict(device=name, versions=versions, precision=args.precision,
                          width=args.width, repeats=args.repeats, warmup=args.warmup,
                          peak_tflops=peak, nets=args.net_list,
                          sizes=[size_name(s) for s in args.size_list],
                          rows=[{k.rstrip('_'): v for k, v in r.items()} for r in rows],
                          checks=checks, onnxruntime_vs_opencv=list(versus),
                          complete=complete)
            with open(args.json, 'w') as f:
                json.dump(result, f, indent=1)

    with tempfile.TemporaryDirectory(prefix='bench_fcn-') as tmp:
        for stage in args.net_list:
            for size in args.size_list:
                setup = Setup(stage, size, args, tmp, device)
                print('%s %s: forward %.1f GFLOP (2 x conv/deconv MACs)'
                      % (stage, size_name(size), 2 * setup.macs / 1e9), flush=True)
                for pass_name, builders in pass_builders(device).items():
                    if pass_name not in args.passes.split(','):
                        continue
                    measured = measure(builders, setup, args, device)
                    flops = 2 * setup.macs * (1 if pass_name == 'forward' else 3)
                    done = rows_for(stage, size, pass_name, measured, flops, peak)
                    for row in done:  # as they come: a full-width CPU run takes long
                        print('  %-7s %-11s median %10.1f ms' % (pass_name, row['impl'],
                                                                 row['median_ms']), flush=True)
                    rows += done
                    if pass_name == 'forward':
                        checks.append(check_line(stage, size, measured))
                        print('  check: %s' % check_text(checks[-1]), flush=True)
                del setup
                write_json()
    print()
    print(format_table(rows))
    print('engine/impl: median time of the engine over that of the implementation '
          '(above 1: the engine is slower). fwd+bwd and solver count 3 x the forward FLOPs.')
    versus = onnxruntime_vs_opencv(rows)
    for line in versus:
        print('onnxruntime / OpenCV DNN forward, %(net)s %(size)s: %(ratio).3f '
              '(%(onnxruntime_ms).1f / %(opencv_ms).1f ms)' % line)
    for line in target_lines(rows):
        print(line)
    write_json(versus, complete=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
