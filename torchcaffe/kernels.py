"""Per-shape kernel choice for Convolution, Deconvolution and InnerProduct on the CPU.

torch's own CPU convolution (oneDNN) beats Caffe's im2col + GEMM on the 3x3 layers
of VGG, but loses to it by 2-4x where a convolution is really one large matrix
product: FCN's fc6 (7x7, 512 -> 4096 on a map of a few dozen positions) and fc7
(1x1, 4096 -> 4096). So each such layer picks, per shape, among:

* ``torch``: torch's convolution (``F.conv2d`` / ``F.conv_transpose2d``, and
  ``aten.convolution_backward`` for the gradients: the plain path's own kernels);
* ``gemm``: Caffe's method, im2col (``F.unfold``) and one GEMM per group
  (BaseConvolutionLayer::forward_cpu_gemm in src/caffe/layers/base_conv_layer.cpp);
  a 1x1 convolution without padding skips the im2col and is a plain matrix
  product. A Deconvolution's forward is the GEMM then col2im (``F.fold``), as
  Caffe's backward_cpu_gemm;

and, separately for the backward, the input gradient (GEMM + col2im, or im2col +
GEMM for a Deconvolution) and the weight gradient (one GEMM against the columns).
InnerProduct picks between a matrix product plus bias and ``addmm``.

The choice is measured the first time a (kind, input shape, weight shape,
geometry, dtype, thread count) is seen, as cuDNN's benchmark mode does: every
candidate runs twice on the real tensors, alternating, and the fastest minimum
wins, but a candidate other than ``torch`` must beat torch's time by
:data:`MARGIN`, so that noise does not flip a close call between runs. The
choice is kept for the process and in a file per machine (below).
Candidates agree with the plain path to float32 rounding: they add the products
of a sum in another order (tests/test_kernels.py).

The switch (``TORCHCAFFE_KERNELS`` or :func:`set_mode`):

* ``auto`` (default): measured choice, on the CPU in float32/float64;
* ``plain``: torch's ops directly, no choice (the engine before this module);
* ``gemm``: im2col + GEMM wherever it applies, without measuring.

Determinism: a choice, once made, is deterministic (same kernels, same threads:
same bytes). Measurements could choose differently from one process to the next
(two candidates within the margin on a loaded machine), so each choice is kept in
a file per machine (:func:`pin_file`: ``~/.cache/torchcaffe/`` by default,
``TORCHCAFFE_KERNEL_FILE`` to name another, ``none`` for none): choices found
there are used without measuring, new ones are added. The same machine and
thread count then give the same kernels and the same bytes in every process;
delete the file to measure again. ``plain`` and ``gemm`` never measure.

The plain path is taken regardless of the switch under torch.compile / torch.export
tracing, for fake or meta tensors and other tensor subclasses, under autocast
(``set_precision('bf16')``), off the CPU, and, in ``auto``, for convolutions
smaller than :data:`MIN_MACS` (where the choice cannot pay for its measuring) and
those with more output positions than rows of im2col columns (where torch wins
anyway: see :data:`MAX_COLUMNS`). On a GPU the
same switch drives ``torch.backends.cudnn.benchmark`` (:func:`cudnn_benchmark`).
"""
import json
import logging
import math
import os
import threading
import time

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from . import mode as _caffe_mode

__all__ = ['MODES', 'MARGIN', 'MIN_MACS', 'MAX_COLUMNS', 'set_mode', 'mode', 'clear', 'choices',
           'convolution', 'inner_product', 'cudnn_benchmark', 'apply_cudnn_benchmark',
           'CANDIDATES', 'tracing', 'pin_file']

MODES = ('auto', 'plain', 'gemm')

# A candidate other than torch wins only when its time is under MARGIN x torch's.
MARGIN = 0.85

# Convolutions of fewer multiply-accumulates per forward run the plain path in 'auto'.
MIN_MACS = 1 << 22

# Measured rounds per candidate (the minimum counts).
ROUNDS = 3

# im2col + GEMM is a candidate only where the convolution is one wide matrix
# product: no more output positions (over the batch) than rows in a column (C x
# kernel taps), as FCN's fc6 at any image size; 1x1 kernels without padding need
# no columns and always are. Elsewhere (VGG's 3x3 layers on large maps) torch's
# direct kernels win by far, and measuring would only cost time, memory and,
# between near-equal candidates, reproducibility. The columns are also capped at
# MAX_COLUMNS elements.
MAX_COLUMNS = 1 << 24

