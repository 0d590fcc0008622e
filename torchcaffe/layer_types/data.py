"""Caffe's data layers: Data, ImageData, HDF5Data, HDF5Output, DummyData, MemoryData,
WindowData (``src/caffe/layers/*data_layer.cpp``, ``hdf5_output_layer.cpp``).

The reading layers have no bottoms and pass no gradient. Each loads whole batches
on a background thread (``torchcaffe.prefetch.Prefetcher``) one batch ahead of the
net, as Caffe's BasePrefetchingDataLayer does; prefetching never changes what a
batch holds. The first batch is loaded at setup, so a missing database, an empty
list or an image that does not decode fails when the net is built, with a message
naming the layer and the file. Tops are float32: ``data`` (N x C x H x W after
``transform_param``) and, where the layer has one, ``label`` of shape (N,).

Random choices (shuffles, ``rand_skip``, crops, mirrors) come from numpy
generators seeded by ``caffe.set_random_seed``'s seed and the layer name
(``data_transformer.layer_rng``): reproducible, but not Caffe's own random
stream.
"""
import functools
import logging
import os
import weakref

import numpy as np
import torch

from .. import db, distributed, fillers, io, mode
from ..data_transformer import DataTransformer, TransformError, read_image
from ..data_transformer import layer_rng, rng_state, set_rng_state
from ..errors import CaffeError, FormatError
from ..glog import LOGGER_NAME
from ..prefetch import Prefetcher
from ..proto import caffe_pb2
from .base import Layer, register

__all__ = ['DataLayerError', 'datum_image', 'read_image_list', 'read_source_list']

log = logging.getLogger(LOGGER_NAME)


class DataLayerError(CaffeError, ValueError):
    """A data layer's source is unusable: missing or empty list, database or file,
    an undecodable image, a record of the wrong size."""


# ------------------------------------------------------------------------ pure helpers

def datum_image(datum, color=None, where='datum'):
    """The C x H x W array a Datum holds: decoded when ``encoded``, else its ``data``
    bytes (uint8) or ``float_data`` (float32), checked against channels x height x width.

    ``color`` is for encoded data: True (3 channels), False (grey) or None (as stored).
    ``io.datum_to_array``, with an empty datum refused too, as a DataLayerError.
    """
    try:
        array = io.datum_to_array(datum, color, where)
    except FormatError as err:
        raise DataLayerError(err.message) from None
    if array.size == 0 and not datum.encoded:
        raise DataLayerError('%s: datum size mismatch: channels x height x width = %s needs '
                             '0 values, float_data has 0'
                             % (where, 'x'.join(map(str, array.shape))))
    return array


def _read_lines(path, what, where):
    if not os.path.isfile(path):
        raise DataLayerError('%s: %s %s not found (absolute path %s)'
                             % (where, what, path, os.path.abspath(path)))
    with open(path, encoding='utf-8') as f:
        lines = [(n + 1, line.strip()) for n, line in enumerate(f)]
    lines = [(n, line) for n, line in lines if line]
    if not lines:
        raise DataLayerError('%s: %s %s is empty' % (where, what, path))
    return lines


def read_image_list(path, where='ImageData'):
    """``(filename, label)`` per line of an ImageData source: the label follows the
    last space (Caffe splits there, so file names may hold spaces)."""
    out = []
    for number, line in _read_lines(path, 'image list', where):
        name, sep, label = line.rpartition(' ')
        try:
            out.append((name, int(label)) if sep else None)
        except ValueError:
            out.append(None)
        if out[-1] is None:
            raise DataLayerError('%s: %s:%d: expected "path label", got %r'
                                 % (where, path, number, line))
    return out


def read_source_list(path, where='HDF5Data'):
    """The file names an HDF5Data source lists, one a line; relative names are taken
    as Caffe takes them (from the working directory)."""
    return [line for _, line in _read_lines(path, 'HDF5 source list', where)]


