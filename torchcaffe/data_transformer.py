"""Caffe's DataTransformer: crop, mean subtraction, scale and mirror of one image.

The arithmetic follows ``src/caffe/data_transformer.cpp`` (BVLC/caffe):

* the output is ``crop_size x crop_size`` when ``crop_size`` is set, else the image's
  own size;
* in TRAIN the crop offset is random (``h_off = Rand(H - crop + 1)``, then
  ``w_off = Rand(W - crop + 1)``); in TEST it is the centre, ``(H - crop) / 2``
  rounded down;
* ``mirror`` flips left-right with probability 1/2, drawn (``Rand(2)``) before
  the offsets. Caffe does this in TEST too: its ``do_mirror = mirror() && Rand(2)``
  ignores the phase, which is why prototxts set ``mirror: true`` only on their
  TRAIN data layers;
* each output value is ``(x - mean) * scale`` in float32, where ``mean`` is the
  ``mean_file`` value at the *uncropped* position (so the mean image has the
  image's full size), else the channel's ``mean_value`` (one value for all
  channels, or one per channel), else nothing is subtracted.

The random numbers come from a numpy generator per layer seeded by
``caffe.set_random_seed``'s seed and the layer name: runs are reproducible with a
seed, but the stream is not Caffe's own (Caffe draws from its boost RNG), so a
given seed picks other crops than Caffe would.

Images here are C x H x W arrays in Caffe's channel order (BGR for colour), uint8
or float; :func:`decode_image` and :func:`read_image` (from
:mod:`torchcaffe.image_decode`, re-exported here) make them from files, as Caffe's
``DecodeDatumToCVMat`` and ``ReadImageToCVMat`` do through OpenCV.
"""
import os
import zlib

import numpy as np

from . import io, mode
from .errors import FormatError, TransformError
from .image_decode import decode_image, read_image, resize_bilinear, rgb_to_gray

__all__ = ['TransformError', 'DataTransformer', 'transform', 'crop_offsets', 'infer_shape',
           'decode_image', 'read_image', 'resize_bilinear', 'read_mean_file', 'layer_rng',
           'rgb_to_gray', 'rng_state', 'set_rng_state']


# ------------------------------------------------------------------------ arithmetic

def infer_shape(shape, crop_size=0):
    """The transformed shape of a C x H x W image (Caffe's InferBlobShape).

    >>> infer_shape((3, 32, 40), crop_size=28)
    (3, 28, 28)
    >>> infer_shape((1, 5, 7))
    (1, 5, 7)
    """
    c, h, w = (int(d) for d in shape)
    if crop_size:
        if h < crop_size or w < crop_size:
            raise TransformError('image of %d x %d is smaller than crop_size %d'
                                 % (h, w, crop_size))
        return (c, crop_size, crop_size)
    return (c, h, w)


def crop_offsets(height, width, crop_size, train, rng=None):
    """``(h_off, w_off)`` of the crop: random in TRAIN, the centre in TEST.

    >>> crop_offsets(7, 10, 4, train=False)
    (1, 3)
    >>> crop_offsets(7, 10, 0, train=True)
    (0, 0)
    """
    if not crop_size:
        return 0, 0
    if train:
        h_off = int(rng.integers(height - crop_size + 1))
        w_off = int(rng.integers(width - crop_size + 1))
        return h_off, w_off
    return (height - crop_size) // 2, (width - crop_size) // 2


def transform(image, crop_size=0, h_off=0, w_off=0, mirror=False, mean=None,
              mean_values=None, scale=1.0):
    """Crop, subtract the mean, scale and mirror one C x H x W image, as Caffe does.

    Parameters
    ----------
    image : ndarray (C, H, W)
        uint8 or float.
    crop_size, h_off, w_off : int
        The crop (0: none) and its top-left corner.
    mirror : bool
        Flip left-right (after cropping).
    mean : ndarray (C, H, W), optional
        The mean image (``mean_file``), of the *uncropped* image's size.
    mean_values : sequence of float, optional
        One value for every channel, or one per channel; ignored when ``mean`` is
        given (Caffe refuses both).
    scale : float

    Returns
    -------
    ndarray (C, crop, crop) or (C, H, W), float32
        ``(x - mean) * scale`` in float32, as Caffe's ``Dtype`` arithmetic.

    Examples
    --------
    >>> img = np.arange(12, dtype=np.uint8).reshape(1, 3, 4)
    >>> transform(img, crop_size=2, h_off=1, w_off=1, mirror=True, mean_values=[1],
    ...           scale=0.5)
    array([[[2.5, 2. ],
            [4.5, 4. ]]], dtype=float32)
    """
    image = np.asarray(image)
    c, h, w = image.shape
    if crop_size:
        if not (0 <= h_off <= h - crop_size and 0 <= w_off <= w - crop_size):
            raise TransformError('crop of %d at (%d, %d) does not fit an image of %d x %d'
                                 % (crop_size, h_off, w_off, h, w))
        rows, cols = slice(h_off, h_off + crop_size), slice(w_off, w_off + crop_size)
    else:
        rows, cols = slice(0, h), slice(0, w)
    out = image[:, rows, cols].astype(np.float32)
    if mean is not None:
        mean = np.asarray(mean, dtype=np.float32)
        if mean.shape != image.shape:
            raise TransformError('mean of shape %s for an image of shape %s (the mean file '
                                 'must have the uncropped image size)'
                                 % (mean.shape, image.shape))
        out -= mean[:, rows, cols]
    elif mean_values is not None and len(mean_values):
        values = np.asarray(mean_values, dtype=np.float32)
        if len(values) == 1:
            values = np.repeat(values, c)
        elif len(values) != c:
            raise TransformError('%d mean_value entries for an image of %d channels (give '
                                 'one, or one per channel)' % (len(values), c))
        out -= values[:, None, None]
    if scale != 1:
        out *= np.float32(scale)
    if mirror:
        out = out[:, :, ::-1]
    return np.ascontiguousarray(out)


