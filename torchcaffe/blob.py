"""Caffe's Blob on torch: a tensor of data and one of diffs, seen from numpy.

``blob.data`` and ``blob.diff`` are numpy arrays whose in-place writes
(``[...] =``, ``.flat =``, slices) change what the net uses next, as pycaffe's do.
On the CPU they are views of the tensors themselves, never copies. On an
accelerator each tensor has a host mirror managed like Caffe's ``SyncedMemory``:
reading ``.data`` copies device to host only when the device side changed since the
last copy, and marks the host side as the newest (the caller may write into it);
the net copies it back to the device only when it next needs the tensor there.

A net rebinds the data of an intermediate blob to the tensor each forward computes
(so arrays taken before a forward keep the old values), and the diff to the
gradient each backward computes. Params keep one tensor for life: the net trains
through an alias of it whose ``.grad`` is the diff tensor, so that gradients
accumulate in place until the solver clears them.
"""
import weakref

import numpy as np
import torch

from .errors import CaffeError

__all__ = ['Blob', 'BlobVec']

HOST, DEVICE, SYNCED = 'host', 'device', 'synced'

# Host <-> device copies made by mirrors, for tests of the sync logic.
copy_counts = {'to_host': 0, 'to_device': 0}


def needs_mirror(dev):
    """Whether tensors on ``dev`` need a host mirror for numpy access."""
    return dev.type != 'cpu'


class Memory:
    """One tensor and, off the CPU, its host mirror (Caffe's SyncedMemory).

    ``head`` says which side is newest: DEVICE (the tensor), HOST (the mirror, which
    the user may have written) or SYNCED. Without a mirror only the tensor exists.

    ``writes`` counts the changes torch's version counter does not see: a new tensor
    bound, a host copy pushed, a writable numpy view handed out. ``views`` holds weak
    references to the numpy views of an unmirrored tensor, which can write into it
    at any time while they live.
    """
    __slots__ = ('tensor', 'host', 'head', 'mirrored', 'writes', 'views')

    def __init__(self, tensor=None, mirrored=False):
        self.tensor = tensor
        self.host = None
        self.head = DEVICE
        self.mirrored = mirrored
        self.writes = 0
        self.views = []

    def set(self, tensor):
        """Bind a tensor computed on the device; the host mirror goes stale."""
        self.tensor = tensor
        self.head = DEVICE
        self.writes += 1

    def array(self):
        """The numpy view (CPU) or the up-to-date host mirror, marked newest."""
        t = self.tensor
        if not self.mirrored:
            if t.dtype in HOST_DTYPES:  # a copy: numpy has no bfloat16
                return t.detach().to(HOST_DTYPES[t.dtype]).numpy()
            view = t.detach().numpy()
            self.writes += 1
            self.views = [r for r in self.views if r() is not None]
            self.views.append(weakref.ref(view))
            return view
        host = self.host
        fits = host is not None and host.shape == tuple(t.shape) \
            and host.dtype == _numpy_dtype(t.dtype)
        if self.head == DEVICE or not fits:
            if not fits:
                host = self.host = _host_like(t)
            torch.from_numpy(host).copy_(t.detach())
            copy_counts['to_host'] += 1
        self.head = HOST
        return host

    def push(self):
        """Copy a newer host mirror into the tensor (in place); return the tensor."""
        t = self.tensor
        if self.head == HOST:
            host = self.host
            if tuple(host.shape) != tuple(t.shape):
                raise CaffeError('host mirror of shape %s no longer fits its tensor %s'
                                 % (host.shape, tuple(t.shape)))
            # Like a write through a CPU blob's numpy view, the copy does not count as
            # an in-place op for autograd: a backward still pending uses the new values,
            # as Caffe's would.
            with torch.no_grad(), torch.autograd._unsafe_preserve_version_counter(t):
                t.detach().copy_(torch.from_numpy(host))
            copy_counts['to_device'] += 1
            self.head = SYNCED
            self.writes += 1
        return t

    def move(self, dev, dtype):
        """Move the tensor to ``dev`` / ``dtype`` (the host side first, if newest)."""
        if self.tensor is None:
            self.mirrored = needs_mirror(dev)
            return
        if self.mirrored and self.head == HOST:
            self.push()
        t = self.tensor
        if t.device != dev or t.dtype != dtype:
            self.tensor = t.detach().to(dev, dtype, copy=True)
            self.writes += 1
        self.host = None
        self.head = DEVICE
        self.mirrored = needs_mirror(dev)

    def zero(self):
        """Zero the tensor in place (Caffe's mutable diff set to 0)."""
        if self.tensor is not None:
            with torch.no_grad():
                self.tensor.detach().zero_()
            self.head = DEVICE


