"""PASCAL-Context nets (59 classes and background): the reference's Python data
layer and the train / val / deploy triple of each VGG16 FCN stage.

Paths are relative to a model folder (``pascalcontext-fcn32s/`` etc.), where
``solve.py`` runs, so ``../data`` is the repository's data folder. (The
reference's context prototxts say ``../../data``, a layout its VOC nets and its
own context solve.py scripts, which read ``../data/pascal/VOC2010``, had left.)
"""
from torchcaffe import layers as L

from . import fcn

CLASSES = 60  # the 59-class task and background
CONTEXT_DIR = '../data/pascal-context'
VOC_DIR = '../data/pascal'  # the layer reads <voc_dir>/VOC2010
SEED = 1337
TRAIN_SPLIT = 'train'  # VOC2010 ImageSets/Main/train.txt, 4,998 images
VAL_SPLIT = 'val'  # VOC2010 ImageSets/Main/val.txt, 5,105 images


def data_params(split):
    """The data layer's parameters for ``split``, keys in the reference's order.

    The reference's prototxts were written from a Python 2 dict, whose order
    ``str()`` of this one reproduces. No mean: the layer fixes its own.

    >>> str(data_params('val'))[:45]
    "{'context_dir': '../data/pascal-context', 'se"
    """
    return dict(context_dir=CONTEXT_DIR, seed=SEED, split=split, voc_dir=VOC_DIR)


def python_data(n, split):
    """Add the ``pascalcontext_layers`` data layer for ``split`` (tops ``data``, ``label``)."""
    n.data, n.label = L.Python(module='pascalcontext_layers',
                               layer='PASCALContextSegDataLayer', ntop=2,
                               param_str=str(data_params(split)))


def stage_nets(stage, classes=CLASSES, width=1.0):
    """The train, val and deploy NetParameters of an FCN stage on PASCAL-Context.

    Parameters
    ----------
    stage : str
        'fcn32s', 'fcn16s' or 'fcn8s' (the reference's context models).
    classes, width :
        As for ``nets.fcn.fcn``; the defaults give the reference nets.

    Returns
    -------
    dict : {'train': NetParameter, 'val': ..., 'deploy': ...}, in that order.
    """
    return fcn.stage_nets(stage, python_data, TRAIN_SPLIT, VAL_SPLIT, classes, width)