def _stack(images, where):
    first = images[0].shape
    for i, img in enumerate(images):
        if img.shape != first:
            raise DataLayerError('%s: item %d of the batch is %s after transform, item 0 is '
                                 '%s (a batch takes its shape from its first item; use '
                                 'batch_size 1, crop_size or a resize for images of several '
                                 'sizes)' % (where, i, img.shape, first))
    return np.stack(images)


# ------------------------------------------------------------------------ prefetching base

def _load_with_state(source):
    """The next batch of ``source`` and, if it has ``get_state``, its state right after
    that batch (taken in the thread that loaded it, before it loads another)."""
    batch = source.load()
    get_state = getattr(source, 'get_state', None)
    return batch, (get_state() if get_state is not None else None)


class _BatchLayer(Layer):
    """A data layer that loads batches with a ``source.load()`` on a prefetch thread.

    A source may offer ``get_state()`` (JSON data: where it is and its generators'
    states) and ``set_state(state)``; the layer keeps the state that came with the
    last batch it gave out (the prefetch thread is a batch further on), so a resume
    goes on from there without reading anything again.
    """
    bottom_counts = (0, 0)

    def __init__(self, layer_param, phase):
        super().__init__(layer_param, phase)
        self.where = 'layer %r (%s)' % (self.name, self.type)
        self._seed = mode._state['seed']  # the seed of the source's generators
        self._source = self.make_source()
        # the first batch: its shape is the top shape
        self._ready = _load_with_state(self._source)
        log.info('%s: output data size: %s', self.where,
                 ','.join(str(d) for d in self._ready[0][0].shape))
        self._shapes = [a.shape for a in self._ready[0][:self.num_tops()]]
        self._count = 0
        self._source_state = None  # the source's state after the last batch given out
        self._start_prefetching(1)

    def _start_prefetching(self, first):
        self._prefetcher = Prefetcher(functools.partial(_load_with_state, self._source),
                                      name='%s prefetch' % self.name)
        self._finalizer = weakref.finalize(self, _shut_down, self._prefetcher, self._source)
        self._prefetcher.submit(first)

    def state_dict(self):
        """Where the layer is, for ``torchcaffe.resume_state`` (Caffe's data layers
        restart on a restore, ours go on where they were): the batches it has given
        out, its generators' seed and, where the source can say, ``'source'``: the
        source's position and generator states after the last batch given out."""
        state = {'batches': self._count, 'seed': self._seed}
        if self._count and self._source_state is not None:
            state['source'] = self._source_state
        return state

    def load_state_dict(self, state):
        """Go on from where a layer that gave out ``state['batches']`` batches was.

        The source is made afresh with the generators' seed of the saved layer. With
        a ``'source'`` entry it is put where the saved one was, generators included;
        without one (older sidecars, sources without ``set_state``) that many
        batches are loaded and dropped, so shuffles, ``rand_skip``, crops and
        mirrors draw what they drew: exact either way, the second at the cost of
        reading them again.
        """
        batches, seed = int(state['batches']), int(state['seed'])
        self._finalizer()  # stops the prefetch thread, closes the database
        saved, mode._state['seed'] = mode._state['seed'], seed
        try:
            self._source = self.make_source()
        finally:
            mode._state['seed'] = saved
        self._seed = seed
        set_state = getattr(self._source, 'set_state', None)
        if batches and state.get('source') is not None and set_state is not None:
            set_state(state['source'])
        else:
            if batches:
                log.info('%s: reading again the %d batches read before the snapshot',
                         self.where, batches)
            for _ in range(batches):
                self._source.load()
        get_state = getattr(self._source, 'get_state', None)
        self._source_state = get_state() if get_state is not None else None
        self._ready, self._count = None, batches
        self._start_prefetching(batches)

    def make_source(self):
        raise NotImplementedError

    def top_shapes(self, bottom_shapes):
        """The shapes of the last batch (at setup: the first batch's)."""
        return list(self._shapes)

    def forward(self, bottoms, params):
        if self._ready is not None:  # batch 0, loaded at setup; batch 1 is on its way
            (batch, self._source_state), self._ready = self._ready, None
        else:
            batch, self._source_state = self._prefetcher.get(self._count)
            self._prefetcher.submit(self._count + 1)
        self._count += 1
        self._shapes = [a.shape for a in batch[:self.num_tops()]]
        dev = mode.device()
        return [torch.from_numpy(a).to(dev) for a in batch[:self.num_tops()]]


