"""Caffe's backward for :class:`torchcaffe.Net`: which layers run it, and the walk.

**Which layers run backward** is decided once, when the net is built, as Caffe's
``Net::Init`` decides it (src/caffe/net.cpp):

* going up the net, a blob needs backward when the layer making it does, and a layer
  does when one of its bottoms needs backward or one of its params has a nonzero
  ``lr_mult``; a layer's ``propagate_down`` overrides the answer for each bottom;
* going down, a layer that neither makes a loss (a top with a nonzero loss weight) nor
  feeds a layer that contributes to one is dropped, and so is a layer whose every
  top its readers refuse (``propagate_down: false``); a dropped layer sends no diff to
  its bottoms;
* ``force_backward: true`` then makes every layer run backward and every bottom get a
  diff, except the bottoms a layer refuses (``AllowForceBackward``: a loss layer's
  labels), and sets every param's ``param_propagate_down``.

Params get diffs only in layers that run backward, and there only where
``param_propagate_down`` holds (``lr_mult != 0``, or ``force_backward``). So a diff
written into an output that feeds no loss reaches nothing unless ``force_backward``.

**The walk** (Caffe's ``BackwardFromTo``) has two forms that give the same numbers:

* the fast path runs autograd once through the graph the last forward recorded,
  seeded with the loss tops' diffs (their loss weights), the outputs' diffs and, from
  a layer other than the last, that layer's tops' diffs;
* the per-layer path goes from ``start`` down to ``end`` and, for each layer that runs
  backward, recomputes its tops from its bottoms and params as the blobs hold them,
  with gradients enabled, and sends the top diffs as the blobs hold them through that
  layer alone: bottom diffs are overwritten and param diffs added to, as Caffe's
  ``Layer::Backward`` does. A Python layer's own ``backward(top, propagate_down,
  bottom)`` is called, as Caffe calls it. Dropout draws the mask of its last forward
  again, a recurrent layer starts from the state its last forward started from, and a
  BatchNorm's moving averages are not updated twice.

The fast path serves when the recorded graph covers the range: every layer in it that
runs backward ran forward with autograd since the net was built, reshaped or given
weights; no backward freed that graph (``retain_graph=False``); no bottom or param was
written or handed out as an array since that forward (see :func:`bottom_state`); and, from a
layer other than the last, no blob below it is read above it (Caffe would read that
blob's diff as it stands) and its tops are not changed in place above it. Otherwise
the per-layer path runs. Both orders of summing agree except for a param shared by
several layers, whose per-layer diffs are added one by one rather than summed first.
"""
import contextlib

import torch

from . import blob as blob_module
from . import mode
from .errors import CaffeError
from .memory import reraise_oom

__all__ = ['analyse', 'run_backward', 'bottom_state']


# ------------------------------------------------------------------ need-backward analysis

