"""SIFT Flow data layer for FCN (the prototxts' ``module: "siftflow_layers"``).

Each forward gives one image with both of its labelings, for the two-headed nets
that learn semantic and geometric classes at once::

    layer {
      name: "data" type: "Python" top: "data" top: "sem" top: "geo"
      python_param {
        module: "siftflow_layers" layer: "SIFTFlowSegDataLayer"
        param_str: "{'siftflow_dir': '../data/sift-flow', 'seed': 1337, 'split': 'trainval'}"
      }
    }

``param_str`` keys: ``siftflow_dir``, ``split`` (``<siftflow_dir>/<split>.txt``
lists the image names), optional ``randomize``, ``seed``, ``prefetch`` (order and
prefetching as in ``seg_layers``). The mean is fixed, as in the reference.

Files, in the layout of the dataset's SiftFlowDataset.zip (``<cat>`` is
``spatial_envelope_256x256_static_8outdoorcategories``)::

    <siftflow_dir>/Images/<cat>/<name>.jpg            256 x 256 RGB
    <siftflow_dir>/SemanticLabels/<cat>/<name>.mat    field S: 0 void, 1-33 classes
    <siftflow_dir>/GeoLabels/<cat>/<name>.mat         field S: -1 void, 1-3 classes

Tops, as the reference makes them:

- ``data``: 1 x 3 x H x W float32, RGB -> BGR minus the mean (114.578, 115.294,
  108.353), float32 arithmetic;
- ``sem``: 1 x 1 x H x W, S cast to uint8 minus 1: classes 0-32, void 0 -> 255;
- ``geo``: 1 x 1 x H x W, S with -1 set to 0, cast to uint8 minus 1: classes
  0-2, void (-1, and 0 should it occur) -> 255.

Unlike the reference, label values outside those ranges fail with a message
naming the file instead of wrapping around into some class.

Evaluation (``scoring_heads``): three semantic classes (cow, desert, moon) never
occur in the 200 test images. The FCN paper's mean IU and mean accuracy average
over the classes present in the test ground truth only; the reference's
score.py also averaged in classes that were absent but predicted (at IU 0), the
flaw its README admits. ``score.seg_metrics(hist, present_only=True)`` is the
paper's definition and is what SIFT Flow training reports for ``score_sem``.
"""
import os

import numpy as np

from seg_layers import SampleLoader, SegDataLayer, check_label_values, read_mat_field
from voc_layers import preprocess, read_rgb

__all__ = ['SIFTFlowSegDataLayer', 'MEAN_BGR', 'CATEGORY_DIR', 'read_classes',
           'scoring_heads']

MEAN_BGR = (114.578, 115.294, 108.353)
CATEGORY_DIR = 'spatial_envelope_256x256_static_8outdoorcategories'
SEMANTIC_CLASSES = 33
GEOMETRIC_CLASSES = 3
ROOT = os.path.dirname(os.path.abspath(__file__))
CLASSES_FILE = os.path.join(ROOT, 'data', 'sift-flow', 'classes.txt')

# Each label top's type, and each type's folder.
TOP_LABEL_TYPES = {'sem': 'semantic', 'geo': 'geometric'}
LABEL_FOLDERS = {'semantic': 'SemanticLabels', 'geometric': 'GeoLabels'}


class _SIFTFlowLoader(SampleLoader):
    """Loads (data, sem, geo) of one image; the prefetch thread runs it."""

    def __init__(self, root):
        super().__init__(('data', 'sem', 'geo'))
        self.root = root
        self.mean = np.array(MEAN_BGR, dtype=np.float32)

    def image_path(self, name):
        return os.path.join(self.root, 'Images', CATEGORY_DIR, name + '.jpg')

    def label_path(self, name, label_type):
        return os.path.join(self.root, LABEL_FOLDERS[label_type], CATEGORY_DIR, name + '.mat')

    def path(self, kind, name):
        if kind == 'data':
            return self.image_path(name)
        return self.label_path(name, TOP_LABEL_TYPES[kind])

    def load(self, kind, name):
        return self.image(name) if kind == 'data' else self.label(name, TOP_LABEL_TYPES[kind])

    def image(self, name):
        return preprocess(read_rgb(self.image_path(name), self.warned), self.mean)

    def label(self, name, label_type):
        if label_type not in LABEL_FOLDERS:
            raise ValueError('unknown label type %r: pick semantic or geometric' % label_type)
        path = self.label_path(name, label_type)
        label = read_mat_field(path, 'S')
        if label_type == 'semantic':
            check_label_values(label, 0, SEMANTIC_CLASSES, path, '0 void, 1-33 classes')
        else:
            check_label_values(label, -1, GEOMETRIC_CLASSES, path, '-1 void, 1-3 classes')
            label = label.copy()
            label[label == -1] = 0
        label = label.astype(np.uint8)
        label -= 1  # classes start at 0; void (0) wraps to 255
        return label[np.newaxis, ...]


