"""How far onnxruntime runs an exported net from the engine: the numbers of the
README's "Deploying with ONNX" section.

    python benchmarks/onnx_export_diffs.py            # the test nets (seconds)
    python benchmarks/onnx_export_diffs.py --full     # and ResNet-50 / MobileNet-shaped nets

For each net (nets/deploy_zoo.py, random weights, BatchNorm statistics as Caffe's
running sums with a scale factor near 1000; tests/onnx_check.py) and each input
size: the largest |onnxruntime - engine| over the outputs, the engine's largest
|output|, and their ratio, which the tests and ``export.py --check`` hold under
1e-4. The inputs are N(0, 20) images. ``--full`` adds a net shaped as ResNet-50
(bottleneck stages of 3, 4, 6, 3 blocks at 64 to 2048 channels) and MobileNet v1
and v2 at width 32, at 224 x 224.
"""
import argparse
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, 'tests')]

from nets import deploy_zoo  # noqa: E402
from onnx_check import deploy_net, image, run_engine, run_onnx  # noqa: E402
from torchcaffe import onnx_export  # noqa: E402

NEURONS = [('ReLU', 'relu_param { negative_slope: 0.1 }'), ('Swish', ''), ('ELU', ''),
           ('PReLU', ''), ('AbsVal', ''), ('BNLL', ''), ('Clip', 'clip_param { min: 0 max: 6 }'),
           ('Power', 'power_param { power: 2 scale: 0.5 shift: 1 }'), ('TanH', ''),
           ('Sigmoid', ''), ('Exp', 'exp_param { base: 2 }'), ('Dropout', ''),
           ('Threshold', 'threshold_param { threshold: 1.5 }')]


def neuron_net():
    """Every neuron layer in turn, each on the previous one's top (Log on a shifted copy)."""
    text = deploy_zoo.prelu_net().split('layer { name: "conv1"')[0]
    bottom = 'data'
    for kind, param in NEURONS:
        text += 'layer { name: "%s" type: "%s" bottom: "%s" top: "%s" %s }\n' % (
            kind.lower(), kind, bottom, kind.lower(), param)
        bottom = kind.lower()
    return text + ('layer { name: "log" type: "Log" bottom: "data" top: "log" '
                   'log_param { shift: 100 } }\n')


def nets(full):
    yield 'ResNet-style (tests)', deploy_zoo.resnet(), [(1, 3, 64, 64), (2, 3, 57, 70)]
    yield 'MobileNet v1-style (tests)', deploy_zoo.mobilenet_v1(), [(1, 3, 48, 48),
                                                                     (2, 3, 41, 53)]
    yield 'MobileNet v2-style (tests)', deploy_zoo.mobilenet_v2(), [(1, 3, 48, 48),
                                                                     (2, 3, 37, 50)]
    yield 'PReLU net (tests)', deploy_zoo.prelu_net(), [(1, 3, 24, 24)]
    yield 'ELU net (tests)', deploy_zoo.elu_net(), [(1, 3, 24, 24)]
    yield 'neuron chain', neuron_net(), [(2, 3, 24, 24)]
    if full:
        yield ('ResNet-50-shaped', deploy_zoo.resnet((1, 3, 224, 224), width=64,
                                                     stages=(3, 4, 6, 3), classes=1000),
               [(1, 3, 224, 224)])
        yield ('MobileNet v1-shaped', deploy_zoo.mobilenet_v1((1, 3, 224, 224), width=32,
                                                              classes=1000),
               [(1, 3, 224, 224)])
        yield ('MobileNet v2-shaped', deploy_zoo.mobilenet_v2((1, 3, 224, 224), width=32,
                                                              classes=1000),
               [(1, 3, 224, 224)])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--full', action='store_true', help='add the full-width nets at 224 x 224')
    args = p.parse_args(argv)
    print('%-28s %-16s %-8s %10s %10s %10s' % ('net', 'input', 'output', 'max diff',
                                                'max |out|', 'ratio'))
    for name, text, sizes in nets(args.full):
        net = deploy_net(text, seed=7)
        # the logits too: a saturated softmax would hide their differences
        outputs = list(net.outputs) + (['fc'] if 'fc' in net.blobs else [])
        model = onnx_export.to_onnx(net, outputs=outputs)
        onnx_export.validate(model, full_check=True)
        for k, shape in enumerate(sizes):
            feed = {'data': image(shape, seed=k)}
            got = run_onnx(model, feed)
            want = run_engine(net, feed, [o.split('@')[0] for o in got])
            for out, value in got.items():
                ref = want[out.split('@')[0]]
                ok = ~np.isnan(ref)
                d = float(np.abs(value[ok] - ref[ok]).max(initial=0))
                s = float(np.abs(ref[ok]).max(initial=0))
                print('%-28s %-16s %-8s %10.2g %10.3g %10.2g'
                      % (name, 'x'.join(map(str, shape)), out, d, s, d / s if s else 0))


if __name__ == '__main__':
    main()
