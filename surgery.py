"""Net surgery, as the FCN reference's surgery.py: move weights between nets.

    # the FCN-32s (and at-once FCN-8s) initialisation from the ILSVRC VGG16 classifier
    python surgery.py vgg16-fcn --weights ilsvrc-nets/VGG_ILSVRC_16_layers.caffemodel
    python surgery.py vgg16-fcn --weights W --out ilsvrc-nets/vgg16-fcn.caffemodel \\
        --classifier ilsvrc-nets/vgg16-deploy.prototxt --fcn voc-fcn32s/deploy.prototxt
    # FCN-AlexNet's, from the ILSVRC CaffeNet classifier
    python surgery.py alexnet-fcn --weights ilsvrc-nets/bvlc_reference_caffenet.caffemodel

The result holds every layer of the FCN prototxt: the classifier's convolutions,
fc6 and fc7 as convolutions, score_fr at zero and upscore bilinear, for that
prototxt's class count (21 for voc-fcn32s and voc-fcn-alexnet). Nets with another
class count need it made from their own deploy prototxt (``--fcn``, e.g.
pascalcontext-fcn32s/deploy.prototxt), or ``copy_from`` fails on score_fr's shape.

In Python, as the reference's solve.py scripts use it::

    import torchcaffe as caffe
    import surgery
    surgery.transplant(solver.net, vgg_net)              # copy, coerce fc -> conv, drop
    surgery.interp(solver.net, [k for k in solver.net.params if 'up' in k])

``transplant`` copies parameters of same-named layers and "coerces" those whose
shapes differ but whose value counts agree: an InnerProduct's O x (C*H*W) weights
are the O x C x H x W weights of the equivalent convolution, in the same C order.
Unlike the reference it never half-copies: a blob whose value count differs is
reported and left alone (numpy's flat assignment would silently repeat or cut).
"""
import argparse
import collections
import os
import sys

import numpy as np

import torchcaffe as caffe
from torchcaffe.errors import CaffeError

HERE = os.path.dirname(os.path.abspath(__file__))
CLASSIFIER_PROTOTXT = os.path.join(HERE, 'ilsvrc-nets', 'vgg16-deploy.prototxt')
VGG16_WEIGHTS = os.path.join(HERE, 'ilsvrc-nets', 'VGG_ILSVRC_16_layers.caffemodel')
VGG16_URL_FILE = os.path.join(HERE, 'ilsvrc-nets', 'caffemodel-url')
VGG16_BYTES = 553432081
FCN32S_PROTOTXT = os.path.join(HERE, 'voc-fcn32s', 'deploy.prototxt')
VGG16_FCN_WEIGHTS = os.path.join(HERE, 'ilsvrc-nets', 'vgg16-fcn.caffemodel')


class Source(collections.namedtuple(
        'Source', 'title classifier weights url fingerprint fcn out')):
    """An ILSVRC classifier the FCNs start from, and where its FCN form goes.

    ``url`` is the download address, or a ``caffemodel-url`` file holding it;
    ``fingerprint`` identifies the right file (its size or checksum) in the message
    when it is missing.
    """

    def download_url(self):
        """``url`` itself, or the contents of the file it names."""
        if not self.url.startswith(('http://', 'https://')):
            try:
                with open(self.url) as f:
                    return f.read().strip()
            except OSError:
                return '(see the Caffe Model Zoo)'
        return self.url


# One entry per subcommand, named after the file it writes, as the reference names them.
SOURCES = {
    'vgg16-fcn': Source('VGG16 ILSVRC', CLASSIFIER_PROTOTXT, VGG16_WEIGHTS, VGG16_URL_FILE,
                        '%s bytes' % format(VGG16_BYTES, ','), FCN32S_PROTOTXT,
                        VGG16_FCN_WEIGHTS),
    'alexnet-fcn': Source(
        'CaffeNet (BVLC reference AlexNet) ILSVRC',
        os.path.join(HERE, 'ilsvrc-nets', 'caffenet-deploy.prototxt'),
        os.path.join(HERE, 'ilsvrc-nets', 'bvlc_reference_caffenet.caffemodel'),
        'http://dl.caffe.berkeleyvision.org/bvlc_reference_caffenet.caffemodel',
        'SHA-1 4c8d77deb20ea792f84eb5e6d0a11ca0a8660a46',
        os.path.join(HERE, 'voc-fcn-alexnet', 'deploy.prototxt'),
        os.path.join(HERE, 'ilsvrc-nets', 'alexnet-fcn.caffemodel')),
}

__all__ = ['Action', 'transplant', 'upsample_filt', 'interp', 'expand_score',
           'SavedParams', 'expand_input',
           'Source', 'SOURCES', 'classifier_to_fcn', 'vgg16_to_fcn', 'summary_line', 'main']


