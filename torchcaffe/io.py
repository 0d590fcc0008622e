"""Every Caffe file format, read and written in one place.

* prototxt (protobuf text) for ``NetParameter`` and ``SolverParameter``;
* ``.caffemodel`` (binary ``NetParameter``) and ``.solverstate`` (binary ``SolverState``);
* their HDF5 forms ``.caffemodel.h5`` / ``.solverstate.h5`` (``snapshot_format: HDF5``),
  written by the ``.h5`` suffix as Caffe does; a caffemodel is read as HDF5 when its
  content is (Caffe's ``H5Fis_hdf5``), whatever its name. An HDF5 caffemodel reads back
  as a ``NetParameter`` with ``layer`` names and ``blobs`` so the rest of torchcaffe
  sees one representation.

Nets are upgraded on load as Caffe upgrades them (see ``torchcaffe.upgrade``). Every
write goes to a temporary file in the target's directory, is fsynced, then renamed over
the target: a failed write leaves the old file as it was. pycaffe's ``caffe.io`` blob
helpers ``blobproto_to_array`` / ``array_to_blobproto`` (and the BlobProtoVector
ones) live here too; its image helpers (``load_image``, ``Transformer``, ...) are
in ``torchcaffe.image_io`` and re-exported here.

Binary files are checked before use, since protobuf "parses" many wrong inputs:
an empty file, a parse error, top-level fields the schema does not know (how a
solverstate looks when read as a caffemodel and vice versa, and most random bytes),
missing required fields, a caffemodel without layers or with a nameless layer, a
solverstate without ``iter``, and a blob whose value count does not match its shape
all raise ``FormatError``. Cutting a file exactly between two top-level fields (two
layers) still leaves a valid, shorter message; no format-level check can see that.
"""
import contextlib
import glob
import math
import os
import re
import tempfile
import time

import h5py
import numpy as np
from google.protobuf import message as pb_message
from google.protobuf import text_format, unknown_fields

from .errors import FormatError, PrototxtError
from .image_decode import decode_image
from .proto import caffe_pb2
from .upgrade import (needs_upgrade, upgrade_net_param, upgrade_net_param_in_place,
                      upgrade_solver_param)

__all__ = [
    'parse_prototxt', 'read_net_prototxt', 'read_solver_prototxt', 'write_prototxt',
    'message_to_text', 'is_hdf5_file', 'read_caffemodel', 'write_caffemodel',
    'write_caffemodel_h5',
    'read_solverstate', 'write_solverstate', 'blobproto_to_array', 'array_to_blobproto',
    'blob_shape', 'legacy_shape_equals', 'array_to_datum', 'datum_to_array',
    'arraylist_to_blobprotovector_str', 'blobprotovector_str_to_arraylist',
    'load_image', 'resize_image', 'oversample', 'Transformer',
    'is_placeholder_blob', 'atomic_path', 'leftover_temp_files', 'needs_upgrade', 'upgrade_net_param',
]

_LEGACY_DIMS = ('num', 'channels', 'height', 'width')


# ---------------------------------------------------------------- atomic writes

def _new_file_mode(path):
    try:
        return os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _fsync(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# Tests only (tests/test_crash_resume.py): seconds to wait between a temporary file's
# fsync and its rename, so that a kill can land while a snapshot is half written.
_PAUSE_ENV = 'TORCHCAFFE_TEST_PAUSE_BEFORE_RENAME'


def _pause_before_rename():
    pause = os.environ.get(_PAUSE_ENV)
    if pause:
        time.sleep(float(pause))


_TEMP_SUFFIX = '.tmp'


def leftover_temp_files(folder, name_glob):
    """The temporary files of :func:`atomic_path` for targets in ``folder`` whose
    names match ``name_glob``: left behind only by a process killed mid-write."""
    return glob.glob(os.path.join(glob.escape(folder or '.'),
                                  '.%s.*%s' % (name_glob, _TEMP_SUFFIX)))


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; on success move it over ``path``.

    The temporary file is fsynced before ``os.replace``; if the block raises, the
    temporary file is removed and ``path`` keeps its old content. An ``OSError``
    that names no file (``write`` or ``fsync`` failing with ENOSPC or EIO) is
    raised again naming ``path``, with the same errno.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix='.%s.' % os.path.basename(path),
                               suffix=_TEMP_SUFFIX)
    os.close(fd)
    try:
        yield tmp
        _fsync(tmp)
        os.chmod(tmp, _new_file_mode(path))
        _pause_before_rename()
        os.replace(tmp, path)
    except BaseException as error:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if isinstance(error, OSError) and error.errno is not None and error.filename is None:
            raise OSError(error.errno, error.strerror, path) from error
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable
        _fsync(directory)


