"""``torchcaffe.Net``: a prototxt run with Caffe's semantics on torch, behind pycaffe's API.

Construction follows Caffe's ``Net::Init``: filter the layers by the net state,
then set each one up in order (bottoms must come from earlier layers, tops are
new blobs or in place, learnable blobs are made, filled and shared by
``ParamSpec.name``). Forward runs each layer's torch ops with autograd recording;
backward (``torchcaffe.backward``: Caffe's need-backward analysis and the walk) runs
autograd once through that graph, seeded with the loss tops' weights and the outputs'
diffs, or, where the graph does not hold (no forward yet, a bottom written since, a
``start``/``end`` range it does not cover), recomputes each layer from the blobs as
they stand and sends its top diffs through it alone, as Caffe's per-layer Backward.
What Caffe gets from its own machinery comes from autograd:

* a blob feeding several layers goes through a Split layer, inserted and named as
  Caffe's InsertSplits does (``net.blobs`` lists its tops, each with its own diff;
  the blob before it gets their sum);
* in-place layers compute out of place and rebind the blob name, and the blob's
  diff is the gradient w.r.t. the first tensor bound to that name, which is what
  Caffe's in-place backward leaves in the shared diff;
* params with ``lr_mult: 0`` get no gradient (unless ``force_backward``) but pass
  gradients to their bottoms, as Caffe's ``param_propagate_down``; layers that feed
  no loss run no backward (unless ``force_backward``), as in Caffe;
* param diffs accumulate over backward calls until ``clear_param_diffs``.

Where the engine differs from Caffe: arrays of intermediate blobs taken before a
forward keep the old values (each forward binds new tensors; inputs and params keep
theirs); a forward clears the diffs of the blobs it makes, outputs excepted (Caffe
leaves the last backward's there); a param shared with
``share_mode: PERMISSIVE`` is the owner's blob, in the owner's shape (saved in the
layer's own). ``net.autograd = False`` runs forward without recording gradients,
for inference.

Layer implementations live in ``torchcaffe.layer_types``; Python layers in
``torchcaffe.python_layer``; blobs in ``torchcaffe.blob``; the CPU/GPU mode in
``torchcaffe.mode``.
"""
import contextlib
import os
from collections import OrderedDict

import numpy as np
import torch

from . import blob as blob_module
from . import backward as backward_walk
from . import graph, io, mode, net_batches, net_params, net_weights
from .memory import keep_freed_memory, reraise_oom
from .blob import Blob
from .errors import CaffeError, NetGraphError, ShapeError
from .insert_splits import insert_splits
from .layer_types import create_layer
from .proto import caffe_pb2
from .python_layer import PythonLayerRunner, create_python_layer, net_folder
from .steps import InputStep, PythonStep, Step, oom_where
from .upgrade import needs_upgrade, upgrade_net_param

__all__ = ['Net']


# ------------------------------------------------------------------------------ the net

