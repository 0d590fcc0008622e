"""FCN-8s on CUDA against the CPU: forward, backward and SGD steps from the same weights and input.

    python benchmarks/gpu_crosscheck.py --json crosscheck.json             # CUDA vs CPU, 500 x 500
    python benchmarks/gpu_crosscheck.py --fp64 --json crosscheck.json      # and both vs CPU float64
    python benchmarks/gpu_crosscheck.py --cpu-dry-run --json dry.json      # CPU fp32 vs fp64, narrow

Both runs use one caffemodel of seeded random weights (He-normal convolutions,
zero biases, bilinear upsamplers; ``bench_fcn.randomize``) and one input, in
fp32 with TF32 off (``caffe.set_precision('fp32')``):

- forward: the voc-fcn8s train net with an Input layer in place of its data
  layer (``force_backward`` on, so the data gets a diff); every blob.
- backward: the data diff and the diff of every learnable param.
- solver: ``--steps`` iterations of ``caffe.SGDSolver`` with voc-fcn8s's
  solver.prototxt settings (base_lr 1e-14, momentum 0.99, weight decay 5e-4) and
  the real ``SBDDSegDataLayer`` reading generated SBD files (seeded order);
  the loss of each step, then every param and its momentum history. The history
  is the sum of the lr-scaled updates, so it compares the updates even where
  base_lr 1e-14 moves the weights by less than a float32 step.

Dropout is left out of the nets: it draws its masks from a per-device
generator, so CPU and CUDA would drop different units.

For each array: the largest absolute difference, the reference's largest
magnitude, ``max_rel`` (their ratio) and ``rel_l2`` = ||test - ref|| / ||ref||.
An array passes when its rel_l2 is within ``--tolerance`` (default 1e-4):
float32's unit roundoff is 6e-8, and sums of up to 25,088 terms (fc6) through
some twenty layers leave errors of order 1e-6 to 1e-5 in the forward, while a
wrong layer gives differences of order 1. The backward can differ more: where
rounding flips a ReLU's sign or a max-pooling window's winner, that unit's
gradient is passed or routed elsewhere whole, and at full width a few such
flips reach 1e-3 in rel_l2 even between CPU float32 and float64. So with
``--fp64`` (as gpu_check.sh runs it) the CPU float32 run's distance from CPU
float64 is the baseline: an array of the CUDA comparisons also passes when its
rel_l2 is at most 10 times the baseline's for that array, i.e. CUDA is no
further from the exact result than float32 on the CPU is. The baseline itself
is reported, not judged. The solver's losses and params are continuous in the
weights and judged by the tolerance alone; its momentum history, a sum of
gradients, is judged against the backward's baseline for the same param (a
guide, since the solver reads SBD images where the backward reads noise).

``--cpu-dry-run`` runs the same code on the CPU only, on a narrow net (width
1/16) at 64 x 48: the test run is CPU float32, the reference CPU float64.
"""
import argparse
import contextlib
import json
import logging
import math
import os
import sys
import tempfile
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import torchcaffe as caffe  # noqa: E402
from torchcaffe import caffe_pb2, io  # noqa: E402
from nets import voc  # noqa: E402
from benchmarks.bench_engine import with_input_layer  # noqa: E402
from benchmarks.bench_fcn import make_sbd_tree, parse_size, randomize, size_name  # noqa: E402

STAGE = 'fcn8s'
CLASSES = 21
SOLVER_FILE = os.path.join(ROOT, 'voc-fcn8s', 'solver.prototxt')
FULL = dict(size='500x500', width=1.0)
DRY = dict(size='64x48', width=1 / 16)
TOLERANCE = 1e-4
# An array also passes when it is at most this many times further from float64
# than the CPU's float32 is (see the module's docstring).
FACTOR = 10.0
PARTS = ('forward', 'backward', 'solver')

# A run: where it computes and in what.
RUNS = {'cuda32': ('cuda', torch.float32), 'cpu32': ('cpu', torch.float32),
        'cpu64': ('cpu', torch.float64)}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--cpu-dry-run', action='store_true',
                   help='CPU float32 against CPU float64 on a narrow net at %s' % DRY['size'])
    p.add_argument('--size', help='WIDTHxHEIGHT (default %s; %s in the dry run)'
                   % (FULL['size'], DRY['size']))
    p.add_argument('--width', type=float, help='channel multiplier (default 1; 1/16 dry)')
    p.add_argument('--steps', type=int, default=5, help='SGD iterations (default 5)')
    p.add_argument('--fp64', action='store_true',
                   help='also compare the CUDA and CPU float32 forward and backward with '
                        'CPU float64 (the dry run always does)')
    p.add_argument('--tolerance', type=float, default=TOLERANCE,
                   help='largest rel_l2 that passes (default %g)' % TOLERANCE)
    p.add_argument('--threads', type=int, help="torch CPU threads (default torch's)")
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--json', metavar='PATH', help='write the results as JSON')
    args = p.parse_args(argv)
    defaults = DRY if args.cpu_dry_run else FULL
    args.size = parse_size(args.size or defaults['size'])
    args.width = args.width or defaults['width']
    if args.steps < 1:
        p.error('need --steps >= 1')
    return args