def _write_bytes(path, data):
    with atomic_path(path) as tmp:
        with open(tmp, 'wb') as f:
            f.write(data)


def _serialize(message, path):
    try:
        return message.SerializeToString()
    except pb_message.EncodeError as e:
        raise FormatError(path, 'cannot write %s: %s' % (message.DESCRIPTOR.name, e)) from None


def _is_h5(path):
    return os.fspath(path).endswith('.h5')


def is_hdf5_file(path):
    """Whether ``path`` is an HDF5 file, by its content (HDF5's signature), as Caffe's
    CopyTrainedLayersFrom asks ``H5Fis_hdf5``; False for a missing file."""
    try:
        return bool(h5py.is_hdf5(os.fspath(path)))
    except (OSError, ValueError):
        return False


# ---------------------------------------------------------------- prototxt

# A whole-number float value at the end of a line: "lr_mult: 1.0".
_WHOLE_FLOAT = re.compile(r'^(\s*\w+: -?\d+)\.0$', re.MULTILINE)


def message_to_text(message):
    """The protobuf text format of ``message``, as Caffe and pycaffe print it.

    Floats print in their shortest round-tripping form; whole numbers lose the
    ``.0`` that Python's protobuf adds, as Caffe's C++ printer (and the reference's
    generated prototxts) write them: ``lr_mult: 1``, ``base_lr: 1e-10``.

    >>> message_to_text(caffe_pb2.ParamSpec(lr_mult=2, decay_mult=0.5))
    'lr_mult: 2\\ndecay_mult: 0.5\\n'
    """
    return _WHOLE_FLOAT.sub(r'\1', text_format.MessageToString(message))


def write_prototxt(message, path):
    """Write ``message`` (a NetParameter or SolverParameter) as prototxt, atomically."""
    _write_bytes(path, message_to_text(message).encode('utf-8'))


def _prototxt_error(error, text, path):
    # ParseError's line and column are already 1-based; its message repeats them
    # ("4:5 : ...") and often echoes the source line ("'  bottm: x': ...").
    line, column = error.GetLine(), error.GetColumn()
    message = re.sub(r'^\d+:\d+ : ', '', str(error))
    lines = text.splitlines()
    if line is not None and 0 < line <= len(lines):
        echo = "'%s': " % lines[line - 1]
        if message.startswith(echo):
            message = message[len(echo):]
    if line is None:
        return FormatError(path, message)
    return PrototxtError(path, line, column, message)


def parse_prototxt(text, message_type, path=None):
    """Parse prototxt ``text`` into a new ``message_type`` message (no upgrade).

    Parameters
    ----------
    text : str
    message_type : protobuf message class, e.g. ``caffe_pb2.NetParameter``
    path : str, optional
        Named in error messages.

    Raises
    ------
    PrototxtError
        Syntax errors, unknown fields and unknown enum values, with 1-based line
        and column.
    FormatError
        Required fields left unset.
    """
    message = message_type()
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as e:
        raise _prototxt_error(e, text, path) from None
    missing = message.FindInitializationErrors()
    if missing:
        raise FormatError(path, 'missing required fields: %s' % ', '.join(missing))
    return message


def _read_text(path):
    with open(path, 'rb') as f:
        data = f.read()
    try:
        return data.decode('utf-8')
    except UnicodeDecodeError as e:
        raise FormatError(path, 'is not UTF-8 text (byte %d)' % e.start) from None


def read_net_prototxt(path, upgrade=True):
    """Read a net prototxt; V1 ``layers`` and ``input`` fields are upgraded."""
    net = parse_prototxt(_read_text(path), caffe_pb2.NetParameter, str(path))
    return upgrade_net_param_in_place(net, str(path)) if upgrade else net


def read_solver_prototxt(path, upgrade=True):
    """Read a solver prototxt, upgraded as Caffe's ReadSolverParamsFromTextFileOrDie.

    That turns ``solver_type`` into ``type`` and fills ``snapshot_prefix`` from the
    file name when it is unset or a directory (see ``upgrade_solver_param``).
    """
    solver = parse_prototxt(_read_text(path), caffe_pb2.SolverParameter, str(path))
    return upgrade_solver_param(solver, str(path)) if upgrade else solver


