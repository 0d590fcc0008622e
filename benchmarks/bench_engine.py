"""FCN-8s latency through ``torchcaffe.Net`` against the same net as a plain nn.Module.

Both run the same weights on the same input in one process; the two are timed
in alternation (Net, Module, Net, Module, ...) so that a noisy machine slows
both alike. Forward is inference (the deploy net; the module under no_grad);
forward+backward is one training pass (the train net with its loss, TRAIN
phase; the module in train mode with the same loss, its lr_mult 0 upsamplers
frozen as Caffe freezes them).

    python benchmarks/bench_engine.py                          # CPU: 256 x 256
    python benchmarks/bench_engine.py --device cuda            # 500 x 500
    python benchmarks/bench_engine.py --size 500 500 --repeats 10 --threads 2
"""
import argparse
import os
import statistics
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import torchcaffe as caffe  # noqa: E402
from torchcaffe import caffe_pb2  # noqa: E402
import surgery  # noqa: E402
from nets import voc  # noqa: E402
from benchmarks.fcn_module import FCN, load_from_net, softmax_loss, count_macs  # noqa: E402

STAGE = 'fcn8s'
UPSAMPLERS = ('upscore2', 'upscore_pool4', 'upscore8')
CLASSES = 21
DEFAULT_SIZE = {'cuda': (500, 500), 'cpu': (256, 256)}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--device', choices=('cpu', 'cuda'),
                   default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--size', type=int, nargs=2, metavar=('H', 'W'),
                   help='input size (default 500 500 on CUDA, 256 256 on CPU)')
    p.add_argument('--width', type=float, default=1.0,
                   help='channel multiplier (1.0: the real FCN-8s)')
    p.add_argument('--repeats', type=int, help='timed runs of each (default 20 CUDA, 5 CPU)')
    p.add_argument('--warmup', type=int, help='untimed runs first (default 3 CUDA, 1 CPU)')
    p.add_argument('--threads', type=int, help='torch CPU threads (default: torch\'s)')
    p.add_argument('--seed', type=int, default=0)
    return p.parse_args(argv)


def with_input_layer(net_param, data_shape):
    """A copy of ``net_param`` whose Python data layer is an Input layer.

    The Input layer keeps the data layer's name and tops (``data``, ``label``)
    and gives them ``data_shape`` and N x 1 x H x W.
    """
    proto = caffe_pb2.NetParameter()
    proto.CopyFrom(net_param)
    first = proto.layer[0]
    if first.type != 'Python' or list(first.top) != ['data', 'label']:
        raise ValueError('expected a Python data layer with tops data, label first; got %s %r'
                         % (first.type, list(first.top)))
    n, _, h, w = data_shape
    swapped = caffe_pb2.LayerParameter(name=first.name, type='Input', top=list(first.top))
    swapped.input_param.shape.add(dim=list(data_shape))
    swapped.input_param.shape.add(dim=[n, 1, h, w])
    first.CopyFrom(swapped)
    return proto


def set_mode(device):
    """pycaffe's global mode switch."""
    if device == 'cuda':
        caffe.set_mode_gpu()
        caffe.set_device(0)
    else:
        caffe.set_mode_cpu()


def make_nets(args, shape):
    """(deploy Net, train Net) sharing random weights, and the module with them too."""
    nets = voc.stage_nets(STAGE, classes=CLASSES, width=args.width)
    train = caffe.Net(with_input_layer(nets['train'], shape), caffe.TRAIN)
    rng = np.random.default_rng(args.seed)
    for blobs in train.params.values():
        for blob in blobs:
            fan_in = max(1, int(np.prod(blob.data.shape[1:])))
            blob.data[...] = rng.normal(0, np.sqrt(2.0 / fan_in), blob.data.shape)
    # The upsamplers are fixed bilinear kernels, as every solve.py sets them.
    surgery.interp(train, UPSAMPLERS)
    deploy = caffe.Net(nets['deploy'], caffe.TEST)
    deploy.blobs['data'].reshape(*shape)
    deploy.share_with(train)
    module = FCN(STAGE, classes=CLASSES, width=args.width)
    load_from_net(module, train)
    for name in UPSAMPLERS:  # lr_mult 0 in the prototxt
        getattr(module, name).weight.requires_grad_(False)
    return deploy, train, module.to(args.device)


def timer(device):
    """A function running ``fn`` once and returning (wall seconds, process CPU seconds)."""
    def run(fn):
        if device == 'cuda':
            torch.cuda.synchronize()
        start, cpu = time.perf_counter(), time.process_time()
        fn()
        if device == 'cuda':
            torch.cuda.synchronize()
        return time.perf_counter() - start, time.process_time() - cpu
    return run


