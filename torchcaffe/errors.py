"""Exception types raised by torchcaffe.

Every error that comes from a bad file names the file (and, for text formats, the
line and column); every error that comes from a bad net names the layer.
"""


class CaffeError(Exception):
    """Base class of every error torchcaffe raises on purpose."""


class FormatError(CaffeError, ValueError):
    """A Caffe file (prototxt, caffemodel, solverstate, HDF5) cannot be read or written.

    Parameters
    ----------
    path : str or None
        The file the error is about.
    message : str
        What is wrong with it.
    """

    def __init__(self, path, message):
        self.path = None if path is None else str(path)
        self.message = message
        super().__init__(message if path is None else '%s: %s' % (path, message))


class PrototxtError(FormatError):
    """A text-format file does not parse; carries ``line`` and ``column`` (1-based)."""

    def __init__(self, path, line, column, message):
        self.line = line
        self.column = column
        where = '%s:%s:%s' % (path or '<string>', line, column)
        CaffeError.__init__(self, '%s: %s' % (where, message))
        self.path = None if path is None else str(path)
        self.message = message


class NetSpecError(CaffeError, ValueError):
    """A NetSpec cannot be turned into a NetParameter (bad keyword, unknown param, ...)."""


class CoordMapError(CaffeError, ValueError, AssertionError):
    """Coordinate mapping between two blobs is undefined, or a crop offset is not usable.

    Also an AssertionError, since pycaffe's ``coord_map`` refuses these cases with
    ``assert`` (negative crop, scale mismatch, tops with no common ancestor), and
    code written for it catches that.
    """


class NetSpecTypeError(NetSpecError, TypeError):
    """A net-spec layer was given something other than a Top as a bottom (a tuple of
    a multi-top layer's tops, say); a TypeError, as pycaffe's ``net_spec`` raises."""


class TransformError(CaffeError, ValueError):
    """An image does not fit the transform_param (smaller than the crop, a mean of
    another size, an undecodable file); the message names the layer."""


class ShapeError(CaffeError, ValueError):
    """Blob shapes do not fit a layer; the message names the layer and the shapes."""


class UnknownLayerError(CaffeError, ValueError):
    """A layer's type has no implementation; the message names the layer and lists known types."""


class NetGraphError(CaffeError, ValueError):
    """The layers do not wire up: a bottom no earlier layer produces, a top produced
    twice (other than in place), or a wrong number of bottoms or tops; the message
    names the layer and the blob."""


class NetMismatchError(CaffeError, ValueError):
    """Saved weights or a solver state do not fit the net they are loaded into (blob
    count or shape): a file made for another net. The message names the file, the
    layer and both shapes."""


class LabelError(CaffeError, ValueError):
    """A label value is neither a class of the scores nor the ignore label (Caffe's
    SoftmaxWithLoss CHECKs it); the message names the layer and the value."""


class OutOfMemoryError(CaffeError, MemoryError):
    """Memory for a blob, a param or a layer's output cannot be had (CPU or CUDA); the
    message names the layer, the blob or param, its shape and the bytes asked for.

    ``bytes_requested`` holds that count (None when the allocator did not say)."""

    def __init__(self, message, bytes_requested=None):
        super().__init__(message)
        self.bytes_requested = bytes_requested


class SnapshotError(CaffeError, OSError):
    """Snapshots cannot be written where the solver's ``snapshot_prefix`` points."""