# ---------------------------------------------------------------- binary protobuf

def _parse_binary(data, message_type):
    """Parse ``data``; return (message, None) or (None, reason)."""
    message = message_type()
    try:
        message.ParseFromString(data)
    except pb_message.DecodeError as e:
        return None, 'truncated or corrupt (%s)' % e
    unknown = [(f.field_number, f.wire_type) for f in unknown_fields.UnknownFieldSet(message)]
    if unknown:
        return None, ('top-level fields that %s does not have (number, wire type): %s'
                      % (message_type.DESCRIPTOR.full_name, unknown[:5]))
    missing = message.FindInitializationErrors()
    if missing:
        return None, 'missing required fields: %s' % ', '.join(missing)
    bad = _bad_string(message)
    if bad:
        return None, 'string field %s is not UTF-8' % bad
    return message, None


def _bad_string(message, prefix=''):
    """The first string field whose bytes are not UTF-8 (protobuf hands those out as bytes)."""
    for field, value in message.ListFields():
        name = prefix + field.name
        values = value if field.is_repeated else [value]
        if field.type == field.TYPE_STRING:
            if any(isinstance(v, bytes) for v in values):
                return name
        elif field.type == field.TYPE_MESSAGE:
            for i, item in enumerate(values):
                bad = _bad_string(item, '%s[%d].' % (name, i))
                if bad:
                    return bad
    return None


def _read_binary(path, message_type, kind, other_type, other_kind):
    with open(path, 'rb') as f:
        data = f.read()
    if not data:
        raise FormatError(str(path), 'empty file (expected a %s)' % kind)
    message, reason = _parse_binary(data, message_type)
    if message is None:
        hint = ''
        if _parse_binary(data, other_type)[0] is not None:
            hint = '; it reads as a %s instead' % other_kind
        raise FormatError(str(path), 'not a valid %s: %s%s' % (kind, reason, hint))
    return message


def _blob_count(shape, path, where):
    """The value count of ``shape``, in Python ints (no int64 overflow to a small count)."""
    if any(d < 0 for d in shape):
        raise FormatError(path, '%s: negative dimension in shape %s' % (where, shape))
    return math.prod(shape)


def _check_blob(blob, path, where):
    if is_placeholder_blob(blob):
        return
    count = _blob_count(blob_shape(blob), path, where)
    for name, values in (('data', len(blob.double_data) or len(blob.data)),
                         ('diff', len(blob.double_diff) or len(blob.diff))):
        if (name == 'data' or values) and values != count:
            raise FormatError(path, '%s: %d %s values for shape %s (%d values)'
                              % (where, values, name, blob_shape(blob), count))


def _check_weights(net, path):
    layers = net.layer if len(net.layer) else net.layers
    if not len(layers):
        raise FormatError(path, 'caffemodel has no layers')
    for i, layer in enumerate(layers):
        if not layer.name:
            raise FormatError(path, 'caffemodel layer #%d has no name' % i)
        for j, blob in enumerate(layer.blobs):
            _check_blob(blob, path, 'layer %r blob %d' % (layer.name, j))


def read_caffemodel(path, upgrade=True):
    """Read weights: a binary caffemodel or an HDF5 one, told apart by the file's
    content (Caffe's CopyTrainedLayersFrom), whatever its name.

    Returns
    -------
    caffe_pb2.NetParameter
        Upgraded like a prototxt (V1 layers become ``layer``). From HDF5, layers come
        in name order (HDF5's own order) and carry only ``name`` and ``blobs``; a blob
        Caffe left out because its param is shared reads as an empty placeholder
        (see ``is_placeholder_blob``).
    """
    path = str(path)
    if is_hdf5_file(path):
        net = _read_caffemodel_h5(path)
    else:
        try:
            net = _read_binary(path, caffe_pb2.NetParameter, 'caffemodel (NetParameter)',
                               caffe_pb2.SolverState, 'solverstate (SolverState)')
        except FormatError as err:
            if not _is_h5(path):
                raise
            raise FormatError(path, 'named as HDF5 but has no HDF5 signature, and is not a '
                                    'binary caffemodel either: %s' % err.message) from None
    if upgrade and needs_upgrade(net):
        upgrade_net_param_in_place(net, path)
    _check_weights(net, path)
    return net


