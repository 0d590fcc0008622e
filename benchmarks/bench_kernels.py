"""`caffe time` of FCN-8s, layer by layer: the engine before and after issue 21.

    python benchmarks/bench_kernels.py                      # 1x3x128x160, 3 rounds, minutes
    python benchmarks/bench_kernels.py --size 500x500 --rounds 2

The deploy net with ``force_backward: true`` and its input set to 1 x 3 x H x W
(random weights), timed as ``caffe time`` times it
(:func:`torchcaffe.tools.net_time.time_net`: every layer's forward alone, then
every layer's backward alone), in three configurations, each in its own process
(glibc's allocator settings are process-wide):

- ``before``: ``TORCHCAFFE_KERNELS=plain TORCHCAFFE_KEEP_MEMORY=0``, the engine
  before torchcaffe.kernels and memory.keep_freed_memory;
- ``memory``: ``TORCHCAFFE_KERNELS=plain``, freed memory kept for reuse only;
- ``after``: the defaults, memory kept and each layer's kernel chosen per shape
  (choices kept in one file for the run, so every round uses the same).

Each round runs the three in turn (a process each: build, one untimed iteration
where ``after`` measures its choices, one timed iteration); the table gives each
layer's minimum over the rounds and the totals the minimum per-iteration sums.

Real BVLC Caffe cannot be installed here; its column is the issue-21 measurement
(``caffe time``, OpenBLAS, 2 threads, same input, 2-core AMD EPYC): total 2,026 ms
per forward-backward, target for the engine 0.8 x that = 1,620 ms.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import torchcaffe as caffe  # noqa: E402
from torchcaffe import io  # noqa: E402
from torchcaffe.tools.net_time import time_net  # noqa: E402

# Issue 21's `caffe time` of BVLC Caffe (ms): FCN-8s deploy, 1x3x128x160, 2 threads.
CAFFE_TOTAL_MS = 2026.0
CAFFE_MS = {('conv1_2', 'backward'): 221.8, ('conv1_2', 'forward'): 101.8,
            ('conv2_2', 'backward'): 148.7, ('conv2_1', 'backward'): 82.9,
            ('conv2_2', 'forward'): 76.0, ('conv3_3', 'backward'): 114.3,
            ('conv3_2', 'backward'): 115.0, ('fc6', 'backward'): 145.5,
            ('fc6', 'forward'): 110.1, ('fc7', 'backward'): 25.6,
            ('fc7', 'forward'): 17.7, ('score', 'backward'): 0.8}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--model', default=os.path.join(ROOT, 'voc-fcn8s', 'deploy.prototxt'))
    p.add_argument('--size', default='160x128', help='WIDTHxHEIGHT (default %(default)s)')
    p.add_argument('--rounds', type=int, default=3, help='timed rounds (default %(default)s)')
    p.add_argument('--threads', type=int, default=2, help='torch threads (default %(default)s)')
    p.add_argument('--order', default='before,memory,after',
                   help='the order the configurations run in each round (default %(default)s)')
    p.add_argument('--child', action='store_true', help=argparse.SUPPRESS)
    p.add_argument('--all-layers', action='store_true', help='list every layer, not only '
                   'those over 5 ms or with a Caffe figure')
    return p.parse_args(argv)


def build_net(model, height, width, seed=0):
    """The deploy net at 1 x 3 x height x width with force_backward, random weights."""
    param = io.read_net_prototxt(model)
    param.force_backward = True
    shape = param.layer[0].input_param.shape[0]
    del shape.dim[:]
    shape.dim.extend([1, 3, height, width])
    net = caffe.Net(param, caffe.TEST)
    rng = np.random.default_rng(seed)
    for blobs in net.params.values():
        for blob in blobs:
            fan_in = max(1, int(np.prod(blob.data.shape[1:])))
            blob.data[...] = rng.standard_normal(blob.data.shape) * np.sqrt(2 / fan_in)
    net.blobs['data'].data[...] = rng.normal(0, 50, net.blobs['data'].data.shape)
    return net


CONFIGS = {'before': {'TORCHCAFFE_KERNELS': 'plain', 'TORCHCAFFE_KEEP_MEMORY': '0'},
           'memory': {'TORCHCAFFE_KERNELS': 'plain', 'TORCHCAFFE_KEEP_MEMORY': '1'},
           'after': {'TORCHCAFFE_KERNELS': 'auto', 'TORCHCAFFE_KEEP_MEMORY': '1'}}


def one_run(args):
    """In a child: build, one untimed and one timed iteration; JSON on stdout."""
    torch.set_num_threads(args.threads)
    width, height = (int(v) for v in args.size.lower().split('x'))
    net = build_net(args.model, height, width)
    time_net(net, 1)
    times = time_net(net, 1)
    print(json.dumps(dict(names=times.names, forward=times.forward, backward=times.backward,
                          total=times.total, kernels=times.kernels)))


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        return one_run(args)
    runs = {c: [] for c in CONFIGS}
    with tempfile.TemporaryDirectory(prefix='bench_kernels-') as tmp:
        order = args.order.split(',')
        if sorted(order) != sorted(CONFIGS):
            sys.exit('--order must name %s once each' % ', '.join(CONFIGS))
        for _ in range(args.rounds):
            for config in order:
                env = CONFIGS[config]
                env = dict(os.environ, TORCHCAFFE_KERNEL_FILE=os.path.join(tmp, 'k.json'),
                           **env)
                done = subprocess.run([sys.executable, __file__, '--child'] + (argv or sys.argv[1:]),
                                      env=env, capture_output=True, text=True)
                if done.returncode:
                    sys.exit('%s run failed:\n%s' % (config, done.stderr[-3000:]))
                runs[config].append(json.loads(done.stdout.strip().splitlines()[-1]))
    names = runs['before'][0]['names']
    best = {c: {p: [min(r[p][i] for r in runs[c]) * 1e3 for i in range(len(names))]
                for p in ('forward', 'backward')} for c in CONFIGS}
    for c in CONFIGS:
        best[c]['total'] = min(r['total'] for r in runs[c]) * 1e3
    chosen = runs['after'][-1]['kernels']
    print('caffe time, %s at 1x3x%s, force_backward, %d threads, %d rounds (min), torch %s'
          % (os.path.relpath(args.model, ROOT), 'x'.join(args.size.split('x')[::-1]),
             args.threads, args.rounds, torch.__version__))
    print('%-20s %-9s %9s %9s %9s %9s %7s  %s' % ('layer', 'pass', 'Caffe ms', 'before',
                                                  'memory', 'after', 'aft/bef', 'after kernel'))
    for i, name in enumerate(names):
        for pas in ('forward', 'backward'):
            values = [best[c][pas][i] for c in CONFIGS]
            ref = CAFFE_MS.get((name, pas))
            if not args.all_layers and ref is None and max(values) < 5:
                continue
            kernel = chosen.get(name, {})
            parts = [kernel.get('forward', '')] if pas == 'forward' else \
                ['%s %s' % (p, kernel[p]) for p in ('input', 'weight') if p in kernel]
            print('%-20s %-9s %9s %9.1f %9.1f %9.1f %7.2f  %s'
                  % (name, pas, '%.1f' % ref if ref is not None else '-', *values,
                     values[2] / values[0] if values[0] else float('nan'), ', '.join(parts)))
    totals = [best[c]['total'] for c in CONFIGS]
    print('forward-backward total ms: before %.1f, memory %.1f, after %.1f; after/before %.3f'
          % (*totals, totals[2] / totals[0]))
    if args.size == '160x128' and args.model.endswith(os.path.join('voc-fcn8s',
                                                                   'deploy.prototxt')):
        for c, total in zip(CONFIGS, totals):
            print('engine (%s) / Caffe (issue 21: %.0f ms): %.3f (target <= 0.8: %s)'
                  % (c, CAFFE_TOTAL_MS, total / CAFFE_TOTAL_MS,
                     'met' if total <= 0.8 * CAFFE_TOTAL_MS else 'not met'))
    return 0


if __name__ == '__main__':
    sys.exit(main())
