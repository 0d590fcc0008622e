"""How much of Caffe's numbers each way out of the engine keeps: the README's
"Leaving Caffe" table.

    python benchmarks/leaving_caffe.py            # narrow nets, about two minutes
    python benchmarks/leaving_caffe.py --full     # and full-width FCN-8s at 500 x 500
    python benchmarks/leaving_caffe.py --full --only full   # that one alone

For each net of ``tests/test_module.py`` (the narrow FCN deploy nets, FCN-AlexNet and
the ResNet-style zoo net, random weights) it runs the engine and each way out on the
same input and prints the largest absolute difference of the outputs from the
engine's, with the largest absolute output for scale:

* ``module``: ``net.to_module()`` in eager mode;
* ``export``: ``torch.export.export`` of the module, run as ``program.module()``;
* ``compile``: ``torch.compile`` of the module (inductor; needs a C compiler);
* ``onnx``: ``torchcaffe.onnx_export`` run in onnxruntime (a net with a layer type
  the exporter does not know prints the exporter's message instead).
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
from torchcaffe import onnx_export  # noqa: E402


def nets(full):
    """(label, net, input shape, output name) of each net measured."""
    # The nets of the tests, imported here so that collecting this file as a doctest
    # module (pytest's testpaths) does not import the test module a second time.
    sys.path.insert(0, os.path.join(ROOT, 'tests'))
    from random_weights import randomize
    from test_module import zoo_net, CLASSES, WIDTH
    from nets import alexnet, voc
    for stage in ('fcn32s', 'fcn16s', 'fcn8s', 'fcn8s-atonce'):
        net = caffe.Net(voc.stage_nets(stage, classes=CLASSES, width=WIDTH)['deploy'],
                        caffe.TEST)
        randomize(net, 0)
        yield 'narrow %s' % stage, net, (2, 3, 64, 51), 'score'
    net = caffe.Net(alexnet.stage_nets(classes=CLASSES, width=WIDTH)['deploy'], caffe.TEST)
    randomize(net, 0)
    yield 'narrow FCN-AlexNet', net, (1, 3, 45, 53), 'score'
    # the zoo net's fc, before its Softmax (whose probabilities saturate)
    yield 'zoo (BatchNorm, Scale, Eltwise, LRN, PReLU)', zoo_net(), (2, 3, 17, 19), 'fc'
    if full:
        net = caffe.Net(voc.stage_nets('fcn8s')['deploy'], caffe.TEST)
        randomize(net, 0)
        yield 'full-width FCN-8s', net, (1, 3, 500, 500), 'score'


def engine(net, x, out):
    net.blobs['data'].reshape(*x.shape)
    net.reshape()
    return np.array(net.forward(blobs=[out], data=x)[out])


def ways(net, x, out):
    """Way name -> output array, or a string saying why there is none."""
    module = net.to_module(blobs=[out])
    t = torch.from_numpy(x)
    results = {}
    with torch.no_grad():
        results['module'] = module(data=t)[out].numpy()
        program = torch.export.export(module, (), {'data': t})
        results['export'] = program.module()(data=t)[out].numpy()
        torch._dynamo.reset()
        results['compile'] = torch.compile(module)(data=t)[out].numpy()
    try:
        import onnxruntime as ort
        model = onnx_export.to_onnx(net, outputs=[out])
        session = ort.InferenceSession(model.SerializeToString(),
                                       providers=['CPUExecutionProvider'])
        results['onnx'] = session.run([out], {'data': x})[0]
    except ImportError:
        results['onnx'] = 'onnxruntime is not installed'
    except caffe.CaffeError as err:
        results['onnx'] = str(err)
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--full', action='store_true', help='also full-width FCN-8s')
    parser.add_argument('--only', default='', help='only the nets whose label has this text')
    args = parser.parse_args(argv)
    caffe.set_mode_cpu()
    print('%-44s %10s  %-9s %-9s %-9s %s' % ('net', 'max |out|', 'module', 'export',
                                             'compile', 'onnx'))
    for label, net, shape, out in nets(args.full):
        if args.only not in label:
            continue
        x = np.random.default_rng(1).normal(0, 20, shape).astype(np.float32)
        want = engine(net, x, out)
        cells = []
        for name, got in ways(net, x, out).items():
            if isinstance(got, str):
                cells.append('none: %s' % got.split(';')[0])
            else:
                assert got.shape == want.shape, (label, name)
                cells.append('%.1e' % np.abs(got - want).max())
        print('%-44s %10.3g  %-9s %-9s %-9s %s' % ((label, np.abs(want).max()) + tuple(cells)))


if __name__ == '__main__':
    main()
