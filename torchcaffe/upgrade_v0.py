"""The pre-2014 V0 net format, upgraded to V1 layers as Caffe does.

A V0 net lists ``layers { layer { name type ... } bottom top }``: the layer's
parameters are flat fields of a ``V0LayerParameter`` and its type a lower-case
string ("conv", "pool", "innerproduct" ...). Caffe (src/caffe/util/upgrade_proto.cpp,
UpgradeV0Net) first folds "padding" layers into the conv or pooling layer they
feed (UpgradeV0PaddingLayers), then moves each flat field into the ``*_param``
message of the V1 type (UpgradeV0LayerParameter); the V1-to-current upgrade
(``torchcaffe.upgrade``) does the rest. A field the layer type does not take is
reported and dropped, as Caffe logs it and carries on.
"""
import logging

from .errors import FormatError
from .proto import caffe_pb2

__all__ = ['needs_v0_upgrade', 'upgrade_v0_net', 'V0_TYPES']

log = logging.getLogger(__name__)

V1 = caffe_pb2.V1LayerParameter

# UpgradeV0LayerType
V0_TYPES = {
    'accuracy': V1.ACCURACY, 'bnll': V1.BNLL, 'concat': V1.CONCAT, 'conv': V1.CONVOLUTION,
    'data': V1.DATA, 'dropout': V1.DROPOUT, 'euclidean_loss': V1.EUCLIDEAN_LOSS,
    'flatten': V1.FLATTEN, 'hdf5_data': V1.HDF5_DATA, 'hdf5_output': V1.HDF5_OUTPUT,
    'im2col': V1.IM2COL, 'images': V1.IMAGE_DATA, 'infogain_loss': V1.INFOGAIN_LOSS,
    'innerproduct': V1.INNER_PRODUCT, 'lrn': V1.LRN,
    'multinomial_logistic_loss': V1.MULTINOMIAL_LOGISTIC_LOSS, 'pool': V1.POOLING,
    'relu': V1.RELU, 'sigmoid': V1.SIGMOID, 'softmax': V1.SOFTMAX,
    'softmax_loss': V1.SOFTMAX_LOSS, 'split': V1.SPLIT, 'tanh': V1.TANH,
    'window_data': V1.WINDOW_DATA,
}

# V0 field -> {V0 type: (V1 *_param field, its field)}; "*" is any type. Repeated
# target fields (pad, kernel_size, stride) get the value appended.
_MOVES = {
    'num_output': {'conv': ('convolution_param', 'num_output'),
                   'innerproduct': ('inner_product_param', 'num_output')},
    'biasterm': {'conv': ('convolution_param', 'bias_term'),
                 'innerproduct': ('inner_product_param', 'bias_term')},
    'weight_filler': {'conv': ('convolution_param', 'weight_filler'),
                      'innerproduct': ('inner_product_param', 'weight_filler')},
    'bias_filler': {'conv': ('convolution_param', 'bias_filler'),
                    'innerproduct': ('inner_product_param', 'bias_filler')},
    'pad': {'conv': ('convolution_param', 'pad'), 'pool': ('pooling_param', 'pad')},
    'kernelsize': {'conv': ('convolution_param', 'kernel_size'),
                   'pool': ('pooling_param', 'kernel_size')},
    'group': {'conv': ('convolution_param', 'group')},
    'stride': {'conv': ('convolution_param', 'stride'), 'pool': ('pooling_param', 'stride')},
    'pool': {'pool': ('pooling_param', 'pool')},  # MAX 0, AVE 1, STOCHASTIC 2 in both enums
    'dropout_ratio': {'dropout': ('dropout_param', 'dropout_ratio')},
    'local_size': {'lrn': ('lrn_param', 'local_size')},
    'alpha': {'lrn': ('lrn_param', 'alpha')},
    'beta': {'lrn': ('lrn_param', 'beta')},
    'k': {'lrn': ('lrn_param', 'k')},
    'source': {'data': ('data_param', 'source'), 'hdf5_data': ('hdf5_data_param', 'source'),
               'images': ('image_data_param', 'source'),
               'window_data': ('window_data_param', 'source'),
               'infogain_loss': ('infogain_loss_param', 'source')},
    'scale': {'*': ('transform_param', 'scale')},
    'meanfile': {'*': ('transform_param', 'mean_file')},
    'batchsize': {'data': ('data_param', 'batch_size'),
                  'hdf5_data': ('hdf5_data_param', 'batch_size'),
                  'images': ('image_data_param', 'batch_size'),
                  'window_data': ('window_data_param', 'batch_size')},
    'cropsize': {'*': ('transform_param', 'crop_size')},
    'mirror': {'*': ('transform_param', 'mirror')},
    'rand_skip': {'data': ('data_param', 'rand_skip'),
                  'images': ('image_data_param', 'rand_skip')},
    'shuffle_images': {'images': ('image_data_param', 'shuffle')},
    'new_height': {'images': ('image_data_param', 'new_height')},
    'new_width': {'images': ('image_data_param', 'new_width')},
    'concat_dim': {'concat': ('concat_param', 'concat_dim')},
    'det_fg_threshold': {'window_data': ('window_data_param', 'fg_threshold')},
    'det_bg_threshold': {'window_data': ('window_data_param', 'bg_threshold')},
    'det_fg_fraction': {'window_data': ('window_data_param', 'fg_fraction')},
    'det_context_pad': {'window_data': ('window_data_param', 'context_pad')},
    'det_crop_mode': {'window_data': ('window_data_param', 'crop_mode')},
    'hdf5_output_param': {'hdf5_output': ('hdf5_output_param', None)},
}