_NUMPY_DTYPES = {}

# Tensors numpy cannot hold, and the dtype their arrays have instead: blobs computed
# under bfloat16 autocast (mode.set_precision('bf16')) read as float32.
HOST_DTYPES = {torch.bfloat16: torch.float32}


def _numpy_dtype(dtype):
    np_dtype = _NUMPY_DTYPES.get(dtype)
    if np_dtype is None:
        host = HOST_DTYPES.get(dtype, dtype)
        np_dtype = _NUMPY_DTYPES[dtype] = torch.empty((), dtype=host).numpy().dtype
    return np_dtype


def _host_like(t):
    """An uninitialised host array for tensor ``t``: pinned for CUDA, so that copies
    both ways run at full speed."""
    if t.is_cuda:
        return torch.empty(tuple(t.shape), dtype=HOST_DTYPES.get(t.dtype, t.dtype),
                           pin_memory=True).numpy()
    return np.empty(tuple(t.shape), _numpy_dtype(t.dtype))


class Blob:
    """A Caffe blob: ``data`` and ``diff`` arrays of one shape.

    Parameters
    ----------
    shape : tuple of int
    dtype : torch.dtype
        float32 as Caffe; tests may use float64.
    device : torch.device
    """

    def __init__(self, shape=(), dtype=torch.float32, device='cpu'):
        device = torch.device(device)
        mirrored = needs_mirror(device)
        self._shape = _as_shape(shape)
        self._dtype = dtype
        self._device = device
        self._data = Memory(mirrored=mirrored)
        self._diff = Memory(mirrored=mirrored)
        self._requires_grad = False  # params: whether the net trains them
        self._leaf = None
        self._leaf_src = None
        self._leaf_grad = None

    # ---- pycaffe's surface -------------------------------------------------------------

    @property
    def shape(self):
        """The shape as a tuple (``()`` for a loss)."""
        t = self._data.tensor
        return self._shape if t is None else tuple(t.shape)

    @property
    def count(self):
        """Number of elements."""
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def num(self):
        """Caffe's legacy axis 0 (1 when the blob has fewer axes)."""
        return self._legacy(0)

    @property
    def channels(self):
        """Caffe's legacy axis 1."""
        return self._legacy(1)

    @property
    def height(self):
        """Caffe's legacy axis 2."""
        return self._legacy(2)

    @property
    def width(self):
        """Caffe's legacy axis 3."""
        return self._legacy(3)

    def _legacy(self, index):
        shape = self.shape
        if len(shape) > 4:
            raise CaffeError('legacy accessors need a blob of at most 4 axes, shape is %s'
                             % (shape,))
        return shape[index] if index < len(shape) else 1

    @property
    def data(self):
        """The data as a writable numpy array."""
        if self._data.tensor is None:
            self._allocate(self._data)
        return self._data.array()

    @property
    def diff(self):
        """The diff as a writable numpy array (zeros until a backward writes it)."""
        m = self._diff
        if m.tensor is None or tuple(m.tensor.shape) != self.shape:
            self._allocate(m)
        return m.array()

    def reshape(self, *shape):
        """Change the shape (Caffe's Reshape); ``reshape(1, 3, 4, 4)`` or a tuple.

        The data keeps its values when the element count is unchanged; otherwise it
        starts at zero. The diff starts at zero.
        """
        if len(shape) == 1 and not isinstance(shape[0], (int, np.integer)):
            shape = tuple(shape[0])
        shape = _as_shape(shape)
        if shape == self.shape:
            return
        m = self._data
        t = m.tensor
        if t is not None and int(np.prod(shape, dtype=np.int64)) == t.numel():
            if m.mirrored and m.head == HOST:
                m.push()
            m.set(t.detach().reshape(shape))
        else:
            m.tensor = None
            m.host = None
            m.head = DEVICE
        self._shape = shape
        self._diff.tensor = None
        self._diff.host = None

    def __repr__(self):
        return 'Blob(shape=%s)' % (self.shape,)

    # ---- torch-side access (the net's and the solver's) ------------------------------

    def data_tensor(self):
        """The data tensor on the device, with any host writes copied in."""
        m = self._data
        if m.tensor is None:
            self._allocate(m)
        if m.head == HOST:
            m.push()
        return m.tensor

    def mutable_data_tensor(self):
        """Like :meth:`data_tensor`, for writing in place: the host mirror goes stale."""
        t = self.data_tensor()
        self._data.head = DEVICE
        return t

    def diff_tensor(self):
        """The diff tensor on the device, with any host writes copied in."""
        m = self._diff
        if m.tensor is None or tuple(m.tensor.shape) != self.shape:
            self._allocate(m)
        if m.head == HOST:
            m.push()
        return m.tensor

    def mutable_diff_tensor(self):
        """Like :meth:`diff_tensor`, for writing in place: the host mirror goes stale."""
        t = self.diff_tensor()
        self._diff.head = DEVICE
        return t

    def set_data(self, array):
        """Write ``array`` (already of this shape) into the data, in place."""
        array = np.asarray(array)
        m = self._data
        if m.tensor is None:
            self._allocate(m)
        if m.mirrored:
            host = m.host
            if host is None or host.shape != tuple(m.tensor.shape) \
                    or host.dtype != _numpy_dtype(m.tensor.dtype):
                host = m.host = _host_like(m.tensor)
            host[...] = array
            m.head = HOST
        else:
            m.tensor.detach().numpy()[...] = array
            m.writes += 1

    def data_token(self):
        """A token that changes whenever the data may have changed; None when that
        cannot be known.

        Layers cache what they derive from a param's values under it (the
        Deconvolution fast path's diagonal check). It is ``(memory, tensor, writes,
        version)``: the first two compare by identity, the rest by value (see
        :class:`Memory` for ``writes``; ``version`` is torch's counter of in-place
        ops, which the solver's update bumps). None while a numpy view of CPU data
        is alive, since writes through it reach the tensor unseen.
        """
        m = self._data
        t = m.tensor
        if t is None:
            return None
        if m.views:
            m.views = [r for r in m.views if r() is not None]
            if m.views:
                return None
        return (m, t, m.writes, t._version)

    # ---- internals -------------------------------------------------------------------

    def _allocate(self, m):
        """Give memory ``m`` zeros of the blob's shape (on the host side if mirrored)."""
        shape = self.shape
        dtype = self._dtype if self._data.tensor is None else self._data.tensor.dtype
        dtype = HOST_DTYPES.get(dtype, dtype)  # so that numpy writes reach it
        m.tensor = torch.zeros(shape, dtype=dtype, device=self._device)
        if m.mirrored:  # both sides start at zero: nothing to copy either way
            m.host = _host_like(m.tensor)
            m.host[...] = 0
            m.head = SYNCED
        else:
            m.host = None
            m.head = DEVICE

    def _declare_shape(self, shape):
        """Set the shape a layer will give this blob, dropping data of another shape
        (zeros are allocated on the next access)."""
        shape = tuple(int(d) for d in shape)
        if shape != self.shape:
            self._data.tensor = self._data.host = None
            self._data.head = DEVICE
            self._shape = shape
            self._diff.tensor = self._diff.host = None

    def _capture_diff(self, grad):
        """Autograd hook: the gradient w.r.t. the blob becomes its diff."""
        self._diff.set(grad)

    def _to(self, dev, dtype=None):
        dtype = dtype or self._dtype
        self._data.move(dev, dtype)
        self._diff.move(dev, dtype)
        self._device, self._dtype = dev, dtype

    def _param_tensor(self):
        """The tensor the net computes with: an alias of the data whose ``.grad`` is
        the diff when the param is trained, else the data tensor itself."""
        t = self._data.tensor
        if self._data.head == HOST:
            t = self._data.push()
        if not self._requires_grad:
            return t
        g = self._diff.tensor
        if self._leaf_src is not t or self._leaf_grad is not g or g is None:
            if g is None or g.shape != t.shape:
                self._allocate(self._diff)
                g = self._diff.tensor
            leaf = t.detach().requires_grad_(True)
            leaf.grad = g
            self._leaf, self._leaf_src, self._leaf_grad = leaf, t, g
        return self._leaf


class BlobVec(list):
    """pycaffe's BlobVec: a Python layer's learnable blobs (``self.blobs``)."""

    def add_blob(self, *shape):
        """Append a new zero blob of ``shape``."""
        self.append(Blob(shape))


def _as_shape(shape):
    shape = tuple(int(d) for d in shape)
    if any(d < 0 for d in shape):
        raise CaffeError('blob dimensions must be non-negative, got %s' % (shape,))
    return shape
