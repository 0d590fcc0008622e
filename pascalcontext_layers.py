"""PASCAL-Context data layer for FCN (the prototxts' ``module: "pascalcontext_layers"``).

The 59-class task of Mottaghi et al., "The Role of Context for Object Detection
and Semantic Segmentation in the Wild" (CVPR 2014): 59 of the dataset's labels
plus background (every other label, and unlabelled pixels) make 60 classes::

    layer {
      name: "data" type: "Python" top: "data" top: "label"
      python_param {
        module: "pascalcontext_layers" layer: "PASCALContextSegDataLayer"
        param_str: "{'context_dir': '../data/pascal-context', 'seed': 1337,
                     'split': 'train', 'voc_dir': '../data/pascal'}"
      }
    }

``param_str`` keys (a dict literal, as for every data layer: ``seg_layers``):

- ``voc_dir``: the folder holding ``VOC2010/`` (the reference appends it):
  images ``VOC2010/JPEGImages/<id>.jpg``, split lists
  ``VOC2010/ImageSets/Main/<split>.txt`` (train 4,998 and val 5,105 images).
- ``context_dir``: the PASCAL-Context annotations, ``trainval/<id>.mat`` (field
  ``LabelMap``: uint16 ids of the full label list), and the class lists.
- ``split``, ``randomize`` (default True), ``seed`` (default None), ``prefetch``
  (default True): as ``seg_layers`` (only splits named with 'train' are shuffled).
- ``mean`` (optional; not in the reference, which fixes it): BGR mean pixel,
  default ``MEAN_BGR`` = (104.007, 116.669, 122.679), the reference's value, held
  in float32 as it held it.

Class lists, ``N: name`` a line: the full list (459 labels, the reference's
"400"), ``labels.txt``, and the task's, ``59_labels.txt``, as the dataset ships
them; when ``context_dir`` lacks them, this repository's ``classes-400.txt`` and
``classes-59.txt`` (the same lists; the 59-class one starts with ``0: background``).

The mapping is the reference's: names lose their spaces ("air conditioner" ->
"airconditioner"), the task's "diningtable", "bedcloth" and "clothes" are the
full list's "table", "bedclothes" and "cloth", and task class ``k`` (the k-th
name) takes the pixels of the first full label with its name (id = its line
number). Every other id, and 0 (unlabelled), becomes 0, background. There is no
void label: every pixel counts. The reference indexed both lists by line
position; this layer reads the ids written in the files and requires them to be
those positions (1, 2, ... after an optional ``0: background``), so the two agree.
"""
import os

import numpy as np

from seg_layers import (DataFileNotFoundError, DataLayerError, check_mean, check_text, load_mat,
                        require_dir)
from voc_layers import ImageLabelLoader, ImageLabelSegDataLayer

__all__ = ['PASCALContextSegDataLayer', 'MEAN_BGR', 'TASK_RENAMES', 'CLASS_FILES',
           'normalise', 'read_class_list', 'find_class_files', 'class_table',
           'read_label_map', 'to_task_labels']

# The reference's mean pixel for this layer, rounded otherwise than the VOC
# prototxts' (104.00699, 116.66877, 122.67892).
MEAN_BGR = (104.007, 116.669, 122.679)

# Task names that the full list spells otherwise: task name -> full-list name.
TASK_RENAMES = {'diningtable': 'table', 'bedcloth': 'bedclothes', 'clothes': 'cloth'}

# (full list, task list): the dataset's own file names, then this repository's.
CLASS_FILES = (('labels.txt', '59_labels.txt'), ('classes-400.txt', 'classes-59.txt'))

VOC_YEAR = 'VOC2010'


# ------------------------------------------------------------------------ class lists

def normalise(name):
    """A class name as the reference compares them: without spaces.

    >>> normalise(' air conditioner')
    'airconditioner'
    """
    return name.replace(' ', '').strip()


def read_class_list(path):
    """The ``N: name`` lines of a class list as ``[(N, name), ...]``, names normalised.

    The ids must number the lines 1, 2, ... in order, after an optional first
    ``0: ...`` line (the background), which is returned too.

    Raises
    ------
    DataFileNotFoundError, DataLayerError
        Missing file, a line without ``N: name``, or ids out of sequence; the
        message names the file and line.
    """
    if not os.path.isfile(path):
        raise DataFileNotFoundError('class list not found', path)
    entries = []
    with open(path, encoding='utf-8') as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            number, sep, name = line.partition(':')
            try:
                class_id = int(number)
            except ValueError:
                class_id = None
            if not sep or class_id is None or not normalise(name):
                raise DataLayerError('%s:%d: expected "N: name", got %r'
                                     % (path, lineno, line.rstrip('\n')))
            if not entries and class_id == 0:  # the optional background line
                entries.append((class_id, normalise(name)))
                continue
            expected = len(entries) + (0 if entries and entries[0][0] == 0 else 1)
            if class_id != expected:
                raise DataLayerError('%s:%d: class id %d out of sequence (expected %d: ids '
                                     'number the lines 1, 2, ... after an optional 0)'
                                     % (path, lineno, class_id, expected))
            entries.append((class_id, normalise(name)))
    if not [e for e in entries if e[0] > 0]:
        raise DataLayerError('%s: no classes (expected "N: name" lines)' % path)
    return entries


