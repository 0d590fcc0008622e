"""The layer interface and the registry keyed by Caffe's type name.

A layer is built from its ``caffe_pb2.LayerParameter`` and the net's phase. It knows
its learnable blobs' shapes and fillers, its tops' shapes (pure arithmetic) and its
forward computation in torch ops; gradients come from autograd, with custom
``torch.autograd.Function`` s where Caffe's backward is not the autograd of the
obvious expression.
"""
import contextlib

from ..errors import CaffeError, NetGraphError, ShapeError, UnknownLayerError
from .. import fillers

__all__ = ['Layer', 'register', 'create_layer', 'known_types', 'layer_class']

_REGISTRY = {}


def register(cls):
    """Class decorator: make ``cls`` the implementation of Caffe type ``cls.type``."""
    if not cls.type:
        raise TypeError('%s has no Caffe type name' % cls.__name__)
    if cls.type in _REGISTRY:
        raise TypeError('Caffe type %r registered twice (%s and %s)'
                        % (cls.type, _REGISTRY[cls.type].__name__, cls.__name__))
    _REGISTRY[cls.type] = cls
    return cls


def known_types():
    """The Caffe type names that have an implementation, sorted."""
    return sorted(_REGISTRY)


def layer_class(type_name):
    """The class registered for ``type_name``, or None."""
    return _REGISTRY.get(type_name)


def create_layer(layer_param, phase):
    """Build the layer that ``layer_param`` describes.

    Parameters
    ----------
    layer_param : caffe_pb2.LayerParameter
    phase : int
        ``caffe_pb2.TRAIN`` or ``caffe_pb2.TEST``.

    Raises
    ------
    UnknownLayerError
        When no implementation is registered for ``layer_param.type``; the message
        names the layer and lists the known types.
    """
    cls = _REGISTRY.get(layer_param.type)
    if cls is None:
        raise UnknownLayerError('layer %r has unknown type %r; known types: %s'
                                % (layer_param.name, layer_param.type, ', '.join(known_types())))
    return cls(layer_param, phase)


class Layer:
    """Base class of every layer: the interface the Net drives.

    Subclasses set ``type`` and override :meth:`top_shapes` and :meth:`forward`;
    layers with learnable blobs also override :meth:`param_shapes` and
    :meth:`param_fillers`.

    Attributes
    ----------
    type : str
        Caffe's type name (``'Convolution'``).
    is_loss : bool
        Whether Caffe gives top 0 a loss weight of 1 when the prototxt gives none.
    bottom_counts, top_counts : tuple of (int, int or None)
        Least and most bottoms / tops the layer accepts (None: no upper bound).
    """
    type = None
    is_loss = False
    bottom_counts = (1, 1)
    top_counts = (1, 1)

    def __init__(self, layer_param, phase):
        self.layer_param = layer_param
        self.phase = phase
        self.name = layer_param.name

    # ---- learnable blobs -------------------------------------------------------

    def param_shapes(self, bottom_shapes):
        """Shapes of the learnable blobs, in Caffe's order and layout; [] if none."""
        return []

    def param_fillers(self):
        """One ``caffe_pb2.FillerParameter`` per learnable blob, in order."""
        return []

    def fill_params(self, tensors, bottom_shapes, generator=None):
        """Fill the learnable blobs in place with the layer's fillers.

        Parameters
        ----------
        tensors : list of torch.Tensor
            As shaped by :meth:`param_shapes`.
        bottom_shapes : list of tuple
        generator : torch.Generator, optional
            CPU generator for random fillers.
        """
        specs = self.param_fillers()
        if len(specs) != len(tensors):
            raise CaffeError('layer %r (%s) has %d learnable blobs, got %d tensors to fill'
                             % (self.name, self.type, len(specs), len(tensors)))
        for tensor, spec in zip(tensors, specs):
            fillers.fill(tensor, spec, generator)

    # ---- shapes and computation ----------------------------------------------

    def top_shapes(self, bottom_shapes):
        """Shapes of the tops for bottoms of ``bottom_shapes``; raises ShapeError."""
        raise NotImplementedError

    def forward(self, bottoms, params):
        """Compute the tops from the bottoms and learnable blobs (torch tensors)."""
        raise NotImplementedError

    def reshape(self, bottom, top):
        """Shape the ``top`` Blobs for the ``bottom`` Blobs (Caffe's ``Layer::Reshape``,
        pycaffe's ``net.layers[i].reshape(bottom, top)``)."""
        for blob, shape in zip(top, self.top_shapes([tuple(b.shape) for b in bottom])):
            blob.reshape(*shape)

    # ---- helpers for the Net --------------------------------------------------

    def recompute(self):
        """A context in which :meth:`forward` recomputes the last forward, for a backward
        that recomputes the layer from its bottoms: a layer that carries state from one
        forward to the next puts back the state that forward started from. Nothing to
        do by default."""
        return contextlib.nullcontext()

    def allow_force_backward(self, bottom_index):
        """Whether ``force_backward`` may send a diff to bottom ``bottom_index``
        (Caffe's ``Layer::AllowForceBackward``: yes, but where a layer says no)."""
        return True

    def num_tops(self):
        """How many tops the prototxt gives this layer."""
        return len(self.layer_param.top)

    def loss_weights(self):
        """Loss weight of each top: the prototxt's, else 1 for a loss layer's top 0."""
        n = self.num_tops()
        given = list(self.layer_param.loss_weight)
        if given:
            if len(given) != n:
                raise CaffeError('layer %r has %d tops but %d loss_weight values'
                                 % (self.name, n, len(given)))
            return given
        return [1.0 if (self.is_loss and i == 0) else 0.0 for i in range(n)]

    def check_blob_counts(self, num_bottoms, num_tops):
        """Raise NetGraphError when the layer cannot take that many bottoms or tops."""
        for what, count, (low, high) in (('bottom', num_bottoms, self.bottom_counts),
                                         ('top', num_tops, self.top_counts)):
            if count < low or (high is not None and count > high):
                wanted = ('%d' % low if low == high else
                          'at least %d' % low if high is None else '%d to %d' % (low, high))
                raise NetGraphError('layer %r (%s) takes %s %s blob(s), got %d'
                                    % (self.name, self.type, wanted, what, count))

    def shape_error(self, message, *shapes):
        """A ShapeError naming this layer, its type, and the offending shapes."""
        text = 'layer %r (%s): %s' % (self.name, self.type, message)
        if shapes:
            text += ' (shapes: %s)' % ', '.join(str(tuple(s)) for s in shapes)
        return ShapeError(text)

    def error(self, message):
        """A CaffeError naming this layer and its type."""
        return CaffeError('layer %r (%s): %s' % (self.name, self.type, message))

    def canonical_axis(self, axis, num_axes, shape=None):
        """Caffe's CanonicalAxisIndex: a negative axis counts from the end."""
        if not -num_axes <= axis < num_axes:
            raise self.shape_error('axis %d out of range for a %d-axis blob' % (axis, num_axes),
                                   *([shape] if shape is not None else []))
        return axis % num_axes


def count(shape, start=0, end=None):
    """Product of ``shape[start:end]`` (1 for an empty range), as Blob::count."""
    total = 1
    for dim in tuple(shape)[start:end]:
        total *= int(dim)
    return total