def interleaved(cases, repeats, warmup, device):
    """Time each of ``cases`` (name -> fn) in turn for ``repeats`` rounds.

    Returns
    -------
    dict : name -> list of (wall, cpu) seconds.
    """
    run = timer(device)
    for _ in range(warmup):
        for fn in cases.values():
            run(fn)
    times = {name: [] for name in cases}
    for _ in range(repeats):
        for name, fn in cases.items():
            times[name].append(run(fn))
    return times


def report(title, times, flops, device):
    """Print median and min wall time of each case, achieved GFLOP/s, the ratio
    Net / Module, and on the CPU the process CPU time (less sensitive to other
    processes on a shared machine than wall time)."""
    wall = {name: [w for w, _ in t] for name, t in times.items()}
    cpu = {name: [c for _, c in t] for name, t in times.items()}
    med = {name: statistics.median(t) for name, t in wall.items()}
    print(title)
    for name, t in wall.items():
        extra = ('  cpu median %8.1f ms' % (1e3 * statistics.median(cpu[name]))
                 if device == 'cpu' else '')
        print('  %-7s median %8.1f ms  min %8.1f ms  %7.1f GFLOP/s%s  (%d runs)'
              % (name, 1e3 * med[name], 1e3 * min(t), flops / med[name] / 1e9, extra, len(t)))
    print('  ratio Net/Module: median %.3f, min %.3f'
          % (med['Net'] / med['Module'], min(wall['Net']) / min(wall['Module'])), end='')
    if device == 'cpu':
        print(', cpu median %.3f' % (statistics.median(cpu['Net'])
                                     / statistics.median(cpu['Module'])), end='')
    print()


def main(argv=None):
    args = parse_args(argv)
    dev = args.device
    if args.threads:
        torch.set_num_threads(args.threads)
    size = tuple(args.size or DEFAULT_SIZE[dev])
    repeats = args.repeats or (20 if dev == 'cuda' else 5)
    warmup = args.warmup if args.warmup is not None else (3 if dev == 'cuda' else 1)
    shape = (1, 3) + size
    name = torch.cuda.get_device_name() if dev == 'cuda' else 'CPU, %d threads' % \
        torch.get_num_threads()
    print('FCN-8s width %g, input %s, %s; torch %s' % (args.width, 'x'.join(map(str, shape)),
                                                      name, torch.__version__))
    if dev == 'cpu' and args.size is None:
        print('(CPU default size %d x %d keeps this to minutes; the reference size is 500 x 500:'
              ' pass --size 500 500)' % size)
    set_mode(dev)
    deploy, train, module = make_nets(args, shape)

    rng = np.random.default_rng(args.seed + 1)
    data = rng.normal(0, 50, shape).astype(np.float32)
    label = rng.integers(0, CLASSES, (1, 1) + size).astype(np.float32)
    x = torch.from_numpy(data).to(dev)
    y = torch.from_numpy(label).to(dev)

    macs = count_macs(FCN(STAGE, CLASSES, args.width).to('meta'),
                      torch.empty(shape, device='meta'))
    total = sum(m for _, m in macs)
    biggest = max(macs, key=lambda m: m[1])
    print('forward: %.2f GMAC = %.2f GFLOP (conv/deconv only; %d layers, largest %s %.2f GMAC)'
          % (total / 1e9, 2 * total / 1e9, len(macs), biggest[0], biggest[1] / 1e9))

    score = deploy.forward(data=data)['score']
    with torch.no_grad():
        expected = module.eval()(x).cpu().numpy()
    print('check: Net score vs Module score, max abs diff %.3g (scores up to %.3g)'
          % (np.abs(score - expected).max(), np.abs(expected).max()))

    def module_forward():
        with torch.no_grad():
            module.eval()(x)

    def module_train():
        module.train()
        module.zero_grad(set_to_none=True)
        softmax_loss(module(x), y).backward()

    def net_train():
        train.forward(data=data, label=label)
        train.backward()

    forward = interleaved({'Net': lambda: deploy.forward(data=data), 'Module': module_forward},
                          repeats, warmup, dev)
    report('forward (deploy net / module under no_grad):', forward, 2 * total, dev)
    # backward costs about twice the forward (input and weight gradients)
    both = interleaved({'Net': net_train, 'Module': module_train}, repeats, warmup, dev)
    report('forward+backward (train net with loss / module with the same loss), '
           'GFLOP/s counted as 3x forward:', both, 6 * total, dev)
    return 0


if __name__ == '__main__':
    sys.exit(main())