# ------------------------------------------------------------------------ transplant

class Action(collections.namedtuple(
        'Action', 'kind layer index new_layer source_shape target_shape')):
    """One step of :func:`transplant`; ``str()`` gives the line it reports.

    ``kind`` is 'copying', 'coercing' (same value count, other shape: flat copy),
    'dropping' (no such layer, ``index`` None; or no such blob in it) or 'skipping'
    (value counts differ: nothing copied).
    """

    def __str__(self):
        if self.kind == 'dropping':
            return 'dropping %s' % self.layer + ('' if self.index is None else ' %d' % self.index)
        if self.kind == 'copying':
            return 'copying %s -> %s %d' % (self.layer, self.new_layer, self.index)
        where = self.layer if self.new_layer == self.layer else '%s -> %s' % (
            self.layer, self.new_layer)
        if self.kind == 'coercing':
            return 'coercing %s %d from %s to %s' % (where, self.index, self.source_shape,
                                                    self.target_shape)
        return 'skipping %s %d: %s holds %d values, %s needs %d' % (
            where, self.index, self.source_shape, _count(self.source_shape),
            self.target_shape, _count(self.target_shape))


def _count(shape):
    return int(np.prod(shape, dtype=np.int64))


def transplant(new_net, net, suffix='', report=print):
    """Copy the parameters of ``net`` into the same-named layers of ``new_net``.

    For each layer of ``net`` with parameters, the layer ``name + suffix`` of
    ``new_net`` gets each blob: copied when the shapes agree, coerced (flat copy in
    C order, e.g. InnerProduct O x (C*H*W) -> Convolution O x C x H x W) when only
    the value counts agree, skipped when the counts differ. Layers ``new_net``
    lacks, and blobs beyond its layer's count, are dropped.

    Parameters
    ----------
    new_net, net : torchcaffe.Net
        Target and source.
    suffix : str
        Appended to each source layer name to find its target.
    report : callable or None
        Called with each action's line (the reference prints them); None is silent.

    Returns
    -------
    list of Action
    """
    actions = []

    def add(action):
        actions.append(action)
        if report is not None:
            report(str(action))

    for name, blobs in net.params.items():
        new_name = name + suffix
        if new_name not in new_net.params:
            add(Action('dropping', name, None, None, None, None))
            continue
        targets = new_net.params[new_name]
        for i, src in enumerate(blobs):
            if i >= len(targets):
                add(Action('dropping', name, i, new_name, None, None))
                break
            add(_transplant_blob(name, new_name, i, src, targets[i]))
    return actions


def _transplant_blob(name, new_name, i, src, dst):
    source, target = src.data, dst.data
    if source.shape == target.shape:
        target[...] = source
        return Action('copying', name, i, new_name, source.shape, target.shape)
    if source.size != target.size:
        return Action('skipping', name, i, new_name, source.shape, target.shape)
    target[...] = source.reshape(target.shape)  # C order: numpy's .flat copy
    return Action('coercing', name, i, new_name, source.shape, target.shape)


# ------------------------------------------------------------------------ bilinear kernels

def upsample_filt(size):
    """Bilinear interpolation kernel of ``size`` x ``size`` for upsampling by ``(size + 1) // 2``.

    This is the kernel FCN sets in its Deconvolution layers (kernel ``2f - f % 2`` for
    factor ``f``); it equals Caffe's ``bilinear`` filler for that kernel size.

    >>> upsample_filt(4)[0]
    array([0.0625, 0.1875, 0.1875, 0.0625])
    >>> float(upsample_filt(3)[1, 1])
    1.0
    """
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    ramp = 1 - np.abs(np.arange(size) - center) / factor
    return np.outer(ramp, ramp)


def interp(net, layers):
    """Set the weights of each layer in ``layers`` to bilinear interpolation.

    Input channel ``c`` goes to output channel ``c`` through :func:`upsample_filt`
    and to no other (off-diagonal kernels are zeroed: the reference relied on the
    zero default filler for that). A layer with one output channel per group
    (weights C x 1 x K x K) gets the kernel on every input channel. A bias, if
    any, is left as it is.

    Raises
    ------
    ValueError
        A layer that is missing or has no 4-D weights, non-square kernels, or
        input and output channel counts that differ (and the output is not 1).
    """
    for name in layers:
        if name not in net.params:
            raise ValueError('interp: the net has no layer %r with parameters' % name)
        weights = net.params[name][0].data
        if weights.ndim != 4:
            raise ValueError('interp: layer %r has weights of shape %s, expected 4-D '
                             '(channels in, channels out, height, width)'
                             % (name, weights.shape))
        m, k, h, w = weights.shape
        if m != k and k != 1:
            raise ValueError('interp: layer %r maps %d channels to %d per group (weights %s); '
                             'bilinear interpolation needs them equal, or 1 output'
                             % (name, m, k, weights.shape))
        if h != w:
            raise ValueError('interp: layer %r has %d x %d kernels; bilinear '
                             'interpolation needs square ones' % (name, h, w))
        weights[...] = 0
        weights[np.arange(m), np.arange(k) if k == m else 0] = upsample_filt(h)