def _shut_down(prefetcher, source):
    prefetcher.close()
    close = getattr(source, 'close', None)
    if close is not None:
        close()


class _DatumSource:
    """Batches of Datum records from a database, transformed.

    In data-parallel training (``torchcaffe.distributed``) rank r of N keeps the
    records whose running offset is r modulo N, in TRAIN only (Caffe's
    DataLayer::Skip: in TEST only the root solver runs).
    """

    def __init__(self, reader, batch_size, transformer, color, where, rank=0, ranks=1):
        self.reader, self.batch_size = reader, batch_size
        self.transformer, self.color, self.where = transformer, color, where
        self.rank, self.ranks = rank, ranks
        self.offset = 0

    def close(self):
        self.reader.close()

    def get_state(self):
        """The reader's next key (hex; None: the first record), the rank offset and
        the transformer's generator."""
        key = self.reader.tell()
        return {'next_key': None if key is None else key.hex(), 'offset': self.offset,
                'transform_rng': rng_state(self.transformer.rng)}

    def set_state(self, state):
        """Go back to where :meth:`get_state` was, reading nothing."""
        key = state['next_key']
        try:
            self.reader.seek(None if key is None else bytes.fromhex(key))
        except (TypeError, ValueError) as err:
            raise DataLayerError('%s: saved database position %r is not a hex key: %s'
                                 % (self.where, key, err)) from None
        self.offset = int(state['offset'])
        set_rng_state(self.transformer.rng, state['transform_rng'], self.where)

    def load(self):
        images, labels = [], []
        records = self.reader.next(self.batch_size * self.ranks)
        if self.ranks > 1:
            records = [r for j, r in enumerate(records)
                       if (self.offset + j) % self.ranks == self.rank]
            self.offset += self.batch_size * self.ranks
        for key, value in records:
            what = '%s: record %r of %s' % (self.where, key.decode('utf-8', 'replace'),
                                            self.reader.path)
            try:
                datum = caffe_pb2.Datum.FromString(value)
            except Exception as err:
                raise DataLayerError('%s is not a Datum: %s' % (what, err)) from err
            try:
                images.append(self.transformer(datum_image(datum, self.color, what)))
            except TransformError as err:
                raise DataLayerError('%s: %s' % (what, err)) from err
            labels.append(datum.label)
        return _stack(images, self.where), np.asarray(labels, dtype=np.float32)


@register
class DataLayer(_BatchLayer):
    """Caffe's Data: Datum records from an LMDB or LevelDB (data_param: source,
    backend, batch_size, rand_skip), cycling to the first record after the last.

    Encoded records (JPEG, PNG) decode as stored, or in colour / grey with
    transform_param's ``force_color`` / ``force_gray`` (data_param's
    ``force_encoded_color`` also forces colour). ``rand_skip`` skips a random number
    of records, below it, at setup (older Caffe's DataLayer).
    """
    type = 'Data'
    top_counts = (1, 2)

    def make_source(self):
        p = self.layer_param.data_param
        if p.batch_size <= 0:
            raise self.error('data_param.batch_size must be positive, got %d' % p.batch_size)
        if not p.source:
            raise self.error('data_param.source is not set')
        try:
            reader = db.open_reader(p.source, p.backend, self.where)
        except db.DBError as err:
            raise DataLayerError(str(err)) from None
        rng = layer_rng(self.name, 'skip')
        if p.rand_skip:
            reader.skip(int(rng.integers(p.rand_skip)))
        transformer = DataTransformer(self.layer_param.transform_param, self.phase, self.where)
        if transformer.force_color or transformer.force_gray:
            key, value = reader.peek()
            if not caffe_pb2.Datum.FromString(value).encoded:  # Caffe logs it and goes on
                log.error('%s: force_color and force_gray only for encoded datum (%s is not '
                          'encoded)', self.where, p.source)
        color = True if p.force_encoded_color else transformer.color_mode()
        rank, ranks = ((distributed.rank(), distributed.world_size())
                       if self.phase == caffe_pb2.TRAIN else (0, 1))
        return _DatumSource(reader, p.batch_size, transformer, color, self.where, rank, ranks)