def write_caffemodel(net_param, path):
    """Write weights atomically; a ``.h5`` path writes Caffe's HDF5 layout instead."""
    if _is_h5(path):
        return write_caffemodel_h5(net_param, path)
    _write_bytes(path, _serialize(net_param, str(path)))


def read_solverstate(path):
    """Read a ``.solverstate`` (binary ``SolverState``) or ``.solverstate.h5``."""
    path = str(path)
    if _is_h5(path):
        state = _read_solverstate_h5(path)
    else:
        state = _read_binary(path, caffe_pb2.SolverState, 'solverstate (SolverState)',
                             caffe_pb2.NetParameter, 'caffemodel (NetParameter)')
        if not state.HasField('iter'):
            raise FormatError(path, 'solverstate has no "iter" field')
    for i, blob in enumerate(state.history):
        _check_blob(blob, path, 'history blob %d' % i)
    return state


def read_blobproto(path):
    """The array of a ``.binaryproto`` file: one BlobProto (a mean image, an infogain
    matrix), read and checked as the other binary formats (FormatError naming the file)."""
    path = str(path)
    blob = _read_binary(path, caffe_pb2.BlobProto, 'BlobProto (.binaryproto)',
                        caffe_pb2.NetParameter, 'caffemodel (NetParameter)')
    _check_blob(blob, path, 'blob')
    return blobproto_to_array(blob)


def write_blobproto(blob, path):
    """Write a BlobProto as a ``.binaryproto`` file, atomically (Caffe's
    WriteProtoToBinaryFile)."""
    _write_bytes(path, _serialize(blob, str(path)))


def write_solverstate(state, path):
    """Write a ``SolverState`` atomically; a ``.h5`` path writes Caffe's HDF5 layout."""
    if _is_h5(path):
        return _write_solverstate_h5(state, str(path))
    _write_bytes(path, _serialize(state, str(path)))


# ---------------------------------------------------------------- HDF5

def _open_h5(path):
    try:
        return h5py.File(path, 'r')
    except FileNotFoundError:
        raise
    except OSError as e:
        raise FormatError(path, 'not a readable HDF5 file (%s)' % e) from None


# What h5py raises when HDF5 finds the file's structure damaged while reading it.
_H5_ERRORS = (OSError, RuntimeError, KeyError, ValueError, TypeError, IndexError)


@contextlib.contextmanager
def _reading_h5(path):
    """The open file; HDF5's errors about damaged structure become ``FormatError``."""
    f = _open_h5(path)
    try:
        with f:
            yield f
    except FormatError:
        raise
    except _H5_ERRORS as e:
        raise FormatError(path, 'damaged HDF5 file (%s: %s)' % (type(e).__name__, e)) from None


def _h5_get(parent, name, path, want_group):
    kind = 'group' if want_group else 'dataset'
    link = parent.get(name, getlink=True)
    if link is not None and not isinstance(link, h5py.HardLink):
        # A soft or external link would make reading this file read another one.
        raise FormatError(path, 'HDF5 item "%s/%s" is a %s, not a %s'
                          % (parent.name.rstrip('/'), name, type(link).__name__, kind))
    item = parent.get(name)
    if item is None:
        raise FormatError(path, 'missing HDF5 %s "%s/%s"' % (kind, parent.name.rstrip('/'), name))
    if not isinstance(item, h5py.Group if want_group else h5py.Dataset):
        raise FormatError(path, 'HDF5 item "%s" is not a %s' % (item.name, kind))
    return item


# Deflate, the strongest filter h5py has built in, shrinks data at most ~1032 times.
_MAX_COMPRESSION = 1100


def _h5_read(dataset, path):
    """The dataset's values, once its declared size is backed by bytes in this file."""
    if dataset.is_virtual or dataset.external:
        raise FormatError(path, 'HDF5 dataset "%s" keeps its data in other files'
                          % dataset.name)
    stored = dataset.id.get_storage_size()
    if dataset.nbytes > _MAX_COMPRESSION * stored + 4096:
        raise FormatError(path, 'HDF5 dataset "%s" declares %s %s (%d bytes) but stores %d'
                          % (dataset.name, dataset.shape, dataset.dtype, dataset.nbytes, stored))
    return dataset[()]