# ------------------------------------------------------------------------ arithmetic

def difference(test, ref):
    """How far array ``test`` is from ``ref``: a dict of max_abs, ref_max, max_rel, rel_l2.

    Both are compared in float64 (with torch, on every CPU thread: the full-width
    runs hold some 500 million values). A zero reference gives rel values of 0
    when the test is zero too, else inf.

    >>> d = difference(np.array([1.0, 2.0]), np.array([1.0, 2.5]))
    >>> d['max_abs'], d['ref_max'], d['max_rel'], round(d['rel_l2'], 4)
    (0.5, 2.5, 0.2, 0.1857)
    """
    test = torch.as_tensor(np.asarray(test)).to(torch.float64)
    ref = torch.as_tensor(np.asarray(ref)).to(torch.float64)
    if test.shape != ref.shape:
        raise ValueError('shapes differ: %s against %s' % (tuple(test.shape), tuple(ref.shape)))
    if not ref.numel():
        return dict(max_abs=0.0, ref_max=0.0, max_rel=0.0, rel_l2=0.0)
    delta = test - ref
    max_abs = float(delta.abs().max())
    ref_max = float(ref.abs().max())
    error = float(torch.linalg.vector_norm(delta))
    norm = float(torch.linalg.vector_norm(ref))
    return dict(max_abs=max_abs, ref_max=ref_max,
                max_rel=_ratio(max_abs, ref_max), rel_l2=_ratio(error, norm))


def _ratio(num, den):
    if den > 0:
        return num / den
    return 0.0 if num == 0 else math.inf


def compare(test, ref, tolerance, baseline=None, factor=None):
    """Compare two runs' arrays part by part.

    Parameters
    ----------
    test, ref : dict
        {part: {name: array}} as :func:`run_all` gives them; parts missing from
        either are left out.
    tolerance : float
        Largest rel_l2 that passes.
    baseline : dict, optional
        Another comparison's result (CPU float32 against float64): an array also
        passes when its rel_l2 is at most ``factor`` times the baseline's for the
        same part and name, i.e. when it is no further off than float32 itself
        (a solver's ``history <param>`` takes the backward's ``<param>``).
    factor : float

    Returns
    -------
    dict : {part: {'ok', 'worst', 'worst_rel_l2', 'arrays': [row, ...]}}, each
    row a :func:`difference` dict with the array's name, shape and ok (and
    baseline_rel_l2 where a baseline has the array).
    """
    out = {}
    for part in PARTS:
        if part not in test or part not in ref:
            continue
        base = {}
        if baseline and part in baseline:
            base = {r['name']: r['rel_l2'] for r in baseline[part]['arrays']}
        if baseline and part == 'solver' and 'backward' in baseline:
            # a param's momentum history sums its gradients: the backward's baseline
            base = {'history ' + r['name']: r['rel_l2'] for r in baseline['backward']['arrays']}
        rows = []
        for name, array in ref[part].items():
            row = dict(name=name, shape=list(np.shape(array)))
            row.update(difference(test[part][name], array))
            row['ok'] = math.isfinite(row['rel_l2']) and row['rel_l2'] <= tolerance
            if name in base:
                row['baseline_rel_l2'] = base[name]
                row['ok'] = row['ok'] or (math.isfinite(row['rel_l2'])
                                          and row['rel_l2'] <= factor * base[name])
            rows.append(row)
        worst = max(rows, key=lambda r: r['rel_l2'])
        out[part] = dict(ok=all(r['ok'] for r in rows), worst=worst['name'],
                         worst_rel_l2=worst['rel_l2'], arrays=rows)
    return out


# ------------------------------------------------------------------------ the nets

def without_dropout(net_param):
    """A copy of ``net_param`` without its Dropout layers (in place, so nothing rewires)."""
    proto = caffe_pb2.NetParameter()
    proto.CopyFrom(net_param)
    kept = [lp for lp in proto.layer if lp.type != 'Dropout']
    del proto.layer[:]
    proto.layer.extend(kept)
    return proto


