"""PASCAL VOC and SBD data layers for FCN (the prototxts' ``module: "voc_layers"``).

Each forward gives one (image, label) pair, at the image's own size::

    layer {
      name: "data" type: "Python" top: "data" top: "label"
      python_param {
        module: "voc_layers" layer: "SBDDSegDataLayer"
        param_str: "{'sbdd_dir': '../data/sbdd/dataset', 'seed': 1337, 'split': 'train',
                     'mean': (104.00699, 116.66877, 122.67892)}"
      }
    }

``param_str`` is a Python dict literal read with ``ast.literal_eval`` (the
reference used ``eval``; code in it is refused here). Keys:

- ``voc_dir`` (VOCSegDataLayer) or ``sbdd_dir`` (SBDDSegDataLayer): the dataset
  folder, relative to the working directory as in the reference.
- ``split``: name of the split list, ``<voc_dir>/ImageSets/Segmentation/<split>.txt``
  or ``<sbdd_dir>/<split>.txt``, one sample id a line.
- ``mean``: per-channel mean in BGR order, subtracted from every pixel.
- ``randomize`` (default True): random order, but only on splits whose name
  contains ``'train'``; every other split goes in list order and wraps around.
- ``seed`` (default None, i.e. unseeded): seed of the random order.
- ``prefetch`` (default True; not in the reference): load the next sample on a
  background thread while the net computes.

Files: VOC images ``JPEGImages/<id>.jpg`` and labels ``SegmentationClass/<id>.png``
(palette PNGs whose pixel values are class indices, 255 = void); SBD images
``img/<id>.jpg`` and labels ``cls/<id>.mat`` (field ``GTcls.Segmentation``).

Tops: ``data`` 1 x 3 x H x W (float32: RGB -> BGR, minus the mean, channels
first) and ``label`` 1 x 1 x H x W (the uint8 class indices). The layers have no
bottoms and pass no gradient.

The sample order is the reference's: with a seed, the first index and the one
after every forward are ``randint(0, len - 1)`` of a generator seeded by
``random.seed(seed)``. The reference used Python's global generator (under
Python 2, whose ``randint`` draws differently); these layers use a private
``random.Random(seed)``, which gives the same sequence as the global one under
Python 3 and is not disturbed by other users of ``random``.

Choices where the reference would crash or read garbage, all with a message that
names the file:

- Grayscale, palette, CMYK and RGBA/LA images are converted to RGB (alpha is
  dropped, CMYK uses PIL's conversion), with one logged warning per file; other
  modes (16-bit, float) are refused.
- Labels must be palette or 8-bit grayscale PNGs (an RGB-coloured label would
  otherwise be read as three channels), SBD labels 2-D with values in 0..255,
  and a label must have its image's height and width.
- Missing folders, split lists and files are found at setup, not hours into
  training; blank lines in a split list are skipped.
- Unknown ``param_str`` keys are refused (a misspelt ``'randomise'`` would
  otherwise silently leave the order random).
- EXIF orientation is ignored, as the reference (and Caffe) ignore it.
"""
import ast
import errno
import logging
import os
import queue
import random
import threading
import weakref

import numpy as np
from PIL import Image

import torchcaffe as caffe
from torchcaffe.errors import CaffeError

__all__ = ['VOCSegDataLayer', 'SBDDSegDataLayer', 'DataLayerError', 'DataFileNotFoundError',
           'MEAN_BGR', 'parse_param_str', 'read_split', 'read_rgb', 'preprocess',
           'read_voc_label', 'read_sbd_label', 'Prefetcher']

log = logging.getLogger(__name__)

# The ILSVRC mean pixel (BGR) the FCN prototxts subtract.
MEAN_BGR = (104.00698793, 116.66876762, 122.67891434)

# Image modes converted to RGB (with a warning); anything else but RGB is refused.
CONVERTIBLE_MODES = ('1', 'L', 'LA', 'La', 'P', 'PA', 'RGBA', 'RGBa', 'RGBX', 'CMYK', 'YCbCr')
LABEL_MODES = ('P', 'L')


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


def _check_mean(mean, where):
    """The mean as a float64 (3,) array; float64 keeps the reference's arithmetic."""
    try:
        arr = np.array(mean, dtype=np.float64)
    except (TypeError, ValueError):
        arr = None
    if arr is None or arr.shape != (3,) or not np.all(np.isfinite(arr)):
        raise DataLayerError("%s: 'mean' must be three numbers (B, G, R), got %r" % (where, mean))
    return arr


def _check_flag(params, key, where):
    value = params[key]
    if not isinstance(value, (bool, int)):
        raise DataLayerError('%s: %r must be True or False, got %r' % (where, key, value))
    return bool(value)