def _h5_blob(dataset, path):
    if dataset.dtype.kind not in 'fiu':
        raise FormatError(path, 'HDF5 dataset "%s" is not numeric' % dataset.name)
    value = np.asarray(_h5_read(dataset, path))
    if value.dtype == np.float64:  # written by Caffe built with Dtype = double
        blob = caffe_pb2.BlobProto()
        blob.shape.SetInParent()
        blob.shape.dim.extend(value.shape)
        blob.double_data.extend(value.ravel())
        return blob
    return array_to_blobproto(value)


def _h5_blobs(group, path, allow_gaps):
    indices = {}
    for name in group:
        if not re.fullmatch(r'0|[1-9][0-9]{0,2}', name):
            raise FormatError(path, 'unexpected HDF5 item "%s/%s" (blobs are named 0, 1, ...)'
                              % (group.name, name))
        indices[int(name)] = name
    blobs = []
    for j in range(max(indices) + 1 if indices else 0):
        if j in indices:
            blobs.append(_h5_blob(_h5_get(group, indices[j], path, False), path))
        elif allow_gaps:
            blobs.append(caffe_pb2.BlobProto())
        else:
            raise FormatError(path, 'missing HDF5 dataset "%s/%d"' % (group.name, j))
    return blobs


def _read_caffemodel_h5(path):
    net = caffe_pb2.NetParameter()
    with _reading_h5(path) as f:
        data = _h5_get(f, 'data', path, True)
        for name in data:
            layer = net.layer.add(name=name)
            layer.blobs.extend(_h5_blobs(_h5_get(data, name, path, True), path, True))
    return net


def is_placeholder_blob(blob):
    """True for the empty BlobProto that stands for a shared param HDF5 left out.

    Caffe's ``Net::ToHDF5`` stores a weight-shared param only under the layer that
    owns it; ``Net::CopyTrainedLayersFromHDF5`` skips the missing dataset when the
    target param is shared, and fails otherwise.
    """
    return (not blob.HasField('shape') and not any(blob.HasField(k) for k in _LEGACY_DIMS)
            and not len(blob.data) and not len(blob.double_data))


def _param_owners(net):
    # Caffe's Net::AppendParam: a named param seen in an earlier layer is shared.
    seen, owners = set(), []
    for layer in net.layer:
        flags = []
        for j in range(len(layer.blobs)):
            name = layer.param[j].name if j < len(layer.param) else ''
            flags.append(not name or name not in seen)
            if name:
                seen.add(name)
        owners.append(flags)
    return owners


def _check_h5_names(net, path):
    names = set()
    for i, layer in enumerate(net.layer):
        if not layer.name or '/' in layer.name or layer.name in names:
            raise FormatError(path, 'layer #%d name %r cannot name an HDF5 group '
                              '(empty, has "/", or repeated)' % (i, layer.name))
        names.add(layer.name)


def _h5_dataset(group, name, blob, diff):
    if diff and not (len(blob.diff) or len(blob.double_diff)):
        array = np.zeros(blob_shape(blob), dtype=np.float32)  # a Net's diffs start at 0
    else:
        array = blobproto_to_array(blob, return_diff=diff)
    group.create_dataset(name, data=array)


def write_caffemodel_h5(net_param, path, write_diff=False):
    """Write weights in Caffe's HDF5 layout (``Net::ToHDF5``), atomically.

    Group ``data`` holds one group per layer (every layer, with or without blobs)
    and in it datasets ``0``, ``1``, ... shaped like the blobs; a param shared by
    name with an earlier layer is not stored again. With ``write_diff`` a ``diff``
    group mirrors it with every blob's diff.
    """
    path = str(path)
    net = upgrade_net_param(net_param, path) if needs_upgrade(net_param) else net_param
    _check_h5_names(net, path)
    owners = _param_owners(net)
    with atomic_path(path) as tmp:
        with h5py.File(tmp, 'w') as f:
            data = f.create_group('data')
            diff = f.create_group('diff') if write_diff else None
            for layer, owned in zip(net.layer, owners):
                group = data.create_group(layer.name)
                diff_group = diff.create_group(layer.name) if write_diff else None
                for j, blob in enumerate(layer.blobs):
                    if is_placeholder_blob(blob):
                        continue
                    if owned[j]:
                        _h5_dataset(group, str(j), blob, False)
                    if write_diff:  # Caffe writes diffs of shared params too
                        _h5_dataset(diff_group, str(j), blob, True)


