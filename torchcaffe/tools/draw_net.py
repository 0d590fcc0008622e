"""Draw a net's prototxt as a picture: Caffe's python/draw_net.py.

    draw_net voc-fcn8s/deploy.prototxt fcn8s.png --rankdir TB
    draw_net NET.prototxt OUT.{png,svg,pdf,dot} [--rankdir LR|TB|BT|RL]
        [--phase TRAIN|TEST|ALL] [--display_lrm]

The format comes from the output file's extension; ``.dot`` (or ``.raw``) writes
the Graphviz source without running Graphviz. ``--phase`` draws only that phase's
layers (default ALL: every layer); ``--display_lrm`` adds the learning layers'
lr multipliers. Old-format (V1) prototxts are upgraded first, as Caffe loads them.
Bad input (a missing file, a prototxt that does not parse, an unknown extension,
no Graphviz) ends with one ``error: ...`` line and exit status 2.
"""
import argparse
import os
import sys

from .. import draw
from ..errors import CaffeError
from ..io import read_net_prototxt
from ..proto import caffe_pb2

__all__ = ['FORMATS', 'PHASES', 'parse_args', 'main']

# Extensions drawn with Graphviz; draw.SOURCE_FORMATS are written as dot source.
FORMATS = ('png', 'svg', 'pdf', 'jpg', 'jpeg', 'gif', 'ps', 'eps') + draw.SOURCE_FORMATS
PHASES = {'TRAIN': caffe_pb2.TRAIN, 'TEST': caffe_pb2.TEST, 'ALL': None}


def parse_args(argv=None):
    """pycaffe draw_net.py's arguments."""
    p = argparse.ArgumentParser(prog='draw_net', description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('input_net_proto_file', help='input network prototxt file')
    p.add_argument('output_image_file',
                   help='output image file; its extension picks the format (%s)'
                   % ', '.join(FORMATS))
    p.add_argument('--rankdir', default='LR',
                   help='Graphviz rankdir: LR (left to right), TB (top to bottom), BT, RL')
    p.add_argument('--phase', default='ALL', choices=sorted(PHASES),
                   help='draw the layers of this phase only; ALL draws every layer')
    p.add_argument('--display_lrm', action='store_true',
                   help='show the learning rate multipliers of learning layers')
    return p.parse_args(argv)


def _format_of(path):
    ext = os.path.splitext(path)[1][1:].lower()
    if ext not in FORMATS:
        raise CaffeError('%s: unknown picture format %r; use one of the extensions %s'
                         % (path, ext or '(none)', ', '.join('.' + f for f in FORMATS)))
    return ext


def main(argv=None):
    """Run the tool; returns the exit status (0, or 2 after an ``error:`` line)."""
    args = parse_args(argv)
    try:
        ext = _format_of(args.output_image_file)
        if not os.path.isfile(args.input_net_proto_file):
            raise CaffeError('%s: no such file' % args.input_net_proto_file)
        net = read_net_prototxt(args.input_net_proto_file)
        data = draw.draw_net(net, args.rankdir, ext, PHASES[args.phase], args.display_lrm)
        print('Drawing net to %s' % args.output_image_file)
        with open(args.output_image_file, 'wb') as f:
            f.write(data)
    except (CaffeError, OSError, ValueError) as err:
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        print('error: %s' % message, file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
