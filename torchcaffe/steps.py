"""The steps of a :class:`torchcaffe.Net`: one per layer, as the net runs it.

A step holds the layer, its bottom and top Blobs (resolved once at setup), its
learnable blobs with what the net decided about them (shapes, sharing, which get
diffs: see :mod:`torchcaffe.backward`), and what its last forward left for backward
(the bottom tensors, the loss tops, the state of the bottoms and of the layer's
random generator). Three kinds: a plain layer, an Input layer (whose tops are the
user's), and a Python layer driven through its :class:`PythonLayerRunner`.
"""
import torch

from .errors import ShapeError

__all__ = ['Step', 'InputStep', 'PythonStep', 'oom_where']


class Step:
    """One layer as the net runs it, with its blobs resolved once at setup."""

    runner = None  # a Python layer's PythonLayerRunner

    def __init__(self, index, lp, layer, bottoms, tops, in_place):
        self.index = index
        self.name = lp.name
        self.lp = lp
        self.layer = layer
        self.bottoms = bottoms
        self.tops = tops
        self.in_place = in_place
        # What the prototxt alone allows, independent of the net's losses (to_module
        # reads these): propagate_down false per bottom, or None; per param, lr_mult != 0
        # or force_backward; (detach, view shape) per param when any is needed.
        self.stop_grad = None
        self.param_trainable = []
        self.param_special = None
        self.params = []           # Blob per learnable blob (shared ones are the owner's)
        self.param_shapes = []     # this layer's own shape of each
        self.param_down = []       # lr_mult != 0 of each (Caffe's param_need_backward)
        # Set by backward.analyse (Caffe's Net::Init): whether the layer runs backward,
        # which bottoms get diffs, which params get diffs.
        self.need_backward = False
        self.bottom_need = []
        self.param_train = []
        # What this net's backward walk detaches, from the above: per bottom, or None;
        # (detach, view shape) per param, or None.
        self.walk_stop = None
        self.walk_special = None
        self.param_owned = []      # False where the blob is shared from an earlier layer
        self.produced = []         # (top index, Blob): tops made here whose diff is captured
        self.kept_diffs = ()       # top indices of net outputs: forward keeps their diffs
        self.loss_weights = {}     # top index -> nonzero loss weight
        self.loss_outputs = {}     # top index -> tensor of the last forward
        self.shapes = None         # bottom shapes at the last shape check
        self.last_bottoms = ()     # the bottom tensors of the last forward (backward(end=))
        self.recorded = False      # the last forward recorded an autograd graph
        self.forward_state = None  # backward.bottom_state after a recorded forward
        self.rng_state = None      # the layer's generator before its last forward

    # ---- pieces shared by the step kinds --------------------------------------------

    def bottom_tensors(self):
        tensors = [b.data_tensor() for b in self.bottoms]
        if self.walk_stop is not None:
            tensors = [t.detach() if stop else t for t, stop in zip(tensors, self.walk_stop)]
        return tensors

    def param_tensors(self):
        if self.walk_special is None:
            return [p._param_tensor() for p in self.params]
        tensors = []
        for p, (detach, view) in zip(self.params, self.walk_special):
            t = p._param_tensor()
            if detach:
                t = t.detach()
            if view is not None:
                t = t.view(view)
            tensors.append(t)
        return tensors

    def publish(self, tops):
        """Bind computed tops to their blobs, then record them."""
        for blob, t in zip(self.tops, tops):
            blob._data.set(t)
        self.record(tops)

    def record(self, tops):
        """Clear the diffs of blobs made here and hook their gradient capture."""
        for k, blob in self.produced:
            if k not in self.kept_diffs:  # Caffe's forward leaves an output's diff as it is
                blob._diff.tensor = None
            t = tops[k]
            if t.requires_grad:
                t.register_hook(blob._capture_diff)
        if self.loss_weights:
            self.loss_outputs = {k: tops[k] for k in self.loss_weights}

    def publish_sources(self, force_backward):
        """Tops the net does not compute (inputs, data layers): under force_backward
        they become leaves so that their diffs are computed, as Caffe computes them."""
        tensors = []
        for blob in self.tops:
            t = blob.data_tensor()
            if force_backward and t.is_floating_point():
                t = t.detach().requires_grad_(True)
                blob._data.tensor = t  # same storage: the host side stays valid
            tensors.append(t)
        self.record(tensors)

    def check_shapes(self, shapes):
        """Validate new bottom shapes (Caffe's Reshape), keep them; return the top shapes."""
        shapes = [tuple(s) for s in shapes]
        top_shapes = self.top_shapes(shapes)
        self.shapes = shapes
        return top_shapes

    def top_shapes(self, shapes):
        """The top shapes for these bottom shapes, or a ShapeError naming the layer
        (also when they need learnable blobs of other shapes than the layer's)."""
        layer = self.layer
        try:
            top_shapes = layer.top_shapes(shapes)
            if self.params:
                want = [tuple(int(d) for d in s) for s in layer.param_shapes(shapes)]
                if want != self.param_shapes:
                    raise ShapeError('bottoms of shapes %s need learnable blobs of shapes %s, '
                                     'the layer has %s' % (shapes, want, self.param_shapes))
        except ShapeError as err:
            if repr(self.name) in str(err):
                raise
            raise ShapeError('layer %r (%s): %s' % (self.name, self.lp.type, err)) from err
        return top_shapes

    def release(self):
        """Before a forward recomputes this layer: let go of the last forward's graph
        (its tensors keep their values until they are replaced)."""
        for blob, in_place in zip(self.tops, self.in_place):
            t = blob._data.tensor
            if not in_place and t is not None and t.grad_fn is not None:
                blob._data.tensor = t.detach()
        self.loss_outputs = {}
        self.stale()

    def stale(self):
        """After a reshape or new weights: the last forward's graph no longer holds."""
        self.forward_state = None
        self.last_bottoms = ()

    # ---- the step kinds override these ---------------------------------------------

    def run(self, force_backward):
        gen = getattr(self.layer, 'generator', None)
        self.rng_state = gen.get_state() if gen is not None else None
        self.recorded = torch.is_grad_enabled()
        bottoms = self.last_bottoms = self.bottom_tensors()
        shapes = [t.shape for t in bottoms]
        if shapes != self.shapes:
            self.check_shapes(shapes)
        self.publish(self.layer.forward(bottoms, self.param_tensors()))

    def reshape(self):
        top_shapes = self.check_shapes([b.shape for b in self.bottoms])
        for blob, shape, in_place in zip(self.tops, top_shapes, self.in_place):
            if not in_place:
                blob._declare_shape(shape)