def needs_v0_upgrade(net_param):
    """Whether any of the net's ``layers`` is in the V0 form (Caffe's NetNeedsV0ToV1Upgrade)."""
    return any(l.HasField('layer') for l in net_param.layers)


def _fold_padding_layers(net, path):
    """UpgradeV0PaddingLayers: drop "padding" layers, moving their pad into the conv or
    pooling layer they feed; return the remaining V1 layer messages."""
    last_top = {name: None for name in net.input}  # blob -> index of its last writer
    kept = []
    for i, conn in enumerate(net.layers):
        v0 = conn.layer
        if v0.type != 'padding':
            kept.append(_copy(conn))
        for j, blob in enumerate(conn.bottom):
            if blob not in last_top:
                raise FormatError(path, 'V0 layer %r: unknown bottom blob %r' % (v0.name, blob))
            source = last_top[blob]
            if source is None or net.layers[source].layer.type != 'padding':
                continue
            pad = net.layers[source]
            if v0.type not in ('conv', 'pool'):
                raise FormatError(path, 'V0 padding layer %r feeds layer %r of type %r; only '
                                  'conv and pool layers take padding'
                                  % (pad.layer.name, v0.name, v0.type))
            if len(conn.bottom) != 1 or len(pad.bottom) != 1 or len(pad.top) != 1:
                raise FormatError(path, 'V0 padding layer %r and layer %r must have one bottom '
                                  'and one top each' % (pad.layer.name, v0.name))
            kept[-1].layer.pad = pad.layer.pad
            kept[-1].bottom[j] = pad.bottom[0]
        for blob in conn.top:
            last_top[blob] = i
    return kept


def _copy(message):
    out = type(message)()
    out.CopyFrom(message)
    return out


def _upgrade_layer(conn, index, path):
    """UpgradeV0LayerParameter: one V0 layer connection as a V1 layer; returns
    (layer, problems)."""
    v0 = conn.layer
    layer = V1(bottom=conn.bottom, top=conn.top)
    problems = []
    if v0.HasField('name'):
        layer.name = v0.name
    if v0.HasField('type'):
        if v0.type not in V0_TYPES:
            raise FormatError(path, 'V0 layer %r (#%d) has unknown type %r (known: %s)'
                              % (v0.name, index, v0.type, ', '.join(sorted(V0_TYPES))))
        layer.type = V0_TYPES[v0.type]
    layer.blobs.extend(v0.blobs)
    layer.blobs_lr.extend(v0.blobs_lr)
    layer.weight_decay.extend(v0.weight_decay)
    for field, targets in _MOVES.items():
        if not v0.HasField(field):
            continue
        target = targets.get(v0.type, targets.get('*'))
        if target is None:
            problems.append('Unknown parameter %s for layer type %s' % (field, v0.type))
            continue
        message, name = target
        value = getattr(v0, field)
        if name is None:
            getattr(layer, message).CopyFrom(value)
            continue
        dest = getattr(layer, message)
        fd = dest.DESCRIPTOR.fields_by_name[name]
        if fd.is_repeated:
            getattr(dest, name).append(value)
        elif fd.message_type is not None:
            getattr(dest, name).CopyFrom(value)
        else:
            setattr(dest, name, value)
    return layer, problems


def upgrade_v0_net(net, path=None):
    """Upgrade the V0 ``layers`` of ``net`` to V1 layers, in place (Caffe's UpgradeV0Net).

    As Caffe, the net keeps only its name, inputs, input_dim and force_backward
    besides the layers. Fields a layer type does not take are logged and dropped.

    Returns
    -------
    list of str : those problems ("Unknown parameter ... for layer type ..."), each
        naming the layer; empty when the upgrade was complete.

    Raises
    ------
    FormatError
        An unknown V0 layer type or blob, or a padding layer Caffe cannot fold.
    """
    layers = _fold_padding_layers(net, path)
    upgraded, problems = [], []
    for i, conn in enumerate(layers):
        layer, bad = _upgrade_layer(conn, i, path)
        upgraded.append(layer)
        problems += ['layer %r: %s' % (conn.layer.name, p) for p in bad]
    keep = caffe_pb2.NetParameter()
    for field in ('name', 'force_backward'):
        if net.HasField(field):
            setattr(keep, field, getattr(net, field))
    keep.input.extend(net.input)
    keep.input_dim.extend(net.input_dim)
    keep.layers.extend(upgraded)
    net.Clear()
    net.CopyFrom(keep)
    for p in problems:
        log.error('%s%s', '%s: ' % path if path else '', p)
    return problems
