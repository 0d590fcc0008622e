"""A pure-Python reader of MATLAB v5 ``.mat`` files, for the datasets' label files.

SBD (``cls/<id>.mat``), SIFT Flow, NYUDv2 and PASCAL-Context keep labels in MAT
files. ``scipy.io.loadmat`` parses them in compiled code that trusts the sizes
and type codes in the file: a damaged or hostile file can crash the process
(segmentation faults found by ``tests/test_fuzz.py``). This reader checks every
tag against the bytes that are there before it uses it, so a bad file raises
:class:`MatFileError` and nothing else; arrays are never larger than the bytes
that hold them, and compressed elements inflate to at most ``MAX_INFLATED``.

It returns what ``scipy.io.loadmat`` returns with its defaults for what label
files hold: numeric and logical matrices as arrays in MATLAB's shape, structs
as structured arrays of objects (``mat['GTcls'][0]['Segmentation'][0]``), cells
as object arrays, char arrays as arrays of ``str``. Sparse matrices (SBD's
``Boundaries``) read as None: no label layer uses them. Objects, functions and
v4 / v7.3 (HDF5) files are refused.

>>> import io, scipy.io
>>> buf = io.BytesIO()
>>> scipy.io.savemat(buf, {'S': np.arange(6).reshape(2, 3)})
>>> loadmat(buf.getvalue())['S']
array([[0, 1, 2],
       [3, 4, 5]])
"""
import os
import struct
import zlib

import numpy as np

__all__ = ['MatFileError', 'loadmat', 'MAX_INFLATED']

MAX_INFLATED = 1 << 28  # bytes one compressed variable may inflate to

# Data element types (miINT8 ...) -> numpy dtype (without byte order).
MI_TYPES = {1: 'i1', 2: 'u1', 3: 'i2', 4: 'u2', 5: 'i4', 6: 'u4', 7: 'f4', 9: 'f8',
            12: 'i8', 13: 'u8', 16: 'u1', 17: 'u2', 18: 'u4'}
MI_MATRIX, MI_COMPRESSED = 14, 15
# Array classes (mxDOUBLE_CLASS ...) -> numpy dtype of the values.
MX_NUMERIC = {6: 'f8', 7: 'f4', 8: 'i1', 9: 'u1', 10: 'i2', 11: 'u2', 12: 'i4', 13: 'u4',
              14: 'i8', 15: 'u8'}
MX_CELL, MX_STRUCT, MX_OBJECT, MX_CHAR, MX_SPARSE = 1, 2, 3, 4, 5
MAX_DEPTH = 32  # cells and structs nested deeper than this are refused


class MatFileError(ValueError):
    """The bytes are not a MATLAB v5 file this reader can read; says what is wrong."""


