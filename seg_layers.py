"""The base of the SIFT Flow and NYUDv2 data layers: one sample per forward, N tops.

``siftflow_layers.SIFTFlowSegDataLayer`` (data, sem, geo) and
``nyud_layers.NYUDSegDataLayer`` (any of color, depth, hha, label) read a split
list ``<dir>/<split>.txt`` and give one sample per forward, each at its own size,
in the order of the PASCAL VOC layers (``voc_layers``): shuffled only on splits
whose name contains ``'train'``, by ``random.Random(seed)`` drawing ``randint(0,
len - 1)`` for the first sample and after every forward; other splits go in list
order and wrap around. ``param_str`` is a dict literal read with
``ast.literal_eval``; besides each dataset's keys it takes ``randomize`` (default
True), ``seed`` (default None) and ``prefetch`` (default True; not in the
reference: the next sample loads on a background thread).

A subclass names its folder key (``dir_key``), reads its own keys in
``configure`` (returning the kinds of its tops, in order) and gives a loader: a
callable ``loader(sample_id) -> tuple of C x H x W arrays`` that holds no
reference to the layer (the prefetch thread runs it), with ``paths(sample_id)``
listing the files a sample needs, so that missing files are found at setup.
"""
import os
import random
import weakref

import numpy as np

import torchcaffe as caffe
from voc_layers import (DataFileNotFoundError, DataLayerError, Prefetcher, parse_param_str,
                        read_split, _check_flag, _check_text, _require_dir)

__all__ = ['MultiTopSegDataLayer', 'read_mat_field', 'check_label_values',
           'check_same_size', 'check_files_exist']


def read_mat_field(path, field):
    """The 2-D numeric array ``field`` of a MAT file.

    Raises
    ------
    DataFileNotFoundError
        No such file.
    DataLayerError
        Unreadable, no such field, not 2-D numeric, or not whole numbers.
    """
    import scipy.io
    if not os.path.isfile(path):
        raise DataFileNotFoundError('label not found', path)
    try:
        mat = scipy.io.loadmat(path)
    except Exception as err:  # scipy raises many types for a bad file
        raise DataLayerError('%s: cannot read MAT file: %s' % (path, err)) from err
    if field not in mat:
        raise DataLayerError('%s: no field %r (it has %s)'
                             % (path, field, ', '.join(k for k in mat if not k.startswith('__'))
                                or 'none'))
    value = np.asarray(mat[field])
    if value.ndim != 2 or value.dtype.kind not in 'uif':
        raise DataLayerError('%s: field %r must be a 2-D numeric array, got %s %s'
                             % (path, field, value.dtype, value.shape))
    if value.dtype.kind == 'f' and not np.all(value == np.round(value)):
        raise DataLayerError('%s: field %r must hold whole numbers' % (path, field))
    return value


def check_label_values(values, low, high, path, meaning):
    """Fail, naming ``path``, when ``values`` leave ``[low, high]``.

    The reference casts labels to uint8 without a check, so a value outside the
    dataset's range would wrap into some class instead of failing.
    """
    if values.size and (values.min() < low or values.max() > high):
        raise DataLayerError('%s: label values must be in %d..%d (%s), got %s..%s'
                             % (path, low, high, meaning, values.min(), values.max()))


def check_same_size(arrays, paths):
    """Fail, naming both files, when the C x H x W ``arrays`` differ in H x W."""
    for array, path in zip(arrays[1:], paths[1:]):
        if array.shape[1:] != arrays[0].shape[1:]:
            raise DataLayerError('%s is %d x %d but %s is %d x %d (H x W)'
                                 % (path, *array.shape[1:], paths[0], *arrays[0].shape[1:]))


def check_files_exist(ids, paths, split_file, hint=''):
    """Fail at setup, naming the first missing file, when a listed sample lacks one.

    ``paths(sample_id)`` lists a sample's files; each folder is listed once. A
    missing folder's message ends with ``hint`` (where to get the dataset).
    """
    listed = {}
    missing = []
    for sample_id in ids:
        for path in paths(sample_id):
            folder, name = os.path.split(path)
            if folder not in listed:
                if not os.path.isdir(folder):
                    raise DataFileNotFoundError('folder not found (absolute path %s)%s'
                                                % (os.path.abspath(folder),
                                                   '; ' + hint if hint else ''), folder)
                listed[folder] = set(os.listdir(folder))
            if name not in listed[folder]:
                missing.append(path)
                break
    if missing:
        raise DataFileNotFoundError('%d of the %d samples listed in %s lack a file, e.g.'
                                    % (len(missing), len(ids), split_file), missing[0])


