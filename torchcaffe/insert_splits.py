"""Caffe's ``InsertSplits`` (src/caffe/util/insert_splits.cpp): a Split layer after
every blob that more than one layer reads.

Caffe's ``Net::Init`` runs it after the phase filter, so the Split layers and
their tops are part of every Caffe net: pycaffe lists them in ``net.blobs``,
``net.layers`` and ``net._layer_names``, and each Split top has its own diff
(that consumer's gradient), while the blob before the split gets their sum.

Names, as Caffe makes them: the layer ``<blob>_<layer>_<top index>_split`` and
its tops ``<blob>_<layer>_<top index>_split_<k>``, where ``<layer>`` is the layer
that produced the blob. A top with an explicit nonzero ``loss_weight`` that other
layers also read counts as one more reader: the split's first top carries the
loss weight instead, and the producing layer's ``loss_weight`` is cleared.
"""
from .errors import NetGraphError
from .proto import caffe_pb2

__all__ = ['insert_splits', 'split_layer_name', 'split_blob_name']


def split_layer_name(layer_name, blob_name, blob_idx):
    """Caffe's SplitLayerName.

    >>> split_layer_name('input', 'data', 0)
    'data_input_0_split'
    """
    return '%s_%s_%d_split' % (blob_name, layer_name, blob_idx)


def split_blob_name(layer_name, blob_name, blob_idx, split_idx):
    """Caffe's SplitBlobName.

    >>> split_blob_name('input', 'data', 0, 1)
    'data_input_0_split_1'
    """
    return '%s_%s_%d_split_%d' % (blob_name, layer_name, blob_idx, split_idx)


def _reader_counts(layers):
    """For each (layer index, top index): how many bottoms (and loss uses) read it;
    for each (layer index, bottom index): the (layer, top) it reads; explicit loss
    weights by (layer, top)."""
    last_top = {}
    source = {}
    count = {}
    loss_weight = {}
    for i, lp in enumerate(layers):
        for j, name in enumerate(lp.bottom):
            if name not in last_top:
                raise NetGraphError('layer %r (%s): bottom blob %r is not produced by any '
                                    'earlier layer (bottom index %d)' % (lp.name, lp.type, name, j))
            top = last_top[name]
            source[(i, j)] = top
            count[top] = count.get(top, 0) + 1
        for j, name in enumerate(lp.top):
            last_top[name] = (i, j)
        # A use as a loss counts like a use as a bottom.
        for j in range(min(len(lp.loss_weight), len(lp.top))):
            top = last_top[lp.top[j]]
            loss_weight[top] = lp.loss_weight[j]
            if lp.loss_weight[j]:
                count[top] = count.get(top, 0) + 1
    return source, count, loss_weight


def _split_layer(layer_name, blob_name, blob_idx, split_count, loss_weight):
    """Caffe's ConfigureSplitLayer."""
    lp = caffe_pb2.LayerParameter(name=split_layer_name(layer_name, blob_name, blob_idx),
                                  type='Split')
    lp.bottom.append(blob_name)
    for k in range(split_count):
        lp.top.append(split_blob_name(layer_name, blob_name, blob_idx, k))
        if loss_weight:
            lp.loss_weight.append(loss_weight if k == 0 else 0)
    return lp


def insert_splits(layers):
    """The layers with Split layers inserted, as Caffe's ``InsertSplits``.

    Parameters
    ----------
    layers : list of caffe_pb2.LayerParameter
        The net's layers after phase filtering (inputs already Input layers).

    Returns
    -------
    list of caffe_pb2.LayerParameter
        Copies; the input is not changed. The same list (copied) when no blob has
        more than one reader.

    Raises
    ------
    NetGraphError
        A bottom that no earlier layer produces.
    """
    source, count, loss_weight = _reader_counts(layers)
    split_index = {}
    out = []
    for i, original in enumerate(layers):
        lp = caffe_pb2.LayerParameter()
        lp.CopyFrom(original)
        out.append(lp)
        for j in range(len(lp.bottom)):
            top = source[(i, j)]
            if count.get(top, 0) > 1:
                k = split_index.get(top, 0)
                split_index[top] = k + 1
                lp.bottom[j] = split_blob_name(layers[top[0]].name, lp.bottom[j], top[1], k)
        for j, name in enumerate(lp.top):
            n = count.get((i, j), 0)
            if n > 1:
                weight = loss_weight.get((i, j), 0)
                out.append(_split_layer(lp.name, name, j, n, weight))
                if weight:
                    del lp.loss_weight[:]
                    split_index[(i, j)] = split_index.get((i, j), 0) + 1
    return out