class _ImageListSource:
    """Batches from an ImageData list, in order or shuffled per epoch."""

    def __init__(self, items, p, transformer, rng, where):
        self.items, self.p, self.transformer = items, p, transformer
        self.rng, self.where = rng, where
        self.order = list(range(len(items)))
        if p.shuffle:
            self.rng.shuffle(self.order)
        self.pos = int(rng.integers(p.rand_skip)) if p.rand_skip else 0
        if self.pos >= len(items):
            raise DataLayerError('%s: not enough images to skip: rand_skip drew %d, the list '
                                 'has %d' % (where, self.pos, len(items)))

    def get_state(self):
        """The position in the epoch's order, that order (None: the list's own), and
        both generators (shuffling, and the transformer's crops and mirrors)."""
        return {'pos': self.pos, 'order': list(self.order) if self.p.shuffle else None,
                'rng': rng_state(self.rng), 'transform_rng': rng_state(self.transformer.rng)}

    def set_state(self, state):
        """Go back to where :meth:`get_state` was, reading no image."""
        order = (list(range(len(self.items))) if state['order'] is None
                 else [int(i) for i in state['order']])
        if sorted(order) != list(range(len(self.items))):
            raise DataLayerError('%s: the saved image order has %d entries, not a '
                                 'permutation of the %d images of %s (the list changed?)'
                                 % (self.where, len(order), len(self.items), self.p.source))
        self.order, self.pos = order, int(state['pos'])
        set_rng_state(self.rng, state['rng'], self.where)
        set_rng_state(self.transformer.rng, state['transform_rng'], self.where)

    def load(self):
        p = self.p
        images, labels = [], []
        for _ in range(p.batch_size):
            name, label = self.items[self.order[self.pos]]
            path = p.root_folder + name
            try:
                img = read_image(path, p.new_height, p.new_width, p.is_color)
                images.append(self.transformer(img))
            except TransformError as err:
                raise DataLayerError('%s: %s' % (self.where, err)) from None
            labels.append(label)
            self.pos += 1
            if self.pos >= len(self.items):  # Caffe restarts, reshuffling if asked
                self.pos = 0
                if p.shuffle:
                    self.rng.shuffle(self.order)
        return _stack(images, self.where), np.asarray(labels, dtype=np.float32)


@register
class ImageDataLayer(_BatchLayer):
    """Caffe's ImageData: images named in a list file, one ``path label`` a line
    (image_data_param: source, root_folder prepended to each path, new_height and
    new_width to resize, is_color, shuffle, batch_size, rand_skip)."""
    type = 'ImageData'
    top_counts = (2, 2)

    def make_source(self):
        p = self.layer_param.image_data_param
        if p.batch_size <= 0:
            raise self.error('image_data_param.batch_size must be positive')
        if (p.new_height > 0) != (p.new_width > 0):
            raise self.error('new_height and new_width must be set together')
        items = read_image_list(p.source, self.where)
        transformer = DataTransformer(self.layer_param.transform_param, self.phase, self.where)
        return _ImageListSource(items, p, transformer, layer_rng(self.name, 'shuffle'),
                                self.where)


# ------------------------------------------------------------------------ HDF5

