"""The net as a whole: checking its layer types, walking its layers into a graph,
declaring the graph's inputs and outputs, writing, validating and verifying it."""
import os

import numpy as np

from .. import graph, io
from ..errors import CaffeError, FormatError, UnknownLayerError
from ..net import Net
from ..proto import caffe_pb2
from .core import (CONVERTERS, DEFAULT_OPSET, MIN_OPSET, REFUSALS, Builder, Param, TensorProto,
                   helper, onnx, require_onnx, supported_types)


def check_supported(layers):
    """Raise UnknownLayerError naming the first layer of ``layers`` with no ONNX export.

    Data, loss and Accuracy layers (and Python layers) are refused with the reason
    and the hint to export the deploy net; unknown types list the supported ones.

    Parameters
    ----------
    layers : iterable of caffe_pb2.LayerParameter
    """
    for lp in layers:
        if lp.type in CONVERTERS:
            continue
        if lp.type in REFUSALS:
            raise UnknownLayerError('layer %r has type %r, which has no ONNX export: %s'
                                    % (lp.name, lp.type, REFUSALS[lp.type]))
        raise UnknownLayerError(
            'layer %r has type %r, which has no ONNX export; supported types: %s'
            % (lp.name, lp.type, ', '.join(supported_types())))


def _dim_names(shape, prefix=''):
    """Symbolic names of the dynamic axes: batch, then height and width (or dimN)."""
    names = []
    for i, d in enumerate(shape):
        if i == 0:
            names.append(prefix + 'batch')
        elif i == 1:
            names.append(int(d))
        elif len(shape) == 4:
            names.append(prefix + ('height' if i == 2 else 'width'))
        else:
            names.append('%sdim%d' % (prefix, i))
    return names


def _output_dims(steps, outputs, shapes):
    """Declared dims of each output: fixed sizes, ``'batch'``, or None (follows H, W).

    Shapes are propagated once more with every input axis but the channels grown:
    a dim that stays put is fixed (channels, classes); one that moves is dynamic. If
    the grown inputs do not fit the net, only the ranks are declared.
    """
    layers = []
    for lp, _ in steps:
        if lp.type == 'Input':
            lp = caffe_pb2.LayerParameter.FromString(lp.SerializeToString())
            for shape in lp.input_param.shape:
                for i in range(len(shape.dim)):
                    if i != 1:
                        shape.dim[i] += 1 if i == 0 else 32
        layers.append(lp)
    try:
        grown = graph.infer_shapes(layers)
    except CaffeError:
        grown = {}
    dims = []
    for name in outputs:
        shape, other = shapes[name], grown.get(name)
        if other is None or len(other) != len(shape):
            dims.append([None] * len(shape))
            continue
        dims.append([int(d) if d == e else ('batch' if i == 0 else None)
                     for i, (d, e) in enumerate(zip(shape, other))])
    return dims


def _steps(net):
    """(LayerParameter, engine layer) of every layer of ``net``, in order."""
    return [(step.lp, step.layer) for step in net._steps]