class Case:
    """What every run shares: the nets, the weights, the input, the SBD files."""

    def __init__(self, args, tmp):
        h, w = args.size
        nets = voc.stage_nets(STAGE, classes=CLASSES, width=args.width)
        train = without_dropout(nets['train'])
        self.shape = (1, 3, h, w)
        self.net = with_input_layer(train, self.shape)
        self.net.force_backward = True  # the data diff too
        rng = np.random.default_rng(args.seed + 1)
        self.data = rng.normal(0, 50, self.shape).astype(np.float32)
        label = rng.integers(0, CLASSES, (1, 1, h, w))
        label[..., : h // 8, :] = 255  # a void band: ignored by the loss
        self.label = label.astype(np.float32)
        self.weights = os.path.join(tmp, 'random.caffemodel')
        net = caffe.Net(self.net, caffe.TEST)
        randomize(net, args.seed)
        net.save(self.weights)
        del net
        sbdd = make_sbd_tree(tmp, args.size, max(2, args.steps), args.seed)
        self.solver = solver_param(train, sbdd, os.path.join(tmp, 'snapshot'))
        self.steps = args.steps


def solver_param(train, sbdd, snapshot_prefix):
    """voc-fcn8s's solver settings with ``train`` as its net, reading the SBD folder
    ``sbdd`` in the reference's seeded order; no test nets, display or snapshots."""
    param = io.read_solver_prototxt(SOLVER_FILE)
    for field in ('train_net', 'test_net', 'test_iter', 'test_interval'):
        param.ClearField(field)
    param.train_net_param.CopyFrom(train)
    param.train_net_param.layer[0].python_param.param_str = str(dict(
        sbdd_dir=sbdd, seed=voc.SEED, split='train', mean=voc.MEAN))
    param.display = 0
    param.snapshot = 0
    param.snapshot_after_train = False
    param.max_iter = 10 ** 6
    param.snapshot_prefix = snapshot_prefix
    return param


def host(array):
    """A host copy (blobs reuse their memory; bfloat16 never occurs in fp32)."""
    return np.array(array, copy=True)


def run_forward_backward(case, dtype):
    """The forward blobs, then the data and param diffs, of one fresh net."""
    net = caffe.Net(case.net, caffe.TRAIN, weights=case.weights)
    if dtype != torch.float32:
        net.to(dtype)
    net.forward(data=case.data, label=case.label)
    forward = {name: host(blob.data) for name, blob in net.blobs.items()}
    net.backward()
    backward = {'data': host(net.blobs['data'].diff)}
    for layer, blobs in net.params.items():
        for i, blob in enumerate(blobs):
            backward['%s[%d]' % (layer, i)] = host(blob.diff)
    return forward, backward


def run_solver(case, dtype):
    """Each step's loss, then the params and their momentum history."""
    param = caffe_pb2.SolverParameter()
    param.CopyFrom(case.solver)
    solver = caffe.SGDSolver(param)
    solver.net.copy_from(case.weights)
    if dtype != torch.float32:
        solver.net.to(dtype)
    losses = []
    for _ in range(case.steps):
        solver.step(1)
        losses.append(float(np.asarray(solver.net.blobs['loss'].data).reshape(())))
    out = {'loss': np.array(losses)}
    names = {}
    for layer, blobs in solver.net.params.items():
        for i, blob in enumerate(blobs):
            names.setdefault(id(blob), '%s[%d]' % (layer, i))
            out['%s[%d]' % (layer, i)] = host(blob.data)
    # the history follows net.learnable_params (each shared param once)
    for blob, history in zip(solver.net.learnable_params, solver.history):
        out['history ' + names[id(blob)]] = history
    return out


@contextlib.contextmanager
def device_mode(device):
    """Caffe's mode for ``device``, CPU mode again afterwards."""
    if device == 'cuda':
        caffe.set_mode_gpu()
        caffe.set_device(0)
    else:
        caffe.set_mode_cpu()
    try:
        yield
    finally:
        caffe.set_mode_cpu()


def run_all(case, run, parts=PARTS):
    """The arrays of ``parts`` for run ``run`` (a key of RUNS): {part: {name: array}}."""
    device, dtype = RUNS[run]
    result = {}
    with device_mode(device):
        if 'forward' in parts or 'backward' in parts:
            result['forward'], result['backward'] = run_forward_backward(case, dtype)
        if 'solver' in parts:
            result['solver'] = run_solver(case, dtype)
    if device == 'cuda':
        torch.cuda.synchronize()
    return result


# ------------------------------------------------------------------------ output

def summary_lines(comparisons, baselines=()):
    """One line per comparison and part: worst array and its rel_l2."""
    lines = []
    for label, parts in comparisons.items():
        for part, c in parts.items():
            verdict = 'base' if label in baselines else 'ok' if c['ok'] else 'FAIL'
            lines.append('%-16s %-8s %-4s worst rel_l2 %.3g (%s); max abs diff %.3g'
                         % (label, part, verdict, c['worst_rel_l2'], c['worst'],
                            max(r['max_abs'] for r in c['arrays'])))
    return lines


def plan(args):
    """[(label, test run, reference run, parts, baseline label)] for the arguments, in the
    order they are computed; a comparison that is another's baseline is not judged."""
    if args.cpu_dry_run:
        return [('cpu32 vs cpu64', 'cpu32', 'cpu64', PARTS, None)]
    if not args.fp64:
        return [('cuda32 vs cpu32', 'cuda32', 'cpu32', PARTS, None)]
    fb = ('forward', 'backward')
    base = 'cpu32 vs cpu64'
    return [(base, 'cpu32', 'cpu64', fb, None),
            ('cuda32 vs cpu64', 'cuda32', 'cpu64', fb, base),
            ('cuda32 vs cpu32', 'cuda32', 'cpu32', PARTS, base)]


def judge(comparisons, results, tolerance):
    """The comparisons whose two runs are done (a baseline used once it is there), and
    the set of baseline labels: ({label: compare(...)}, baselines)."""
    done, baselines = {}, {b for *_, b in comparisons if b}
    for label, test, ref, _, base in comparisons:
        if test in results and ref in results:
            done[label] = compare(results[test], results[ref], tolerance, done.get(base),
                                  FACTOR)
    return done, baselines


def make_report(args, results, seconds, comparisons, start):
    """The JSON report of the runs done so far; ``complete`` once every run is."""
    done, baselines = judge(comparisons, results, args.tolerance)
    complete = all(run in results for _, test, ref, *_ in comparisons for run in (test, ref))
    ok = complete and all(c['ok'] for label, parts in done.items() if label not in baselines
                          for c in parts.values())
    losses = {run: r['solver']['loss'].tolist() for run, r in results.items() if 'solver' in r}
    device = 'cpu' if args.cpu_dry_run else torch.cuda.get_device_name()
    return dict(ok=ok, complete=complete, device=device, torch=torch.__version__, stage=STAGE,
                size=size_name(args.size), width=args.width, steps=args.steps,
                tolerance=args.tolerance, factor=FACTOR, baselines=sorted(baselines),
                seconds=time.time() - start, run_seconds=dict(seconds),
                runs={run: [RUNS[run][0], str(RUNS[run][1]).replace('torch.', '')]
                      for run in results},
                losses=losses, comparisons=done)


def main(argv=None):
    args = parse_args(argv)
    start = time.time()
    if not args.cpu_dry_run and not torch.cuda.is_available():
        sys.exit('gpu_crosscheck: CUDA is not available to torch (use --cpu-dry-run on a CPU)')
    if args.threads:
        torch.set_num_threads(args.threads)
    caffe.set_precision('fp32')  # TF32 off: Caffe's float32 on both sides
    logger = logging.getLogger('torchcaffe')
    level = logger.level
    logger.setLevel(logging.WARNING)  # the solver logs its whole parameter at INFO
    comparisons = plan(args)
    needed = {}
    for _, test, ref, parts, _ in comparisons:
        for run in (test, ref):
            needed.setdefault(run, set()).update(parts)
    results, seconds = {}, {}
    try:
        with tempfile.TemporaryDirectory(prefix='gpu_crosscheck-') as tmp:
            case = Case(args, tmp)
            # CUDA first, and the JSON rewritten after each run: a run stopped by a time
            # limit (gpu_check.sh) keeps the comparisons it could make
            for run in sorted(needed, key=list(RUNS).index):
                began = time.time()
                results[run] = run_all(case, run, needed[run])
                seconds[run] = time.time() - began
                print('%s: ran %s in %.1f s' % (run, ', '.join(sorted(needed[run])),
                                                seconds[run]), flush=True)
                report = make_report(args, results, seconds, comparisons, start)
                if args.json:
                    with open(args.json, 'w') as f:
                        json.dump(report, f, indent=1)
    finally:
        logger.setLevel(level)
    for line in summary_lines(report['comparisons'], report['baselines']):
        print(line)
    for run, values in report['losses'].items():
        print('%s solver losses: %s' % (run, ', '.join('%.6g' % v for v in values)))
    print('cross-check %s in %.1f s' % ('ok' if report['ok'] else 'FAILED', report['seconds']))
    return 0 if report['ok'] else 1


if __name__ == '__main__':
    sys.exit(main())