class _HDF5Source:
    """Rows of the datasets named by the tops, file after file (Caffe's HDF5DataLayer)."""

    def __init__(self, files, names, p, rng, where):
        self.files, self.names, self.p, self.rng, self.where = files, names, p, rng, where
        self.file_order = list(range(len(files)))
        if p.shuffle:
            rng.shuffle(self.file_order)
        self.file_pos = 0
        self._open(self.file_order[0])

    def get_state(self):
        """The file order and the current file, its row order (None: in order) and
        position, and the shuffling generator."""
        return {'file_order': list(self.file_order), 'file_pos': self.file_pos,
                'rows': list(self.rows) if self.p.shuffle else None, 'row': self.row,
                'rng': rng_state(self.rng)}

    def set_state(self, state):
        """Go back to where :meth:`get_state` was, reading only the current file."""
        file_order = [int(i) for i in state['file_order']]
        if sorted(file_order) != list(range(len(self.files))):
            raise DataLayerError('%s: the saved file order %s does not fit the %d files of '
                                 '%s (the list changed?)' % (self.where, file_order,
                                                             len(self.files), self.p.source))
        self.file_order, self.file_pos = file_order, int(state['file_pos'])
        self._open(self.file_order[self.file_pos], shuffle=False)
        rows = (list(range(len(self.rows))) if state['rows'] is None
                else [int(r) for r in state['rows']])
        if sorted(rows) != list(range(len(self.rows))):
            raise DataLayerError('%s: the saved row order has %d rows, %s has %d (the file '
                                 'changed?)' % (self.where, len(rows),
                                                self.files[self.file_order[self.file_pos]],
                                                len(self.rows)))
        self.rows, self.row = rows, int(state['row'])
        set_rng_state(self.rng, state['rng'], self.where)

    def _open(self, index, shuffle=True):
        import h5py
        path = self.files[index]
        if not os.path.isfile(path):
            raise DataLayerError('%s: HDF5 file %s not found' % (self.where, path))
        arrays = []
        try:
            with h5py.File(path, 'r') as f:
                for name in self.names:
                    if name not in f:
                        raise DataLayerError('%s: %s has no dataset %r (the tops name the '
                                             'datasets; it has %s)'
                                             % (self.where, path, name, sorted(f)))
                    arrays.append(np.asarray(f[name], dtype=np.float32))
        except DataLayerError:
            raise
        except (OSError, RuntimeError, KeyError, ValueError, TypeError) as err:
            # h5py's errors on a damaged or truncated file ("truncated file: eof = ...")
            raise DataLayerError('%s: cannot read HDF5 file %s: %s: %s'
                                 % (self.where, path, type(err).__name__, err)) from err
        rows = {a.shape[0] if a.ndim else 0 for a in arrays}
        if len(rows) != 1 or 0 in rows:
            raise DataLayerError('%s: datasets %s of %s have %s rows; they need the same, '
                                 'non-zero number' % (self.where, self.names, path,
                                                      [a.shape[:1] for a in arrays]))
        self.arrays = arrays
        self.rows = list(range(rows.pop()))
        if self.p.shuffle and shuffle:
            self.rng.shuffle(self.rows)
        self.row = 0

    def load(self):
        out = [[] for _ in self.names]
        for _ in range(self.p.batch_size):
            r = self.rows[self.row]
            for k, a in enumerate(self.arrays):
                out[k].append(a[r])
            self.row += 1
            if self.row == len(self.rows):
                self.file_pos += 1
                if self.file_pos == len(self.files):
                    self.file_pos = 0
                    if self.p.shuffle:
                        self.rng.shuffle(self.file_order)
                if len(self.files) > 1 or self.p.shuffle:
                    self._open(self.file_order[self.file_pos])
                else:
                    self.row = 0
        return [np.stack(rows) for rows in out]


@register
class HDF5DataLayer(_BatchLayer):
    """Caffe's HDF5Data: hdf5_data_param.source is a text file listing .h5 files; each
    top reads the dataset of its name, ``batch_size`` rows at a time, file after file
    (``shuffle`` shuffles the files and the rows of each)."""
    type = 'HDF5Data'
    top_counts = (1, None)

    def make_source(self):
        p = self.layer_param.hdf5_data_param
        if p.batch_size <= 0:
            raise self.error('hdf5_data_param.batch_size must be positive')
        files = read_source_list(p.source, self.where)
        return _HDF5Source(files, list(self.layer_param.top), p,
                           layer_rng(self.name, 'shuffle'), self.where)


