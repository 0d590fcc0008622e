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

``param_str`` keys:

- ``voc_dir`` (VOCSegDataLayer) or ``sbdd_dir`` (SBDDSegDataLayer): the dataset
  folder, relative to the working directory as in the reference.
- ``split``: name of the split list, ``<voc_dir>/ImageSets/Segmentation/<split>.txt``
  or ``<sbdd_dir>/<split>.txt``, one sample id a line.
- ``mean``: per-channel mean in BGR order, subtracted from every pixel.
- ``randomize``, ``seed``, ``prefetch``: the sample order and prefetching of
  every data layer (``seg_layers``): shuffled only on 'train' splits.

Files: VOC images ``JPEGImages/<id>.jpg`` and labels ``SegmentationClass/<id>.png``
(palette PNGs whose pixel values are class indices, 255 = void); SBD images
``img/<id>.jpg`` and labels ``cls/<id>.mat`` (field ``GTcls.Segmentation``).

Tops: ``data`` 1 x 3 x H x W (float32: RGB -> BGR, minus the mean, channels
first) and ``label`` 1 x 1 x H x W (the uint8 class indices).

``ImageLabelSegDataLayer`` and ``ImageLabelLoader`` are the (image, label) base
these layers share with ``pascalcontext_layers``; ``read_rgb`` and ``preprocess``
make every family's image top.

Choices where the reference would crash or read garbage, all with a message that
names the file:

- Grayscale, palette, CMYK and RGBA/LA images are converted to RGB (alpha is
  dropped, CMYK uses PIL's conversion), with one logged warning per file; other
  modes (16-bit, float) are refused.
- Labels must be palette or 8-bit grayscale PNGs (an RGB-coloured label would
  otherwise be read as three channels), SBD labels 2-D with values in 0..255,
  and a label must have its image's height and width.
- Missing folders, split lists and files are found at setup; unknown
  ``param_str`` keys are refused (see ``seg_layers``).
- EXIF orientation is ignored, as the reference (and Caffe) ignore it.
"""
import logging
import os

import numpy as np

from seg_layers import SampleLoader, SegDataLayer, check_mean, load_mat, open_image
# Public here since before seg_layers and prefetch owned them; re-exported.
from prefetch import Prefetcher
from seg_layers import DataFileNotFoundError, DataLayerError, parse_param_str, read_split

__all__ = ['VOCSegDataLayer', 'SBDDSegDataLayer', 'DataLayerError', 'DataFileNotFoundError',
           'MEAN_BGR', 'parse_param_str', 'read_split', 'read_rgb', 'preprocess',
           'read_voc_label', 'read_sbd_label', 'Prefetcher', 'ImageLabelSegDataLayer',
           'ImageLabelLoader']

log = logging.getLogger(__name__)

# The ILSVRC mean pixel (BGR) the FCN prototxts subtract.
MEAN_BGR = (104.00698793, 116.66876762, 122.67891434)

# Image modes converted to RGB (with a warning); anything else but RGB is refused.
CONVERTIBLE_MODES = ('1', 'L', 'LA', 'La', 'P', 'PA', 'RGBA', 'RGBa', 'RGBX', 'CMYK', 'YCbCr')
LABEL_MODES = ('P', 'L')


# ------------------------------------------------------------------------ files

def read_rgb(path, warned=None):
    """An image file as an H x W x 3 uint8 RGB array.

    Grayscale, palette, CMYK and alpha images are converted to RGB with a logged
    warning (once per path when ``warned``, a set, is given); other modes fail.

    Raises
    ------
    DataFileNotFoundError, DataLayerError
    """
    with open_image(path, 'image') as im:
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
    with open_image(path, 'label') as im:
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
    mat = load_mat(path)
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


# ------------------------------------------------------------------------ the layers

class ImageLabelLoader(SampleLoader):
    """(data, label) from ``<image_dir>/<id>.jpg`` and ``<label_dir>/<id><label_ext>``.

    Parameters
    ----------
    image_dir, label_dir : str
    label_ext : str
        The label files' extension, with its dot.
    read_label : callable
        Label path -> 1 x H x W uint8 array.
    mean : ndarray
        BGR mean pixel (see :func:`preprocess`).
    label_folder : str
        How a missing ``label_dir`` is named.
    """

    def __init__(self, image_dir, label_dir, label_ext, read_label, mean,
                 label_folder='label folder'):
        super().__init__(('data', 'label'))
        self.image_dir, self.label_dir, self.label_ext = image_dir, label_dir, label_ext
        self.read_label = read_label
        self.mean = mean
        self.folders = ((image_dir, 'image folder'), (label_dir, label_folder))

    def path(self, kind, sample_id):
        if kind == 'data':
            return os.path.join(self.image_dir, sample_id + '.jpg')
        return os.path.join(self.label_dir, sample_id + self.label_ext)

    def load(self, kind, sample_id):
        return self.image(sample_id) if kind == 'data' else self.label(sample_id)

    def image(self, sample_id):
        return preprocess(read_rgb(self.path('data', sample_id), self.warned), self.mean)

    def label(self, sample_id):
        return self.read_label(self.path('label', sample_id))


class ImageLabelSegDataLayer(SegDataLayer):
    """The base of the (image, label) layers: ``data`` and ``label`` tops, a ``mean`` key.

    Subclasses give ``dir_key``, ``split_dir`` and ``make_loader`` (an
    :class:`ImageLabelLoader`). The current sample is also held as the reference
    held it: ``data`` and ``label``.
    """
    required = ('mean',)
    top_names = ('data', 'label')
    tops_text = 'exactly two tops (data and label)'

    def configure(self, params, where):
        self.mean = check_mean(params['mean'], where)

    def keep(self, sample):
        self.data, self.label = sample

    def load_image(self, sample_id):
        """The preprocessed 3 x H x W float32 image of ``sample_id`` (as the reference)."""
        return self._loader.image(sample_id)

    def load_label(self, sample_id):
        """The 1 x H x W uint8 label of ``sample_id`` (as the reference)."""
        return self._loader.label(sample_id)


class VOCSegDataLayer(ImageLabelSegDataLayer):
    """(image, label) pairs from PASCAL VOC: ``JPEGImages`` and ``SegmentationClass``.

    ``param_str`` keys: ``voc_dir``, ``split``, ``mean``, optional ``randomize``,
    ``seed``, ``prefetch`` (see the module docstring).
    """
    dir_key = 'voc_dir'
    split_dir = ('ImageSets', 'Segmentation')

    def make_loader(self, where):
        return ImageLabelLoader(os.path.join(self.voc_dir, 'JPEGImages'),
                                os.path.join(self.voc_dir, 'SegmentationClass'), '.png',
                                read_voc_label, self.mean)


class SBDDSegDataLayer(ImageLabelSegDataLayer):
    """(image, label) pairs from SBD's ``dataset`` folder: ``img`` and ``cls/*.mat``.

    ``param_str`` keys: ``sbdd_dir``, ``split``, ``mean``, optional ``randomize``,
    ``seed``, ``prefetch`` (see the module docstring).
    """
    dir_key = 'sbdd_dir'

    def make_loader(self, where):
        return ImageLabelLoader(os.path.join(self.sbdd_dir, 'img'),
                                os.path.join(self.sbdd_dir, 'cls'), '.mat',
                                read_sbd_label, self.mean)