# Choices kept at most (images of many sizes would otherwise grow the table).
_MAX_CHOICES = 4096

log = logging.getLogger(__name__)

_lock = threading.Lock()
_state = {'mode': None, 'file': None, 'loaded': False}
_choices = {}
_worth = {}  # key -> whether measuring pays for it (_worth_choosing, a pure function)


def _env_mode():
    value = os.environ.get('TORCHCAFFE_KERNELS', 'auto').strip().lower() or 'auto'
    if value not in MODES:
        raise ValueError('TORCHCAFFE_KERNELS=%r: choose one of %s' % (value, ', '.join(MODES)))
    return value


def mode():
    """The kernel switch now: 'auto', 'plain' or 'gemm'."""
    if _state['mode'] is None:
        _state['mode'] = _env_mode()
    return _state['mode']


def set_mode(name):
    """Set the kernel switch ('auto', 'plain' or 'gemm'). Choices are kept per
    mode, so switching back and forth measures nothing twice.

    Returns the previous mode.
    """
    if name not in MODES:
        raise ValueError('unknown kernel mode %r: choose one of %s' % (name, ', '.join(MODES)))
    previous = mode()
    _state['mode'] = name
    return previous


def clear():
    """Forget every choice made in this process (the pin file, if any, is read again)."""
    with _lock:
        _choices.clear()
        _state['loaded'] = False


def choices():
    """The choices so far: key text -> kernel name (a copy)."""
    _load_file()
    with _lock:
        return {_key_text(k): v for k, v in _choices.items()}


def pin_file():
    """The file that keeps this machine's choices: ``TORCHCAFFE_KERNEL_FILE``, else
    ``~/.cache/torchcaffe/kernels-<torch version>-<CPU>.json`` (``$XDG_CACHE_HOME``
    if set); None when ``TORCHCAFFE_KERNEL_FILE`` is ``none`` (choices stay in
    the process)."""
    given = os.environ.get('TORCHCAFFE_KERNEL_FILE', '').strip()
    if given.lower() in ('none', '0', 'off'):
        return None
    if given:
        return given
    cache = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
    tag = '%s-%s' % (torch.__version__, _cpu_name())
    tag = ''.join(c if c.isalnum() or c in '.+-' else '_' for c in tag)[:120]
    return os.path.join(cache, 'torchcaffe', 'kernels-%s.json' % tag)


def _cpu_name():
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or platform.machine()


def _key_text(key):
    return '|'.join(str(part) for part in key)


def _load_file():
    path = pin_file()
    with _lock:
        if _state['loaded'] and _state['file'] == path:
            return
        _state['loaded'], _state['file'] = True, path
        _state['pinned'] = {}
        if path and os.path.exists(path):
            try:
                with open(path) as f:
                    _state['pinned'] = dict(json.load(f))
            except (OSError, ValueError) as err:
                raise ValueError('TORCHCAFFE_KERNEL_FILE %s: not a JSON object of kernel '
                                 'choices (%s)' % (path, err)) from None


def _save_choice(key, name):
    path = _state.get('file')
    if not path:
        return
    pinned = _state['pinned']
    pinned[_key_text(key)] = name
    tmp = '%s.tmp%d' % (path, os.getpid())
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(tmp, 'w') as f:
            json.dump(pinned, f, indent=0, sort_keys=True)
        os.replace(tmp, path)
    except OSError as err:  # a read-only home: the choice still holds for the process
        log.warning('kernel choices not saved to %s: %s', path, err)


def _choose(key, candidates):
    """(name, output) of the kernel chosen for ``key``: ``candidates`` maps names
    to functions of no arguments, ``torch`` first. Unknown keys are measured (or
    forced by the mode); the output is that of the chosen kernel's last measured
    run, or None when nothing ran (the caller runs the choice)."""
    name = _choices.get(key)
    if name is None:
        _load_file()
        name = _state['pinned'].get(_key_text(key))
        if name not in candidates:
            name = None
        if name is not None:
            _remember(key, name, save=False)
    if name is not None:
        return name, None
    if mode() == 'gemm':
        name = next((n for n in candidates if n != 'torch'), 'torch')
        _remember(key, name)
        return name, None
    best, outputs = {}, {}
    for _ in range(ROUNDS):
        for n, run in candidates.items():
            start = time.perf_counter()
            outputs[n] = run()
            best[n] = min(best.get(n, math.inf), time.perf_counter() - start)
    name = min(best, key=best.get)
    if name != 'torch' and 'torch' in best and best[name] > MARGIN * best['torch']:
        name = 'torch'
    _remember(key, name)
    return name, outputs[name]