def analyse(steps, force_backward):
    """Caffe's need-backward analysis (``Net::Init``) over the net's steps.

    Each step must have ``lp``, ``layer``, ``bottoms``, ``tops`` (Blobs, an in-place
    top being its bottom's Blob), ``loss_weights`` (top index -> nonzero weight) and
    ``param_down`` (per param: ``lr_mult != 0``). Sets on each step:

    ``need_backward``
        whether its backward runs (Caffe's ``layer_need_backward``);
    ``bottom_need``
        per bottom, whether it gets a diff (``bottom_need_backward``);
    ``param_train``
        per param, whether it gets a diff: the layer runs backward and the param's
        ``param_propagate_down`` holds.

    Returns the set of ``id(Blob)`` that need backward (``blob_need_backward``).
    """
    blob_need = set()
    for step in steps:
        lp = step.lp
        need = False
        step.bottom_need = []
        for k, blob in enumerate(step.bottoms):
            wanted = id(blob) in blob_need
            # AppendBottom: propagate_down overrides the blob's need for this bottom.
            step.bottom_need.append(bool(lp.propagate_down[k]) if len(lp.propagate_down)
                                    else wanted)
            need |= wanted
        for k, blob in enumerate(step.tops):
            if not _in_place(step, k):
                blob_need.discard(id(blob))  # AppendTop: a new blob starts not needing it
        need |= any(step.param_down)
        step.need_backward = need
        if need:
            blob_need.update(id(blob) for blob in step.tops)

    under_loss, skipped = set(), set()
    for step in reversed(steps):
        contributes = False
        skip = True
        for k, blob in enumerate(step.tops):
            if k in step.loss_weights or id(blob) in under_loss:
                contributes = True
            if id(blob) not in skipped:
                skip = False
        if step.need_backward and skip:
            step.need_backward = False
            step.bottom_need = [False] * len(step.bottoms)
        if not contributes:
            step.need_backward = False
        for k, blob in enumerate(step.bottoms):
            if contributes:
                under_loss.add(id(blob))
            else:
                step.bottom_need[k] = False
            if not step.bottom_need[k]:
                skipped.add(id(blob))

    if force_backward:
        for step in steps:
            step.need_backward = True
            allow = getattr(step.layer, 'allow_force_backward', None)
            for k, blob in enumerate(step.bottoms):
                step.bottom_need[k] = step.bottom_need[k] or allow is None or bool(allow(k))
                if step.bottom_need[k]:
                    blob_need.add(id(blob))
    for step in steps:
        down = [True] * len(step.param_down) if force_backward else step.param_down
        step.param_train = [step.need_backward and d for d in down]
    return blob_need


def _in_place(step, k):
    return k < len(step.in_place) and step.in_place[k]


# ------------------------------------------------------------------ the walk

def bottom_state(step):
    """What the forward left in ``step``'s bottoms and params, to tell later whether
    they changed: per blob the tensor, the count of writes torch does not see (a
    tensor bound, a host copy pushed, a writable array handed out:
    :class:`~torchcaffe.blob.Memory`), torch's version counter and which side is
    newest. Reading ``.data`` hands out a writable array, so it counts as a possible
    write."""
    state = []
    for blob in list(step.bottoms) + list(step.params):
        m = blob._data
        t = m.tensor
        state.append((t, m.writes, None if t is None else t._version, m.head))
    return state


def _unchanged(step):
    saved = step.forward_state
    if saved is None:
        return False
    now = bottom_state(step)
    if len(saved) != len(now):
        return False
    return all(a[0] is b[0] and a[1:] == b[1:] for a, b in zip(saved, now))


def _runs_backward(step):
    """Whether the walk has anything to do for ``step``."""
    return step.need_backward and bool(step.bottoms or step.params)


def _graph_covers(net, start, end):
    """Whether the last forward's autograd graph gives Caffe's backward from layer
    ``start`` down to ``end`` (indices)."""
    if net._graph_freed:
        return False
    steps = net._steps
    for step in steps[end:start + 1]:
        if _runs_backward(step) and step.tops and not _unchanged(step):
            return False
    if start < len(steps) - 1:
        if any(net._last_writer[name] != start for name in steps[start].lp.top):
            return False  # a later layer changes a start top in place
        outputs = set(net.outputs)
        for step in steps[end:start]:
            for k, name in enumerate(step.lp.top):
                if k in step.loss_weights:
                    continue
                if name in outputs or net._last_reader.get(name, -1) > start:
                    return False  # Caffe reads that blob's diff as it stands
    return True


def run_backward(net, start, end, seeded, retain_graph):
    """Caffe's ``BackwardFromTo(start, end)`` (layer indices) on ``net``.

    ``seeded`` lists Blobs whose diffs the caller wrote (pycaffe's output diffs); the
    fast path seeds them, the per-layer path reads them where they stand anyway.
    """
    if _graph_covers(net, start, end):
        _autograd_walk(net, start, end, seeded, retain_graph)
    else:
        _per_layer_walk(net, start, end)
        # The recorded graph (if any) is untouched: a later backward may still use it.


