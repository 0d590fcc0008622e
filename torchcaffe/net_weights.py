"""A net's weights: copied from a caffemodel, written as one, shared with another net.

Caffe's ``Net::CopyTrainedLayersFrom`` (binary or HDF5, told apart by the file's
content), ``Net::ToProto`` and ``Net::ShareTrainedLayersWith``, for
:class:`torchcaffe.Net`, whose methods of the pycaffe names call these.
"""
import logging
import os

import numpy as np

from . import io
from .errors import NetMismatchError
from .proto import caffe_pb2

__all__ = ['copy_trained_layers', 'to_proto', 'share_trained_layers']

log = logging.getLogger('torchcaffe.net')


def copy_trained_layers(net, path):
    """Caffe's CopyTrainedLayersFrom: see :meth:`torchcaffe.Net.copy_from`."""
    path = os.fspath(path)
    h5 = io.is_hdf5_file(path)  # H5Fis_hdf5, as Caffe: the content, not the name
    source = io.read_caffemodel(path)
    first = _stale_steps_by_name(net)
    for src in source.layer:
        step = first.get(src.name)
        if step is None:
            log.debug('Ignoring source layer %s', src.name)
            continue
        _copy_layer(path, src, step, h5)


def _copy_layer(path, src, step, h5):
    targets = step.layer.blobs
    n_src, n_dst = len(src.blobs), len(targets)
    if n_src > n_dst or (n_src < n_dst and not h5):
        raise NetMismatchError('%s: incompatible number of blobs for layer %r: the file has '
                               '%d, the net %d' % (path, src.name, n_src, n_dst))
    for j, (blob, shape) in enumerate(zip(targets, step.param_shapes)):
        proto = src.blobs[j] if j < n_src else None
        if proto is None or io.is_placeholder_blob(proto):
            if h5 and not step.param_owned[j]:
                continue  # Caffe stores a shared param once, under its owner
            raise NetMismatchError('%s: incompatible number of blobs for layer %r: blob %d '
                                   'is missing' % (path, src.name, j))
        if not io.legacy_shape_equals(proto, shape):
            raise NetMismatchError(
                "%s: cannot copy param %d weights from layer %r; shape mismatch. Source "
                "param shape is %s; target param shape is %s. To learn this layer's "
                "parameters from scratch rather than copying from a saved net, rename "
                "the layer." % (path, j, src.name, io.blob_shape(proto), shape))
        array = io.blobproto_to_array(proto)
        bad = array.size - int(np.count_nonzero(np.isfinite(array)))
        if bad:
            # Caffe copies them silently; loading still works (a diverged snapshot
            # can be inspected), and a solver stops on the first NaN loss.
            log.warning('%s: layer %r blob %d has %d NaN or infinite values of %d',
                        path, src.name, j, bad, array.size)
        blob.set_data(array.reshape(blob.shape))


def to_proto(net, write_diff=False):
    """Caffe's Net::ToProto: each layer's parameter with its blobs."""
    out = caffe_pb2.NetParameter(name=net.name)
    for step in net._steps:
        lp = out.layer.add()
        lp.CopyFrom(step.lp)
        del lp.blobs[:]
        for blob, shape in zip(step.layer.blobs, step.param_shapes):
            data = blob.data.reshape(shape)
            diff = blob.diff.reshape(shape) if write_diff else None
            lp.blobs.add().CopyFrom(io.array_to_blobproto(data, diff))
    return out


def share_trained_layers(net, other):
    """Caffe's ShareTrainedLayersWith: see :meth:`torchcaffe.Net.share_with`."""
    first = _stale_steps_by_name(net)
    for src in other._steps:
        step = first.get(src.name)
        if step is None:
            continue
        targets, sources = step.layer.blobs, src.layer.blobs
        if len(targets) != len(sources):
            raise NetMismatchError('share_with: incompatible number of blobs for layer %r: '
                                   '%d here, %d in the other net'
                                   % (src.name, len(targets), len(sources)))
        for j, (dst, s) in enumerate(zip(targets, sources)):
            if dst.shape != s.shape:
                raise NetMismatchError('share_with: layer %r blob %d has shape %s here, %s '
                                       'in the other net' % (src.name, j, dst.shape, s.shape))
            if s._data.tensor is None:
                s._allocate(s._data)
            dst._data = s._data


def _stale_steps_by_name(net):
    """Mark every step's recorded graph stale (it used the old weights) and map each
    layer name to its first step, the one Caffe's by-name copy and share reach."""
    first = {}
    for step in net._steps:
        step.stale()
        first.setdefault(step.name, step)
    return first
