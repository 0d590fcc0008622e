"""The base of every FCN data layer: one sample per forward, on N tops.

``SegDataLayer`` owns what the dataset layers share: reading ``param_str``,
checking the split list and every listed file at setup, the sample order,
prefetching, exact resume and shutdown. A dataset's layer (``voc_layers``,
``pascalcontext_layers``, ``siftflow_layers``, ``nyud_layers``) only says which
files make a sample and how to load and check them.

``param_str`` is a Python dict literal read with ``ast.literal_eval`` (the
reference used ``eval``; code in it is refused here), with only known keys (a
misspelt ``'randomise'`` would otherwise silently leave the order random). Every
layer takes its dataset folder (``voc_dir``, ``sbdd_dir``, ...), ``split`` (the
split list, one sample id a line, blank lines skipped) and:

- ``randomize`` (default True): random order, but only on splits whose name
  contains ``'train'``; every other split goes in list order and wraps around.
- ``seed`` (default None, i.e. unseeded): seed of the random order.
- ``prefetch`` (default True; not in the reference): load the next sample on a
  background thread while the net computes (``prefetch.Prefetcher``).

The order is the reference's: with a seed, the first index and the one after
every forward are ``randint(0, len - 1)`` of a generator seeded by
``random.seed(seed)``. The reference used Python's global generator (under
Python 2, whose ``randint`` draws differently); these layers use a private
``random.Random(seed)``, which gives the same sequence as the global one under
Python 3 and is not disturbed by other users of ``random``. In data-parallel
training (``torchcaffe.distributed``) rank r of N reads samples r, r + N, r + 2N,
... of the order one process reads (see ``SegDataLayer._shard``).

Missing folders, split lists and files are found at setup, not hours into
training. Tops take each sample's own size; the layers have no bottoms and pass
no gradient.
"""
import ast
import errno
import os
import random
import weakref

import numpy as np
from PIL import Image

import mat5
import torchcaffe as caffe
from prefetch import Prefetcher
from torchcaffe import distributed
from torchcaffe.errors import CaffeError

__all__ = ['SegDataLayer', 'MultiTopSegDataLayer', 'SampleLoader', 'DataLayerError',
           'DataFileNotFoundError', 'parse_param_str', 'check_text', 'check_flag', 'check_mean',
           'require_dir', 'read_split', 'check_files_exist', 'open_image', 'load_mat',
           'read_mat_field', 'check_label_values', 'check_same_size']

# The keys every layer takes besides its own, with their defaults.
SEQUENCE_DEFAULTS = {'randomize': True, 'seed': None, 'prefetch': True}


class DataLayerError(CaffeError, ValueError):
    """A data layer's parameters, split list or sample files are unusable."""


class DataFileNotFoundError(CaffeError, FileNotFoundError):
    """A folder or file a data layer needs does not exist; ``filename`` is its path."""

    def __init__(self, what, path):
        super().__init__(errno.ENOENT, what, str(path))


# ------------------------------------------------------------------------ parameters

def parse_param_str(param_str, required, optional, where):
    """Read ``param_str`` as a dict literal with only the given keys.

    Parameters
    ----------
    param_str : str
        ``python_param.param_str``; read with ``ast.literal_eval``, never ``eval``.
    required : sequence of str
    optional : dict
        Key -> default.
    where : str
        The layer, for messages.

    Returns
    -------
    dict
        Every required and optional key.

    Raises
    ------
    DataLayerError
        Not a literal dict, a required key missing or an unknown key present.

    Examples
    --------
    >>> parse_param_str("{'split': 'val'}", ['split'], {'seed': None}, 'data')
    {'seed': None, 'split': 'val'}
    """
    try:
        params = ast.literal_eval(param_str)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as err:
        raise DataLayerError('%s: param_str must be a Python dict literal (it is read with '
                             'ast.literal_eval, so it cannot hold code): %r (%s)'
                             % (where, param_str, err)) from None
    if not isinstance(params, dict):
        raise DataLayerError('%s: param_str must be a dict, got %s: %r'
                             % (where, type(params).__name__, param_str))
    missing = [k for k in required if k not in params]
    if missing:
        raise DataLayerError('%s: param_str lacks %s (got keys %s)'
                             % (where, ', '.join(map(repr, missing)), sorted(map(str, params))))
    known = set(required) | set(optional)
    unknown = sorted(str(k) for k in params if k not in known)
    if unknown:
        raise DataLayerError('%s: unknown param_str key(s) %s; known keys: %s'
                             % (where, ', '.join(map(repr, unknown)), ', '.join(sorted(known))))
    result = dict(optional)
    result.update(params)
    return result