@register
class HDF5OutputLayer(Layer):
    """Caffe's HDF5Output: writes its two bottoms to hdf5_output_param.file_name as
    datasets ``data`` and ``label``. The file is created at setup; each forward
    replaces both datasets with that batch (Caffe's own layer fails on a second
    write to the same names)."""
    type = 'HDF5Output'
    bottom_counts = (2, 2)
    top_counts = (0, 0)

    def __init__(self, layer_param, phase):
        super().__init__(layer_param, phase)
        import h5py
        self.file_name = layer_param.hdf5_output_param.file_name
        if not self.file_name:
            raise self.error('hdf5_output_param.file_name is not set')
        try:
            h5py.File(self.file_name, 'w').close()
        except OSError as err:
            raise self.error('cannot create %s: %s' % (self.file_name, err)) from err

    def top_shapes(self, bottom_shapes):
        if bottom_shapes[0][:1] != bottom_shapes[1][:1]:
            raise self.shape_error('bottom[0] and bottom[1] should have the same num',
                                   *bottom_shapes)
        return []

    def forward(self, bottoms, params):
        import h5py
        with h5py.File(self.file_name, 'w') as f:
            for name, t in zip(('data', 'label'), bottoms):
                f.create_dataset(name, data=t.detach().to('cpu', torch.float32).numpy())
        return []


# ------------------------------------------------------------------------ in-memory

def _dummy_shapes(p, num_tops, where):
    """One shape per top from dummy_data_param (``shape``, or legacy num/channels/...)."""
    legacy = [list(p.num), list(p.channels), list(p.height), list(p.width)]
    if len(p.shape):
        if any(legacy):
            raise DataLayerError('%s: give shape or num/channels/height/width, not both' % where)
        if len(p.shape) not in (1, num_tops):
            raise DataLayerError('%s: %d shapes for %d tops (give one, or one per top)'
                                 % (where, len(p.shape), num_tops))
        shapes = [tuple(int(d) for d in s.dim) for s in p.shape]
    else:
        for values in legacy:
            if len(values) not in (1, num_tops):
                raise DataLayerError('%s: num, channels, height and width need 1 or %d values '
                                     'each, got %s' % (where, num_tops, [len(v) for v in legacy]))
        shapes = [tuple(v[i if len(v) > 1 else 0] for v in legacy) for i in range(num_tops)]
    if len(shapes) == 1:
        shapes = shapes * num_tops
    return shapes


@register
class DummyDataLayer(Layer):
    """Caffe's DummyData: tops of the given shapes filled by ``data_filler`` (one for
    all tops or one per top; constant 0 by default). Constant fillers fill once at
    setup (values written into the blob stay); other fillers refill every forward."""
    type = 'DummyData'
    bottom_counts = (0, 0)
    top_counts = (1, None)

    def __init__(self, layer_param, phase):
        super().__init__(layer_param, phase)
        p = layer_param.dummy_data_param
        where = 'layer %r (%s)' % (self.name, self.type)
        n = self.num_tops()
        self.shapes = _dummy_shapes(p, n, where)
        specs = list(p.data_filler) or [caffe_pb2.FillerParameter(type='constant', value=0)]
        if len(specs) not in (1, n):
            raise self.error('%d data_filler for %d tops (give one, or one per top)'
                             % (len(specs), n))
        self.specs = [specs[i if len(specs) > 1 else 0] for i in range(n)]
        self.refill = [s.type != 'constant' for s in self.specs]
        self.rng = torch.Generator().manual_seed(int(layer_rng(self.name, 'fill').integers(2**62)))
        self.tensors = [self._fill(i) for i in range(n)]

    def _fill(self, i):
        return fillers.fill(torch.zeros(self.shapes[i]), self.specs[i], self.rng)

    def top_shapes(self, bottom_shapes):
        return self.shapes

    def forward(self, bottoms, params):
        dev = mode.device()
        for i, refill in enumerate(self.refill):
            if refill:
                self.tensors[i] = self._fill(i)
            if self.tensors[i].device != dev:
                self.tensors[i] = self.tensors[i].to(dev)
        return list(self.tensors)


