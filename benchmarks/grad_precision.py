"""How far float32 gradients of an FCN move from float64 ones, blob by blob.

    python benchmarks/grad_precision.py                      # FCN-8s, full width, 64 x 64
    python benchmarks/grad_precision.py --stage fcn32s --width 0.25 --size 96

The same random weights and input run through the engine twice: in float32 (Caffe's
arithmetic) and after ``net.to(torch.float64)``. For every blob it prints the largest
difference of the diffs relative to the largest float64 diff of that blob.

Why they differ by more than rounding: far inside FCN's 100-pixel pad every activation
is the same constant. Caffe's im2col + GEMM computes that constant identically at every
position, so its MAX pools see exact ties and route the gradient to the first window
element. torch's float32 CPU kernels may round it one ulp differently from one position
to the next, which breaks those ties elsewhere and moves whole gradient values between
pixels (a ReLU input within rounding of zero does the same). In float64 the engine
matches independent implementations to 1e-9 (tests/test_whole_nets.py).
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
from benchmarks.bench_engine import with_input_layer  # noqa: E402
from nets import voc  # noqa: E402
from tests.random_weights import randomize  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--stage', default='fcn8s', choices=['fcn32s', 'fcn16s', 'fcn8s'])
    p.add_argument('--width', type=float, default=1.0, help='channel width factor')
    p.add_argument('--size', type=int, default=64, help='input height and width')
    p.add_argument('--classes', type=int, default=21)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--threads', type=int, help='torch CPU threads')
    return p.parse_args(argv)


def relative_differences(stage='fcn8s', width=1.0, size=64, classes=21, seed=0):
    """``{blob: (max|diff32 - diff64| / max|diff64|, share moved)}`` for one forward
    and backward; "moved" elements differ by more than 1e-3 of that blob's largest
    float64 diff.

    Returns the blob names in net order and the dict; blobs whose float64 diff is all
    zero are left out.
    """
    proto = with_input_layer(voc.stage_nets(stage, classes=classes, width=width)['val'],
                             (1, 3, size, size))
    rng = np.random.default_rng(seed + 1)
    data = rng.normal(0, 50, (1, 3, size, size)).astype(np.float32)
    label = rng.integers(0, classes, (1, 1, size, size)).astype(np.float32)
    diffs = {}
    for dtype in (torch.float32, torch.float64):
        net = caffe.Net(proto, caffe.TEST)
        randomize(net, seed)
        net.to(dtype)
        net.forward(data=data, label=label)
        net.backward()
        diffs[dtype] = {name: np.array(blob.diff, np.float64)
                        for name, blob in net.blobs.items()}
        names = list(net.blobs)
    out = {}
    for name in names:
        ref = diffs[torch.float64][name]
        scale = np.abs(ref).max()
        if scale > 0:
            gap = np.abs(diffs[torch.float32][name] - ref) / scale
            out[name] = (float(gap.max()), float((gap > 1e-3).mean()))
    return [n for n in names if n in out], out


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    names, rel = relative_differences(args.stage, args.width, args.size, args.classes,
                                      args.seed)
    print('%s, width %g, input %d x %d, float32 against float64 diffs'
          % (args.stage, args.width, args.size, args.size))
    print('  %-14s %-24s %s' % ('blob', 'max gap / max |diff64|', 'elements moved (> 1e-3)'))
    for name in names:
        print('  %-14s %-24.2e %.4f %%' % (name, rel[name][0], 100 * rel[name][1]))
    return rel


if __name__ == '__main__':
    main()