def check_text(params, key, where):
    """``params[key]`` if it is a non-empty string, else a :class:`DataLayerError`."""
    value = params[key]
    if not isinstance(value, str) or not value:
        raise DataLayerError('%s: %r must be a non-empty string, got %r' % (where, key, value))
    return value


def check_flag(params, key, where):
    """``params[key]`` as a bool; it must be a bool or an int."""
    value = params[key]
    if not isinstance(value, (bool, int)):
        raise DataLayerError('%s: %r must be True or False, got %r' % (where, key, value))
    return bool(value)


def check_mean(mean, where):
    """The mean as a float64 (3,) array; float64 keeps the reference's arithmetic."""
    try:
        arr = np.array(mean, dtype=np.float64)
    except (TypeError, ValueError):
        arr = None
    if arr is None or arr.shape != (3,) or not np.all(np.isfinite(arr)):
        raise DataLayerError("%s: 'mean' must be three numbers (B, G, R), got %r" % (where, mean))
    return arr


# ------------------------------------------------------------------------ files

def require_dir(path, what, hint=''):
    """Fail, naming ``what`` and ``path`` (and ``hint``: where to get it), if no such folder."""
    if not os.path.isdir(path):
        raise DataFileNotFoundError('%s not found (absolute path %s)%s'
                                    % (what, os.path.abspath(path), '; ' + hint if hint else ''),
                                    path)


def read_split(path):
    """The sample ids listed in a split file, one a line (blank lines skipped).

    Raises
    ------
    DataFileNotFoundError
        No such file.
    DataLayerError
        The file cannot be read or lists no ids.
    """
    if not os.path.isfile(path):
        raise DataFileNotFoundError('split list not found (absolute path %s)'
                                    % os.path.abspath(path), path)
    try:
        with open(path, encoding='utf-8') as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise DataLayerError('%s: cannot read split list: %s' % (path, err)) from err
    ids = [line.strip() for line in lines if line.strip()]
    if not ids:
        raise DataLayerError('%s: split list is empty' % path)
    return ids


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
                require_dir(folder, 'folder', hint)
                listed[folder] = set(os.listdir(folder))
            if name not in listed[folder]:
                missing.append(path)
                break
    if missing:
        raise DataFileNotFoundError('%d of the %d samples listed in %s lack a file, e.g.'
                                    % (len(missing), len(ids), split_file), missing[0])


# Raster formats Pillow decodes itself. Not EPS: Pillow hands those to Ghostscript,
# and an image file must not run a program.
IMAGE_FORMATS = ('JPEG', 'PNG', 'BMP', 'PPM', 'TIFF', 'GIF', 'WEBP')  # JPEG includes MPO


def open_image(path, what):
    """``Image.open`` and load, with errors that name the file (``what``: 'image', ...).

    Only the formats in ``IMAGE_FORMATS`` are read, whatever the file's name says.
    """
    if not os.path.isfile(path):
        raise DataFileNotFoundError('%s not found' % what, path)
    im = None
    try:
        im = Image.open(path, formats=IMAGE_FORMATS)
        im.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        if im is not None:
            im.close()
        raise DataLayerError('%s: cannot read %s (formats read: %s): %s'
                             % (path, what, ', '.join(IMAGE_FORMATS), err)) from err
    return im


