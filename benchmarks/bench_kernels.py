"""`caffe time` of FCN-8s, layer by layer, with and without the per-shape kernel choice.

    python benchmarks/bench_kernels.py                      # 1x3x128x160, 3 rounds, ~2 min
    python benchmarks/bench_kernels.py --size 500x500 --rounds 2

The deploy net with ``force_backward: true`` and its input set to 1 x 3 x H x W
(random weights, as ``caffe time`` runs with the prototxt's fillers), timed as
``caffe time`` times it (:func:`torchcaffe.tools.net_time.time_net`): every
layer's forward alone, then every layer's backward alone. The kernel modes
(``plain``: torch's ops, the engine before torchcaffe.kernels; ``auto``: the
measured choice) run in alternation, one iteration each per round, after one
untimed iteration each (where ``auto`` measures its choices); the table gives
each layer's minimum over the rounds, the totals the minimum per-iteration sum.

Real BVLC Caffe cannot be installed here; its column is the issue-21 measurement
(``caffe time``, OpenBLAS, 2 threads, same input, 2-core AMD EPYC): total 2,026 ms
per forward-backward, target for the engine 0.8 x that = 1,620 ms.
"""
import argparse
import os
import sys

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import torchcaffe as caffe  # noqa: E402
from torchcaffe import io, kernels  # noqa: E402
from torchcaffe.tools.net_time import time_net  # noqa: E402

# Issue 21's `caffe time` of BVLC Caffe (ms): FCN-8s deploy, 1x3x128x160, 2 threads.
CAFFE_TOTAL_MS = 2026.0
CAFFE_MS = {('conv1_2', 'backward'): 221.8, ('conv1_2', 'forward'): 101.8,
            ('conv2_2', 'backward'): 148.7, ('conv2_1', 'backward'): 82.9,
            ('conv2_2', 'forward'): 76.0, ('conv3_3', 'backward'): 114.3,
            ('conv3_2', 'backward'): 115.0, ('fc6', 'backward'): 145.5,
            ('fc6', 'forward'): 110.1, ('fc7', 'backward'): 25.6,
            ('fc7', 'forward'): 17.7, ('score', 'backward'): 0.8}
MODES = ('plain', 'auto')


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--model', default=os.path.join(ROOT, 'voc-fcn8s', 'deploy.prototxt'))
    p.add_argument('--size', default='160x128', help='WIDTHxHEIGHT (default %(default)s)')
    p.add_argument('--rounds', type=int, default=3, help='timed rounds (default %(default)s)')
    p.add_argument('--threads', type=int, default=2, help='torch threads (default %(default)s)')
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


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    width, height = (int(v) for v in args.size.lower().split('x'))
    net = build_net(args.model, height, width)
    previous = kernels.mode()
    runs = {m: [] for m in MODES}
    chosen = {}
    try:
        for m in MODES:  # untimed: allocation, and auto's measuring
            kernels.set_mode(m)
            time_net(net, 1)
        for _ in range(args.rounds):
            for m in MODES:
                kernels.set_mode(m)
                runs[m].append(time_net(net, 1))
                if m == 'auto':
                    chosen = runs[m][-1].kernels
    finally:
        kernels.set_mode(previous)
    names = runs['plain'][0].names
    best = {m: {'forward': [min(r.forward[i] for r in runs[m]) * 1e3 for i in range(len(names))],
                'backward': [min(r.backward[i] for r in runs[m]) * 1e3
                             for i in range(len(names))],
                'total': min(r.total for r in runs[m]) * 1e3} for m in MODES}
    print('caffe time, %s at 1x3x%dx%d, force_backward, %d threads, %d rounds (min), torch %s'
          % (os.path.relpath(args.model, ROOT), height, width, args.threads, args.rounds,
             torch.__version__))
    print('%-14s %-9s %9s %9s %9s %7s  %s' % ('layer', 'pass', 'Caffe ms', 'plain ms',
                                              'auto ms', 'auto/pl', 'auto kernel'))
    for i, name in enumerate(names):
        for pas in ('forward', 'backward'):
            plain, auto = best['plain'][pas][i], best['auto'][pas][i]
            ref = CAFFE_MS.get((name, pas))
            if not args.all_layers and ref is None and max(plain, auto) < 5:
                continue
            kernel = chosen.get(name, {})
            parts = [kernel.get('forward', '')] if pas == 'forward' else \
                ['%s %s' % (p, kernel[p]) for p in ('input', 'weight') if p in kernel]
            print('%-14s %-9s %9s %9.1f %9.1f %7.2f  %s'
                  % (name, pas, '%.1f' % ref if ref is not None else '-', plain, auto,
                     auto / plain if plain else float('nan'), ', '.join(parts)))
    plain, auto = best['plain']['total'], best['auto']['total']
    print('forward-backward total: plain %.1f ms, auto %.1f ms; auto/plain %.3f'
          % (plain, auto, auto / plain))
    if args.size == '160x128' and args.model.endswith(os.path.join('voc-fcn8s', 'deploy.prototxt')):
        print('engine(auto) / Caffe (issue 21: %.0f ms): %.3f (target <= 0.8: %s); '
              'engine(plain) / Caffe: %.3f' % (CAFFE_TOTAL_MS, auto / CAFFE_TOTAL_MS,
                                               'met' if auto <= 0.8 * CAFFE_TOTAL_MS else
                                               'not met', plain / CAFFE_TOTAL_MS))
    return 0


if __name__ == '__main__':
    sys.exit(main())