# ---- the fast path: the recorded graph ------------------------------------------------

def _autograd_walk(net, start, end, seeded, retain_graph):
    steps = net._steps
    roots, grads = [], []
    seeded_blobs = list(seeded)
    if start == len(steps) - 1:
        # Caffe's Backward starts from the outputs' diffs as they are: a loss top's
        # holds its loss weight, any other what the caller wrote there (zeros if
        # nothing), which is all pycaffe's backward(z=g) does too.
        seeded_blobs.extend(net._blobs[name] for name in net.outputs)
    else:
        seeded_blobs.extend(steps[start].tops)
    loss_blobs = []
    for step in steps[:start + 1]:
        for k, t in step.loss_outputs.items():
            _add_root(roots, grads, t, step.tops[k], step.loss_weights[k])
            loss_blobs.append(step.tops[k])
    for blob in seeded_blobs:
        if not any(blob is b for b in loss_blobs):
            loss_blobs.append(blob)  # each blob seeds once
            _add_root(roots, grads, blob._data.tensor, blob, 0.0)
    if not roots:
        return
    if net._mirrored:
        for b in net.learnable_params:
            if b._diff.tensor is not None:
                b.diff_tensor()  # host writes go to the device before accumulating
    with reraise_oom('net %r, backward pass' % net.name, device=net._device):
        if end:
            _autograd_to(steps[end:start + 1], roots, grads, retain_graph)
        else:
            torch.autograd.backward(roots, grads, retain_graph=retain_graph)
    net._graph_freed = not retain_graph
    if net._mirrored:
        for step in steps:
            if step.runner is None:
                for b in step.params:
                    if b._requires_grad:
                        b._diff.head = blob_module.DEVICE


def _autograd_to(steps, roots, grads, retain_graph):
    """Autograd through ``steps`` only (Caffe's BackwardFromTo with ``end``): it goes
    as far as those layers' bottoms and trained params."""
    stops = [t for s in steps for t in s.last_bottoms if t.requires_grad]
    leaves = [b._leaf for s in steps for b in s.params
              if b._requires_grad and b._leaf is not None and b._leaf.requires_grad]
    inputs = list({id(t): t for t in stops + leaves}.values())
    if not inputs:
        return
    torch.autograd.backward(roots, grads, retain_graph=retain_graph, inputs=inputs)
    for t in stops:
        if not t.is_leaf:
            t.grad = None  # the diff went to the blob (its hook); drop torch's copy


def _add_root(roots, grads, tensor, blob, weight):
    if tensor is None or not tensor.requires_grad:
        return
    roots.append(tensor)
    grads.append(_top_seed(blob, tensor, weight).to(tensor.dtype))


def _top_seed(blob, tensor, weight):
    """The diff a top sends back: the blob's diff; where its shape no longer fits (a
    loss top reshaped since its weight was set), the weight again (0 for others)."""
    seed = blob.diff_tensor()
    if seed.shape != tensor.shape:
        seed = torch.full(tensor.shape, weight, dtype=tensor.dtype, device=tensor.device)
        blob._diff.set(seed)
    return seed


# ---- the per-layer path ---------------------------------------------------------------

def _per_layer_walk(net, start, end):
    with mode.autocast(net._device), torch.enable_grad():
        for step in reversed(net._steps[end:start + 1]):
            if not step.need_backward:
                continue
            with reraise_oom('net %r, backward of layer %r (%s)'
                             % (net.name, step.name, step.lp.type), device=net._device):
                if step.runner is not None:
                    _python_backward(step)
                elif not step.tops:
                    _no_top_backward(step)
                elif step.bottoms or step.params:
                    _layer_backward(step)


