"""Upgrade old-format nets and solvers the way Caffe does on load.

Caffe (src/caffe/util/upgrade_proto.cpp) upgrades a ``NetParameter`` in this order:
deprecated data-layer transformation fields, V1 ``layers`` to ``layer``, net-level
``input`` fields to an ``Input`` layer, and 3-param ``BatchNorm`` layers. The
pre-2014 V0 format becomes V1 first (``torchcaffe.upgrade_v0``).
A solver's deprecated ``solver_type`` enum becomes the ``type`` string, and an
unset or directory ``snapshot_prefix`` is derived from the solver file name.
"""
import os

from google.protobuf import unknown_fields

from .errors import FormatError
from .proto import caffe_pb2
from .upgrade_v0 import needs_v0_upgrade, upgrade_v0_net

V1 = caffe_pb2.V1LayerParameter

# V1LayerParameter.LayerType -> the type string of the current format.
V1_TYPE_NAMES = {
    V1.NONE: '', V1.ABSVAL: 'AbsVal', V1.ACCURACY: 'Accuracy', V1.ARGMAX: 'ArgMax',
    V1.BNLL: 'BNLL', V1.CONCAT: 'Concat', V1.CONTRASTIVE_LOSS: 'ContrastiveLoss',
    V1.CONVOLUTION: 'Convolution', V1.DECONVOLUTION: 'Deconvolution', V1.DATA: 'Data',
    V1.DROPOUT: 'Dropout', V1.DUMMY_DATA: 'DummyData',
    V1.EUCLIDEAN_LOSS: 'EuclideanLoss', V1.ELTWISE: 'Eltwise', V1.EXP: 'Exp',
    V1.FLATTEN: 'Flatten', V1.HDF5_DATA: 'HDF5Data', V1.HDF5_OUTPUT: 'HDF5Output',
    V1.HINGE_LOSS: 'HingeLoss', V1.IM2COL: 'Im2col', V1.IMAGE_DATA: 'ImageData',
    V1.INFOGAIN_LOSS: 'InfogainLoss', V1.INNER_PRODUCT: 'InnerProduct', V1.LRN: 'LRN',
    V1.MEMORY_DATA: 'MemoryData',
    V1.MULTINOMIAL_LOGISTIC_LOSS: 'MultinomialLogisticLoss', V1.MVN: 'MVN',
    V1.POOLING: 'Pooling', V1.POWER: 'Power', V1.RELU: 'ReLU', V1.SIGMOID: 'Sigmoid',
    V1.SIGMOID_CROSS_ENTROPY_LOSS: 'SigmoidCrossEntropyLoss', V1.SILENCE: 'Silence',
    V1.SOFTMAX: 'Softmax', V1.SOFTMAX_LOSS: 'SoftmaxWithLoss', V1.SPLIT: 'Split',
    V1.SLICE: 'Slice', V1.TANH: 'TanH', V1.WINDOW_DATA: 'WindowData',
    V1.THRESHOLD: 'Threshold',
}

# The *_param fields V1 layers carry; Caffe copies each one unchanged.
V1_PARAM_FIELDS = tuple(f.name for f in V1.DESCRIPTOR.fields
                        if f.name.endswith('_param'))

# Data layers whose own scale/mean_file/crop_size/mirror moved to transform_param.
_DATA_TRANSFORM_FIELDS = {V1.DATA: 'data_param', V1.IMAGE_DATA: 'image_data_param',
                          V1.WINDOW_DATA: 'window_data_param'}
_TRANSFORM_KEYS = ('scale', 'mean_file', 'crop_size', 'mirror')

# SolverParameter.SolverType -> solver type string.
SOLVER_TYPE_NAMES = {0: 'SGD', 1: 'Nesterov', 2: 'AdaGrad', 3: 'RMSProp',
                     4: 'AdaDelta', 5: 'Adam'}


def _needs_data_upgrade(net_param):
    for layer in net_param.layers:
        field = _DATA_TRANSFORM_FIELDS.get(layer.type)
        if field and any(getattr(layer, field).HasField(k) for k in _TRANSFORM_KEYS):
            return True
    return False