def _h5_read_int(f, name, path):
    dataset = _h5_get(f, name, path, False)
    if dataset.size != 1:
        raise FormatError(path, 'HDF5 dataset "/%s" is not a single integer' % name)
    value = np.asarray(_h5_read(dataset, path))
    if value.size != 1 or value.dtype.kind not in 'iu':
        raise FormatError(path, 'HDF5 dataset "/%s" is not a single integer' % name)
    return int(value.reshape(-1)[0])


def _h5_read_string(f, name, path):
    dataset = _h5_get(f, name, path, False)
    if dataset.size != 1 or dataset.dtype.kind not in 'SOU':
        raise FormatError(path, 'HDF5 dataset "/%s" is not a string' % name)
    value = _h5_read(dataset, path)
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.reshape(-1)[0]
    if isinstance(value, bytes):
        try:
            value = value.decode('utf-8')
        except UnicodeDecodeError:
            raise FormatError(path, 'HDF5 dataset "/%s" is not UTF-8 text' % name) from None
    if not isinstance(value, str):
        raise FormatError(path, 'HDF5 dataset "/%s" is not a string' % name)
    return value.rstrip('\0')


def _h5_write_string(group, name, text):
    # Like H5LTmake_dataset_string: a scalar, fixed-size, NUL-terminated C string.
    raw = text.encode('utf-8') + b'\0'
    string_type = h5py.h5t.C_S1.copy()
    string_type.set_size(len(raw))
    string_type.set_strpad(h5py.h5t.STR_NULLTERM)
    space = h5py.h5s.create(h5py.h5s.SCALAR)
    dataset = h5py.h5d.create(group.id, name.encode(), string_type, space)
    dataset.write(h5py.h5s.ALL, h5py.h5s.ALL, np.array(raw, dtype='S%d' % len(raw)))


def _read_solverstate_h5(path):
    state = caffe_pb2.SolverState()
    with _reading_h5(path) as f:
        state.iter = _h5_read_int(f, 'iter', path)
        if 'learned_net' in f:  # optional when Caffe restores, always written
            state.learned_net = _h5_read_string(f, 'learned_net', path)
        state.current_step = _h5_read_int(f, 'current_step', path)
        history = _h5_get(f, 'history', path, True)
        state.history.extend(_h5_blobs(history, path, False))
    return state


def _write_solverstate_h5(state, path):
    # SGDSolver::SnapshotSolverStateToHDF5: ints are 1-element int32 datasets.
    with atomic_path(path) as tmp:
        with h5py.File(tmp, 'w') as f:
            f.create_dataset('iter', data=np.array([state.iter], dtype=np.int32))
            _h5_write_string(f, 'learned_net', state.learned_net)
            f.create_dataset('current_step', data=np.array([state.current_step], dtype=np.int32))
            history = f.create_group('history')
            for i, blob in enumerate(state.history):
                _h5_dataset(history, str(i), blob, False)


# ---------------------------------------------------------------- blobs

def _has_legacy_dims(blob):
    return any(blob.HasField(k) for k in _LEGACY_DIMS)


def blob_shape(blob):
    """A BlobProto's shape: legacy (num, channels, height, width) if any is set."""
    if _has_legacy_dims(blob):
        return tuple(getattr(blob, k) for k in _LEGACY_DIMS)
    return tuple(blob.shape.dim)


def blobproto_to_array(blob, return_diff=False):
    """The blob's data (or diff) as an array in its shape (Caffe's Blob::FromProto).

    ``double_data`` / ``double_diff`` win when present (float64); otherwise the
    float32 ``data`` / ``diff``. Legacy blobs come out 4-D.
    """
    shape = blob_shape(blob)
    double = blob.double_diff if return_diff else blob.double_data
    single = blob.diff if return_diff else blob.data
    if len(double):
        array = np.array(double, dtype=np.float64)
    else:
        array = np.array(single, dtype=np.float32)
    count = _blob_count(shape, None, 'blob')
    if array.size != count:
        raise FormatError(None, 'blob of shape %s needs %d %s values, has %d'
                          % (shape, count, 'diff' if return_diff else 'data', array.size))
    return array.reshape(shape)


def _varint(n):
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        if not n:
            out.append(low)
            return bytes(out)
        out.append(low | 0x80)


def _packed_floats(field_number, array):
    # Hand-encoded packed field: extending a repeated field value by value is ~50x slower.
    raw = np.ascontiguousarray(array, dtype='<f4').tobytes()
    if not raw:
        return b''
    return _varint(field_number << 3 | 2) + _varint(len(raw)) + raw