def load_mat(path):
    """A label MAT file's variables, as ``scipy.io.loadmat`` gives them, with errors that name it.

    Read by ``mat5.loadmat`` (pure Python), not scipy: scipy's compiled reader
    trusts the sizes in the file, and a damaged file can crash the process.
    """
    if not os.path.isfile(path):
        raise DataFileNotFoundError('label not found', path)
    try:
        return mat5.loadmat(path)
    except (mat5.MatFileError, OSError) as err:
        raise DataLayerError('%s: cannot read MAT file: %s' % (path, err)) from err


def read_mat_field(path, field):
    """The 2-D numeric array ``field`` of a MAT file.

    Raises
    ------
    DataFileNotFoundError
        No such file.
    DataLayerError
        Unreadable, no such field, not 2-D numeric, or not whole numbers.
    """
    mat = load_mat(path)
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


# ------------------------------------------------------------------------ samples

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


class SampleLoader:
    """Loads one sample as one C x H x W array per top; what the prefetch thread runs.

    A subclass gives ``path(kind, sample_id)`` and ``load(kind, sample_id)`` for
    each kind of top in ``kinds``, and may list in ``folders`` the (folder,
    description) pairs that setup should name when one is missing. A loader holds
    no reference to its layer, so a layer nobody uses any more can be collected
    (which stops its thread).
    """
    folders = ()

    def __init__(self, kinds):
        self.kinds = tuple(kinds)
        self.warned = set()  # images already reported as converted (voc_layers.read_rgb)

    def paths(self, sample_id):
        """The files of ``sample_id``, one per top."""
        return [self.path(kind, sample_id) for kind in self.kinds]

    def __call__(self, sample_id):
        arrays = tuple(self.load(kind, sample_id) for kind in self.kinds)
        check_same_size(arrays, self.paths(sample_id))
        return arrays


# ------------------------------------------------------------------------ the layer