def _remember(key, name, save=True):
    with _lock:
        if len(_choices) >= _MAX_CHOICES:
            _choices.clear()
        _choices[key] = name
        if save:
            _save_choice(key, name)


# ---------------------------------------------------------------------- when to choose

def tracing():
    """Whether torch.compile, torch.export, torch.jit or torch.onnx is tracing now
    (the plain path is then the one to record)."""
    compiler = getattr(torch, 'compiler', None)
    if compiler is not None and any(getattr(compiler, name, lambda: False)()
                                    for name in ('is_compiling', 'is_exporting')):
        return True
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


def _eligible(x, weight):
    """Whether the kernel choice applies to these tensors at all (else the plain path)."""
    if mode() == 'plain':
        return False
    for t in (x, weight):
        if type(t) is not torch.Tensor or t.device.type != 'cpu':
            return False  # fake, meta, functorch and other subclasses; GPUs
    if x.dtype not in (torch.float32, torch.float64) or weight.dtype != x.dtype:
        return False
    if torch.is_autocast_enabled('cpu') or tracing():
        return False
    return True


# ---------------------------------------------------------------------- convolution

def _plain(x, weight, bias, stride, pad, dilation, groups, transposed):
    if transposed:
        return F.conv_transpose2d(x, weight, bias, stride=stride, padding=pad,
                                  output_padding=0, groups=groups, dilation=dilation)
    return F.conv2d(x, weight, bias, stride=stride, padding=pad, dilation=dilation,
                    groups=groups)


class _Geometry:
    """A 2-D convolution's geometry and the im2col / col2im it needs."""

    def __init__(self, kernel, stride, pad, dilation, groups, transposed):
        self.kernel, self.stride, self.pad = tuple(kernel), tuple(stride), tuple(pad)
        self.dilation, self.groups, self.transposed = tuple(dilation), groups, transposed
        # a 1x1 kernel without padding needs no im2col: the columns are the input
        # (every stride-th position of it)
        self.pointwise = self.kernel == (1, 1) and self.pad == (0, 0)

    def out_size(self, size):
        """Convolution output size of a spatial size (h, w)."""
        return tuple((n + 2 * p - (d * (k - 1) + 1)) // s + 1 for n, k, s, p, d in
                     zip(size, self.kernel, self.stride, self.pad, self.dilation))

    def im2col(self, x):
        """(N, C, H, W) -> columns (N, C * kh * kw, L) in Caffe's im2col order."""
        if self.pointwise:
            if self.stride != (1, 1):
                x = x[:, :, ::self.stride[0], ::self.stride[1]]
            return x.reshape(x.shape[0], x.shape[1], -1)
        return F.unfold(x, self.kernel, dilation=self.dilation, padding=self.pad,
                        stride=self.stride)

    def col2im(self, cols, size):
        """Columns (N, C * kh * kw, L) summed back into (N, C, *size) (Caffe's col2im)."""
        n = cols.shape[0]
        if self.pointwise:
            if self.stride == (1, 1):
                return cols.reshape((n, cols.shape[1]) + tuple(size))
            out = cols.new_zeros((n, cols.shape[1]) + tuple(size))
            sub = out[:, :, ::self.stride[0], ::self.stride[1]]
            sub.copy_(cols.reshape(sub.shape))
            return out
        return F.fold(cols, tuple(size), self.kernel, dilation=self.dilation,
                      padding=self.pad, stride=self.stride)