def _check_text(params, key, where):
    value = params[key]
    if not isinstance(value, str) or not value:
        raise DataLayerError('%s: %r must be a non-empty string, got %r' % (where, key, value))
    return value


# ------------------------------------------------------------------------ files

def _require_dir(path, what):
    if not os.path.isdir(path):
        raise DataFileNotFoundError('%s not found (absolute path %s)'
                                    % (what, os.path.abspath(path)), path)


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


def _check_files_exist(ids, folder_ext_pairs, split_file):
    """Fail at setup when a listed sample lacks its image or label file."""
    for folder, ext in folder_ext_pairs:
        present = set(os.listdir(folder))
        missing = [i for i in ids if i + ext not in present]
        if missing:
            first = os.path.join(folder, missing[0] + ext)
            raise DataFileNotFoundError(
                '%d of the %d samples listed in %s have no file in %s, e.g.'
                % (len(missing), len(ids), split_file, folder), first)


def _open_image(path, what):
    """``Image.open`` with errors that name the file."""
    if not os.path.isfile(path):
        raise DataFileNotFoundError('%s not found' % what, path)
    im = None
    try:
        im = Image.open(path)
        im.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        if im is not None:
            im.close()
        raise DataLayerError('%s: cannot read %s: %s' % (path, what, err)) from err
    return im


def read_rgb(path, warned=None):
    """An image file as an H x W x 3 uint8 RGB array.

    Grayscale, palette, CMYK and alpha images are converted to RGB with a logged
    warning (once per path when ``warned``, a set, is given); other modes fail.

    Raises
    ------
    DataFileNotFoundError, DataLayerError
    """
    with _open_image(path, 'image') as im:
        if im.mode != 'RGB':
            if im.mode not in CONVERTIBLE_MODES:
                raise DataLayerError('%s: image mode %r is not supported (expected an 8-bit '
                                     'RGB or grayscale image)' % (path, im.mode))
            if warned is None or path not in warned:
                log.warning('%s: %s image converted to RGB', path, im.mode)
                if warned is not None:
                    warned.add(path)
            return np.array(im.convert('RGB'))
        return np.array(im)


def preprocess(rgb, mean):
    """Caffe's input from an H x W x 3 RGB array: 3 x H x W float32, BGR, minus ``mean``.

    As the reference: cast to float32, reverse the channels, subtract the BGR mean
    (a float64 array, so each value is rounded to float32 once), channels first.

    Examples
    --------
    >>> preprocess(np.array([[[10, 20, 30]]], np.uint8), np.array([1., 2., 3.]))[:, 0, 0]
    array([29., 18.,  7.], dtype=float32)
    """
    in_ = np.array(rgb, dtype=np.float32)
    in_ = in_[:, :, ::-1]
    in_ -= mean
    return np.ascontiguousarray(in_.transpose((2, 0, 1)))


def read_voc_label(path):
    """A VOC ``SegmentationClass`` PNG as a 1 x H x W uint8 array of class indices.

    Raises
    ------
    DataFileNotFoundError, DataLayerError
        Missing, unreadable, or not a palette / 8-bit grayscale PNG.
    """
    with _open_image(path, 'label') as im:
        if im.mode not in LABEL_MODES:
            raise DataLayerError('%s: label must be a palette (P) or 8-bit grayscale (L) PNG of '
                                 'class indices, got mode %r' % (path, im.mode))
        label = np.array(im, dtype=np.uint8)
    return label[np.newaxis, ...]


def read_sbd_label(path):
    """An SBD ``cls/<id>.mat`` label (``GTcls.Segmentation``) as 1 x H x W uint8.

    Raises
    ------
    DataFileNotFoundError, DataLayerError
        Missing, unreadable, without the field, not 2-D, or values outside 0..255.
    """
    import scipy.io
    if not os.path.isfile(path):
        raise DataFileNotFoundError('label not found', path)
    try:
        mat = scipy.io.loadmat(path)
    except Exception as err:  # scipy raises many types for a bad file
        raise DataLayerError('%s: cannot read MAT file: %s' % (path, err)) from err
    try:
        seg = mat['GTcls'][0]['Segmentation'][0]
    except (KeyError, IndexError, ValueError, TypeError) as err:
        raise DataLayerError('%s: no GTcls.Segmentation (SBD cls/*.mat layout): %s'
                             % (path, err)) from err
    seg = np.asarray(seg)
    if seg.ndim != 2 or seg.dtype.kind not in 'uif':
        raise DataLayerError('%s: GTcls.Segmentation must be a 2-D numeric array, got %s %s'
                             % (path, seg.dtype, seg.shape))
    if seg.size and (seg.min() < 0 or seg.max() > 255 or np.any(seg != np.round(seg))):
        raise DataLayerError('%s: GTcls.Segmentation values must be whole numbers in 0..255, '
                             'got %s..%s' % (path, seg.min(), seg.max()))
    return seg.astype(np.uint8)[np.newaxis, ...]