# ------------------------------------------------------------------------ files

def read_mean_file(path, where=''):
    """The C x H x W float32 mean image of a ``.binaryproto`` (a BlobProto).

    Raises
    ------
    TransformError
        The file is missing, does not parse, or holds more than one image.
    """
    prefix = '%s: ' % where if where else ''
    if not os.path.isfile(path):
        raise TransformError('%smean_file %s not found' % (prefix, os.path.abspath(path)))
    try:
        array = io.read_blobproto(path)
    except FormatError as err:
        raise TransformError('%smean_file %s is not a BlobProto (.binaryproto): %s'
                             % (prefix, path, err.message)) from err
    if array.ndim == 4:
        if array.shape[0] != 1:
            raise TransformError('%smean_file %s holds %d images, expected one'
                                 % (prefix, path, array.shape[0]))
        array = array[0]
    if array.ndim != 3:
        raise TransformError('%smean_file %s has shape %s, expected 1 x C x H x W'
                             % (prefix, path, array.shape))
    return np.ascontiguousarray(array, dtype=np.float32)


# ------------------------------------------------------------------------ the transformer

def layer_rng(layer_name, salt=''):
    """A numpy generator for one layer: seeded by ``caffe.set_random_seed``'s seed
    (at the time the layer is made) and the layer name."""
    key = zlib.crc32(('%s/%s' % (layer_name, salt)).encode())
    return np.random.default_rng([mode._state['seed'] & 0xFFFFFFFF, key])


def rng_state(rng):
    """The state of numpy generator ``rng``: a dict of strings and (large) ints, as
    JSON writes and reads them exactly."""
    return rng.bit_generator.state


def set_rng_state(rng, state, where='layer'):
    """Put ``rng`` back in ``state`` (from :func:`rng_state`)."""
    try:
        rng.bit_generator.state = state
    except (TypeError, ValueError, KeyError) as err:
        raise TransformError('%s: cannot restore a %s random generator from the saved state '
                             '%r: %s' % (where, type(rng.bit_generator).__name__, state,
                                         err)) from None


class DataTransformer:
    """A layer's ``transform_param`` applied to its images (Caffe's DataTransformer).

    Parameters
    ----------
    transform_param : caffe_pb2.TransformationParameter
    phase : int
        ``caffe_pb2.TRAIN`` (random crop) or ``TEST`` (centre crop).
    where : str
        The layer, for messages.
    rng : numpy.random.Generator, optional
        Draws crops and mirrors; :func:`layer_rng` of ``where`` by default.
    """

    def __init__(self, transform_param, phase, where='layer', rng=None):
        p = transform_param
        self.where = where
        self.train = phase == 0  # caffe_pb2.TRAIN
        self.scale = float(p.scale)
        self.mirror = bool(p.mirror)
        self.crop_size = int(p.crop_size)
        self.force_color = bool(p.force_color)
        self.force_gray = bool(p.force_gray)
        if self.force_color and self.force_gray:
            raise TransformError('%s: cannot set both force_color and force_gray' % where)
        if p.mean_file and len(p.mean_value):
            raise TransformError('%s: cannot specify mean_file and mean_value at the same time'
                                 % where)
        self.mean = read_mean_file(p.mean_file, where) if p.mean_file else None
        self.mean_values = list(p.mean_value) or None
        self.rng = rng if rng is not None else layer_rng(where, 'transform')

    def infer_shape(self, shape):
        """The C x H x W shape an image of ``shape`` becomes."""
        try:
            return infer_shape(shape, self.crop_size)
        except TransformError as err:
            raise TransformError('%s: %s' % (self.where, err)) from None

    def color_mode(self):
        """How encoded images decode: True (force_color), False (force_gray) or None."""
        return True if self.force_color else False if self.force_gray else None

    def __call__(self, image):
        """The transformed float32 image, drawing mirror and crop as Caffe does."""
        c, h, w = np.shape(image)
        self.infer_shape((c, h, w))
        if self.mean is not None and self.mean.shape != (c, h, w):
            raise TransformError('%s: mean_file is %s but the image is %s (the mean must have '
                                 'the uncropped image size)'
                                 % (self.where, self.mean.shape, (c, h, w)))
        # Caffe: do_mirror = mirror() && Rand(2) in either phase, drawn before the offsets.
        do_mirror = self.mirror and bool(self.rng.integers(2))
        h_off, w_off = crop_offsets(h, w, self.crop_size, self.train, self.rng)
        try:
            return transform(image, self.crop_size, h_off, w_off, do_mirror, self.mean,
                             self.mean_values, self.scale)
        except TransformError as err:
            raise TransformError('%s: %s' % (self.where, err)) from None
