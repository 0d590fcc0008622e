"""A Net as a ``torch.nn.Module``: the way out to torch.optim, AMP, DDP, torch.compile
and torch.export, with the engine's own layer code and Caffe's numbers.

``net.to_module()`` gives a :class:`NetModule` over the same net:

* its parameters are the net's learnable blobs (``net.learnable_params``, shared
  ones once), in that order, and share their storage: a write through
  ``net.params[...][i].data`` is seen by the module and a step of a torch optimizer
  is seen by the net (on the CPU at once; see :class:`NetModule` for devices);
* ``module(**inputs)`` runs every layer's ``forward`` in order, in the phase the
  net was built for, on tensors held in a local dict: no blob is read or written
  (Python layers excepted, whose API is blobs), no diff hooked, nothing cached, so
  the forward traces;
* :meth:`NetModule.param_groups` turns ``lr_mult`` / ``decay_mult`` into
  ``torch.optim`` parameter groups, and :func:`set_base_lr` changes the rate the
  way Caffe's SGD would.

Caffe's SGD and torch's differ in where the rate enters the momentum (Caffe:
``V = m V + lr (g + wd w); w -= V``; torch: ``b = m b + (g + wd w); w -= lr b``).
With a constant rate both give the same weights (up to float rounding); when the
rate changes, torch applies the new rate to the whole momentum, Caffe only to the
new gradient. :func:`set_base_lr` rescales torch's momentum buffers so that the
updates stay Caffe's.
"""
import numpy as np
import torch
from torch import nn

from .errors import CaffeError
from .kernels import tracing

__all__ = ['NetModule', 'set_base_lr']


def _f32(x):
    """``x`` rounded to float32, as Caffe's solver holds its rates (Dtype)."""
    return float(np.float32(x))


class _Plan:
    """One layer as the module runs it: what to read, how to call it, what to write."""

    __slots__ = ('step', 'kind', 'bottoms', 'tops', 'stop_grad', 'params')

    def __init__(self, step, kind, params):
        self.step = step
        self.kind = kind                      # 'input', 'source', 'layer' or 'python'
        self.bottoms = list(step.lp.bottom)
        self.tops = list(step.lp.top)
        self.stop_grad = step.stop_grad      # propagate_down: false per bottom, or None
        self.params = params                  # (index, detach, view shape) per learnable blob


def _run_net(module, inputs):
    return module._run(inputs)


# torch.compile's tracer (dynamo) cannot read the protobuf messages that the layers
# consult as they run, and would break the graph at each layer; as a non-strict call
# the whole forward is traced by running its Python, as torch.export does, into
# one graph.
_nonstrict = getattr(getattr(torch, '_dynamo', None), 'nonstrict_trace', None)
_run = _nonstrict(_run_net) if _nonstrict is not None else _run_net


