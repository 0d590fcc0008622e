"""Export a Caffe deploy net and its weights to ONNX, with dynamic batch, height and width.

    python export.py voc-fcn8s/deploy.prototxt voc-fcn8s/fcn8s-heavy-pascal.caffemodel fcn8s.onnx
    python export.py voc-fcn8s/deploy.prototxt voc-fcn8s/fcn8s-heavy-pascal.caffemodel \\
        fcn8s.onnx --opset 17 --check

``--check`` runs ONNX's full model check and then the exported model in onnxruntime
and the net in torchcaffe on the same random input of the prototxt's input size,
failing when they differ by more than 1e-4 of the output's largest value. Inputs
that a layer reads as indices or flags (Embed, BatchReindex, the ``cont`` of
RNN/LSTM, Filter's selector) get valid random values. ``--outputs a,b`` exports
those blobs instead of the net's outputs. The layer mapping is in the converter
modules of torchcaffe/onnx_export/.
"""
import argparse
import sys

from torchcaffe import onnx_export
from torchcaffe.errors import CaffeError

# --check passes when max |onnx - caffe| <= RTOL * max |caffe| (+ ATOL): float32
# sums in another order, nothing more.
RTOL, ATOL = 1e-4, 1e-5


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('prototxt', help='deploy net (Input layer data)')
    p.add_argument('weights', help='.caffemodel or .caffemodel.h5')
    p.add_argument('output', help='.onnx file to write')
    p.add_argument('--opset', type=int, default=onnx_export.DEFAULT_OPSET,
                   help='ONNX opset (default %%(default)s, at least %d)' % onnx_export.MIN_OPSET)
    p.add_argument('--outputs', type=lambda s: [b for b in s.split(',') if b],
                   help='comma-separated blobs to output (default: the net outputs)')
    p.add_argument('--check', action='store_true',
                   help='run onnx.checker and compare onnxruntime with torchcaffe')
    return p.parse_args(argv)


def check(model, net):
    """Full ONNX check, then onnxruntime against the engine; True when they agree."""
    onnx_export.validate(model, full_check=True)
    ok = True
    for name, (diff, scale) in onnx_export.verify(model, net).items():
        good = diff <= RTOL * scale + ATOL
        ok &= good
        print('%s: max |onnx - caffe| = %.3g (max |caffe| = %.3g) %s'
              % (name, diff, scale, 'ok' if good else 'TOO LARGE'))
    return ok


def main(argv=None):
    args = parse_args(argv)
    try:
        net = onnx_export.load_net(args.prototxt, args.weights)
        model = onnx_export.export(net, None, args.output, opset=args.opset,
                                   outputs=args.outputs)
        print('wrote %s (opset %d; inputs %s; outputs %s)'
              % (args.output, args.opset, ', '.join(i.name for i in model.graph.input),
                 ', '.join(o.name for o in model.graph.output)))
        if args.check and not check(model, net):
            print('error: the ONNX model does not match the net', file=sys.stderr)
            return 1
    except (CaffeError, OSError, ImportError, ValueError) as err:
        print('error: %s' % err, file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