def _grouped(a, groups):
    """(N, G * R, L) -> (N, G, R, L) (a view)."""
    return a.reshape(a.shape[0], groups, a.shape[1] // groups, a.shape[2])


def _gemm(w, cols, transpose_w=False):
    """Per image and group ``w[g] @ cols[n, g]`` (``w[g].T`` when ``transpose_w``):
    w (G, A, B), cols (N, G, B or A, L) -> (N, G, A or B, L)."""
    if transpose_w:
        w = w.transpose(1, 2)
    if cols.shape[0] == 1:
        return torch.bmm(w, cols[0]).unsqueeze(0)
    return torch.matmul(w, cols)


def _gemm_nt(a, b):
    """sum over images of ``a[n, g] @ b[n, g].T``: a (N, G, A, L), b (N, G, B, L) ->
    (G, A, B); Caffe's weight gradient adds the images up in order, as here."""
    out = torch.bmm(a[0], b[0].transpose(1, 2))
    for n in range(1, a.shape[0]):
        out.add_(torch.bmm(a[n], b[n].transpose(1, 2)))
    return out


def _add_bias(y, bias):
    if bias is not None:
        y.add_(bias.reshape(1, -1, 1, 1))
    return y


def _conv_gemm(x, weight, bias, geo):
    """Convolution forward as im2col + one GEMM per group."""
    n, g = x.shape[0], geo.groups
    out_size = geo.out_size(x.shape[2:])
    cols = _grouped(geo.im2col(x), g)                              # (N, G, K, L)
    w = weight.reshape(g, weight.shape[0] // g, -1)                # (G, Mg, K)
    y = _gemm(w, cols).reshape((n, weight.shape[0]) + out_size)
    return _add_bias(y, bias)


def _deconv_gemm(x, weight, bias, geo):
    """Deconvolution forward: one GEMM per group to columns, then col2im."""
    n, g = x.shape[0], geo.groups
    out_size = _deconv_out_size(x.shape[2:], geo)
    w = weight.reshape(g, weight.shape[0] // g, -1)                # (G, Cg, Mg * k)
    xs = _grouped(x.reshape(n, x.shape[1], -1), g)                 # (N, G, Cg, HW)
    cols = _gemm(w, xs, transpose_w=True)                          # (N, G, Mg * k, HW)
    y = geo.col2im(cols.reshape(n, -1, cols.shape[-1]), out_size)
    return _add_bias(y, bias)


def _deconv_out_size(size, geo):
    return tuple(s * (n - 1) + d * (k - 1) + 1 - 2 * p for n, k, s, p, d in
                 zip(size, geo.kernel, geo.stride, geo.pad, geo.dilation))


def _conv_input_grad_gemm(gy, x_shape, weight, geo):
    """d loss / d x of a convolution: W^T dY per group, then col2im."""
    n, g = gy.shape[0], geo.groups
    w = weight.reshape(g, weight.shape[0] // g, -1)                # (G, Mg, K)
    gys = _grouped(gy.reshape(n, gy.shape[1], -1), g)              # (N, G, Mg, L)
    cols = _gemm(w, gys, transpose_w=True)                         # (N, G, K, L)
    return geo.col2im(cols.reshape(n, -1, cols.shape[-1]), x_shape[2:])


def _conv_weight_grad_gemm(gy, x, weight, geo):
    """d loss / d W of a convolution: dY cols^T per group, summed over images."""
    n, g = x.shape[0], geo.groups
    cols = _grouped(geo.im2col(x), g)                              # (N, G, K, L)
    gys = _grouped(gy.reshape(n, gy.shape[1], -1), g)              # (N, G, Mg, L)
    return _gemm_nt(gys, cols).reshape(weight.shape)


def _deconv_input_grad_gemm(gy, x_shape, weight, geo):
    """d loss / d x of a deconvolution: a convolution of dY, im2col + GEMM."""
    n, g = gy.shape[0], geo.groups
    cols = _grouped(geo.im2col(gy), g)                             # (N, G, Mg * k, HW)
    w = weight.reshape(g, weight.shape[0] // g, -1)                # (G, Cg, Mg * k)
    return _gemm(w, cols).reshape(x_shape)


def _deconv_weight_grad_gemm(gy, x, weight, geo):
    """d loss / d W of a deconvolution: x im2col(dY)^T per group."""
    n, g = x.shape[0], geo.groups
    cols = _grouped(geo.im2col(gy), g)                             # (N, G, Mg * k, HW)
    xs = _grouped(x.reshape(n, x.shape[1], -1), g)                 # (N, G, Cg, HW)
    return _gemm_nt(xs, cols).reshape(weight.shape)


_GEMM = {False: (_conv_gemm, _conv_input_grad_gemm, _conv_weight_grad_gemm),
         True: (_deconv_gemm, _deconv_input_grad_gemm, _deconv_weight_grad_gemm)}


# The kernels of every convolution pass, the plain one first.
CANDIDATES = ('torch', 'gemm')


def _torch_backward(gy, x, weight, geo, has_bias, mask):
    return torch.ops.aten.convolution_backward(
        gy, x, weight, [weight.shape[1] * geo.groups if geo.transposed else weight.shape[0]]
        if has_bias else None, list(geo.stride), list(geo.pad), list(geo.dilation),
        geo.transposed, [0, 0], geo.groups, list(mask))


class _Convolution(torch.autograd.Function):
    """A 2-D convolution or deconvolution whose forward, input gradient and weight
    gradient each run the kernel chosen for their shape."""

    @staticmethod
    def forward(ctx, x, weight, bias, geo, key, record, force):
        ctx.save_for_backward(x, weight)
        ctx.geo, ctx.key, ctx.record, ctx.force = geo, key, record, force
        ctx.has_bias = bias is not None
        return _run_part('forward', key, record, force, {
            'torch': lambda: _plain(x, weight, bias, geo.stride, geo.pad, geo.dilation,
                                    geo.groups, geo.transposed),
            'gemm': lambda: _GEMM[geo.transposed][0](x, weight, bias, geo)})

    @staticmethod
    @once_differentiable
    def backward(ctx, gy):
        x, weight = ctx.saved_tensors
        geo, key, record, force = ctx.geo, ctx.key, ctx.record, ctx.force
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        need_b = need_b and ctx.has_bias
        gy = gy.contiguous()
        _, input_grad, weight_grad = _GEMM[geo.transposed]
        picks = {}
        if need_x:
            picks['input'] = _pick_part('input', key, record, force, {
                'torch': lambda: _torch_backward(gy, x, weight, geo, False,
                                                 (True, False, False))[0],
                'gemm': lambda: input_grad(gy, x.shape, weight, geo)})
        if need_w:
            picks['weight'] = _pick_part('weight', key, record, force, {
                'torch': lambda: _torch_backward(gy, x, weight, geo, False,
                                                 (False, True, False))[1],
                'gemm': lambda: weight_grad(gy, x, weight, geo)})
        on_torch = [part for part, (name, _) in picks.items() if name == 'torch']
        grads = {part: out for part, (name, out) in picks.items() if name != 'torch'}
        if on_torch:
            # the parts torch computes come from one call, as autograd's plain path
            mask = ('input' in on_torch, 'weight' in on_torch, need_b)
            computed = _torch_backward(gy, x, weight, geo, ctx.has_bias, mask)
            for part, grad in zip(('input', 'weight', 'bias'), computed):
                if part in on_torch or (part == 'bias' and need_b):
                    grads[part] = grad
        if need_b and 'bias' not in grads:
            grads['bias'] = gy.sum((0, 2, 3))
        return (grads.get('input') if need_x else None,
                grads.get('weight') if need_w else None,
                grads.get('bias'), None, None, None, None)


def _pick_part(part, key, record, force, candidates):
    """(name, output or None): the chosen kernel of ``part`` and its output; a
    torch choice's output is left to the caller, which computes all torch parts
    in one call."""
    name, out = _select(part, key, force, candidates)
    if record is not None:
        record[part] = name
    if name == 'torch':
        return name, None
    return name, candidates[name]() if out is None else out


def _run_part(part, key, record, force, candidates):
    name, out = _select(part, key, force, candidates)
    if record is not None:
        record[part] = name
    return candidates[name]() if out is None else out


def _select(part, key, force, candidates):
    """(name, output or None) as :func:`_choose`, or the forced kernel, not run."""
    if isinstance(force, dict):
        force = force.get(part)
    if force is not None:
        return force, None
    return _choose(key + (part,), candidates)


def convolution(x, weight, bias, stride, pad, dilation, groups, transposed=False,
                record=None, force=None):
    """A 2-D convolution (``transposed``: Caffe's Deconvolution) of (N, C, H, W)
    ``x`` with Caffe's / torch's weight layout, each pass on its chosen kernel.

    Parameters
    ----------
    x, weight, bias : torch.Tensor (bias may be None)
    stride, pad, dilation : (int, int)
    groups : int
    transposed : bool
    record : dict, optional
        Receives 'forward', 'input' and 'weight' -> the kernel name each pass ran
        (what ``caffe time`` prints).
    force : str or dict, optional
        Run this kernel ('torch' or 'gemm') for every pass, or pass name -> kernel
        for some, without choosing (for tests; the plain-path exceptions still
        apply).

    Returns
    -------
    torch.Tensor
    """
    if x.device.type == 'cuda':
        apply_cudnn_benchmark(_caffe_mode.precision())
    forced = set(force.values()) if isinstance(force, dict) else {force} - {None}
    if forced - set(CANDIDATES):
        raise ValueError('unknown convolution kernel %r: choose one of %s'
                         % (force, ', '.join(CANDIDATES)))
    geo = _Geometry(weight.shape[2:], stride, pad, dilation, groups, transposed)
    key = (mode(), 'deconv' if transposed else 'conv', tuple(x.shape), tuple(weight.shape),
           geo.stride, geo.pad, geo.dilation, groups, bias is not None,
           str(x.dtype).replace('torch.', ''), torch.get_num_threads())
    if force is None:
        worth = _worth.get(key)
        if worth is None:
            if len(_worth) >= _MAX_CHOICES:
                _worth.clear()
            worth = _worth[key] = _worth_choosing(x, weight, geo)
    if not _eligible(x, weight) or (force is None and not worth):
        if record is not None:
            record.clear()
            record['forward'] = 'plain'
        return _plain(x, weight, bias, stride, pad, dilation, groups, transposed)
    if record is not None:
        record.clear()
    return _Convolution.apply(x, weight, bias, geo, key, record, force)


def _worth_choosing(x, weight, geo):
    """Whether the work is large enough for measuring to pay, and the columns
    small enough for im2col + GEMM to stand a chance ('auto' only)."""
    if mode() == 'gemm':
        return True
    # a convolution's columns are (C k, out positions); a deconvolution's col2im
    # input is (M k, in positions)
    positions = math.prod(x.shape[2:]) if geo.transposed else math.prod(geo.out_size(x.shape[2:]))
    if not geo.pointwise:
        rows = weight.numel() // weight.shape[0] * geo.groups
        if x.shape[0] * positions > rows or x.shape[0] * positions * rows > MAX_COLUMNS:
            return False
    # a convolution's output position costs weight.numel() / M multiply-adds, each
    # of M channels; a deconvolution's input position scatters weight.numel() / C
    channels = x.shape[1] if geo.transposed else weight.shape[0]
    macs = x.shape[0] * positions * channels * (weight.numel() // weight.shape[0])
    return macs >= MIN_MACS


# ---------------------------------------------------------------------- inner product

def inner_product(flat, weight, bias, transpose, record=None):
    """Caffe's InnerProduct on a (M, K) matrix: ``flat @ W^T + b`` (``transpose``:
    W is (K, N)), as a matrix product plus the bias or as one ``addmm``, whichever
    is faster for the shape. Autograd gives the backward (GEMMs either way)."""
    w = weight if transpose else weight.t()

    def product():
        y = flat @ w
        return y + bias if bias is not None else y

    if (bias is None or not _eligible(flat, weight)
            or (mode() == 'auto' and flat.shape[0] * flat.shape[1] * w.shape[1] < MIN_MACS)):
        if record is not None:
            record['forward'] = 'plain'
        return product()
    key = (mode(), 'ip', tuple(flat.shape), tuple(weight.shape), transpose,
           str(flat.dtype).replace('torch.', ''), torch.get_num_threads(), 'forward')
    candidates = {'torch': product, 'addmm': lambda: torch.addmm(bias, flat, w)}
    if torch.is_grad_enabled() and any(t.requires_grad for t in (flat, weight, bias)):
        # measure without a graph, then run the choice once with one
        with torch.no_grad():
            name = _choose(key, candidates)[0]
        out = candidates[name]()
    else:
        name, out = _choose(key, candidates)
        if out is None:
            out = candidates[name]()
    if record is not None:
        record['forward'] = name
    return out


# ---------------------------------------------------------------------- GPU

def cudnn_benchmark(deterministic_fp32):
    """Whether torch's cuDNN benchmark mode should be on, from the same switch.

    On for 'auto', off for 'plain' and 'gemm' (which never measure), and off while
    ``deterministic_fp32`` holds: cuDNN's benchmark picks algorithms by timing,
    so two runs could pick different ones and differ in the last bits, which
    would break the fp32 promise that the same machine gives the same bytes.
    """
    return mode() == 'auto' and not deterministic_fp32


def apply_cudnn_benchmark(precision):
    """Set ``torch.backends.cudnn.benchmark`` for ``precision`` ('fp32', 'tf32',
    'bf16'): only fp32 promises bit-for-bit repeatable results, so only the
    faster-arithmetic precisions let cuDNN time its algorithms. Returns the value."""
    value = cudnn_benchmark(precision == 'fp32')
    torch.backends.cudnn.benchmark = value
    return value
