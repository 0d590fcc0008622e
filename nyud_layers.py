"""NYUDv2 data layer for FCN (the prototxts' ``module: "nyud_layers"``).

Each forward gives one RGB-D frame as the tops the net asks for, chosen from
color, depth, hha and label by the ``tops`` parameter, in that parameter's order::

    layer {
      name: "color" type: "Python" top: "color" top: "hha" top: "label"
      python_param {
        module: "nyud_layers" layer: "NYUDSegDataLayer"
        param_str: "{'tops': ['color', 'hha', 'label'], 'seed': 1337,
                     'nyud_dir': '../data/nyud', 'split': 'trainval'}"
      }
    }

``param_str`` keys: ``nyud_dir``, ``split`` (``<nyud_dir>/<split>.txt`` lists the
frame numbers), ``tops``, optional ``randomize``, ``seed``, ``prefetch`` (order and
prefetching as in ``seg_layers``). The means are fixed, as in the reference.

Files, in the layout of the reference's nyud.tar.gz (the data of Gupta et al.)::

    <nyud_dir>/data/images/img_<n>.png       RGB, 8 bits a channel
    <nyud_dir>/data/depth/img_<n>.png        depth, 16-bit grayscale (millimetres)
    <nyud_dir>/data/hha/img_<n>.png          HHA, 3 channels of 8 bits
    <nyud_dir>/segmentation/img_<n>.mat      field segmentation: 0 void, 1-40 classes

Tops, as the reference makes them (all float32 but the label):

- ``color``: 3 x H x W, RGB -> BGR minus (116.190, 97.203, 92.318);
- ``depth``: 1 x H x W, the natural log of the depth minus 7.844 (log depth,
  for the 4-channel early fusion of nyud-fcn32s-color-d);
- ``hha``: 3 x H x W, the file's channels in their own order (not reversed)
  minus (132.431, 94.076, 118.477);
- ``label``: 1 x H x W uint8, the field cast to uint8 minus 1: classes 0-39 (the
  40-class task of Gupta et al.), void 0 -> 255.

Unlike the reference, a depth of 0 (whose log is -inf), label values outside
0..40, a depth PNG that is not 16-bit and an HHA image that is not 3-channel fail
with a message naming the file.
"""
import os

import numpy as np

from seg_layers import (DataLayerError, SampleLoader, SegDataLayer, check_label_values,
                        open_image, read_mat_field)
from voc_layers import preprocess, read_rgb

__all__ = ['NYUDSegDataLayer', 'KINDS', 'MEAN_BGR', 'MEAN_HHA', 'MEAN_LOGD',
           'scoring_heads']

KINDS = ('color', 'depth', 'hha', 'label')
MEAN_BGR = (116.190, 97.203, 92.318)
MEAN_HHA = (132.431, 94.076, 118.477)
MEAN_LOGD = (7.844,)
CLASSES = 40
DEPTH_MODES = ('I;16', 'I;16L', 'I;16B', 'I')
CLASSES_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data', 'nyud',
                            'classes.txt')