def expand_score(new_net, new_layer, net, layer):
    """Put a score layer's ``k`` classes into the first ``k`` of a layer with ``k' >= k``.

    The weights and bias of ``net``'s ``layer`` fill the first ``k`` output
    channels of ``new_net``'s ``new_layer``; the other ``k' - k`` stay as they are.
    """
    old, new = net.params[layer], new_net.params[new_layer]
    if len(old) != len(new):
        raise ValueError('expand_score: %r has %d blobs, %r has %d'
                         % (layer, len(old), new_layer, len(new)))
    old_w, new_w = old[0].data, new[0].data
    k = old_w.shape[0]
    if k > new_w.shape[0] or old_w.shape[1:] != new_w.shape[1:]:
        raise ValueError('expand_score: cannot put %r (weights %s) into the first outputs of '
                         '%r (weights %s): needs at most as many outputs and equal other '
                         'dimensions' % (layer, old_w.shape, new_layer, new_w.shape))
    new_w[:k] = old_w
    if len(old) > 1:
        old_b, new_b = old[1].data, new[1].data
        if old_b.size != k or new_b.size != new_w.shape[0]:
            raise ValueError('expand_score: biases of %r %s and %r %s do not match their '
                             'outputs' % (layer, old_b.shape, new_layer, new_b.shape))
        new_b.reshape(-1)[:k] = old_b.reshape(-1)


# ------------------------------------------------------------------------ saved weights

class SavedParams:
    """The learnable blobs of a ``.caffemodel`` (or ``.h5``) by layer name, without a net.

    Its ``params`` maps each layer with blobs to a list of objects whose ``data`` is
    the blob's array, which is all :func:`transplant` reads from its source::

        surgery.transplant(solver.net, surgery.SavedParams('color.caffemodel'), 'color')

    so a snapshot moves into another net without building the net it came from
    (the reference built it from a prototxt, data layer and all).

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist; the message names it.
    """

    class _Blob:
        __slots__ = ('data',)

        def __init__(self, data):
            self.data = data

    def __init__(self, path):
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError('weights not found: %s' % os.path.abspath(path))
        self.path = path
        self.params = collections.OrderedDict()
        for layer in caffe.io.read_caffemodel(path).layer:
            if len(layer.blobs):
                self.params[layer.name] = [self._Blob(caffe.io.blobproto_to_array(b))
                                           for b in layer.blobs]


def expand_input(new_net, new_layer, net, layer):
    """Widen a first convolution to more input channels, as nyud-fcn32s-color-d does.

    The weights of ``net``'s ``layer`` (O x C x K x K) fill input channels ``0..C-1``
    of ``new_net``'s ``new_layer`` (O x C' x K x K, C' > C); each further input
    channel gets their mean over the C channels (the reference's start for the
    depth channel of its BGR-D net). The bias is copied. ``net`` may be a
    :class:`SavedParams`.
    """
    old, new = net.params[layer], new_net.params[new_layer]
    old_w, new_w = old[0].data, new[0].data
    if (old_w.ndim != 4 or new_w.ndim != 4 or old_w.shape[0] != new_w.shape[0]
            or old_w.shape[2:] != new_w.shape[2:] or new_w.shape[1] <= old_w.shape[1]):
        raise ValueError('expand_input: cannot put %r (weights %s) into the first input '
                         'channels of %r (weights %s): needs the same outputs and kernel and '
                         'more inputs' % (layer, old_w.shape, new_layer, new_w.shape))
    c = old_w.shape[1]
    new_w[:, :c] = old_w
    new_w[:, c:] = old_w.mean(axis=1, keepdims=True)
    if len(old) > 1 and len(new) > 1:
        new[1].data[...] = old[1].data.reshape(new[1].data.shape)


# ------------------------------------------------------------------------ classifier -> FCN

def _download_hint(weights, source):
    url = source.download_url()
    name = os.path.basename(source.weights)
    # One line: command-line errors are one line on stderr.
    return ('%s weights not found: %s; download %s (%s) from %s, e.g. "wget -P ilsvrc-nets '
            '%s", or pass --weights PATH' % (source.title, weights, name, source.fingerprint,
                                             url, url))


def _check_loaded(net, weights, classifier_prototxt):
    # The classifier prototxt has no fillers, so a weight blob still all zero was not in
    # the weights file: Net.copy_from, like Caffe's, ignores what it does not find.
    missing = [name for name, blobs in net.params.items() if not np.any(blobs[0].data)]
    if missing:
        raise ValueError('%s has no weights for layer(s) %s of %s; is it the weights of '
                         'that classifier?' % (weights, ', '.join(missing), classifier_prototxt))