class MultiTopSegDataLayer(caffe.Layer):
    """One sample per forward on N tops (see the module docstring).

    Attributes (as the reference layers have them): ``indices`` (the split's ids),
    ``idx`` (the next sample's position), ``split``, ``random``, ``seed`` and the
    folder under ``dir_key``.
    """
    dir_key = None
    required = ()
    optional = {}
    dataset_hint = ''

    # ---- what a subclass provides

    def configure(self, params, where):
        """Read the subclass's own keys of ``params``; return its top kinds, in order."""
        raise NotImplementedError

    def make_loader(self):
        """The sample loader (must not refer to the layer)."""
        raise NotImplementedError

    def keep(self, sample):
        """Store the current sample's arrays under the reference's attribute names."""

    # ---- setup

    def setup(self, bottom, top):
        """Read ``param_str``, check tops and bottoms and the files, seed the order."""
        name = getattr(getattr(self, '_layer_param', None), 'name', '')
        where = 'layer %r (%s)' % (name, type(self).__name__) if name else type(self).__name__
        optional = {'randomize': True, 'seed': None, 'prefetch': True}
        optional.update(self.optional)
        params = parse_param_str(self.param_str, [self.dir_key, 'split'] + list(self.required),
                                 optional, where)
        root = _check_text(params, self.dir_key, where)
        setattr(self, self.dir_key, root)
        self.split = _check_text(params, 'split', where)
        self.random = _check_flag(params, 'randomize', where)
        self.seed = params['seed']
        prefetch = _check_flag(params, 'prefetch', where)
        self.kinds = list(self.configure(params, where))
        if len(top) != len(self.kinds):
            raise DataLayerError('%s: needs %d tops (%s), got %d'
                                 % (where, len(self.kinds), ', '.join(self.kinds), len(top)))
        if len(bottom) != 0:
            raise DataLayerError('%s: a data layer takes no bottoms, got %d'
                                 % (where, len(bottom)))
        _require_dir(root, '%s %s' % (where, self.dir_key))
        split_file = os.path.join(root, self.split + '.txt')
        self.indices = read_split(split_file)
        self._loader = self.make_loader()
        check_files_exist(self.indices, self._loader.paths, split_file, self.dataset_hint)

        # Evaluation is deterministic: only training splits are shuffled.
        if 'train' not in self.split:
            self.random = False
        self.idx = 0
        if self.random:
            try:
                self._rng = random.Random(self.seed)
            except TypeError as err:
                raise DataLayerError('%s: bad seed %r: %s' % (where, self.seed, err)) from None
            self.idx = self._rng.randint(0, len(self.indices) - 1)
        self._loaded_idx = None
        self.close()  # a second setup replaces the first one's thread
        self._prefetcher = None
        if prefetch:
            self._prefetcher = Prefetcher(self._loader, name='%s-prefetch' % (name or 'data'))
            self._finalizer = weakref.finalize(self, self._prefetcher.close)

    # ---- the pass

    def reshape(self, bottom, top):
        """Load the current sample (if not yet) and shape the tops to it."""
        self._load_current()
        for blob, array in zip(top, self.sample):
            blob.reshape(1, *array.shape)

    def forward(self, bottom, top):
        """Copy the current sample to the tops, pick the next, start loading it."""
        self._load_current()
        for blob, array in zip(top, self.sample):
            blob.data[...] = array
        if self.random:
            self.idx = self._rng.randint(0, len(self.indices) - 1)
        else:
            self.idx = (self.idx + 1) % len(self.indices)
        if self._prefetcher is not None and self.idx != self._loaded_idx:
            self._prefetcher.submit(self.idx, self.indices[self.idx])

    def backward(self, top, propagate_down, bottom):
        """Data layers pass no gradient."""

    def _load_current(self):
        if self._loaded_idx == self.idx:
            return
        sample_id = self.indices[self.idx]
        if self._prefetcher is not None:
            self.sample = self._prefetcher.get(self.idx, sample_id)
        else:
            self.sample = self._loader(sample_id)
        self._loaded_idx = self.idx
        self.keep(self.sample)

    # ---- resume and shutdown

    def state_dict(self):
        """Where the layer is in its sequence (JSON-able), for an exact resume."""
        state = {'idx': self.idx}
        if self.random:
            version, internal, gauss = self._rng.getstate()
            state['rng'] = [version, list(internal), gauss]
        return state

    def load_state_dict(self, state):
        """Continue the sequence from a :meth:`state_dict`."""
        if not 0 <= state['idx'] < len(self.indices):
            raise DataLayerError('saved position %r is outside the split of %d images'
                                 % (state['idx'], len(self.indices)))
        self.idx = state['idx']
        if self.random and 'rng' in state:
            version, internal, gauss = state['rng']
            self._rng.setstate((version, tuple(internal), gauss))

    def close(self):
        """Stop the prefetch thread (also done when the layer is collected)."""
        finalizer = self.__dict__.pop('_finalizer', None)
        if finalizer is not None:
            finalizer()