def _needs_batch_norm_upgrade(net_param):
    return any(l.type == 'BatchNorm' and len(l.param) == 3 for l in net_param.layer)


def needs_upgrade(net_param):
    """Whether Caffe would upgrade ``net_param`` on load (``NetNeedsUpgrade``).

    True for V1 ``layers``, net-level ``input`` fields, deprecated data-layer
    transformation fields, and ``BatchNorm`` layers that declare three params.
    """
    return bool(len(net_param.layers) or len(net_param.input)
                or _needs_data_upgrade(net_param)
                or _needs_batch_norm_upgrade(net_param))


def _upgrade_data_transform(net_param):
    # Caffe's UpgradeNetDataTransformation: move the fields, clear the old ones.
    for layer in net_param.layers:
        field = _DATA_TRANSFORM_FIELDS.get(layer.type)
        if not field:
            continue
        old = getattr(layer, field)
        for key in _TRANSFORM_KEYS:
            if old.HasField(key):
                setattr(layer.transform_param, key, getattr(old, key))
                old.ClearField(key)


def _v1_type_name(v1_layer, index, path):
    # A type number this schema does not know lands in the unknown fields.
    for field in unknown_fields.UnknownFieldSet(v1_layer):
        if field.field_number == V1.DESCRIPTOR.fields_by_name['type'].number:
            raise FormatError(path, 'V1 layer %r (#%d) has unknown type enum %r'
                              % (v1_layer.name, index, field.data))
    if v1_layer.type not in V1_TYPE_NAMES:
        raise FormatError(path, 'V1 layer %r (#%d) has unknown type enum %r'
                          % (v1_layer.name, index, v1_layer.type))
    return V1_TYPE_NAMES[v1_layer.type]


def _param_spec(layer, i):
    while len(layer.param) <= i:
        layer.param.add()
    return layer.param[i]


def upgrade_v1_layer(v1_layer, index=0, path=None):
    """Turn one ``V1LayerParameter`` into a ``LayerParameter`` (Caffe's rules).

    The enum type becomes a type string; ``param`` names, ``blob_share_mode``,
    ``blobs_lr`` and ``weight_decay`` become ``ParamSpec`` entries (name,
    share_mode, lr_mult, decay_mult, index by index); rules, blobs, loss weights
    and every ``*_param`` are copied unchanged.
    """
    if v1_layer.HasField('layer'):
        raise FormatError(path, 'layer #%d uses the V0 layer format (pre-2014), '
                          'which torchcaffe does not upgrade' % index)
    layer = caffe_pb2.LayerParameter()
    layer.bottom.extend(v1_layer.bottom)
    layer.top.extend(v1_layer.top)
    if v1_layer.HasField('name'):
        layer.name = v1_layer.name
    layer.include.extend(v1_layer.include)
    layer.exclude.extend(v1_layer.exclude)
    type_name = _v1_type_name(v1_layer, index, path)
    if v1_layer.HasField('type'):
        layer.type = type_name
    layer.blobs.extend(v1_layer.blobs)
    for i, name in enumerate(v1_layer.param):
        _param_spec(layer, i).name = name
    for i, mode in enumerate(v1_layer.blob_share_mode):
        # V1's DimCheckMode and ParamSpec's have the same numbers (STRICT 0, PERMISSIVE 1).
        _param_spec(layer, i).share_mode = mode
    for i, lr in enumerate(v1_layer.blobs_lr):
        _param_spec(layer, i).lr_mult = lr
    for i, decay in enumerate(v1_layer.weight_decay):
        _param_spec(layer, i).decay_mult = decay
    layer.loss_weight.extend(v1_layer.loss_weight)
    for field in V1_PARAM_FIELDS:
        if v1_layer.HasField(field):
            getattr(layer, field).CopyFrom(getattr(v1_layer, field))
    return layer