# ------------------------------------------------------------------------ datasets

class _VOCFiles:
    """Paths of the PASCAL VOC layout under ``root``."""
    dir_key = 'voc_dir'

    def __init__(self, root, split):
        self.root = root
        self.image_dir = os.path.join(root, 'JPEGImages')
        self.label_dir = os.path.join(root, 'SegmentationClass')
        self.split_file = os.path.join(root, 'ImageSets', 'Segmentation', split + '.txt')
        self.label_ext = '.png'

    def image_path(self, sample_id):
        return os.path.join(self.image_dir, sample_id + '.jpg')

    def label_path(self, sample_id):
        return os.path.join(self.label_dir, sample_id + self.label_ext)

    read_label = staticmethod(read_voc_label)


class _SBDFiles(_VOCFiles):
    """Paths of the SBD ``dataset`` layout under ``root``."""
    dir_key = 'sbdd_dir'

    def __init__(self, root, split):
        self.root = root
        self.image_dir = os.path.join(root, 'img')
        self.label_dir = os.path.join(root, 'cls')
        self.split_file = os.path.join(root, split + '.txt')
        self.label_ext = '.mat'

    read_label = staticmethod(read_sbd_label)


class _SampleLoader:
    """Loads one sample id into (data, label); what the prefetch thread runs.

    It holds no reference to the layer, so a layer nobody uses any more can be
    collected (which stops its thread).
    """

    def __init__(self, files, mean):
        self.files = files
        self.mean = mean
        self.warned = set()

    def image(self, sample_id):
        return preprocess(read_rgb(self.files.image_path(sample_id), self.warned), self.mean)

    def label(self, sample_id):
        return self.files.read_label(self.files.label_path(sample_id))

    def __call__(self, sample_id):
        data, label = self.image(sample_id), self.label(sample_id)
        if data.shape[1:] != label.shape[1:]:
            raise DataLayerError('label %s is %d x %d but image %s is %d x %d (H x W)'
                                 % (self.files.label_path(sample_id), *label.shape[1:],
                                    self.files.image_path(sample_id), *data.shape[1:]))
        return data, label


# ------------------------------------------------------------------------ prefetching

_NOTHING = object()


def _prefetch_worker(load, requests, results):
    """The worker loop: load each request, post (key, ok, value); None stops it."""
    while True:
        item = requests.get()
        if item is None:
            return
        key, args = item
        try:
            results.put((key, True, load(*args)))
        except BaseException as err:  # handed to the caller, never lost in the thread
            results.put((key, False, err))


class Prefetcher:
    """Runs ``load`` one request ahead on a single daemon thread.

    ``submit(key, *args)`` starts ``load(*args)`` in the worker. ``get(key, *args)``
    returns that result when the pending request was for ``key``; otherwise it
    drops whatever is pending and calls ``load(*args)`` itself. So the caller
    decides the order, and prefetching never changes what it gets. An exception
    raised by ``load`` in the worker is raised again by ``get`` in the caller's
    thread, with a note saying it came from the prefetch thread.

    Parameters
    ----------
    load : callable
        Must not refer to the prefetcher's owner, or the owner is never collected.
    name : str
        The thread's name.
    """

    def __init__(self, load, name='prefetch'):
        self._load = load
        self._requests = queue.SimpleQueue()
        self._results = queue.SimpleQueue()
        self._pending = _NOTHING
        self._closed = False
        self._thread = threading.Thread(target=_prefetch_worker, name=name, daemon=True,
                                        args=(load, self._requests, self._results))
        self._thread.start()

    @property
    def closed(self):
        return self._closed

    def submit(self, key, *args):
        """Start loading ``args`` for ``key`` (after any pending request finishes)."""
        if self._closed:
            return
        if self._pending is not _NOTHING:
            self._wait()
        self._pending = key
        self._requests.put((key, args))

    def get(self, key, *args):
        """The result for ``key``: prefetched if it was the pending request, else loaded now."""
        if self._pending is not _NOTHING:
            pending = self._pending
            _, ok, value = self._wait()
            if pending == key:
                if ok:
                    return value
                value.add_note('(raised in the prefetch thread %r while loading %r)'
                               % (self._thread.name, args[0] if len(args) == 1 else args))
                raise value
        return self._load(*args)

    def _wait(self):
        """Take the pending result; fail rather than hang if the worker is gone."""
        while True:
            try:
                result = self._results.get(timeout=0.2)
            except queue.Empty:
                if not self._thread.is_alive():
                    self._pending = _NOTHING
                    raise CaffeError('prefetch thread %r stopped without a result'
                                     % self._thread.name) from None
                continue
            self._pending = _NOTHING
            return result

    def close(self, timeout=10.0):
        """Stop the worker (after the load in progress, if any) and join it."""
        if self._closed:
            return
        self._closed = True
        self._pending = _NOTHING
        self._requests.put(None)
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)