class Net:
    """A Caffe net, as pycaffe's ``caffe.Net``.

    Parameters
    ----------
    network_file : str, path or caffe_pb2.NetParameter
        A prototxt, or a NetParameter (upgraded if it is in an old format).
    *args :
        ``phase[, level[, stages[, weights]]]`` or the legacy ``weights, phase``: the
        positional forms pycaffe accepts (told apart, as there, by the second
        argument being a file name).
    phase : int, keyword
        ``caffe.TRAIN`` or ``caffe.TEST``. Optional only for a NetParameter,
        whose ``state.phase`` is used then.
    weights : str, keyword
        A ``.caffemodel`` or ``.caffemodel.h5`` to copy weights from.
    level : int, keyword
        Net state level. For a file it replaces the prototxt's (0 when not given,
        as Caffe's ``Net(file, phase, level, stages)``); for a NetParameter its
        ``state.level`` is kept unless given.
    stages : list of str, keyword
        Added to the net state's stages.

    Attributes
    ----------
    blobs : OrderedDict
        Blob name -> :class:`~torchcaffe.blob.Blob`, in the order Caffe makes them.
    params : OrderedDict
        Layer name -> list of learnable blobs, for layers that have some.
    layers, layer_dict, inputs, outputs, top_names, bottom_names, blob_loss_weights :
        As pycaffe.
    learnable_params, params_lr, params_weight_decay, has_params_lr, has_params_decay :
        Caffe's Net accessors of the same names, for the solver: the params that
        own their storage, with the multipliers of their ParamSpec.
    """

    def __init__(self, network_file, *args, phase=None, weights=None, level=None,
                 stages=None):
        args = list(args)
        if args and isinstance(args[0], (str, bytes, os.PathLike)):
            # pycaffe's legacy Net(network_file, weights, phase)
            if len(args) != 2 or weights is not None or phase is not None:
                raise TypeError('Net(network_file, weights, phase) takes exactly those three')
            weights, phase = args
        else:
            # pycaffe's Net(network_file, phase, level=0, stages=None, weights=None)
            if len(args) > 4:
                raise TypeError('Net(network_file, phase, level, stages, weights) takes at '
                                'most 5 arguments')
            given = dict(zip(('phase', 'level', 'stages', 'weights'), args))
            for name, value in given.items():
                if locals()[name] is not None:
                    raise TypeError('%s given both by position and keyword' % name)
            phase = given.get('phase', phase)
            level = given.get('level', level)
            stages = given.get('stages', stages)
            weights = given.get('weights', weights)
        net_param = self._net_param(network_file, phase, level, stages)
        # Python layer modules may come from the prototxt's own folder (python_layer.py).
        folder = (None if isinstance(network_file, caffe_pb2.NetParameter)
                  else os.path.dirname(os.path.abspath(os.fspath(network_file))))
        with net_folder(folder):
            self._build(net_param)
        if weights is not None:
            self.copy_from(weights)

    # ---- construction ----------------------------------------------------------------

    @staticmethod
    def _net_param(network_file, phase, level, stages):
        if isinstance(network_file, caffe_pb2.NetParameter):
            net_param = (upgrade_net_param(network_file) if needs_upgrade(network_file)
                         else caffe_pb2.NetParameter.FromString(
                             network_file.SerializeToString()))
            if phase is None:
                phase = net_param.state.phase
            if level is not None:
                net_param.state.level = int(level)
        else:
            if phase is None:
                raise TypeError('Net(%r) needs a phase: caffe.TRAIN or caffe.TEST'
                                % (network_file,))
            net_param = io.read_net_prototxt(os.fspath(network_file))
            # pycaffe's Net(file, phase, level=0, stages) sets the level outright.
            net_param.state.level = int(level or 0)
        if phase not in (caffe_pb2.TRAIN, caffe_pb2.TEST):
            raise CaffeError('phase must be caffe.TRAIN (0) or caffe.TEST (1), got %r' % (phase,))
        net_param.state.phase = phase
        net_param.state.stage.extend(stages or [])
        return net_param

    def _build(self, net_param):
        keep_freed_memory()  # blobs reuse freed memory rather than fault in fresh pages
        self.name = net_param.name
        self.phase = net_param.state.phase
        self.force_backward = net_param.force_backward
        # Whether forward records the autograd graph that backward's fast path uses.
        # Code that only runs forward (scoring, deployment) may set it False to save
        # time and memory; a backward then recomputes each layer from the blobs.
        self.autograd = True
        self._device = torch.device('cpu')
        self._mode_version = None
        self._mirrored = False
        self._graph_freed = False  # a backward freed the last forward's graph
        self._steps = []
        self._blobs = OrderedDict()
        self._available = set()   # Caffe's available_blobs: produced, not yet consumed
        self._shared = {}         # param name -> (owner Blob, learnable index)
        self.learnable_params = []
        self.params_lr, self.params_weight_decay = [], []
        self.has_params_lr, self.has_params_decay = [], []
        self.inputs = []
        self._blob_loss_weights = {}
        generator = mode.filler_generator()
        state = net_param.state
        # Caffe's Net::Init inserts a Split layer after each blob read more than once.
        for lp in insert_splits(graph.filter_layers(net_param, state)):
            if not lp.HasField('phase'):
                lp.phase = self.phase
            self._add_layer(lp, generator)
        self._finish_params()
        self.outputs = sorted(self._available)  # std::set order, as Caffe lists them
        for step in self._steps:
            step.kept_diffs = frozenset(k for k, name in enumerate(step.lp.top)
                                        if name in self._available)
        self._last_writer, self._last_reader = {}, {}
        for step in self._steps:
            for name in step.lp.bottom:
                self._last_reader[name] = step.index
            for name in step.lp.top:
                self._last_writer[name] = step.index
        for step in self._steps:
            if hasattr(step.layer, 'generator') and not isinstance(step, PythonStep):
                step.layer.generator = mode.generator(self._device)

    def _add_layer(self, lp, generator):
        index = len(self._steps)
        where = 'layer %r (%s)' % (lp.name, lp.type)
        if len(lp.propagate_down) and len(lp.propagate_down) != len(lp.bottom):
            raise CaffeError('%s: propagate_down must be given 0 or %d times, got %d'
                             % (where, len(lp.bottom), len(lp.propagate_down)))
        for name in lp.bottom:
            if name not in self._blobs:
                raise NetGraphError('%s: bottom blob %r is not produced by any earlier layer'
                                 % (where, name))
        bottoms = [self._blobs[name] for name in lp.bottom]
        for name in lp.bottom:
            self._available.discard(name)
        tops, in_place = [], []
        for j, name in enumerate(lp.top):
            if j < len(lp.bottom) and lp.bottom[j] == name:
                tops.append(self._blobs[name])
                in_place.append(True)
            elif name in self._blobs:
                raise NetGraphError('%s: top blob %r is produced by multiple sources (only '
                                 'top i == bottom i runs in place)' % (where, name))
            else:
                blob = self._blobs[name] = Blob()
                tops.append(blob)
                in_place.append(False)
            self._available.add(name)

        if lp.type == 'Python':
            layer = create_python_layer(lp)
            runner = PythonLayerRunner(layer, lp, lp.phase, bottoms, tops)
            step = PythonStep(index, lp, layer, bottoms, tops, in_place, runner)
            runner.setup()
            param_blobs = layer.blobs
            weights = _given_loss_weights(lp, where)
        else:
            layer = create_layer(lp, lp.phase)
            layer.check_blob_counts(len(bottoms), len(tops))
            kind = InputStep if lp.type == 'Input' else Step
            step = kind(index, lp, layer, bottoms, tops, in_place)
            bottom_shapes = [b.shape for b in bottoms]
            for blob, shape, ip in zip(tops, step.check_shapes(bottom_shapes), in_place):
                if not ip:
                    blob._declare_shape(shape)
            param_blobs = net_params.make_params(layer, bottom_shapes, generator)
            layer.blobs = param_blobs
            weights = layer.loss_weights()
            if lp.type == 'Input':
                self.inputs.extend(lp.top)
        self._steps.append(step)
        net_params.append_params(self, step, param_blobs, where)
        self._setup_loss(step, weights)

    def _finish_params(self):
        """Caffe's need-backward analysis (backward.analyse); then per layer: which
        bottoms and params to detach, as the prototxt allows (propagate_down, lr_mult,
        force_backward) and as this net's backward needs (its losses), and views of
        permissive shares."""
        backward_walk.analyse(self._steps, self.force_backward)
        for step in self._steps:
            lp = step.lp
            if any(not p for p in lp.propagate_down):
                step.stop_grad = [not p for p in lp.propagate_down]
            if not all(step.bottom_need):
                step.walk_stop = [not need for need in step.bottom_need]
            step.param_trainable = [d or self.force_backward for d in step.param_down]
            for blob, trainable in zip(step.params, step.param_trainable):
                if trainable:
                    blob._requires_grad = True
        for step in self._steps:
            special, walk = [], []
            for blob, trainable, train, shape in zip(step.params, step.param_trainable,
                                                     step.param_train, step.param_shapes):
                view = shape if shape != blob.shape else None
                special.append((blob._requires_grad and not trainable, view))
                walk.append((blob._requires_grad and not train, view))
            if any(d or v is not None for d, v in special):
                step.param_special = special
            if any(d or v is not None for d, v in walk):
                step.walk_special = walk

    def _setup_loss(self, step, weights):
        lp = step.lp
        for k, (blob, name, w) in enumerate(zip(step.tops, lp.top, weights)):
            self._blob_loss_weights[name] = float(w)
            if w:
                step.loss_weights[k] = float(w)
                # Caffe keeps a loss top's weight in its diff: backward starts from it.
                blob._diff.tensor = torch.full(blob.shape, float(w), dtype=torch.float32)
        step.produced = [(k, blob) for k, (blob, ip) in enumerate(zip(step.tops, step.in_place))
                         if not ip and k not in step.loss_weights]

    # ---- pycaffe's views of the net --------------------------------------------------

    @property
    def blobs(self):
        """Blob name -> Blob, in the order Caffe makes the blobs."""
        return self._blobs

    @property
    def params(self):
        """Layer name -> list of learnable blobs, for layers that have any."""
        return OrderedDict((s.name, s.layer.blobs) for s in self._steps if len(s.layer.blobs))

    @property
    def layers(self):
        """The layer objects in order (each has ``type`` and ``blobs``)."""
        return [s.layer for s in self._steps]

    @property
    def _layer_names(self):
        return [s.name for s in self._steps]

    @property
    def _blob_names(self):
        return list(self._blobs)

    @property
    def layer_dict(self):
        """Layer name -> layer object."""
        return OrderedDict((s.name, s.layer) for s in self._steps)

    @property
    def top_names(self):
        """Layer name -> its top blob names."""
        return OrderedDict((s.name, list(s.lp.top)) for s in self._steps)

    @property
    def bottom_names(self):
        """Layer name -> its bottom blob names."""
        return OrderedDict((s.name, list(s.lp.bottom)) for s in self._steps)

    @property
    def blob_loss_weights(self):
        """Blob name -> loss weight (0 for blobs that are not losses)."""
        return OrderedDict((name, self._blob_loss_weights.get(name, 0.0))
                           for name in self._blobs)

    @property
    def device(self):
        """The torch device the net's tensors are on now."""
        return self._device

    def _layer_index(self, name):
        for step in self._steps:
            if step.name == name:
                return step.index
        raise CaffeError('net %r has no layer named %r' % (self.name, name))

    # ---- device and dtype ------------------------------------------------------------

    def sync_device(self):
        """Move the net to the device of the current mode, if it is not there yet."""
        if self._mode_version != mode.version():
            dev = mode.device()
            if dev != self._device:
                self._move(dev)
            self._mode_version = mode.version()

    def _all_blobs(self):
        seen, out = set(), []
        for b in list(self._blobs.values()) + [p for s in self._steps for p in s.layer.blobs]:
            if id(b) not in seen:
                seen.add(id(b))
                out.append(b)
        return out

    def _move(self, dev, dtype=None):
        for b in self._all_blobs():
            b._to(dev, dtype or b._dtype)
        self._device = dev
        self._mirrored = blob_module.needs_mirror(dev)
        for step in self._steps:
            if hasattr(step.layer, 'generator') and not isinstance(step, PythonStep):
                step.layer.generator = mode.generator(dev)

    def to(self, dtype):
        """Convert every blob, data and diff, params included, to ``dtype``.

        Caffe computes in float32, and so does the net by default. ``net.to(torch.float64)``
        is the documented way to check a net's gradients in double precision: float32
        kernels may round a constant region (FCN's 100-pixel pad) one ulp differently
        from one position to the next, which breaks MAX-pooling ties elsewhere than
        Caffe and moves whole gradient values between pixels; in float64 those ties
        hold and the diffs can be compared with finite differences or another
        implementation (``benchmarks/grad_precision.py`` measures the float32 gap).
        ``net.to(torch.float32)`` goes back.

        Parameters
        ----------
        dtype : torch.dtype, numpy dtype or str
            float32 or float64 (``torch.float64``, ``np.float64`` and ``'float64'``
            are the same).

        Returns
        -------
        Net
            The net itself; ``net.blobs[...].data`` and ``.diff`` read as arrays of
            the new type from then on.
        """
        if not isinstance(dtype, torch.dtype):
            dtype = {np.dtype(np.float32): torch.float32,
                     np.dtype(np.float64): torch.float64}.get(np.dtype(dtype), dtype)
        if dtype not in (torch.float32, torch.float64):
            raise CaffeError('net %r: Net.to takes float32 or float64, not %s (bfloat16 is '
                             "caffe.set_precision('bf16'))" % (self.name, dtype))
        self._move(self._device, dtype)
        return self

    # ---- forward ---------------------------------------------------------------------

    def forward(self, blobs=None, start=None, end=None, **kwargs):
        """Run the net forward, as pycaffe's ``Net.forward``.

        Parameters
        ----------
        blobs : list of str, optional
            Blobs to return besides the outputs.
        start, end : str, optional
            Names of the first and last layer to run (both inclusive).
        **kwargs :
            Input blob name -> array of exactly the blob's shape (reshape the blob
            first for another shape). Either every input or none.

        Returns
        -------
        dict
            Blob name -> its ``data`` array, for the outputs (or, when ``end`` is
            given, that layer's tops, as pycaffe's ``top_names[end]``) and ``blobs``.
        """
        blobs = list(blobs or [])
        start_ind = 0 if start is None else self._layer_index(start)
        if end is not None:
            end_ind = self._layer_index(end)
            outputs = set(list(self._steps[end_ind].lp.top) + blobs)
        else:
            end_ind = len(self._steps) - 1
            outputs = set(self.outputs + blobs)
        missing = [b for b in outputs if b not in self._blobs]
        if missing:
            raise CaffeError('net %r has no blob %r' % (self.name, missing[0]))
        if kwargs:
            if set(kwargs) != set(self.inputs):
                raise CaffeError('Input blob arguments do not match net inputs: got %s, the '
                                 'inputs are %s' % (sorted(kwargs), self.inputs))
            for name, value in kwargs.items():
                self._set_input(name, value)
        self._forward(start_ind, end_ind)
        return {out: self._blobs[out].data for out in outputs}

    def _set_input(self, name, value):
        blob = self._blobs[name]
        value = np.asarray(value)
        if value.shape != blob.shape:
            raise ShapeError('input %r: array of shape %s for a blob of shape %s; reshape the '
                             'blob first (net.blobs[%r].reshape(*shape))'
                             % (name, value.shape, blob.shape, name))
        blob.set_data(value)

    def _forward(self, start, end):
        """Run layers ``start`` .. ``end`` (indices, inclusive); pycaffe's ``_forward``."""
        if not 0 <= start <= end < len(self._steps):
            raise CaffeError('forward from layer %d to %d is out of range (%d layers)'
                             % (start, end, len(self._steps)))
        self.sync_device()
        force_backward = self.force_backward
        steps = self._steps[start:end + 1]
        # Drop the previous graph now rather than when its last tensor is replaced,
        # so that two forwards' saved tensors are never alive together.
        for step in steps:
            step.release()
        if start == 0:
            self._graph_freed = False
        # Under set_precision('bf16') the layers run in bfloat16 autocast (a no-op
        # context otherwise); params stay float32 and loss layers compute in float32.
        recording = contextlib.nullcontext() if self.autograd else torch.no_grad()
        with mode.autocast(self._device), recording:
            for step in steps:
                with reraise_oom(oom_where(step), device=self._device):
                    step.run(force_backward)
        for step in steps:
            if step.recorded:
                step.forward_state = backward_walk.bottom_state(step)

    def reshape(self):
        """Propagate the input blobs' shapes through every layer (Caffe's Net::Reshape)."""
        for step in self._steps:
            step.reshape()
            step.stale()

    # ---- backward --------------------------------------------------------------------

    def backward(self, diffs=None, start=None, end=None, **kwargs):
        """Run the net backward, as pycaffe's ``Net.backward``.

        Parameters
        ----------
        diffs : list of str, optional
            Blobs whose diffs to return besides the inputs'.
        start : str, optional
            Layer to start from (Caffe's BackwardFromTo): layers above it are left
            out, and each layer from it down reads its tops' diffs as they stand (a
            loss top's diff holds its loss weight).
        end : str, optional
            Last layer to run backward (inclusive): its bottoms get their diffs,
            layers below it (and their params) are left alone.
        **kwargs :
            Output blob name -> diff array seeding it; every output or none.

        Returns
        -------
        dict
            Blob name -> its ``diff`` array, for the inputs (or, when ``end`` is
            given, that layer's bottoms, as pycaffe's ``bottom_names[end]``) and
            ``diffs``.
        """
        diffs = list(diffs or [])
        last = len(self._steps) - 1
        start_ind = last if start is None else self._layer_index(start)
        end_ind = 0 if end is None else self._layer_index(end)
        if end_ind > start_ind:
            raise CaffeError('backward(start=%r, end=%r): end comes after start'
                             % (start, end))
        if end is None:
            outputs = set(self.inputs + diffs)
        else:
            outputs = set(list(self._steps[end_ind].lp.bottom) + diffs)
        missing = [b for b in outputs if b not in self._blobs]
        if missing:
            raise CaffeError('net %r has no blob %r' % (self.name, missing[0]))
        seeded = []
        if kwargs:
            if set(kwargs) != set(self.outputs):
                raise CaffeError('Top diff arguments do not match net outputs: got %s, the '
                                 'outputs are %s' % (sorted(kwargs), self.outputs))
            for name, value in kwargs.items():
                blob = self._blobs[name]
                value = np.asarray(value)
                if value.shape != blob.shape:
                    raise ShapeError('diff for %r has shape %s, the blob %s'
                                     % (name, value.shape, blob.shape))
                blob.diff[...] = value
                seeded.append(name)
        self._backward(start_ind, seeded, end=end_ind)
        return {out: self._blobs[out].diff for out in outputs}

    def _backward(self, start=None, seeded=(), retain_graph=True, end=0):
        """Caffe's BackwardFromTo from layer index ``start`` (the last by default) down
        to ``end``; ``seeded`` names blobs whose diffs the caller wrote (pycaffe's
        output diffs). See :mod:`torchcaffe.backward` for which layers run and for
        the two ways the walk is done.

        ``retain_graph`` keeps what the forward saved for backward, so that the fast
        path can serve another backward before the next forward (Caffe allows that;
        param diffs add up). ``retain_graph=False`` frees each saved tensor as soon as
        backward has used it, which lowers the peak memory of training:
        ``forward_backward`` and the solver run that way; a second backward then
        recomputes each layer.
        """
        self.sync_device()
        start = len(self._steps) - 1 if start is None else start
        seeded_blobs = [self._blobs[name] for name in seeded]
        backward_walk.run_backward(self, start, end, seeded_blobs, retain_graph)

    def forward_backward(self):
        """Forward, then backward; returns the loss (Caffe's ForwardBackward).

        The backward frees the graph as it goes (``retain_graph=False``); a second
        ``backward()`` recomputes each layer from the blobs instead.
        """
        self._forward(0, len(self._steps) - 1)
        self._backward(retain_graph=False)
        return float(self.loss())

    def loss(self):
        """The weighted loss of the last forward: sum over loss tops of
        ``dot(top data, top diff)``, as Caffe's Layer::Forward adds it up.

        Returns a 0-d tensor on the net's device (no host sync).
        """
        total = None
        for step in self._steps:
            for k, t in step.loss_outputs.items():
                seed = step.tops[k].diff_tensor()
                term = (t.detach() * seed.to(t.dtype)).sum()
                total = term if total is None else total + term
        if total is None:
            return torch.zeros((), device=self._device)
        return total

    def clear_param_diffs(self):
        """Zero every learnable param's diff (Caffe's ClearParamDiffs)."""
        memories = [b._diff for b in self.learnable_params if b._diff.tensor is not None]
        if memories:
            with torch.no_grad():  # one call for all, rather than one per param
                torch._foreach_zero_([m.tensor.detach() for m in memories])
            for m in memories:
                m.head = blob_module.DEVICE

    # ---- batches (pycaffe's forward_all) ---------------------------------------------

    def forward_all(self, blobs=None, **kwargs):
        """Forward every item of the input arrays in batches of the net's batch size.

        Returns
        -------
        dict : blob name -> array of all items' outputs (padding discarded).
        """
        return net_batches.forward_all(self, blobs, kwargs)

    def forward_backward_all(self, blobs=None, diffs=None, **kwargs):
        """Forward and backward in batches of the net's batch size (pycaffe's
        ``forward_backward_all``).

        Parameters
        ----------
        blobs, diffs : list of str, optional
            Blobs whose data / diffs to return besides the outputs' / inputs'.
        **kwargs :
            Input name -> array (fed forward) and output name -> array (the diffs
            seeding backward), all with the same number of items. Without inputs
            the data comes from the data layers; without outputs backward starts from
            the loss.

        Returns
        -------
        (dict, dict)
            Blob name -> array of all items' data, and blob name -> array of all
            items' diffs (padding of the last batch discarded).
        """
        return net_batches.forward_backward_all(self, blobs, diffs, kwargs)

    def set_input_arrays(self, data, labels):
        """Feed arrays to the net's first layer, a MemoryData layer (pycaffe's
        ``set_input_arrays``): ``data`` N x C x H x W and ``labels`` N (or N x 1 x 1 x 1),
        C-contiguous float32, N a multiple of the batch size. The arrays are used, not
        copied: keep them unchanged while the net reads them.

        Raises
        ------
        RuntimeError
            (a CaffeError) as pycaffe: the first layer is not MemoryData, or the arrays
            do not fit it.
        """
        from .layer_types.data import MemoryDataError, MemoryDataLayer
        if not self._steps or not isinstance(self._steps[0].layer, MemoryDataLayer):
            raise MemoryDataError('set_input_arrays may only be called if the first layer is '
                                  'a MemoryDataLayer')
        if isinstance(labels, np.ndarray) and labels.ndim == 1:
            labels = np.ascontiguousarray(labels[:, None, None, None])
        self._steps[0].layer.reset(data, labels)

    # ---- weights ---------------------------------------------------------------------

    def copy_from(self, path):
        """Copy learnable blobs from a caffemodel, binary or HDF5 (told apart by the
        file's content, as Caffe's CopyTrainedLayersFrom), by layer name.

        Layers the net lacks are ignored. A count or shape mismatch is an error
        naming the layer, the blob index and both shapes (NetMismatchError); legacy
        4-D shapes match when equal after dropping leading 1s (Caffe's
        Blob::ShapeEquals). NaN or infinite values are copied, as Caffe copies them,
        with a logged warning naming the file, layer and blob.
        """
        net_weights.copy_trained_layers(self, path)

    def to_proto(self, write_diff=False):
        """The net as Caffe's Net::ToProto: each layer's parameter with its blobs."""
        return net_weights.to_proto(self, write_diff)

    def save(self, path):
        """Write the layers and their weights; a ``.h5`` path writes Caffe's HDF5 form."""
        io.write_caffemodel(self.to_proto(), os.fspath(path))

    def save_hdf5(self, path):
        """Write the weights in Caffe's HDF5 form (pycaffe's ``save_hdf5``), whatever
        the file's name."""
        io.write_caffemodel_h5(self.to_proto(), os.fspath(path))

    def load_hdf5(self, path):
        """Copy weights from an HDF5 caffemodel (pycaffe's ``load_hdf5``), whatever
        the file's name."""
        self.copy_from(path)

    def to_module(self, blobs=None):
        """An ``nn.Module`` over this net (:class:`torchcaffe.module.NetModule`): its
        parameters share the learnable blobs' storage, ``module(**inputs)`` returns
        the outputs (and ``blobs``), and ``module.param_groups(base_lr, weight_decay)``
        gives ``torch.optim`` Caffe's multipliers. For torch.optim, AMP, DDP,
        torch.compile and torch.export."""
        from .module import NetModule
        return NetModule(self, blobs=blobs)

    def share_with(self, other):
        """Share the learnable blobs' data (not diffs) of same-named layers of ``other``
        (Caffe's ShareTrainedLayersWith): writes through either net show in both."""
        net_weights.share_trained_layers(self, other)


def _given_loss_weights(lp, where):
    weights = list(lp.loss_weight)
    if weights and len(weights) != len(lp.top):
        raise CaffeError('%s: loss_weight must be given 0 or %d times, got %d'
                         % (where, len(lp.top), len(weights)))
    return weights or [0.0] * len(lp.top)