class InputStep(Step):
    """An Input layer: its tops are the net's inputs, written by the user."""

    def run(self, force_backward):
        self.publish_sources(force_backward)

    def reshape(self):
        pass

    def release(self):
        pass  # the inputs are the user's

    def stale(self):
        pass


class PythonStep(Step):
    """A Python layer, run through :class:`PythonLayerRunner`."""

    def __init__(self, index, lp, layer, bottoms, tops, in_place, runner):
        super().__init__(index, lp, layer, bottoms, tops, in_place)
        self.runner = runner

    def run(self, force_backward):
        runner = self.runner
        self.recorded = torch.is_grad_enabled()
        if not self.bottoms and not self.params:  # a data layer: nothing to differentiate
            runner.run()
            self.publish_sources(force_backward)
        elif not self.tops:
            runner.run()
        else:
            self.last_bottoms = self.bottom_tensors()
            self.publish(runner.apply(self.last_bottoms + self.param_tensors()))

    def reshape(self):
        self.runner.reshape()



def oom_where(step):
    """The layer and the tops (with shapes) a forward step makes, for memory errors."""
    tops = ', '.join('%r %s' % (name, tuple(blob.shape))
                     for name, blob in zip(step.lp.top, step.tops))
    return 'layer %r (%s) making top %s' % (step.name, step.lp.type, tops)