# ------------------------------------------------------------------------ the layers

class _SegDataLayer(caffe.Layer):
    """One (image, label) pair per forward, each at its own size (see the module doc)."""
    files_class = None

    def setup(self, bottom, top):
        """Read ``param_str``, check tops and bottoms, read the split list, seed the order."""
        name = getattr(getattr(self, '_layer_param', None), 'name', '')
        where = 'layer %r (%s)' % (name, type(self).__name__) if name else type(self).__name__
        if len(top) != 2:
            raise DataLayerError('%s: needs exactly two tops (data and label), got %d'
                                 % (where, len(top)))
        if len(bottom) != 0:
            raise DataLayerError('%s: a data layer takes no bottoms, got %d'
                                 % (where, len(bottom)))
        prefetch = self._read_params(where)
        self._open_dataset(where)

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

    def _read_params(self, where):
        """Set the reference's attributes from ``param_str``; return ``prefetch``."""
        dir_key = self.files_class.dir_key
        params = parse_param_str(self.param_str, [dir_key, 'split', 'mean'],
                                 {'randomize': True, 'seed': None, 'prefetch': True}, where)
        setattr(self, dir_key, _check_text(params, dir_key, where))
        self.split = _check_text(params, 'split', where)
        self.mean = _check_mean(params['mean'], where)
        self.random = _check_flag(params, 'randomize', where)
        self.seed = params['seed']
        return _check_flag(params, 'prefetch', where)

    def _open_dataset(self, where):
        """Check the folders, read the split list, check every listed file exists."""
        dir_key = self.files_class.dir_key
        root = getattr(self, dir_key)
        files = self.files_class(root, self.split)
        _require_dir(root, '%s %s' % (where, dir_key))
        self.indices = read_split(files.split_file)
        _require_dir(files.image_dir, 'image folder')
        _require_dir(files.label_dir, 'label folder')
        _check_files_exist(self.indices, [(files.image_dir, '.jpg'),
                                          (files.label_dir, files.label_ext)], files.split_file)
        self.files = files
        self._loader = _SampleLoader(files, self.mean)

    def reshape(self, bottom, top):
        """Load the current sample (if not yet) and shape the tops to it."""
        self._load_current()
        top[0].reshape(1, *self.data.shape)
        top[1].reshape(1, *self.label.shape)

    def forward(self, bottom, top):
        """Copy the current sample to the tops, pick the next, start loading it."""
        self._load_current()
        top[0].data[...] = self.data
        top[1].data[...] = self.label
        self._advance()
        if self._prefetcher is not None and self.idx != self._loaded_idx:
            self._prefetcher.submit(self.idx, self.indices[self.idx])

    def backward(self, top, propagate_down, bottom):
        """Data layers pass no gradient."""

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

    def load_image(self, sample_id):
        """The preprocessed 3 x H x W float32 image of ``sample_id`` (as the reference)."""
        return self._loader.image(sample_id)

    def load_label(self, sample_id):
        """The 1 x H x W uint8 label of ``sample_id`` (as the reference)."""
        return self._loader.label(sample_id)

    def _advance(self):
        if self.random:
            self.idx = self._rng.randint(0, len(self.indices) - 1)
        else:
            self.idx = (self.idx + 1) % len(self.indices)

    def _load_current(self):
        if self._loaded_idx == self.idx:
            return
        sample_id = self.indices[self.idx]
        if self._prefetcher is not None:
            self.data, self.label = self._prefetcher.get(self.idx, sample_id)
        else:
            self.data, self.label = self._loader(sample_id)
        self._loaded_idx = self.idx


class VOCSegDataLayer(_SegDataLayer):
    """(image, label) pairs from PASCAL VOC: ``JPEGImages`` and ``SegmentationClass``.

    ``param_str`` keys: ``voc_dir``, ``split``, ``mean``, optional ``randomize``,
    ``seed``, ``prefetch`` (see the module docstring).
    """
    files_class = _VOCFiles


class SBDDSegDataLayer(_SegDataLayer):
    """(image, label) pairs from SBD's ``dataset`` folder: ``img`` and ``cls/*.mat``.

    ``param_str`` keys: ``sbdd_dir``, ``split``, ``mean``, optional ``randomize``,
    ``seed``, ``prefetch`` (see the module docstring).
    """
    files_class = _SBDFiles