def to_onnx(net, opset=DEFAULT_OPSET, outputs=None):
    """Translate a :class:`~torchcaffe.Net` and its current weights to an ONNX model.

    Parameters
    ----------
    net : torchcaffe.Net
        A TEST-phase net whose data comes from Input layers.
    opset : int
        ONNX opset of the default domain, at least ``MIN_OPSET`` (13).
    outputs : list of str, optional
        Blobs to output; default the net's outputs (tops no layer consumes, as Caffe's).

    Returns
    -------
    onnx.ModelProto
        Inputs named as the Input layers' tops with dynamic axes ``batch``, ``height``,
        ``width``; outputs named as the blobs; float32 throughout.

    Raises
    ------
    UnknownLayerError
        A layer type with no ONNX translation: the message names the layer and, for
        the data, loss, Accuracy and Python layers, why (:func:`check_supported`).
    CaffeError
        A bad opset, an unknown output blob, or a layer setting with no exact export.
    """
    require_onnx()
    max_opset = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= int(opset) <= max_opset:
        raise CaffeError('opset %s is not supported: give %d to %d'
                         % (opset, MIN_OPSET, max_opset))
    if net.phase != caffe_pb2.TEST:
        raise CaffeError('net %r is in the TRAIN phase; export a TEST-phase (deploy) net, '
                         'where Dropout is the identity' % net.name)
    steps = _steps(net)
    check_supported(lp for lp, _ in steps)
    outputs = list(net.outputs if outputs is None else outputs)
    missing = [o for o in outputs if o not in net.blobs]
    if missing:
        raise CaffeError('net %r has no blob %r to output; its blobs: %s'
                         % (net.name, missing[0], ', '.join(net.blobs)))
    if not outputs:
        raise CaffeError('net %r has no outputs to export' % net.name)

    b = Builder(reserved=net.blobs, opset=opset)
    last_write = {}
    for i, (lp, _) in enumerate(steps):
        for top in lp.top:
            last_write[top] = i
    inputs = set(net.inputs)
    current, input_names = {}, []
    for i, (lp, layer) in enumerate(steps):
        if lp.type == 'Input':
            for top in lp.top:
                input_names.append(top)
                current[top] = top
            continue
        shapes = [tuple(net.blobs[name].shape) for name in lp.bottom]
        bottoms = [current[name] for name in lp.bottom]
        tops = [top if last_write[top] == i and top not in inputs
                else b.fresh('%s@%s' % (top, lp.name)) for top in lp.top]
        params = [Param(id(blob), np.asarray(blob.data).reshape(shape))
                  for blob, shape in zip(layer.blobs, layer.param_shapes(shapes))]
        CONVERTERS[lp.type](b, layer, bottoms, tops, params, shapes)
        current.update(zip(lp.top, tops))

    graph_inputs = [helper.make_tensor_value_info(
        top, TensorProto.FLOAT, _dim_names(net.blobs[top].shape, '' if k == 0 else top + '_'))
        for k, top in enumerate(input_names)]
    shapes = {name: tuple(blob.shape) for name, blob in net.blobs.items()}
    out_infos = [helper.make_tensor_value_info(current[o], TensorProto.FLOAT, dims)
                 for o, dims in zip(outputs, _output_dims(steps, outputs, shapes))]
    g = helper.make_graph(b.nodes, net.name or 'net', graph_inputs, out_infos,
                          initializer=b.initializers)
    opset_ids = [helper.make_opsetid('', int(opset))]
    model = helper.make_model(g, opset_imports=opset_ids, producer_name='torchcaffe',
                              doc_string='Caffe net %r exported layer by layer' % net.name)
    # The oldest IR version that carries the opset, so older runtimes load the file.
    model.ir_version = helper.find_min_ir_version_for(opset_ids)
    return model


def load_net(prototxt, weights=None):
    """A TEST-phase Net of ``prototxt`` (path or NetParameter) with ``weights``.

    Layer types are checked for an ONNX export before the weights are read, and
    missing files are errors naming them (FormatError).
    """
    if isinstance(prototxt, caffe_pb2.NetParameter):
        net_param = caffe_pb2.NetParameter()
        net_param.CopyFrom(prototxt)
        where = net_param.name or '<NetParameter>'
    else:
        where = os.fspath(prototxt)
        if not os.path.isfile(where):
            raise FormatError(where, 'no such prototxt file')
        net_param = io.read_net_prototxt(where)
    if io.needs_upgrade(net_param):
        net_param = io.upgrade_net_param(net_param)
    net_param.state.phase = caffe_pb2.TEST
    # Fail on an unsupported layer before reading (possibly large) weights.
    try:
        check_supported(graph.filter_layers(net_param, net_param.state))
    except UnknownLayerError as err:
        raise UnknownLayerError('%s: %s' % (where, err)) from None
    if weights is not None and not os.path.isfile(os.fspath(weights)):
        raise FormatError(os.fspath(weights), 'no such weights file')
    return Net(net_param, phase=caffe_pb2.TEST, weights=weights)


def export(net_or_prototxt, weights, path, opset=DEFAULT_OPSET, outputs=None):
    """Export a deploy net and its weights to an ONNX file, written atomically.

    Parameters
    ----------
    net_or_prototxt : torchcaffe.Net, str, path or caffe_pb2.NetParameter
        A Net (its current weights are exported), or a deploy prototxt read in the
        TEST phase.
    weights : str or path or None
        ``.caffemodel`` (or ``.caffemodel.h5``) for a prototxt; None with a Net (or
        to export a prototxt's filler values).
    path : str or path
        The ``.onnx`` file to write.
    opset, outputs :
        As for :func:`to_onnx`.

    Returns
    -------
    onnx.ModelProto
        The model written, after ``onnx.checker`` passed on it.
    """
    require_onnx()
    if isinstance(net_or_prototxt, Net):
        if weights is not None:
            raise CaffeError('export(net, weights, ...): give weights=None with a Net; its '
                             'current params are exported')
        net = net_or_prototxt
    else:
        net = load_net(net_or_prototxt, weights)
    model = to_onnx(net, opset, outputs)
    validate(model)
    with io.atomic_path(path) as tmp:
        onnx.save_model(model, tmp)
    return model


