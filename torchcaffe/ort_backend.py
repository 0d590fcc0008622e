"""onnxruntime as an inference backend for deploy nets (``--backend onnxruntime``).

The net is exported layer by layer (:mod:`torchcaffe.onnx_export`) once per weights
file and cached beside the weights as ``<weights>.<graph key>.onnx``. The graph key
is a hash of the exported part of the net; the model's metadata records the SHA-256 of
that net definition and of the weights file, and a cache whose hashes differ from the
files at hand is rebuilt, never used. The graph has dynamic batch, height and width,
so one export serves every image size.

Two wrappers:

* :class:`OnnxRuntimeNet` runs a deploy prototxt and answers as much of pycaffe's
  ``Net`` as inference needs (``blobs[name].reshape`` / ``.data``, ``forward``).
* :class:`PartlyOnnxNet` wraps an engine ``Net`` whose data layers (Python or Caffe
  data layers) and loss / accuracy heads stay in the engine, while the layers
  between them run in onnxruntime: ``score.py --backend onnxruntime``.

On CUDA (``gpu=k``) the session uses onnxruntime's CUDAExecutionProvider, which only
the ``onnxruntime-gpu`` package has; with plain ``onnxruntime`` that is an error that
says so.
"""
import hashlib
import logging
import os
from collections import OrderedDict

import numpy as np

from . import graph, io
from .errors import CaffeError
from .proto import caffe_pb2

log = logging.getLogger('torchcaffe')

__all__ = ['BACKENDS', 'BackendError', 'OnnxRuntimeNet', 'PartlyOnnxNet', 'deploy_part',
           'session_options', 'providers_for', 'cache_path', 'file_sha256']

BACKENDS = ('torch', 'onnxruntime')

# Metadata keys written into the cached model.
NET_KEY = 'torchcaffe.net_sha256'
WEIGHTS_KEY = 'torchcaffe.weights_sha256'
FORMAT_KEY = 'torchcaffe.cache_format'
CACHE_FORMAT = '1'


class BackendError(CaffeError):
    """onnxruntime is missing, lacks the provider asked for, or cannot run the net."""


def _ort():
    try:
        import onnxruntime
    except ImportError:  # pragma: no cover - onnxruntime is pinned in the extras
        raise BackendError('--backend onnxruntime needs the onnxruntime package: pip install '
                           '"onnxruntime==1.31.1" (or the project\'s [onnx] extra)') from None
    return onnxruntime


def file_sha256(path, chunk=1 << 20):
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(chunk), b''):
            h.update(block)
    return h.hexdigest()


def net_sha256(net_param, outputs=()):
    """Hex SHA-256 of a NetParameter's deterministic serialisation and the outputs."""
    h = hashlib.sha256(net_param.SerializeToString(deterministic=True))
    h.update(('\n' + '\n'.join(outputs)).encode())
    return h.hexdigest()


def cache_path(weights, net_key):
    """Where the export of the net with hash ``net_key`` and ``weights`` is cached.

    >>> cache_path('/m/fcn8s.caffemodel', 'ab12cd34ef56' * 4)
    '/m/fcn8s.caffemodel.ab12cd34ef56.onnx'
    """
    return '%s.%s.onnx' % (os.fspath(weights), net_key[:12])


def deploy_part(net_param, outputs, input_shapes):
    """The part of a TEST net that computes ``outputs`` from its data, as a deploy net.

    Layers without bottoms (data layers, Python or Caffe's) become one Input layer
    for the tops the kept layers read; layers that ``outputs`` do not depend on
    (losses, accuracies, the labels' path) are left out.

    Parameters
    ----------
    net_param : caffe_pb2.NetParameter
        Already filtered to its TEST layers.
    outputs : list of str
        The blobs to compute.
    input_shapes : dict
        Blob name -> shape, for the Input layer (the graph's axes are dynamic anyway).

    Returns
    -------
    deploy : caffe_pb2.NetParameter
    kept : list of str
        Names of the layers that compute ``outputs`` (the Input excluded).
    sources : list of str
        The tops that became inputs.
    """
    layers = list(net_param.layer)
    needed, kept, sources = set(outputs), [], []
    for lp in reversed(layers):
        if not any(top in needed for top in lp.top):
            continue
        if not lp.bottom:
            sources[:0] = [top for top in lp.top if top in needed]
            continue
        kept.insert(0, lp)
        needed.update(lp.bottom)
    produced = {top for lp in kept for top in lp.top} | set(sources)
    missing = [o for o in outputs if o not in produced]
    if missing:
        raise BackendError('net %r has no blob %r to compute' % (net_param.name, missing[0]))
    deploy = caffe_pb2.NetParameter(name=net_param.name)
    data = deploy.layer.add(name='input', type='Input')
    for top in sources:
        data.top.append(top)
        data.input_param.shape.add(dim=[int(d) for d in input_shapes[top]])
    deploy.layer.extend(kept)
    return deploy, [lp.name for lp in kept], sources