class _NYUDLoader(SampleLoader):
    """Loads the chosen tops of one frame; the prefetch thread runs it."""

    def __init__(self, root, tops):
        super().__init__(tops)
        self.root = root
        self.mean_bgr = np.array(MEAN_BGR, dtype=np.float32)
        self.mean_hha = np.array(MEAN_HHA, dtype=np.float32)
        self.mean_logd = np.array(MEAN_LOGD, dtype=np.float32)

    def path(self, kind, idx):
        if kind == 'label':
            return os.path.join(self.root, 'segmentation', 'img_%s.mat' % idx)
        folder = {'color': 'images', 'depth': 'depth', 'hha': 'hha'}[kind]
        return os.path.join(self.root, 'data', folder, 'img_%s.png' % idx)

    def load(self, kind, idx):
        return {'color': self.image, 'depth': self.depth, 'hha': self.hha,
                'label': self.label}[kind](idx)

    def image(self, idx):
        return preprocess(read_rgb(self.path('color', idx), self.warned), self.mean_bgr)

    def label(self, idx):
        path = self.path('label', idx)
        label = read_mat_field(path, 'segmentation')
        check_label_values(label, 0, CLASSES, path, '0 void, 1-40 classes')
        label = label.astype(np.uint8)
        label -= 1  # classes 0-39; void (0) wraps to 255
        return label[np.newaxis, ...]

    def depth(self, idx):
        path = self.path('depth', idx)
        with open_image(path, 'depth') as im:
            if im.mode not in DEPTH_MODES:
                raise DataLayerError('%s: depth must be a 16-bit grayscale PNG (millimetres), '
                                     'got mode %r' % (path, im.mode))
            d = np.array(im, dtype=np.float32)
        if d.size and d.min() <= 0:
            raise DataLayerError('%s: %d pixels have depth 0 or less; the layer takes the '
                                 "log of depth, so it needs the dataset's filled-in depth"
                                 % (path, int(np.count_nonzero(d <= 0))))
        d = np.log(d)
        d -= self.mean_logd
        return d[np.newaxis, ...]

    def hha(self, idx):
        path = self.path('hha', idx)
        with open_image(path, 'HHA image') as im:
            if im.mode != 'RGB':
                raise DataLayerError('%s: HHA must be a 3-channel 8-bit PNG, got mode %r'
                                     % (path, im.mode))
            hha = np.array(im, dtype=np.float32)
        hha -= self.mean_hha
        return np.ascontiguousarray(hha.transpose((2, 0, 1)))


class NYUDSegDataLayer(SegDataLayer):
    """Frames of NYUDv2 as the tops listed in ``tops`` (color, depth, hha, label).

    ``param_str`` keys: ``nyud_dir``, ``split``, ``tops``, optional ``randomize``,
    ``seed``, ``prefetch``. The current sample is also held as the reference held
    it: ``data``, a dict from top kind to array.
    """
    dir_key = 'nyud_dir'
    dataset_hint = ('get nyud.tar.gz from http://dl.caffe.berkeleyvision.org/nyud.tar.gz '
                    'and unpack it so that the NYUDv2 folder holds data/ and segmentation/')
    required = ('tops',)

    def configure(self, params, where):
        tops = params['tops']
        if (not isinstance(tops, (list, tuple)) or not tops
                or any(t not in KINDS for t in tops) or len(set(tops)) != len(tops)):
            raise DataLayerError('%s: tops must be a list of distinct names from %s, got %r'
                                 % (where, ', '.join(KINDS), tops))
        self.tops = list(tops)
        self.mean_bgr = np.array(MEAN_BGR, dtype=np.float32)
        self.mean_hha = np.array(MEAN_HHA, dtype=np.float32)
        self.mean_logd = np.array(MEAN_LOGD, dtype=np.float32)
        self.data = {}
        return self.tops

    def make_loader(self, where):
        return _NYUDLoader(self.nyud_dir, self.tops)

    def keep(self, sample):
        self.data = dict(zip(self.tops, sample))

    def load(self, top, idx):
        """Top ``top`` ('color', 'depth', 'hha' or 'label') of frame ``idx``."""
        if top not in KINDS:
            raise DataLayerError('unknown output type %r; known: %s' % (top, ', '.join(KINDS)))
        return self._loader.load(top, idx)

    def load_image(self, idx):
        return self._loader.image(idx)

    def load_label(self, idx):
        return self._loader.label(idx)

    def load_depth(self, idx):
        return self._loader.depth(idx)

    def load_hha(self, idx):
        return self._loader.hha(idx)


def scoring_heads(classes_file=CLASSES_FILE):
    """The one head NYUDv2 training scores (``score`` against ``label``), with the
    40 class names of ``data/nyud/classes.txt``, as a list of ``score.Head``."""
    import score
    return [score.Head('score', 'label', 'loss', score.read_class_names(classes_file))]
