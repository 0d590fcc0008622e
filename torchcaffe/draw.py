"""Pictures of nets: pycaffe's ``caffe.draw``, through pydot and Graphviz's ``dot``.

    import torchcaffe as caffe
    from torchcaffe import draw
    net = caffe.io.read_net_prototxt('voc-fcn8s/deploy.prototxt')
    draw.draw_net_to_file(net, 'fcn8s.png', rankdir='TB')

As in Caffe (python/caffe/draw.py), a net is a ``NetParameter``, not a ``Net``:
every layer becomes a record-shaped node labelled with its name, its type and,
for convolution, deconvolution and pooling, kernel size, stride and pad; every
blob becomes a node named by the blob; edges go bottom blob -> layer -> top blob,
and the edge out of a layer is labelled with its ``num_output`` (or ``Batch N``
for a Data layer). In-place layers (one bottom that is also their top: ReLU,
Dropout) are green; convolutions red, pooling orange, inner products purple,
everything else blue. The layer node's *name* is its quoted label, as pycaffe
makes it, so code that looks nodes up by label keeps working.

Beyond pycaffe: old-format nets (V1 ``layers``, net-level ``input``) are upgraded
first, as Caffe's loader does, instead of drawing nothing; ``kernel_h``/``kernel_w``
and per-axis values print as ``3x5``, global pooling as ``kernel size: global``;
an include/exclude rule without a ``phase`` matches every phase (Caffe's
``StateMeetsRule``; pycaffe read it as TRAIN); ``ext='dot'`` or ``'raw'`` returns
the graph's source text without running Graphviz.
"""
import os
import shutil
import subprocess

import pydot

from .errors import CaffeError
from .proto import caffe_pb2
from .upgrade import needs_upgrade, upgrade_net_param

__all__ = ['get_pydot_graph', 'draw_net', 'draw_net_to_file', 'get_layer_label',
           'get_edge_label', 'get_layer_lr_mult', 'get_pooling_types_dict',
           'choose_color_by_layertype', 'layer_in_phase', 'GraphvizError',
           'GraphvizNotFoundError', 'SOURCE_FORMATS']

# Node styles as pycaffe draws them.
LAYER_STYLE_DEFAULT = {'shape': 'record', 'fillcolor': '#6495ED', 'style': 'filled'}
NEURON_LAYER_STYLE = {'shape': 'record', 'fillcolor': '#90EE90', 'style': 'filled'}
BLOB_STYLE = {'shape': 'octagon', 'fillcolor': '#E0E0E0', 'style': 'filled'}

# Extensions answered with the graph's dot source, without Graphviz.
SOURCE_FORMATS = ('dot', 'raw')

# Layers whose label gets kernel/stride/pad, and those that have lr multipliers.
_SPATIAL_TYPES = ('Convolution', 'Deconvolution', 'Pooling')
_LEARNING_TYPES = ('Convolution', 'Deconvolution', 'InnerProduct')


class GraphvizError(CaffeError):
    """Graphviz's ``dot`` failed to render a graph (unknown format, bad input)."""


class GraphvizNotFoundError(GraphvizError, OSError):
    """Graphviz's ``dot`` program is not on ``PATH``."""


def get_pooling_types_dict():
    """``PoolingParameter.PoolMethod`` numbers to names: ``{0: 'MAX', 1: 'AVE', 2: 'STOCHASTIC'}``."""
    enum = caffe_pb2.PoolingParameter.PoolMethod.DESCRIPTOR
    return {value.number: value.name for value in enum.values}


def get_edge_label(layer):
    """The label of the edges out of ``layer`` (pycaffe's choice).

    ``'Batch N'`` for a Data layer, ``num_output`` for Convolution, Deconvolution
    and InnerProduct, ``'""'`` (an empty dot string) otherwise.
    """
    if layer.type == 'Data':
        return 'Batch %d' % layer.data_param.batch_size
    if layer.type in ('Convolution', 'Deconvolution'):
        return str(layer.convolution_param.num_output)
    if layer.type == 'InnerProduct':
        return str(layer.inner_product_param.num_output)
    return '""'


def get_layer_lr_mult(layer):
    """The learning rate multipliers ``(weights, bias)`` of a learning layer.

    Parameters
    ----------
    layer : caffe_pb2.LayerParameter
        A Convolution, Deconvolution or InnerProduct layer.

    Returns
    -------
    tuple of float
        A ``param`` not given counts 1.0, Caffe's default ``lr_mult``.

    Raises
    ------
    ValueError
        Another type of layer, or more than two ``param`` entries (as pycaffe).
    """
    if layer.type not in _LEARNING_TYPES:
        raise ValueError('%s layers do not have a learning rate multiplier' % layer.type)
    if len(layer.param) > 2:
        raise ValueError('layer %r: %d param entries, a learning layer has at most 2'
                         % (layer.name, len(layer.param)))
    mults = [p.lr_mult for p in layer.param] + [1.0] * (2 - len(layer.param))
    return tuple(float(m) for m in mults)