def session_options(threads=None):
    """onnxruntime session options: all graph optimisations, sequential execution,
    ``threads`` intra-op threads (torch's thread count when None)."""
    ort = _ort()
    if threads is None:
        import torch
        threads = torch.get_num_threads()
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.intra_op_num_threads = int(threads)
    # The graph's height and width are dynamic, so a memory pattern planned for one run
    # rarely fits the next; measured faster without it (FCN-8s, 500 x 375, 2 threads).
    opts.enable_mem_pattern = False
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3  # errors only
    return opts


def providers_for(gpu):
    """The execution providers for ``gpu`` (None: CPU), checked against the installed
    onnxruntime."""
    ort = _ort()
    if gpu is None:
        return ['CPUExecutionProvider']
    available = ort.get_available_providers()
    if 'CUDAExecutionProvider' not in available:
        raise BackendError('--gpu %d with --backend onnxruntime needs onnxruntime\'s CUDA '
                           'provider, which the onnxruntime-gpu package has (installed '
                           'providers: %s); pip uninstall onnxruntime && pip install '
                           'onnxruntime-gpu==1.31.1, or use --backend torch'
                           % (gpu, ', '.join(available)))
    return [('CUDAExecutionProvider', {'device_id': int(gpu)}), 'CPUExecutionProvider']


def _export(deploy, weights, outputs, keys):
    """The ONNX model of ``deploy`` with ``weights``, its hashes in the metadata."""
    from . import onnx_export
    from .net import Net
    net = Net(deploy, phase=caffe_pb2.TEST, weights=weights)
    model = onnx_export.to_onnx(net, outputs=outputs)
    for key, value in keys.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx_export.validate(model)
    return model


def _session(source, opts, providers):
    ort = _ort()
    return ort.InferenceSession(source, sess_options=opts, providers=providers)


def _fresh(session, keys):
    meta = session.get_modelmeta().custom_metadata_map
    return all(meta.get(k) == v for k, v in keys.items())


def open_session(deploy, weights, outputs, gpu=None, threads=None, cache=True):
    """An InferenceSession for ``deploy`` + ``weights``, from the cache when it is fresh.

    Returns
    -------
    session : onnxruntime.InferenceSession
    path : str or None
        The cached model file (None when it could not be written).
    rebuilt : bool
        Whether the net was exported this time.
    """
    weights = os.fspath(weights)
    keys = {NET_KEY: net_sha256(deploy, outputs), WEIGHTS_KEY: file_sha256(weights),
            FORMAT_KEY: CACHE_FORMAT}
    opts, providers = session_options(threads), providers_for(gpu)
    path = cache_path(weights, keys[NET_KEY])
    if cache and os.path.isfile(path):
        try:
            session = _session(path, opts, providers)
        except Exception as err:  # a damaged file: rebuilt below  # noqa: BLE001
            log.warning('%s: unreadable ONNX cache (%s); exporting again', path,
                        str(err).splitlines()[0] if str(err) else type(err).__name__)
        else:
            if _fresh(session, keys):
                return session, path, False
            log.info('%s: made for other weights or another net; exporting again', path)
    model = _export(deploy, weights, outputs, keys)
    data = model.SerializeToString()
    if cache:
        try:
            with io.atomic_path(path) as tmp, open(tmp, 'wb') as f:
                f.write(data)
        except OSError as err:
            log.warning('cannot cache the ONNX export beside the weights (%s); '
                        'exporting on every run', err)
            path = None
    else:
        path = None
    return _session(data, opts, providers), path, True


class _Blob:
    """An input or output of an onnxruntime net: pycaffe's ``data`` / ``reshape``."""

    def __init__(self, shape):
        self.data = np.zeros(tuple(shape), np.float32)

    @property
    def shape(self):
        return self.data.shape

    @property
    def channels(self):
        return self.data.shape[1]

    def reshape(self, *shape):
        if tuple(shape) != self.data.shape:
            self.data = np.zeros(tuple(int(d) for d in shape), np.float32)


class OnnxRuntimeNet:
    """A deploy net run by onnxruntime, with the part of pycaffe's Net inference uses.

    Parameters
    ----------
    deploy : str or caffe_pb2.NetParameter
        Deploy prototxt whose data comes from Input layers.
    weights : str
        ``.caffemodel`` or ``.caffemodel.h5``.
    outputs : list of str, optional
        Blobs to compute; default the net's outputs.
    gpu : int, optional
        CUDA device for onnxruntime-gpu; the CPU when None.
    threads : int, optional
        Intra-op threads (torch's count when None).
    cache : bool
        Keep the export beside the weights (see the module docstring).

    Attributes
    ----------
    blobs : OrderedDict
        The inputs and outputs; ``blobs[name].data`` is a float32 array.
    inputs, outputs : list of str
    cache_file : str or None
    rebuilt : bool
        Whether this construction exported the net.
    """

    def __init__(self, deploy, weights, outputs=None, gpu=None, threads=None, cache=True):
        deploy = test_net_param(deploy)
        if outputs is None:
            outputs = _net_outputs(deploy)
        self.name = deploy.name
        self.session, self.cache_file, self.rebuilt = open_session(
            deploy, weights, list(outputs), gpu, threads, cache)
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]
        shapes = _input_shapes(deploy)
        self.blobs = OrderedDict((name, _Blob(shapes.get(name, (1, 3, 1, 1))))
                                 for name in self.inputs)
        for out in self.session.get_outputs():  # symbolic axes (batch, ...) read as 1
            self.blobs[out.name] = _Blob([d if isinstance(d, int) else 1 for d in out.shape])

    def forward(self, **kwargs):
        """Run the net on the input blobs (or the keyword arrays); the outputs' arrays."""
        for name, value in kwargs.items():
            if name not in self.inputs:
                raise BackendError('net %r has no input %r (inputs: %s)'
                                   % (self.name, name, ', '.join(self.inputs)))
            self.blobs[name].reshape(*np.shape(value))
            self.blobs[name].data[...] = value
        feeds = {name: np.ascontiguousarray(self.blobs[name].data, np.float32)
                 for name in self.inputs}
        results = self.session.run(self.outputs, feeds)
        out = {}
        for name, value in zip(self.outputs, results):
            self.blobs[name].data = value
            out[name] = value
        return out