def classifier_to_fcn(classifier_prototxt, weights, fcn_prototxt, out, report=print,
                      source=None):
    """Turn an ILSVRC classifier's weights into an FCN's initial weights.

    Loads ``classifier_prototxt`` with ``weights`` (V1 caffemodels are upgraded),
    builds ``fcn_prototxt`` (TEST phase), transplants (conv layers copied, fc6 and
    fc7 coerced to convolutions, fc8 dropped), sets the upsampling layers (names
    containing 'up') to bilinear interpolation and saves every layer of the FCN to
    ``out``, atomically. Layers the classifier lacks (``score_fr``) keep their
    filler values: zeros in the FCN prototxts. Any classifier / FCN pair whose
    layer names agree works: VGG16 and the VGG16 FCNs, CaffeNet and FCN-AlexNet.

    Parameters
    ----------
    source : Source, optional
        What the classifier is, for the message when ``weights`` is missing
        (default: the VGG16 entry of ``SOURCES``).

    Returns
    -------
    dict
        ``actions`` (list of Action), ``interpolated`` and ``untouched`` (layer names).

    Raises
    ------
    FileNotFoundError
        ``weights`` is missing; the message says where to download it.
    ValueError
        The weights file lacks weights for some classifier layer.
    """
    if not os.path.isfile(weights):
        raise FileNotFoundError(_download_hint(weights, source or SOURCES['vgg16-fcn']))
    net = caffe.Net(classifier_prototxt, weights, caffe.TEST)
    _check_loaded(net, weights, classifier_prototxt)
    new_net = caffe.Net(fcn_prototxt, caffe.TEST)
    actions = transplant(new_net, net, report=report)
    del net
    interpolated = [name for name in new_net.params if 'up' in name]
    interp(new_net, interpolated)
    reached = {a.new_layer for a in actions if a.kind in ('copying', 'coercing')}
    untouched = [name for name in new_net.params if name not in reached
                 and name not in interpolated]
    out_dir = os.path.dirname(os.path.abspath(out))
    os.makedirs(out_dir, exist_ok=True)
    new_net.save(out)
    return dict(actions=actions, interpolated=interpolated, untouched=untouched)


def vgg16_to_fcn(classifier_prototxt, weights, fcn_prototxt, out, report=print):
    """:func:`classifier_to_fcn` for the VGG16 classifier (the reference's FCN-32s start)."""
    return classifier_to_fcn(classifier_prototxt, weights, fcn_prototxt, out, report,
                             SOURCES['vgg16-fcn'])


def summary_line(out, result):
    """One line saying what :func:`classifier_to_fcn` wrote."""
    counts = collections.Counter(a.kind for a in result['actions'])
    coerced = sorted({a.layer for a in result['actions'] if a.kind == 'coercing'})
    dropped = sorted({a.layer for a in result['actions'] if a.kind == 'dropping'})
    parts = ['%d blobs copied' % counts['copying'],
             '%d coerced (%s)' % (counts['coercing'], ', '.join(coerced) or '-'),
             'dropped %s' % (', '.join(dropped) or 'nothing')]
    if counts['skipping']:
        parts.append('%d SKIPPED (value counts differ)' % counts['skipping'])
    parts.append('bilinear %s' % (', '.join(result['interpolated']) or 'nowhere'))
    if result['untouched']:
        parts.append('%s kept initial values' % ', '.join(result['untouched']))
    return 'wrote %s: %s' % (out, '; '.join(parts))


# ------------------------------------------------------------------------ command line

def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split('\n\n')[1])
    commands = parser.add_subparsers(dest='command', required=True)
    for command, source in SOURCES.items():
        cmd = commands.add_parser(command, help='%s weights -> FCN initial weights (%s)'
                                  % (source.title, os.path.relpath(source.out, HERE)))
        cmd.add_argument('--weights', default=source.weights,
                         help='the classifier caffemodel (default %(default)s)')
        cmd.add_argument('--out', default=source.out, help='default %(default)s')
        cmd.add_argument('--classifier', default=source.classifier,
                         help='the classifier deploy prototxt (default %(default)s)')
        cmd.add_argument('--fcn', default=source.fcn,
                         help='the FCN prototxt to fill (default %(default)s)')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        result = classifier_to_fcn(args.classifier, args.weights, args.fcn, args.out,
                                   source=SOURCES[args.command])
    except (FileNotFoundError, ValueError, CaffeError) as err:
        sys.exit('surgery.py: error: %s' % err)
    print(summary_line(args.out, result))
    return result


if __name__ == '__main__':
    main()