def _dims(values):
    """``3`` for one value or equal values, ``3x5`` otherwise."""
    values = [int(v) for v in values]
    return '%d' % values[0] if len(set(values)) == 1 else 'x'.join(map(str, values))


def _spatial_values(layer):
    """(kernel, stride, pad) text of a Convolution/Deconvolution/Pooling layer.

    Caffe's defaults: stride 1, pad 0; ``kernel_h``/``kernel_w`` (and the
    ``stride_``/``pad_`` pairs) win over the repeated or single fields.
    """
    if layer.type == 'Pooling':
        p = layer.pooling_param
        if p.global_pooling:
            kernel = 'global'
        else:
            kernel = _dims([p.kernel_h, p.kernel_w] if p.HasField('kernel_h')
                           else [p.kernel_size])
        stride = _dims([p.stride_h, p.stride_w] if p.HasField('stride_h') else [p.stride])
        pad = _dims([p.pad_h, p.pad_w] if p.HasField('pad_h') else [p.pad])
        return kernel, stride, pad
    p = layer.convolution_param
    kernel = _dims([p.kernel_h, p.kernel_w] if p.HasField('kernel_h')
                   else list(p.kernel_size) or [1])
    stride = _dims([p.stride_h, p.stride_w] if p.HasField('stride_h')
                   else list(p.stride) or [1])
    pad = _dims([p.pad_h, p.pad_w] if p.HasField('pad_h') else list(p.pad) or [0])
    return kernel, stride, pad


def _record_text(text):
    # Layer nodes are dot 'record' shapes labelled by their quoted name: a quote
    # would end the name, and { } | < > would split the record into fields.
    return ''.join('\\' + c if c in '"{}|<>' else c for c in text)


def get_layer_label(layer, rankdir, display_lrm=False):
    """The text of a layer's node, in double quotes (dot needs them for the colons).

    Parameters
    ----------
    layer : caffe_pb2.LayerParameter
    rankdir : str
        Graphviz rank direction. ``'TB'``/``'BT'`` (vertical graphs, room across)
        separate the parts with spaces; any other with dot's ``\\n`` line breaks.
    display_lrm : bool, optional
        Add ``lr mult: W, B`` to learning layers, unless both are zero.

    Returns
    -------
    str
        For example ``'"pool1\\n(Pooling MAX)\\nkernel size: 2\\nstride: 2\\npad: 0"'``
        (with a literal backslash-n).
    """
    sep = ' ' if rankdir in ('TB', 'BT') else r'\n'
    parts = [_record_text(layer.name)]
    if layer.type == 'Pooling':
        parts.append('(Pooling %s)' % get_pooling_types_dict()[layer.pooling_param.pool])
    else:
        parts.append('(%s)' % _record_text(layer.type))
    if layer.type in _SPATIAL_TYPES:
        kernel, stride, pad = _spatial_values(layer)
        parts += ['kernel size: %s' % kernel, 'stride: %s' % stride, 'pad: %s' % pad]
    if display_lrm and layer.type in _LEARNING_TYPES:
        weights, bias = get_layer_lr_mult(layer)
        if weights or bias:
            parts.append('lr mult: %.1f, %.1f' % (weights, bias))
    return '"%s"' % sep.join(parts)


def choose_color_by_layertype(layertype):
    """Fill colour of a (not in-place) layer node, by type name."""
    if layertype in ('Convolution', 'Deconvolution'):
        return '#FF5050'
    if layertype == 'Pooling':
        return '#FF9900'
    if layertype == 'InnerProduct':
        return '#CC33FF'
    return LAYER_STYLE_DEFAULT['fillcolor']


def layer_in_phase(layer, phase):
    """Whether ``layer`` is part of the net in ``phase`` (None: every layer is).

    pycaffe's rule: a layer without ``include`` is in unless an ``exclude`` rule
    matches; with ``include`` it is in when one of them matches. A rule matches
    when its ``phase`` is ``phase`` or, as in Caffe's ``StateMeetsRule``, when it
    names no phase. Stages and levels are not looked at.

    Raises
    ------
    ValueError
        The layer has both ``include`` and ``exclude`` rules (Caffe refuses it too).
    """
    if phase is None:
        return True
    if len(layer.include) and len(layer.exclude):
        raise ValueError('layer %r has both include and exclude specified' % layer.name)

    def matches(rule):
        return not rule.HasField('phase') or rule.phase == phase

    if len(layer.include):
        return any(matches(rule) for rule in layer.include)
    return not any(matches(rule) for rule in layer.exclude)


def _blob_node_name(blob):
    # A ':' in a bare dot ID would be read as a port; pydot quotes other odd names.
    if ':' in blob or '"' in blob:
        return '"%s"' % blob.replace('"', '\\"')
    return blob


def _as_current_format(net_param):
    if needs_upgrade(net_param):
        return upgrade_net_param(net_param)
    return net_param