class PartlyOnnxNet:
    """An engine Net whose middle (data to ``outputs``) runs in onnxruntime.

    The data layers run in the engine (so Python data layers, their order and their
    resume state are untouched), then onnxruntime computes ``outputs`` from the data
    tops, which are written into the engine's blobs, and the remaining layers (losses,
    accuracies) run in the engine on them. Everything else (``blobs``, ``layers``,
    ``autograd``, ...) is the engine net's.
    """

    def __init__(self, net, prototxt, weights, outputs, gpu=None, threads=None, cache=True):
        net_param = test_net_param(prototxt)
        shapes = {name: blob.shape for name, blob in net.blobs.items()}
        deploy, kept, sources = deploy_part(net_param, list(outputs), shapes)
        order = [lp.name for lp in net_param.layer]
        source_layers = [lp.name for lp in net_param.layer if not lp.bottom]
        heads = [n for n in order if n not in kept and n not in source_layers]
        last_kept = max(order.index(n) for n in kept)
        early = [n for n in heads if order.index(n) < last_kept]
        if early:
            raise BackendError('net %r: layer %r runs between the layers that compute %s; '
                               'only data layers before them and loss or accuracy layers '
                               'after them can stay in the engine'
                               % (net.name, early[0], ', '.join(outputs)))
        last_source = max((order.index(n) for n in source_layers), default=None)
        if last_source is None or last_source > min(order.index(n) for n in kept):
            raise BackendError('net %r: its data layers must come before the layers that '
                               'compute %s' % (net.name, ', '.join(outputs)))
        object.__setattr__(self, '_net', net)
        object.__setattr__(self, '_ort', OnnxRuntimeNet(deploy, weights, outputs, gpu,
                                                        threads, cache))
        object.__setattr__(self, '_data_end', order[last_source])
        object.__setattr__(self, '_sources', sources)
        object.__setattr__(self, '_head_start', heads[0] if heads else None)

    @property
    def onnx(self):
        """The :class:`OnnxRuntimeNet` that runs the middle."""
        return self._ort

    def forward(self):
        """Data layers in the engine, the middle in onnxruntime, the heads in the engine."""
        net = self._net
        net.forward(end=self._data_end)
        outs = self._ort.forward(**{name: net.blobs[name].data for name in self._sources})
        for name, value in outs.items():
            net.blobs[name].reshape(*value.shape)
            net.blobs[name].data[...] = value
        if self._head_start is not None:
            net.forward(start=self._head_start)
        return {name: net.blobs[name].data for name in net.outputs}

    def __getattr__(self, name):
        return getattr(self._net, name)

    def __setattr__(self, name, value):
        setattr(self._net, name, value)


def test_net_param(net):
    """A prototxt (path) or NetParameter as a new NetParameter of its TEST-phase layers,
    upgraded from Caffe's older formats when needed."""
    if isinstance(net, caffe_pb2.NetParameter):
        source = caffe_pb2.NetParameter()
        source.CopyFrom(net)
    else:
        source = io.read_net_prototxt(os.fspath(net))
    if io.needs_upgrade(source):
        source = io.upgrade_net_param(source)
    state = graph.make_state(caffe_pb2.TEST, source.state.level, source.state.stage)
    out = caffe_pb2.NetParameter()
    out.CopyFrom(source)
    del out.layer[:]
    out.layer.extend(graph.filter_layers(source, state))
    out.state.phase = caffe_pb2.TEST
    return out


def _net_outputs(net_param):
    """Tops no later layer reads: Caffe's net outputs."""
    read, outs = set(), []
    for lp in reversed(net_param.layer):
        for top in lp.top:
            if top not in read and top not in outs:
                outs.insert(0, top)
        read.update(lp.bottom)
    return outs


def _input_shapes(net_param):
    shapes = {}
    for lp in net_param.layer:
        if lp.type == 'Input':
            for k, top in enumerate(lp.top):
                spec = lp.input_param.shape[min(k, len(lp.input_param.shape) - 1)]
                shapes[top] = tuple(spec.dim)
    return shapes  # legacy input fields: test_net_param upgraded them to Input layers