class MemoryDataError(CaffeError, RuntimeError):
    """Arrays given to ``set_input_arrays`` do not fit the MemoryData layer (pycaffe
    raises RuntimeError with the same messages)."""


@register
class MemoryDataLayer(Layer):
    """Caffe's MemoryData: batches of arrays given by ``Net.set_input_arrays`` (data
    N x C x H x W, labels N x 1 x 1 x 1, both float32), ``batch_size`` at a time,
    cycling. The arrays are used, not copied, as in pycaffe, and transform_param is
    not applied to them (Caffe's Reset path skips the transformer)."""
    type = 'MemoryData'
    bottom_counts = (0, 0)
    top_counts = (2, 2)

    def __init__(self, layer_param, phase):
        super().__init__(layer_param, phase)
        p = layer_param.memory_data_param
        self.batch_size, self.channels = p.batch_size, p.channels
        self.height, self.width = p.height, p.width
        if min(self.batch_size, self.channels, self.height, self.width) <= 0:
            raise self.error('memory_data_param batch_size, channels, height and width must '
                             'be positive, got %d, %d, %d, %d' % (self.batch_size, self.channels,
                                                                  self.height, self.width))
        self._data = self._labels = None
        self._pos = 0

    def _check(self, arr, name, chw):
        if not isinstance(arr, np.ndarray):
            raise MemoryDataError('%s must be a numpy array, got %s' % (name, type(arr).__name__))
        if not arr.flags['C_CONTIGUOUS']:
            raise MemoryDataError('%s must be C contiguous' % name)
        if arr.ndim != 4:
            raise MemoryDataError('%s must be 4-d, got shape %s' % (name, arr.shape))
        if arr.dtype != np.float32:
            raise MemoryDataError('%s must be float32, got %s' % (name, arr.dtype))
        for axis, what, want in zip((1, 2, 3), ('channels', 'height', 'width'), chw):
            if arr.shape[axis] != want:
                raise MemoryDataError('%s has wrong number of %s: shape %s, layer %r takes '
                                      '%d' % (name, what, arr.shape, self.name, want))

    def reset(self, data, labels):
        """Use ``data`` and ``labels`` from the next forward on (Caffe's Reset), after
        pycaffe's checks."""
        self._check(data, 'data array', (self.channels, self.height, self.width))
        self._check(labels, 'labels array', (1, 1, 1))
        if data.shape[0] != labels.shape[0]:
            raise MemoryDataError('data and labels must have the same first dimension (%d '
                                  'and %d)' % (data.shape[0], labels.shape[0]))
        if data.shape[0] == 0 or data.shape[0] % self.batch_size:
            raise MemoryDataError('first dimensions of input arrays must be a multiple of '
                                  'batch size %d, got %d' % (self.batch_size, data.shape[0]))
        self._data, self._labels, self._pos = data, labels, 0

    def top_shapes(self, bottom_shapes):
        return [(self.batch_size, self.channels, self.height, self.width), (self.batch_size,)]

    def forward(self, bottoms, params):
        if self._data is None:
            raise self.error('MemoryData needs arrays: call net.set_input_arrays(data, labels) '
                             'first')
        i, n = self._pos, self.batch_size
        self._pos = (i + n) % len(self._data)
        dev = mode.device()
        data = torch.from_numpy(self._data[i:i + n].copy()).to(dev)
        labels = torch.from_numpy(self._labels[i:i + n].reshape(n).copy()).to(dev)
        return [data, labels]