def get_pydot_graph(caffe_net, rankdir, label_edges=True, phase=None, display_lrm=False):
    """The net as a ``pydot.Dot`` digraph (see the module docstring for what is drawn).

    Parameters
    ----------
    caffe_net : caffe_pb2.NetParameter
    rankdir : str
        Graphviz ``rankdir``: ``'LR'``, ``'TB'``, ``'BT'`` or ``'RL'``.
    label_edges : bool, optional
        Label edges out of a layer with its ``num_output`` / batch size.
    phase : int or None, optional
        ``caffe.TRAIN`` or ``caffe.TEST``: draw only that phase's layers
        (:func:`layer_in_phase`); None draws every layer.
    display_lrm : bool, optional
        Show learning layers' lr multipliers.

    Returns
    -------
    pydot.Dot
        Named after the net (``'Net'`` when it has no name). Layer nodes are
        named by :func:`get_layer_label`, blob nodes by the blob.
    """
    net = _as_current_format(caffe_net)
    graph = pydot.Dot(net.name or 'Net', graph_type='digraph', rankdir=rankdir)
    nodes = {}  # key -> pydot.Node, in order of first mention
    edges = []  # (source key, destination key, label)
    for layer in net.layer:
        if not layer_in_phase(layer, phase):
            continue
        key = '%s_%s' % (layer.name, layer.type)
        in_place = len(layer.bottom) == 1 and list(layer.bottom) == list(layer.top)
        style = dict(NEURON_LAYER_STYLE if in_place else LAYER_STYLE_DEFAULT)
        if not in_place:
            style['fillcolor'] = choose_color_by_layertype(layer.type)
        nodes[key] = pydot.Node(get_layer_label(layer, rankdir, display_lrm), **style)
        for blob in layer.bottom:
            nodes[blob + '_blob'] = pydot.Node(_blob_node_name(blob), **BLOB_STYLE)
            edges.append((blob + '_blob', key, '""'))
        for blob in layer.top:
            # pycaffe's quirk, kept: a blob's node is restyled at each mention, so
            # a blob no later layer reads (a net output) is drawn as a plain ellipse.
            nodes[blob + '_blob'] = pydot.Node(_blob_node_name(blob))
            edges.append((key, blob + '_blob', get_edge_label(layer) if label_edges else '""'))
    for node in nodes.values():
        graph.add_node(node)
    for source, destination, label in edges:
        graph.add_edge(pydot.Edge(nodes[source], nodes[destination], label=label))
    return graph


def find_dot():
    """Path of Graphviz's ``dot``; raises :class:`GraphvizNotFoundError` if absent."""
    dot = shutil.which('dot')
    if dot is None:
        raise GraphvizNotFoundError(
            "Graphviz's 'dot' program is not on PATH; drawing a net needs it. Install "
            'Graphviz (Debian/Ubuntu: apt-get install graphviz; macOS: brew install '
            'graphviz; conda: conda install graphviz), or write the .dot source instead.')
    return dot


def render(graph, ext):
    """Render a pydot graph with ``dot -T<ext>``; the bytes dot writes.

    ``ext`` in :data:`SOURCE_FORMATS` returns the graph's source instead.

    Raises
    ------
    GraphvizNotFoundError
        ``dot`` is not installed.
    GraphvizError
        ``dot`` failed, e.g. on a format it does not know; the message is dot's.
    """
    source = graph.to_string().encode('utf-8')
    if ext in SOURCE_FORMATS:
        return source
    # dot reads the source on stdin (pydot's own create() prints dot's errors to stdout).
    result = subprocess.run([find_dot(), '-T' + ext], input=source, capture_output=True)
    if result.returncode != 0:
        message = result.stderr.decode('utf-8', 'replace').strip()
        raise GraphvizError("Graphviz 'dot -T%s' failed (exit status %d): %s"
                            % (ext, result.returncode, message.splitlines()[0]
                               if message else 'no message'))
    return result.stdout


def draw_net(caffe_net, rankdir, ext='png', phase=None, display_lrm=False):
    """The picture of ``caffe_net`` as bytes in format ``ext`` (a Graphviz ``-T`` format).

    Parameters
    ----------
    caffe_net : caffe_pb2.NetParameter
    rankdir : str
    ext : str, optional
        ``'png'``, ``'svg'``, ``'pdf'``, ... or ``'dot'``/``'raw'`` for the source.
    phase : int or None, optional
    display_lrm : bool, optional

    Returns
    -------
    bytes
    """
    return render(get_pydot_graph(caffe_net, rankdir, phase=phase, display_lrm=display_lrm),
                  ext)


def draw_net_to_file(caffe_net, filename, rankdir='LR', phase=None, display_lrm=False):
    """Draw ``caffe_net`` into ``filename``, in the format its extension names.

    The file is written only once the picture has been made.
    """
    ext = os.path.splitext(os.fspath(filename))[1][1:].lower()
    data = draw_net(caffe_net, rankdir, ext, phase, display_lrm)
    with open(filename, 'wb') as f:
        f.write(data)