def array_to_blobproto(arr, diff=None):
    """A BlobProto with ``shape`` and float32 ``data`` (and ``diff``) from arrays."""
    arr = np.asarray(arr)
    blob = caffe_pb2.BlobProto()
    blob.shape.SetInParent()
    blob.shape.dim.extend(int(d) for d in arr.shape)
    fields = _packed_floats(5, arr)
    if diff is not None:
        diff = np.asarray(diff)
        if diff.size != arr.size:
            raise ValueError('diff has %d values, data %d' % (diff.size, arr.size))
        fields += _packed_floats(6, diff)
    blob.MergeFromString(fields)
    return blob


def legacy_shape_equals(blob_proto, shape):
    """Caffe's ``Blob::ShapeEquals``: does ``blob_proto`` fit a blob of ``shape``?

    Legacy 4-D protos index from the end: a shape of up to 4 axes is padded with
    leading 1s and compared with (num, channels, height, width), so an inner product
    weight (4096, 25088) equals legacy 1 x 1 x 4096 x 25088.
    """
    shape = tuple(int(d) for d in shape)
    if _has_legacy_dims(blob_proto):
        if len(shape) > 4:
            return False
        return (1,) * (4 - len(shape)) + shape == blob_shape(blob_proto)
    return tuple(blob_proto.shape.dim) == shape


def array_to_datum(arr, label=None):
    """A Datum from a C x H x W array: uint8 goes to ``data``, others to ``float_data``."""
    arr = np.asarray(arr)
    if arr.ndim != 3:
        raise ValueError('Datum arrays are C x H x W, got shape %s' % (arr.shape,))
    datum = caffe_pb2.Datum(channels=arr.shape[0], height=arr.shape[1], width=arr.shape[2])
    if arr.dtype == np.uint8:
        datum.data = arr.tobytes()
    else:
        datum.float_data.extend(arr.astype(np.float32).ravel())
    if label is not None:
        datum.label = int(label)
    return datum


def datum_to_array(datum, color=None, where='datum'):
    """The Datum's C x H x W array (uint8 from ``data``, else float32 ``float_data``).

    An ``encoded`` Datum (``convert_imageset --encoded``) is decoded: as stored (BGR
    for colour, one channel for grey; pycaffe would fail on it) with ``color`` None,
    else in colour (True) or grey (False).

    Raises
    ------
    FormatError
        ``data`` or ``float_data`` does not hold channels x height x width values (the
        message starts with ``where``).
    """
    if datum.encoded:
        return decode_image(datum.data, color, where=where)
    shape = (datum.channels, datum.height, datum.width)
    size = shape[0] * shape[1] * shape[2]
    if len(datum.data):
        if len(datum.data) != size:
            raise FormatError(None, '%s: datum size mismatch: channels x height x width = %s '
                                    'needs %d bytes, data has %d'
                              % (where, 'x'.join(map(str, shape)), size, len(datum.data)))
        return np.frombuffer(datum.data, dtype=np.uint8).reshape(shape)
    if len(datum.float_data) != size:
        raise FormatError(None, '%s: datum size mismatch: channels x height x width = %s '
                                'needs %d values, float_data has %d'
                          % (where, 'x'.join(map(str, shape)), size, len(datum.float_data)))
    return np.array(datum.float_data, dtype=np.float32).reshape(shape)


def arraylist_to_blobprotovector_str(arraylist):
    """A serialized BlobProtoVector of the arrays (pycaffe's
    ``caffe.io.arraylist_to_blobprotovector_str``)."""
    vec = caffe_pb2.BlobProtoVector()
    vec.blobs.extend([array_to_blobproto(arr) for arr in arraylist])
    return vec.SerializeToString()


def blobprotovector_str_to_arraylist(data):
    """The arrays of a serialized BlobProtoVector (pycaffe's
    ``caffe.io.blobprotovector_str_to_arraylist``)."""
    vec, reason = _parse_binary(data, caffe_pb2.BlobProtoVector)
    if vec is None:
        raise FormatError(None, 'not a BlobProtoVector: %s' % reason)
    return [blobproto_to_array(blob) for blob in vec.blobs]


# pycaffe's caffe.io also holds the image helpers and the Transformer.
from .image_io import load_image, resize_image, oversample, Transformer  # noqa: E402