class SIFTFlowSegDataLayer(SegDataLayer):
    """(image, semantic label, geometric label) triples from SIFT Flow.

    Tops: ``data``, ``sem`` (classes 0-32, void 255), ``geo`` (classes 0-2, void
    255). ``param_str`` keys: ``siftflow_dir``, ``split``, optional ``randomize``,
    ``seed``, ``prefetch``. The current sample is also held as the reference held
    it: ``data``, ``label_semantic``, ``label_geometric``.
    """
    dir_key = 'siftflow_dir'
    top_names = ('data', 'sem', 'geo')
    dataset_hint = ('get SiftFlowDataset.zip from '
                    'http://www.cs.unc.edu/~jtighe/Papers/ECCV10/siftflow/SiftFlowDataset.zip '
                    'and unpack it so that the SIFT Flow folder holds Images/, '
                    'SemanticLabels/ and GeoLabels/')

    def configure(self, params, where):
        self.mean = np.array(MEAN_BGR, dtype=np.float32)

    def make_loader(self, where):
        return _SIFTFlowLoader(self.siftflow_dir)

    def keep(self, sample):
        self.data, self.label_semantic, self.label_geometric = sample

    def load_image(self, idx):
        """The preprocessed 3 x H x W float32 image ``idx`` (as the reference)."""
        return self._loader.image(idx)

    def load_label(self, idx, label_type=None):
        """The 1 x H x W uint8 'semantic' or 'geometric' label of ``idx``."""
        return self._loader.label(idx, label_type)


# ------------------------------------------------------------------------ evaluation

def read_classes(path=CLASSES_FILE):
    """The class names of ``data/sift-flow/classes.txt``, in model output order.

    The file (the reference's) lists ``NN name`` lines under a ``Semantic:`` and
    a ``Geometric:`` heading, between free-text notes.

    Returns
    -------
    dict : {'semantic': 33 names, 'geometric': 3 names}
    """
    names = {'semantic': [], 'geometric': []}
    section = None
    with open(path, encoding='utf-8') as f:
        for line in f:
            words = line.split()
            if line.startswith('Semantic:'):
                section = 'semantic'
            elif line.startswith('Geometric:'):
                section = 'geometric'
            elif section and len(words) == 2 and words[0].isdigit():
                if int(words[0]) != len(names[section]) + 1:
                    raise ValueError('%s: %s class %s out of order' % (path, section, words[0]))
                names[section].append(words[1])
    if (len(names['semantic']), len(names['geometric'])) != (SEMANTIC_CLASSES,
                                                             GEOMETRIC_CLASSES):
        raise ValueError('%s: expected %d semantic and %d geometric classes, found %d and %d'
                         % (path, SEMANTIC_CLASSES, GEOMETRIC_CLASSES,
                            len(names['semantic']), len(names['geometric'])))
    return names


def scoring_heads(classes_file=CLASSES_FILE):
    """The two heads SIFT Flow training scores, as ``score.Head``\\ s.

    ``score_sem`` against ``sem`` with its loss ``loss``, its means over the classes
    present in the ground truth (the paper's); ``score_geo`` against ``geo`` with
    ``loss_geo``.
    """
    import score
    names = read_classes(classes_file)
    return [score.Head('score_sem', 'sem', 'loss', names['semantic'], present_only=True),
            score.Head('score_geo', 'geo', 'loss_geo', names['geometric'])]
