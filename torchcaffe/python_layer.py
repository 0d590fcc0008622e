"""Python layers: pycaffe's ``caffe.Layer`` and the bridge that runs them in a net.

A prototxt layer of type ``Python`` names a module and a class in its
``python_param``; the class derives from :class:`Layer` and works on lists of
:class:`~torchcaffe.blob.Blob` through their numpy ``data`` and ``diff``. As in
Caffe, the object is made with the LayerParameter, gets ``param_str`` and ``phase``
before ``setup(bottom, top)``, then ``reshape`` before every ``forward`` (so each
forward may change the tops' shapes), and ``backward(top, propagate_down, bottom)``
when a bottom or one of its own blobs needs a gradient.

Inside a net the layer runs as one ``torch.autograd.Function``: forward hands it
the bottoms (host arrays), returns copies of its tops on the net's device; backward
hands it the tops' diffs and returns the bottoms' diffs. Learnable blobs it adds
with ``self.blobs.add_blob(...)`` are net params; its backward writes their diffs.
"""
import importlib

import torch

from .blob import BlobVec
from .errors import CaffeError

__all__ = ['Layer', 'create_python_layer', 'PythonLayerRunner']


class Layer:
    """Base class of Python layers (pycaffe's ``caffe.Layer``).

    Subclasses override ``setup``, ``reshape``, ``forward`` and, when they pass
    gradients, ``backward``. Attributes set by the net before ``setup``:

    Attributes
    ----------
    param_str : str
        ``python_param.param_str`` from the prototxt.
    phase : int
        ``caffe.TRAIN`` (0) or ``caffe.TEST`` (1).
    blobs : BlobVec
        Learnable blobs; ``self.blobs.add_blob(*shape)`` adds one.
    """

    def __init__(self, layer_param=None):
        self._layer_param = layer_param

    @property
    def type(self):
        """Caffe's type name of every Python layer."""
        return 'Python'

    @property
    def blobs(self):
        vec = self.__dict__.get('_caffe_blobs')
        if vec is None:
            vec = self.__dict__['_caffe_blobs'] = BlobVec()
        return vec

    def setup(self, bottom, top):
        """Check parameters and bottoms once, when the net is made."""

    def reshape(self, bottom, top):
        """Shape the tops (and internal buffers) for the current bottoms."""


def create_python_layer(layer_param):
    """Import ``python_param.module`` and make its ``python_param.layer`` class.

    The module is imported from ``sys.path`` (so a model folder's own layers
    module is found when the script runs there). The class is called with the
    LayerParameter, as Caffe's layer factory calls it.

    Raises
    ------
    CaffeError
        The module cannot be imported, lacks the class, or the class is not
        a :class:`Layer`; the message names the layer.
    """
    p = layer_param.python_param
    where = 'layer %r (Python)' % layer_param.name
    if not p.module or not p.layer:
        raise CaffeError('%s: python_param needs both module and layer' % where)
    try:
        module = importlib.import_module(p.module)
    except ImportError as err:
        raise CaffeError('%s: cannot import module %r: %s' % (where, p.module, err)) from err
    cls = getattr(module, p.layer, None)
    if cls is None:
        raise CaffeError('%s: module %r (%s) has no attribute %r'
                         % (where, p.module, getattr(module, '__file__', '?'), p.layer))
    if not (isinstance(cls, type) and issubclass(cls, Layer)):
        raise CaffeError('%s: %s.%s is not a subclass of caffe.Layer'
                         % (where, p.module, p.layer))
    return cls(layer_param)


class PythonLayerRunner:
    """Drives one Python layer inside a net.

    Parameters
    ----------
    layer : Layer
    layer_param : caffe_pb2.LayerParameter
    phase : int
    bottoms, tops : list of Blob
        The net's own blobs, which the layer reads and writes.
    """

    def __init__(self, layer, layer_param, phase, bottoms, tops):
        self.layer = layer
        self.name = layer_param.name
        self.bottoms = bottoms
        self.tops = tops
        self.top_ids = {id(b) for b in tops}
        layer.param_str = layer_param.python_param.param_str
        layer.phase = int(phase)

    def setup(self):
        """Caffe's SetUp for a Python layer: ``setup`` then ``reshape``."""
        self.layer.setup(self.bottoms, self.tops)
        self.layer.reshape(self.bottoms, self.tops)

    def reshape(self):
        self.layer.reshape(self.bottoms, self.tops)

    def run(self):
        """``reshape`` and ``forward`` on the blobs (Caffe's Layer::Forward)."""
        self.layer.reshape(self.bottoms, self.tops)
        self.layer.forward(self.bottoms, self.tops)

    def apply(self, inputs):
        """Run through autograd; ``inputs`` are the bottom tensors then the params'."""
        return _PythonFunction.apply(self, len(self.bottoms), *inputs)

    def backward(self, grads, propagate_down):
        if not hasattr(self.layer, 'backward'):
            raise CaffeError('layer %r (Python): %s has no backward() but a gradient is '
                             'needed' % (self.name, type(self.layer).__name__))
        for blob, grad in zip(self.tops, grads):
            # A copy: the layer may write into it, and autograd may share the tensor.
            blob._diff.set(grad.detach().clone())
        for blob, down in zip(self.bottoms, propagate_down):
            if down and id(blob) not in self.top_ids:
                blob._diff.tensor = None  # zeros for the layer to fill
        self.layer.backward(self.tops, list(propagate_down), self.bottoms)
        return [blob.diff_tensor().clone() if down else None
                for blob, down in zip(self.bottoms, propagate_down)]


class _PythonFunction(torch.autograd.Function):
    """A Python layer as one autograd node (see the module docstring)."""

    @staticmethod
    def forward(ctx, runner, num_bottoms, *inputs):
        ctx.runner = runner
        ctx.num_bottoms = num_bottoms
        ctx.num_params = len(inputs) - num_bottoms
        runner.run()
        return tuple(blob.data_tensor().detach().clone() for blob in runner.tops)

    @staticmethod
    def backward(ctx, *grads):
        nb = ctx.num_bottoms
        propagate_down = [bool(n) for n in ctx.needs_input_grad[2:2 + nb]]
        bottom_grads = ctx.runner.backward(grads, propagate_down)
        return (None, None) + tuple(bottom_grads) + (None,) * ctx.num_params