def _upgrade_input(net_param, path):
    # Caffe's UpgradeNetInput: one layer named "input" of type Input, placed first.
    # Without input_shape/input_dim (a legacy caffemodel) the inputs are just dropped.
    names = list(net_param.input)
    shapes = [list(s.dim) for s in net_param.input_shape]
    dims = list(net_param.input_dim)
    if shapes or dims:
        if shapes and len(shapes) != len(names):
            raise FormatError(path, '%d input blobs but %d input_shape entries'
                              % (len(names), len(shapes)))
        if not shapes and len(dims) != 4 * len(names):
            raise FormatError(path, '%d input blobs need %d input_dim values, got %d'
                              % (len(names), 4 * len(names), len(dims)))
        layer = caffe_pb2.LayerParameter(name='input', type='Input', top=names)
        for i in range(len(names)):
            shape = layer.input_param.shape.add()
            shape.dim.extend(shapes[i] if shapes else dims[4 * i:4 * i + 4])
        rest = list(net_param.layer)
        del net_param.layer[:]
        net_param.layer.extend([layer] + rest)
    for field in ('input', 'input_shape', 'input_dim'):
        net_param.ClearField(field)


def _upgrade_batch_norm(net_param):
    # Old BatchNorm nets declared 3 params with lr_mult 0; Caffe now forces 0 itself.
    for layer in net_param.layer:
        if layer.type == 'BatchNorm' and len(layer.param) == 3:
            for spec in layer.param:
                spec.lr_mult = 0.0
                spec.decay_mult = 0.0


def upgrade_net_param(net_param, path=None):
    """Return an upgraded copy of ``net_param`` (``net_param`` itself is untouched).

    Parameters
    ----------
    net_param : caffe_pb2.NetParameter
    path : str, optional
        The file it came from, for error messages.

    Raises
    ------
    FormatError
        Mixed V1 ``layers`` and ``layer`` fields, a V0 layer, an unknown V1 type,
        or input fields that do not match up.
    """
    net = caffe_pb2.NetParameter()
    net.CopyFrom(net_param)
    return upgrade_net_param_in_place(net, path)


def upgrade_net_param_in_place(net, path=None):
    """Upgrade ``net`` itself and return it; see ``upgrade_net_param``.

    V1 blobs are released layer by layer as they move, so a large caffemodel is
    not held twice.
    """
    if len(net.layers) and len(net.layer):
        raise FormatError(path, 'mixes V1 "layers" (%d) and current "layer" (%d) '
                          'fields; Caffe cannot upgrade such a net'
                          % (len(net.layers), len(net.layer)))
    if needs_v0_upgrade(net):
        upgrade_v0_net(net, path)  # V0 -> V1, then on as any V1 net
    _upgrade_data_transform(net)
    for i, v1_layer in enumerate(net.layers):
        net.layer.add().CopyFrom(upgrade_v1_layer(v1_layer, i, path))
        v1_layer.ClearField('blobs')
    net.ClearField('layers')
    if len(net.input):
        _upgrade_input(net, path)
    _upgrade_batch_norm(net)
    return net


def upgrade_solver_param(solver_param, path=None):
    """Return an upgraded copy of ``solver_param``, as Caffe reads a solver file.

    ``solver_type`` (deprecated enum) becomes ``type``; setting both is an error.
    When ``path`` is given, an unset ``snapshot_prefix`` becomes the solver file's
    path without extension, and a ``snapshot_prefix`` naming an existing directory
    becomes ``<dir>/<solver file stem>`` (Caffe's UpgradeSnapshotPrefixProperty).
    """
    solver = caffe_pb2.SolverParameter()
    solver.CopyFrom(solver_param)
    if solver.HasField('solver_type'):
        if solver.HasField('type'):
            raise FormatError(path, 'sets both the deprecated "solver_type" and '
                              '"type"; set only "type"')
        solver.type = SOLVER_TYPE_NAMES[solver.solver_type]
        solver.ClearField('solver_type')
    if path is not None:
        path = str(path)
        if not solver.HasField('snapshot_prefix'):
            solver.snapshot_prefix = os.path.splitext(path)[0]
        elif os.path.isdir(solver.snapshot_prefix):
            stem = os.path.splitext(os.path.basename(path))[0]
            solver.snapshot_prefix = os.path.join(solver.snapshot_prefix, stem)
    return solver
