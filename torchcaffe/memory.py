"""Out-of-memory failures turned into errors that say what was being allocated.

torch's allocators fail with a bare ``RuntimeError`` ("DefaultCPUAllocator: can't
allocate memory: you tried to allocate 120000000000 bytes") or a
``torch.OutOfMemoryError`` on CUDA, naming neither the layer nor the blob. The net
wraps its allocations and its layers' calls with :func:`reraise_oom` so that the error
names the layer, the blob or param, its shape and the bytes asked for.
"""
import contextlib
import ctypes
import math
import os
import re
import sys

import torch

from .errors import OutOfMemoryError

__all__ = ['nbytes', 'format_bytes', 'is_out_of_memory', 'requested_bytes', 'reraise_oom',
           'keep_freed_memory']

_CPU_BYTES = re.compile(r'tried to allocate (\d+) bytes', re.IGNORECASE)
_CUDA_BYTES = re.compile(r'Tried to allocate ([0-9.]+) (B|KiB|MiB|GiB|TiB)')
_UNITS = {'B': 1, 'KiB': 2 ** 10, 'MiB': 2 ** 20, 'GiB': 2 ** 30, 'TiB': 2 ** 40}


def nbytes(shape, dtype=torch.float32):
    """Bytes a dense tensor of ``shape`` and ``dtype`` takes.

    >>> nbytes((1, 3, 100000, 100000))
    120000000000
    >>> nbytes((2, 2), torch.float64)
    32
    """
    itemsize = torch.empty((), dtype=dtype).element_size()
    return math.prod(int(d) for d in shape) * itemsize


def format_bytes(n):
    """``n`` bytes for a person: exact count and binary units.

    >>> format_bytes(120000000000)
    '120000000000 bytes (111.8 GiB)'
    >>> format_bytes(512)
    '512 bytes'
    """
    n = int(n)
    for unit in ('TiB', 'GiB', 'MiB', 'KiB'):
        if n >= _UNITS[unit]:
            return '%d bytes (%.1f %s)' % (n, n / _UNITS[unit], unit)
    return '%d bytes' % n


def is_out_of_memory(err):
    """Whether ``err`` is an allocator's out-of-memory failure (CPU or CUDA).

    >>> is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: you "
    ...                               "tried to allocate 8 bytes"))
    True
    >>> is_out_of_memory(RuntimeError('shape mismatch'))
    False
    """
    if isinstance(err, OutOfMemoryError):
        return False  # already explained
    if isinstance(err, (MemoryError, torch.OutOfMemoryError)):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and (
        "can't allocate memory" in text or 'out of memory' in text.lower())


def requested_bytes(err):
    """The byte count an allocator's message says it was asked for, or None.

    >>> requested_bytes(RuntimeError('... you tried to allocate 120000000000 bytes. Error'))
    120000000000
    >>> requested_bytes(RuntimeError('CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0)'))
    2147483648
    """
    text = str(err)
    m = _CPU_BYTES.search(text)
    if m:
        return int(m.group(1))
    m = _CUDA_BYTES.search(text)
    if m:
        return int(float(m.group(1)) * _UNITS[m.group(2)])
    return None


def _device_of(err, device):
    # torch raises OutOfMemoryError for CUDA (and other accelerators); its message says so
    if isinstance(err, torch.OutOfMemoryError) or 'CUDA' in str(err):
        return 'cuda'
    return 'cpu' if device is None else str(device)


@contextlib.contextmanager
def reraise_oom(what, shape=None, dtype=torch.float32, device=None):
    """Turn an out-of-memory failure inside the block into :class:`OutOfMemoryError`.

    Parameters
    ----------
    what : str
        What was being made, e.g. ``"layer 'conv1' (Convolution), param 0"``.
    shape : tuple of int, optional
        The shape being allocated, when known; its size in bytes is stated too.
    dtype : torch.dtype
        The element type, for the byte count from ``shape``.
    device : str or torch.device, optional
        Where the memory was asked for.
    """
    try:
        yield
    except (RuntimeError, MemoryError) as err:
        if not is_out_of_memory(err):
            raise
        asked = requested_bytes(err)
        if asked is None and shape is not None:
            asked = nbytes(shape, dtype)
        parts = [what]
        if shape is not None:
            parts.append('shape %s' % (tuple(int(d) for d in shape),))
        message = '%s: out of %s memory' % (', '.join(parts), _device_of(err, device))
        if asked is not None:
            message += ' allocating %s' % format_bytes(asked)
        raise OutOfMemoryError(message, asked) from err


# glibc's mallopt parameters (malloc.h): a freed block is returned to the OS when
# more than TRIM_THRESHOLD bytes are free at the top of the heap; blocks of
# MMAP_THRESHOLD bytes or more get their own mmap, unmapped again on free.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_KEEP = {'done': False, 'kept': False}


def keep_freed_memory():
    """Have glibc keep freed blocks for reuse instead of unmapping them; once per
    process, on Linux with glibc. Returns whether the setting is in force.

    By default glibc serves every block of 32 MiB or more (far less at first)
    with its own mmap and unmaps it when freed, so every blob a forward makes
    starts as fresh pages that the kernel must fault in and zero: on the machines
    measured, a ReLU over FCN's 64 x 700 x 700 conv1 blob took 10x longer out of
    place than in place, and a 3x3 convolution 1.5x longer, for that alone.
    Caffe keeps its blobs' memory from one pass to the next, onnxruntime has an
    arena; here the heap keeps it (up to 1 GiB per block served from the heap,
    2 GiB free before trimming). The resident set then stays at the peak.
    ``TORCHCAFFE_KEEP_MEMORY=0`` leaves glibc's defaults.
    """
    if _KEEP['done']:
        return _KEEP['kept']
    _KEEP['done'] = True
    if os.environ.get('TORCHCAFFE_KEEP_MEMORY', '1').strip() == '0' \
            or not sys.platform.startswith('linux'):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # absent from musl
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _KEEP['kept'] = bool(mallopt(_M_MMAP_THRESHOLD, 1 << 30)) and \
        bool(mallopt(_M_TRIM_THRESHOLD, (1 << 31) - 1))
    return _KEEP['kept']