class _Reader:
    def __init__(self, data, order):
        self.data = data
        self.order = order

    def element(self, pos, end):
        """(type, payload bytes, next position) of the data element at ``pos``."""
        if pos + 8 > end:
            raise MatFileError('data element tag at byte %d runs past its end' % pos)
        first, second = struct.unpack_from(self.order + 'II', self.data, pos)
        if first >> 16:  # small data element: type and size share the first word
            kind, size, start, step = first & 0xFFFF, first >> 16, pos + 4, 8
            if size > 4:
                raise MatFileError('small data element at byte %d claims %d bytes' % (pos, size))
        else:
            kind, size, start = first, second, pos + 8
            step = 8 + size + (0 if kind == MI_COMPRESSED else -size % 8)  # unpadded
        if start + size > end:
            raise MatFileError('data element at byte %d claims %d bytes, %d are left'
                               % (pos, size, end - start))
        return kind, self.data[start:start + size], min(pos + step, end)

    def numbers(self, kind, payload, what):
        if kind not in MI_TYPES or kind == MI_MATRIX:
            raise MatFileError('%s has data type %d, not a numeric type' % (what, kind))
        dtype = np.dtype(MI_TYPES[kind]).newbyteorder(self.order)
        if len(payload) % dtype.itemsize:
            raise MatFileError('%s: %d bytes is not a whole number of %s'
                               % (what, len(payload), dtype))
        return np.frombuffer(payload, dtype)

    def matrix(self, payload, depth):
        """(name, value) of one miMATRIX element's payload."""
        if depth > MAX_DEPTH:
            raise MatFileError('cells or structs nested more than %d deep' % MAX_DEPTH)
        if not payload:  # an empty cell entry
            return '', np.zeros((0, 0))
        sub = _Reader(payload, self.order)
        end = len(payload)
        kind, flags, pos = sub.element(0, end)
        flags = sub.numbers(kind, flags, 'array flags')
        if flags.size < 2:
            raise MatFileError('array flags too short')
        mx, complex_ = int(flags[0]) & 0xFF, int(flags[0]) & 0x800  # logical stays uint8
        kind, dims, pos = sub.element(pos, end)
        dims = sub.numbers(kind, dims, 'dimensions').astype(np.int64)
        if dims.size < 2 or dims.min() < 0:
            raise MatFileError('bad dimensions %s' % dims.tolist())
        dims = tuple(int(d) for d in dims)
        kind, name, pos = sub.element(pos, end)
        name = sub.numbers(kind, name, 'array name').astype(np.uint8).tobytes()
        try:
            name = name.decode('ascii')
        except UnicodeDecodeError:
            raise MatFileError('array name %r is not ASCII' % name) from None
        count = int(np.prod(dims, dtype=object))
        if mx in MX_NUMERIC or mx == MX_CHAR:
            kind, real, pos = sub.element(pos, end)
            values = sub.numbers(kind, real, 'values of %r' % name)
            if values.size != count:
                raise MatFileError('%r: %d values for dimensions %s' % (name, values.size, dims))
            if mx == MX_CHAR:
                return name, _chars(values, dims)
            # As scipy's default (mat_dtype=False): values keep the type they are stored in.
            values = values.astype(values.dtype.newbyteorder('='))
            if complex_:
                kind, imag, pos = sub.element(pos, end)
                imag = sub.numbers(kind, imag, 'imaginary values of %r' % name)
                if imag.size != count:
                    raise MatFileError('%r: %d imaginary values for %s' % (name, imag.size, dims))
                values = values + 1j * imag
            return name, values.reshape(dims, order='F')
        if mx == MX_CELL:
            cells = np.empty(count, dtype=object)
            for i in range(count):
                cells[i], pos = sub.nested(pos, end, depth)
            return name, cells.reshape(dims, order='F')
        if mx == MX_STRUCT:
            return name, sub.struct(pos, end, dims, count, depth, name)
        if mx == MX_SPARSE:
            return name, None
        raise MatFileError('%r: array class %d (objects, functions, ...) is not supported'
                           % (name, mx))

    def nested(self, pos, end, depth):
        kind, payload, pos = self.element(pos, end)
        if kind != MI_MATRIX:
            raise MatFileError('cell or struct field of data type %d, not a matrix' % kind)
        return self.matrix(payload, depth + 1)[1], pos

    def struct(self, pos, end, dims, count, depth, name):
        kind, length, pos = self.element(pos, end)
        length = self.numbers(kind, length, 'field name length of %r' % name)
        if length.size != 1 or not 0 < int(length[0]) <= 64:
            raise MatFileError('%r: bad field name length %s' % (name, length.tolist()))
        length = int(length[0])
        kind, names, pos = self.element(pos, end)
        names = self.numbers(kind, names, 'field names of %r' % name).astype(np.uint8).tobytes()
        if len(names) % length:
            raise MatFileError('%r: field names do not fill %d-byte slots' % (name, length))
        try:
            fields = [names[i:i + length].split(b'\0')[0].decode('ascii')
                      for i in range(0, len(names), length)]
        except UnicodeDecodeError:
            raise MatFileError('%r: field names are not ASCII' % name) from None
        if not all(fields) or len(set(fields)) != len(fields):
            raise MatFileError('%r: empty or repeated field names %s' % (name, fields))
        out = np.empty(count, dtype=[(f, object) for f in fields])
        for i in range(count):
            for f in fields:
                out[f][i], pos = self.nested(pos, end, depth)
        return out.reshape(dims, order='F')


def _chars(codes, dims):
    """A char array as scipy gives it: the strings along the last axis."""
    chars = np.array([chr(c) if c < 0x110000 else '\ufffd' for c in codes.tolist()],
                     dtype='U1').reshape(dims, order='F')
    if chars.ndim == 2 and dims[0] and dims[1]:
        return np.array([''.join(row) for row in chars])
    return chars


def loadmat(source):
    """The variables of a MATLAB v5 file (a path or its bytes), by name.

    Raises
    ------
    MatFileError
        Not a v5 MAT file, or damaged; the message says where.
    OSError
        The path cannot be read.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    else:
        with open(os.fspath(source), 'rb') as f:
            data = f.read()
    if len(data) < 128:
        raise MatFileError('%d bytes: too short for a MATLAB v5 header (128)' % len(data))
    order = {b'IM': '<', b'MI': '>'}.get(data[126:128])
    if order is None:
        raise MatFileError('no MATLAB v5 byte order mark (v4 files are not supported)')
    version = struct.unpack_from(order + 'H', data, 124)[0]
    if version != 0x0100:
        raise MatFileError('MAT version 0x%04x: only v5 (saved with -v7 or older, not -v7.3 '
                           'HDF5) is supported' % version)
    reader = _Reader(data, order)
    out = {'__header__': data[:116].rstrip(b' \0'), '__version__': '1.0', '__globals__': []}
    pos = 128
    while pos < len(data):
        kind, payload, pos = reader.element(pos, len(data))
        if kind == MI_COMPRESSED:
            payload = _inflate(payload)
            kind, payload, _ = _Reader(payload, order).element(0, len(payload))
        if kind != MI_MATRIX:
            raise MatFileError('top-level data element of type %d, not a matrix' % kind)
        name, value = reader.matrix(payload, 0)
        out[name] = value
    return out


def _inflate(payload):
    inflater = zlib.decompressobj()
    try:
        data = inflater.decompress(payload, MAX_INFLATED)
    except zlib.error as err:
        raise MatFileError('damaged compressed variable: %s' % err) from None
    if inflater.unconsumed_tail:
        raise MatFileError('a compressed variable inflates to more than %d bytes' % MAX_INFLATED)
    return data