class NetModule(nn.Module):
    """An ``nn.Module`` over a :class:`~torchcaffe.Net` (made by ``net.to_module()``).

    Parameters
    ----------
    net : torchcaffe.Net
    blobs : list of str, optional
        Blobs the forward returns besides the net's outputs.

    Attributes
    ----------
    params : torch.nn.ParameterList
        The net's learnable blobs, in ``net.learnable_params`` order (a param shared
        by ``ParamSpec.name`` is there once, as its owner's). Parameters of blobs
        no layer trains (``lr_mult: 0`` without ``force_backward``: BatchNorm's
        statistics, FCN's fixed upsampling) have ``requires_grad`` False.
    param_names : list of str
        ``'layer/i'`` of each parameter: its owner layer and the blob's index there.
    inputs, outputs : list of str
        The net's input blobs (its Input layers' tops) and output blobs.
    returns : list of str
        What :meth:`forward` returns: the outputs, then the extra ``blobs``.
    loss_weights : dict
        Blob name -> loss weight, for the tops that have one (see :meth:`loss`).
    phase : int
        The Caffe phase the layers were built for. ``module.train()`` and
        ``module.eval()`` do not change it: build the net in ``caffe.TEST`` for
        inference (Dropout off, BatchNorm on its stored statistics), in
        ``caffe.TRAIN`` for training.

    Notes
    -----
    The storage is shared as it stands when the module is made. Moving or casting
    either side afterwards (``module.to('cuda')``, ``module.double()``,
    ``net.to(torch.float64)``, switching the Caffe mode) gives that side new
    tensors and the two stop sharing. On an accelerator, numpy writes into a
    blob's ``data`` reach the device, and so the module, when the net next uses the
    blob (its host mirror); torch-side writes are seen by the net at once.
    """

    def __init__(self, net, blobs=None):
        super().__init__()
        self.phase = net.phase
        self.net_name = net.name
        learnable = net.learnable_params
        for blob in learnable:
            blob.data_tensor()  # an accelerator's host writes go to the device first
        self.params = nn.ParameterList(
            nn.Parameter(blob._data.tensor, requires_grad=blob._requires_grad)
            for blob in learnable)
        index = {id(blob): k for k, blob in enumerate(learnable)}
        self.param_names = [None] * len(learnable)
        self._lr_mults = [float(m) for m in net.params_lr]
        self._decay_mults = [float(m) for m in net.params_weight_decay]
        self._plans = []
        for step in net._steps:
            params = []
            special = step.param_special or [(False, None)] * len(step.params)
            if len(special) != len(step.params):
                raise CaffeError('layer %r: %d learnable blobs but %d param settings'
                                 % (step.name, len(step.params), len(special)))
            for j, (blob, (detach, view), owned) in enumerate(
                    zip(step.params, special, step.param_owned)):
                k = index[id(blob)]
                if owned:
                    self.param_names[k] = '%s/%d' % (step.name, j)
                params.append((k, detach, view))
            self._plans.append(_Plan(step, self._kind(step), params))
        self.inputs = list(net.inputs)
        self.outputs = list(net.outputs)
        extra = [b for b in (blobs or []) if b not in self.outputs]
        missing = [b for b in extra if b not in net.blobs]
        if missing:
            raise CaffeError('net %r has no blob %r' % (net.name, missing[0]))
        self.returns = self.outputs + list(dict.fromkeys(extra))
        self.loss_weights = {name: w for name, w in net.blob_loss_weights.items() if w}
        self._sources = {name for p in self._plans if p.kind == 'source' for name in p.tops}
        self._dtype = next(iter(net.blobs.values()))._dtype if net.blobs else torch.float32
        self._checked = {}  # layer index -> bottom shapes last checked (eager only)

    @staticmethod
    def _kind(step):
        if step.lp.type == 'Input':
            return 'input'
        if step.lp.type == 'Python':
            return 'python'
        if not step.lp.bottom:
            return 'source'  # a data layer: runs unless its tops are given
        return 'layer'

    # ---- forward ---------------------------------------------------------------------

    def forward(self, *args, **inputs):
        """Run the net forward on ``inputs`` and return its outputs.

        Parameters
        ----------
        *args : torch.Tensor or array
            The inputs by position, in :attr:`inputs` order.
        **inputs : torch.Tensor or array
            Input blob name -> value, for every Input top of the net, of any batch
            and spatial size the layers take. The tops of a data layer (a layer
            without bottoms) may be given too, and then that layer does not run;
            otherwise it reads its source as in the engine. Arrays become tensors
            of the net's dtype; tensors are used as they are.

        Returns
        -------
        dict
            Blob name -> tensor, for :attr:`returns` (the net's outputs, then the
            ``blobs`` given to ``to_module``). A blob that layers change in place
            holds its last value, as ``net.blobs`` does after a forward.
        """
        if args:
            if len(args) > len(self.inputs):
                raise CaffeError('net %r module: %d positional inputs; the net takes %d (%s)'
                                 % (self.net_name, len(args), len(self.inputs), self.inputs))
            for name, value in zip(self.inputs, args):
                if name in inputs:
                    raise CaffeError('net %r module: input %r given by position and by name'
                                     % (self.net_name, name))
                inputs[name] = value
        if not tracing():
            self._check_inputs(inputs)
        return _run(self, inputs)

    def _run(self, inputs):
        traced = tracing()
        values = {}
        for plan in self._plans:
            kind = plan.kind
            if kind == 'input' or (kind == 'source' and all(t in inputs for t in plan.tops)):
                for name in plan.tops:
                    values[name] = self._as_tensor(inputs[name])
                continue
            bottoms = [values[name] for name in plan.bottoms]
            if plan.stop_grad is not None:
                bottoms = [t.detach() if stop else t for t, stop in zip(bottoms, plan.stop_grad)]
            params = self._layer_params(plan)
            if kind == 'python':
                tops = self._run_python(plan, bottoms, params)
            else:
                if not traced:
                    self._check_shapes(plan, bottoms)
                tops = plan.step.layer.forward(bottoms, params)
            for name, t in zip(plan.tops, tops):
                values[name] = t
        return {name: values[name] for name in self.returns}

    def _as_tensor(self, value):
        if isinstance(value, torch.Tensor):
            return value
        return torch.as_tensor(np.asarray(value), dtype=self._dtype)

    def _layer_params(self, plan):
        tensors = []
        for k, detach, view in plan.params:
            t = self.params[k]
            if detach:  # a shared blob this layer does not train (its lr_mult is 0)
                t = t.detach()
            if view is not None:  # share_mode PERMISSIVE: the owner's values, this shape
                t = t.view(view)
            tensors.append(t)
        return tensors

    def _check_inputs(self, inputs):
        missing = [name for name in self.inputs if name not in inputs]
        unknown = [name for name in inputs
                   if name not in self.inputs and name not in self._sources]
        if missing or unknown:
            raise CaffeError('net %r module: inputs %s; the net takes %s%s'
                             % (self.net_name, sorted(inputs), self.inputs,
                                ' (and may take the tops of its data layers: %s)'
                                % sorted(self._sources) if self._sources else ''))

    def _check_shapes(self, plan, bottoms):
        """The engine's shape check of a layer (Caffe's Reshape), on new bottom shapes."""
        step = plan.step
        shapes = [tuple(t.shape) for t in bottoms]
        if self._checked.get(step.index) == shapes:
            return
        step.top_shapes(shapes)
        self._checked[step.index] = shapes

    @staticmethod
    def _run_python(plan, bottoms, params):
        """A Python layer works on blobs (pycaffe's API): its bottoms are bound to the
        net's bottom blobs, then it runs as in the engine. Eager mode only; the
        layer's own learnable blobs get their gradients in their diffs, as the
        layer's backward writes them, not in the parameters' ``.grad``."""
        step = plan.step
        if tracing():
            raise CaffeError('layer %r (Python) works on blobs and cannot be traced by '
                             'torch.compile or torch.export' % step.name)
        if not plan.bottoms and not params:
            step.runner.run()
            return [blob.data_tensor().detach().clone() for blob in step.tops]
        for blob, t in zip(step.bottoms, bottoms):
            blob._data.set(t.detach())
        if not plan.tops:
            step.runner.run()
            return []
        return step.runner.apply(bottoms + params)

    # ---- training --------------------------------------------------------------------

    def loss(self, outputs):
        """Caffe's weighted loss of a forward's ``outputs``: the sum over tops with a
        loss weight of ``weight * sum(top)`` (what the solver minimises).

        Raises
        ------
        CaffeError
            When the net has no loss, or a loss top is not among ``outputs``.
        """
        if not self.loss_weights:
            raise CaffeError('net %r has no loss top (no layer has a loss weight)'
                             % self.net_name)
        total = None
        for name, weight in self.loss_weights.items():
            if name not in outputs:
                raise CaffeError('loss top %r is not among the outputs given (%s); pass '
                                 'blobs=[%r] to to_module' % (name, sorted(outputs), name))
            term = (outputs[name] * weight).sum()
            total = term if total is None else total + term
        return total

    def param_groups(self, base_lr, weight_decay=0.0):
        """``torch.optim`` parameter groups with Caffe's per-param rates and decays.

        Each param gets ``lr = base_lr * lr_mult`` and ``weight_decay = weight_decay *
        decay_mult``, rounded to float32 as Caffe's solver computes them
        (sgd_solver.cpp: ``local_rate = rate * net_params_lr[id]``, ``local_decay =
        weight_decay * net_params_weight_decay[id]``). Params with ``lr_mult: 0``
        are left out (Caffe's update moves them by 0), so are params no layer trains;
        a shared param is in once, with the multipliers Caffe settles on for it.
        Params with the same multipliers share a group, which also keeps ``lr_mult``
        and ``decay_mult`` (read by :func:`set_base_lr`).

        Only the L2 form of weight decay maps onto ``torch.optim``'s
        ``weight_decay``; Caffe's ``regularization_type: "L1"``, ``clip_gradients``
        and ``iter_size`` have no counterpart here.
        """
        groups = {}
        for k, param in enumerate(self.params):
            lr_mult, decay_mult = self._lr_mults[k], self._decay_mults[k]
            if lr_mult == 0 or not param.requires_grad:
                continue
            group = groups.get((lr_mult, decay_mult))
            if group is None:
                group = groups[lr_mult, decay_mult] = {
                    'params': [], 'lr': _f32(np.float32(base_lr) * np.float32(lr_mult)),
                    'weight_decay': _f32(np.float32(weight_decay) * np.float32(decay_mult)),
                    'lr_mult': lr_mult, 'decay_mult': decay_mult, 'names': []}
            group['params'].append(param)
            group['names'].append(self.param_names[k])
        return list(groups.values())

    def extra_repr(self):
        return 'net=%r, phase=%s, inputs=%s, returns=%s' % (
            self.net_name, 'TRAIN' if self.phase == 0 else 'TEST', self.inputs, self.returns)