def _python_backward(step):
    """A Python layer's own backward, called as Caffe's PythonLayer::Backward calls it."""
    if not hasattr(step.runner.layer, 'backward') \
            and not (any(step.bottom_need) or any(step.param_train)):
        return  # nothing asked of it: a layer without backward() is fine
    step.runner.call_backward(step.bottom_need)


def _no_top_backward(step):
    # Caffe's SilenceLayer::Backward zeroes the diffs it is asked for; the other
    # top-less layers (HDF5Output) write nothing.
    if step.lp.type != 'Silence':
        return
    for blob, need in zip(step.bottoms, step.bottom_need):
        if need and blob.data_tensor().is_floating_point():
            blob._diff.set(torch.zeros_like(blob.data_tensor()))


def _layer_backward(step):
    bottoms = _recompute_bottoms(step)
    params, leaves = _recompute_params(step)
    shapes = [t.shape for t in bottoms]
    if shapes != step.shapes:
        step.check_shapes(shapes)
    with _forward_randomness(step), step.layer.recompute():
        tops = step.layer.forward(bottoms, params)
    if len(tops) != len(step.tops):
        raise CaffeError('layer %r (%s): forward gave %d tops, the net has %d'
                         % (step.name, step.lp.type, len(tops), len(step.tops)))
    outs, seeds = [], []
    for k, (blob, t) in enumerate(zip(step.tops, tops)):
        if not t.requires_grad:
            continue
        seed = _top_seed(blob, t, step.loss_weights.get(k, 0.0))
        outs.append(t)
        seeds.append(seed.to(t.dtype))
    wanted = [t for t in bottoms if t.requires_grad] + [t for t in leaves if t.requires_grad]
    found = (torch.autograd.grad(outs, wanted, seeds, allow_unused=True)
             if outs and wanted else [None] * len(wanted))
    grads = dict(zip(map(id, wanted), found))
    for blob, t, need in zip(step.bottoms, bottoms, step.bottom_need):
        if need and t.requires_grad:
            g = grads[id(t)]
            blob._diff.set(torch.zeros_like(t) if g is None else g)
    with torch.no_grad():
        for blob, leaf in zip(step.params, leaves):
            g = grads.get(id(leaf)) if leaf.requires_grad else None
            if g is not None:
                diff = blob.mutable_diff_tensor()
                diff.add_(g.to(diff.dtype))


def _recompute_bottoms(step):
    """The bottoms as the blobs hold them, as fresh leaves; an in-place layer's bottom
    is what it read at its last forward (the blob holds its top now), as Caffe's
    in-place layers keep what their backward needs."""
    last = step.last_bottoms if len(step.last_bottoms) == len(step.bottoms) else None
    tensors = []
    for k, (blob, need) in enumerate(zip(step.bottoms, step.bottom_need)):
        t = last[k] if (last is not None and _in_place(step, k)) else blob.data_tensor()
        t = t.detach()
        if need and t.is_floating_point():
            t.requires_grad_(True)
        tensors.append(t)
    return tensors


def _recompute_params(step):
    """The params as leaves (trained ones requiring grad), and the views the layer
    computes with (a permissive share in this layer's shape)."""
    leaves, views = [], []
    for blob, shape, train in zip(step.params, step.param_shapes, step.param_train):
        leaf = blob.data_tensor().detach()
        if train and leaf.is_floating_point():
            leaf.requires_grad_(True)
        leaves.append(leaf)
        views.append(leaf.view(shape) if tuple(leaf.shape) != tuple(shape) else leaf)
    return views, leaves


@contextlib.contextmanager
def _forward_randomness(step):
    """Run with the layer's generator as it was before its last forward (Dropout draws
    the same mask), then put it back."""
    saved = step.rng_state
    gen = getattr(step.layer, 'generator', None)
    if saved is None or gen is None:
        yield
        return
    now = gen.get_state()
    gen.set_state(saved)
    try:
        yield
    finally:
        gen.set_state(now)