def find_class_files(context_dir):
    """The (full list, task list) paths in ``context_dir``: the dataset's names first.

    Raises
    ------
    DataFileNotFoundError
        Neither pair is there.
    """
    for full, task in CLASS_FILES:
        paths = os.path.join(context_dir, full), os.path.join(context_dir, task)
        if all(os.path.isfile(p) for p in paths):
            return paths
    wanted = ' or '.join('%s and %s' % pair for pair in CLASS_FILES)
    raise DataFileNotFoundError('PASCAL-Context class lists (%s) not found in %s'
                                % (wanted, os.path.abspath(context_dir)), context_dir)


def class_table(full_classes, task_classes, where='class lists'):
    """The lookup table from full-list label ids to task classes.

    Parameters
    ----------
    full_classes, task_classes : list of (id, name)
        As :func:`read_class_list` gives them.

    Returns
    -------
    ndarray of uint8, shape (number of full labels + 1,)
        ``table[full_id]`` is the task class of that label, 0 (background) for
        labels outside the task and for 0 itself.

    Raises
    ------
    DataLayerError
        A task name (after ``TASK_RENAMES``) is not in the full list.

    Examples
    --------
    >>> class_table([(1, 'cat'), (2, 'table'), (3, 'dog')],
    ...             [(0, 'background'), (1, 'diningtable'), (2, 'cat')]).tolist()
    [0, 2, 1, 0]
    """
    full_names = [name for full_id, name in full_classes if full_id > 0]
    table = np.zeros(len(full_names) + 1, np.uint8)
    for task_id, name in task_classes:
        if task_id == 0:
            continue
        name = TASK_RENAMES.get(name, name)
        if name not in full_names:
            raise DataLayerError('%s: task class %d %r is not in the full label list'
                                 % (where, task_id, name))
        table[full_names.index(name) + 1] = task_id  # the first label of that name
    return table


# ------------------------------------------------------------------------ labels

def read_label_map(path):
    """``trainval/<id>.mat``'s ``LabelMap``: the full-list id of every pixel (H x W).

    Raises
    ------
    DataFileNotFoundError, DataLayerError
        Missing, unreadable, without ``LabelMap``, not a 2-D numeric array.
    """
    mat = load_mat(path)
    if 'LabelMap' not in mat:
        raise DataLayerError('%s: no LabelMap (PASCAL-Context trainval/*.mat layout); '
                             'variables: %s' % (path, ', '.join(sorted(
                                 k for k in mat if not k.startswith('__')))))
    label_map = np.asarray(mat['LabelMap'])
    if label_map.ndim != 2 or label_map.dtype.kind not in 'uif':
        raise DataLayerError('%s: LabelMap must be a 2-D numeric array, got %s %s'
                             % (path, label_map.dtype, label_map.shape))
    return label_map


def to_task_labels(label_map, table):
    """Map full-list ids to task classes: 1 x H x W uint8, ids outside ``table`` -> 0.

    As the reference's equality tests: a pixel keeps class 0 unless its value is
    exactly one of the mapped ids (so fractional or negative values are background).

    >>> to_task_labels(np.array([[0, 1, 2], [3, 7, 2]], np.uint16),
    ...                np.array([0, 2, 1, 0], np.uint8)).tolist()
    [[[0, 2, 1], [0, 0, 1]]]
    """
    ids = np.asarray(label_map)
    known = (ids >= 0) & (ids < len(table)) & (ids == np.floor(ids))
    labels = np.zeros(ids.shape, np.uint8)
    labels[known] = table[ids[known].astype(np.int64)]
    return labels[np.newaxis, ...]


# ------------------------------------------------------------------------ the layer

class PASCALContextSegDataLayer(ImageLabelSegDataLayer):
    """One (image, 59-class label) pair per forward, each at its own size.

    Tops: ``data`` 1 x 3 x H x W float32 (RGB -> BGR, minus the mean, channels
    first) and ``label`` 1 x 1 x H x W uint8 in 0..59. Ordering, prefetching and
    resuming are those of every data layer (``seg_layers``); see the module doc
    for the rest.
    """
    dir_key = 'voc_dir'
    dir_subfolder = VOC_YEAR  # as the reference: voc_dir names the folder above VOC2010
    required = ('context_dir',)
    optional = {'mean': MEAN_BGR}
    split_dir = ('ImageSets', 'Main')

    def configure(self, params, where):
        self.context_dir = check_text(params, 'context_dir', where)
        # float32, as the reference's np.array(..., dtype=np.float32): the same roundings.
        self.mean = check_mean(params['mean'], where).astype(np.float32)

    def make_loader(self, where):
        require_dir(self.context_dir, '%s context_dir' % where)
        full_path, task_path = find_class_files(self.context_dir)
        self.labels_400 = read_class_list(full_path)
        self.labels_59 = read_class_list(task_path)
        table = class_table(self.labels_400, self.labels_59,
                            '%s and %s' % (full_path, task_path))
        return ImageLabelLoader(os.path.join(self.voc_dir, 'JPEGImages'),
                                os.path.join(self.context_dir, 'trainval'), '.mat',
                                lambda path: to_task_labels(read_label_map(path), table),
                                self.mean, 'label folder (PASCAL-Context trainval/)')