class SegDataLayer(caffe.Layer):
    """One sample per forward on N tops, each at its own size (see the module doc).

    A subclass sets ``dir_key`` (the dataset folder's key; ``dir_subfolder`` when
    the data lie in a subfolder of it), its own ``required``
    keys and ``optional`` ones (key -> default), ``split_dir`` (the split list's
    folder under the dataset folder), ``top_names`` (or returns them from
    ``configure`` when ``param_str`` chooses them) and ``dataset_hint`` (where to
    get the dataset), and gives ``configure``, ``make_loader`` and ``keep``.

    Attributes (as the reference layers have them): the dataset folder under
    ``dir_key``, ``split``, ``random``, ``seed``, ``indices`` (the split's ids) and
    ``idx`` (the next sample's position); ``kinds`` names the tops and ``sample``
    holds the current sample's arrays.
    """
    dir_key = None
    dir_subfolder = ''  # where the dataset lies inside the folder that dir_key names, if deeper
    required = ()
    optional = {}
    split_dir = ()
    top_names = None
    tops_text = None  # how a wrong top count describes the tops; default "N tops (a, b)"
    dataset_hint = ''

    # ---- what a subclass provides

    def configure(self, params, where):
        """Read the subclass's own keys of ``params``; return the top names if not fixed."""

    def make_loader(self, where):
        """The dataset's :class:`SampleLoader`; it must not refer to the layer."""
        raise NotImplementedError

    def keep(self, sample):
        """Store the current sample's arrays under the reference's attribute names."""

    # ---- setup

    def setup(self, bottom, top):
        """Read ``param_str``, check tops, bottoms and the files, seed the order."""
        name = getattr(getattr(self, '_layer_param', None), 'name', '')
        where = 'layer %r (%s)' % (name, type(self).__name__) if name else type(self).__name__
        prefetch = self._read_params(where)
        self._check_blobs(bottom, top, where)
        self._open_dataset(where)

        # Evaluation is deterministic: only training splits are shuffled.
        if 'train' not in self.split:
            self.random = False
        self._rank, self._ranks = self._shard()
        self.idx = self._rank % len(self.indices)
        if self.random:
            try:
                self._rng = random.Random(self.seed)
            except TypeError as err:
                raise DataLayerError('%s: bad seed %r: %s' % (where, self.seed, err)) from None
            self.idx = self._draw(self._rank + 1)
        self._loaded_idx = None

        self.close()  # a second setup replaces the first one's thread
        self._prefetcher = None
        if prefetch:
            self._prefetcher = Prefetcher(self._loader, name='%s-prefetch' % (name or 'data'))
            self._finalizer = weakref.finalize(self, self._prefetcher.close)

    def _read_params(self, where):
        """Set the reference's attributes from ``param_str``; return ``prefetch``."""
        params = parse_param_str(self.param_str, [self.dir_key, 'split', *self.required],
                                 dict(SEQUENCE_DEFAULTS, **self.optional), where)
        root = check_text(params, self.dir_key, where)
        setattr(self, self.dir_key, os.path.join(root, self.dir_subfolder) if self.dir_subfolder
                else root)
        self.split = check_text(params, 'split', where)
        self.random = check_flag(params, 'randomize', where)
        self.seed = params['seed']
        prefetch = check_flag(params, 'prefetch', where)
        kinds = self.configure(params, where)
        self.kinds = list(self.top_names if kinds is None else kinds)
        return prefetch

    def _check_blobs(self, bottom, top, where):
        if len(top) != len(self.kinds):
            wanted = self.tops_text or '%d tops (%s)' % (len(self.kinds), ', '.join(self.kinds))
            raise DataLayerError('%s: needs %s, got %d' % (where, wanted, len(top)))
        if len(bottom) != 0:
            raise DataLayerError('%s: a data layer takes no bottoms, got %d'
                                 % (where, len(bottom)))

    def _open_dataset(self, where):
        """Check the folders, read the split list, check every listed file exists."""
        root = getattr(self, self.dir_key)
        require_dir(root, '%s %s' % (where, '/'.join(filter(None, (self.dir_key,
                                                                  self.dir_subfolder)))))
        self._loader = self.make_loader(where)
        split_file = os.path.join(root, *self.split_dir, self.split + '.txt')
        self.indices = read_split(split_file)
        for folder, what in self._loader.folders:
            require_dir(folder, what, self.dataset_hint)
        check_files_exist(self.indices, self._loader.paths, split_file, self.dataset_hint)

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
            self.idx = self._draw(self._ranks)
        else:
            self.idx = (self.idx + self._ranks) % len(self.indices)
        if self._prefetcher is not None and self.idx != self._loaded_idx:
            self._prefetcher.submit(self.idx, self.indices[self.idx])

    def backward(self, top, propagate_down, bottom):
        """Data layers pass no gradient."""

    def _shard(self):
        """(rank, ranks): this layer reads every ``ranks``-th sample, from the ``rank``-th.

        In data-parallel training (``torchcaffe.distributed``) rank r of N takes
        samples r, r + N, r + 2N, ... of the sequence one process would read (in
        order, or drawn from the seeded generator, which every rank runs), so the N
        ranks together read what one process with N times the ``iter_size`` reads.
        Test nets read everything: rank 0 alone scores.
        """
        if getattr(self, 'phase', None) != caffe.TRAIN:
            return 0, 1
        return distributed.rank(), distributed.world_size()

    def _draw(self, n):
        """The last of ``n`` random positions drawn (the reference draws one per sample)."""
        for _ in range(n):
            idx = self._rng.randint(0, len(self.indices) - 1)
        return idx

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


# The name of this base before it served the two-top layers too.
MultiTopSegDataLayer = SegDataLayer