def set_base_lr(optimizer, base_lr, momentum_key='momentum_buffer'):
    """Set the rate of an optimizer over :meth:`NetModule.param_groups` the way
    Caffe's SGD takes a new rate: each group's ``lr`` becomes ``base_lr * lr_mult``
    and torch's momentum buffers are scaled by ``old lr / new lr``.

    Caffe keeps ``V = lr * b`` (torch's buffer ``b`` times the rate it was built
    with), so its next update is ``m V + lr_new g``; torch's would be ``lr_new (m b +
    g)``, which rescales the old momentum too. Scaling ``b`` by ``lr_old / lr_new``
    first gives Caffe's update. Call it where a Caffe lr policy changes the rate
    (a ``step`` boundary, every iteration of ``inv`` or ``poly``).
    """
    for group in optimizer.param_groups:
        if 'lr_mult' not in group:
            raise CaffeError('set_base_lr: an optimizer group has no lr_mult; build the '
                             'optimizer from module.param_groups(...)')
        old, new = group['lr'], _f32(np.float32(base_lr) * np.float32(group['lr_mult']))
        if old != new and old != 0 and new != 0:
            for param in group['params']:
                buf = optimizer.state.get(param, {}).get(momentum_key)
                if buf is not None:
                    buf.mul_(old / new)
        group['lr'] = new