def validate(model, full_check=False):
    """Run ``onnx.checker`` on ``model``; a failure is a CaffeError.

    ``full_check`` adds ONNX's strict shape inference.
    """
    require_onnx()
    try:
        onnx.checker.check_model(model, full_check=full_check)
    except onnx.checker.ValidationError as err:
        raise CaffeError('the exported model fails onnx.checker: %s'
                         % str(err).strip().splitlines()[0]) from None


def default_inputs(net, seed=0):
    """Random inputs at the net's current input shapes, drawn for what reads them.

    N(0, 50) values (about the spread of mean-subtracted pixels), except where a
    layer reads an input as indices or flags: Embed's indices are integers in
    [0, input_dim), BatchReindex's in [0, its data's first axis), the ``cont`` of
    RNN, LSTM and LSTMUnit and Filter's selector are 0 or 1 (mostly 1).
    """
    rng = np.random.default_rng(seed)
    inputs = {name: rng.normal(0, 50, net.blobs[name].shape).astype(np.float32)
              for name in net.inputs}
    for lp, layer in _steps(net):
        for k, bottom in enumerate(lp.bottom):
            if bottom not in inputs:
                continue
            shape = inputs[bottom].shape
            flag = ((lp.type in ('RNN', 'LSTM') and k == 1)
                    or (lp.type == 'LSTMUnit' and k == 2)
                    or (lp.type == 'Filter' and k == len(lp.bottom) - 1))
            if lp.type == 'Embed' and k == 0:
                inputs[bottom] = rng.integers(0, layer.embed_param.input_dim, shape)
            elif lp.type == 'BatchReindex' and k == 1:
                inputs[bottom] = rng.integers(0, net.blobs[lp.bottom[0]].shape[0], shape)
            elif flag:
                inputs[bottom] = (rng.random(shape) < 0.8)
    return {k: v.astype(np.float32) for k, v in inputs.items()}


def _max_difference(value, ref):
    """max |value - ref| where ``ref`` is a number; inf where NaN is in one only."""
    nan = np.isnan(ref)
    if not np.array_equal(nan, np.isnan(value)):
        return float('inf')
    return float(np.abs(value[~nan] - ref[~nan]).max(initial=0))


def verify(model, net, inputs=None, seed=0):
    """Run ``model`` in onnxruntime and ``net`` in the engine on the same inputs.

    Recurrent layers that carry their state between forwards are reset first, as
    the graph starts every run from zero states.

    Parameters
    ----------
    model : onnx.ModelProto or str or path
    net : torchcaffe.Net
        The exported net; its input blobs are reshaped to the inputs' shapes.
    inputs : dict, optional
        Input blob name -> float32 array; default :func:`default_inputs`.
    seed : int

    Returns
    -------
    dict
        Output name -> (max |onnx - engine|, max |engine|), for the model's outputs
        (the blob a ``blob@layer`` output name comes from is compared). NaN where
        the engine gives NaN is agreement (Log of a negative, say); NaN on one side
        only is an infinite difference.
    """
    import onnxruntime
    if inputs is None:
        inputs = default_inputs(net, seed)
    inputs = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in inputs.items()}
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load_model(os.fspath(model))
    names = [o.name for o in model.graph.output]
    blobs = [name.split('@')[0] for name in names]
    for name, value in inputs.items():
        net.blobs[name].reshape(*value.shape)
    net.reshape()
    for _, layer in _steps(net):
        if hasattr(layer, 'reset'):
            layer.reset()
    expected = net.forward(blobs=blobs, **inputs)
    session = onnxruntime.InferenceSession(model.SerializeToString(),
                                           providers=['CPUExecutionProvider'])
    got = session.run(names, inputs)
    result = {}
    for name, blob, value in zip(names, blobs, got):
        ref = np.asarray(expected[blob])
        if value.shape != ref.shape:
            raise CaffeError('output %r: onnxruntime gives shape %s, the engine %s'
                             % (name, value.shape, ref.shape))
        finite = ref[~np.isnan(ref)]
        result[name] = (_max_difference(value, ref), float(np.abs(finite).max(initial=0)))
    return result
