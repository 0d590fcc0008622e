"""PASCAL VOC nets: the reference's Python data layers and the train / val / deploy triple.

Paths are relative to a model folder (``voc-fcn32s/`` etc.), where ``solve.py``
runs, so ``../data`` is the repository's data folder.
"""
from torchcaffe import layers as L

from . import fcn

CLASSES = 21  # 20 object classes and background
SBDD_DIR = '../data/sbdd/dataset'
VOC_DIR = '../data/pascal/VOC2011'
MEAN = (104.00699, 116.66877, 122.67892)  # BGR, as the reference's param_str spells it
SEED = 1337
TRAIN_SPLIT = 'train'  # SBD train, 8,498 images
VAL_SPLIT = 'seg11valid'  # VOC2011 seg val minus SBD train, 736 images


def data_params(split, sbdd_dir=SBDD_DIR, voc_dir=VOC_DIR):
    """The Python data layer's class name and its parameters for ``split``.

    'train' reads SBD (``SBDDSegDataLayer``) in ``sbdd_dir``, any other split VOC
    (``VOCSegDataLayer``) in ``voc_dir``; the defaults are the reference's folders
    (the demo passes those of its generated dataset). The keys come in the order
    of the reference's committed prototxts (a Python 2 dict's order), so ``str()``
    of the dict reproduces their ``param_str`` exactly.

    >>> data_params('train')[0]
    'SBDDSegDataLayer'
    >>> str(data_params('seg11valid')[1])[:44]
    "{'voc_dir': '../data/pascal/VOC2011', 'seed'"
    """
    if split == TRAIN_SPLIT:
        return 'SBDDSegDataLayer', dict(sbdd_dir=sbdd_dir, seed=SEED, split=split, mean=MEAN)
    return 'VOCSegDataLayer', dict(voc_dir=voc_dir, seed=SEED, split=split, mean=MEAN)


def python_data(n, split, **dirs):
    """Add the ``voc_layers`` data layer for ``split`` (tops ``data``, ``label``) to ``n``.

    ``dirs`` (``sbdd_dir``, ``voc_dir``) as for :func:`data_params`.
    """
    layer, params = data_params(split, **dirs)
    n.data, n.label = L.Python(module='voc_layers', layer=layer, ntop=2,
                               param_str=str(params))


def stage_nets(stage, classes=CLASSES, width=1.0, **fcn_args):
    """The train, val and deploy NetParameters of an FCN stage on VOC.

    Parameters
    ----------
    stage : str
        'fcn32s', 'fcn16s', 'fcn8s' or 'fcn8s-atonce'.
    classes, width, **fcn_args :
        As for ``nets.fcn.fcn``; the defaults give the reference's VGG16 nets
        (``nets.alexnet`` passes its trunk, loss and upsampling kernel).

    Returns
    -------
    dict : {'train': NetParameter, 'val': ..., 'deploy': ...}, in that order.
    """
    return fcn.stage_nets(stage, python_data, TRAIN_SPLIT, VAL_SPLIT, classes, width,
                          **fcn_args)
