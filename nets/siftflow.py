"""SIFT Flow nets: one VGG16 trunk, two FCN heads (semantic and geometric), two losses.

The reference's siftflow-fcn{32,16,8}s nets: the data layer gives ``data``,
``sem`` and ``geo``; each task has the stage's full head with its names suffixed
('score_fr_sem', 'upscore2_geo', 'score_pool4_semc', ...) and its own loss. The
semantic loss is named plain ``loss`` (so that the reference's score.py, which
read blob 'loss', reported it); the geometric one ``loss_geo``. Both losses
count equally. As in the reference there is no deploy net.

Paths are relative to a model folder, where ``solve.py`` runs.
"""
import torchcaffe as caffe
from torchcaffe import layers as L

from . import fcn, vgg

SIFTFLOW_DIR = '../data/sift-flow'
SEED = 1337
TRAIN_SPLIT = 'trainval'  # 2,488 images (2,486 listed: two lack annotations)
TEST_SPLIT = 'test'       # 200 images
# (task, classes, label top, loss name), in the order of the reference's layers.
TASKS = (('sem', 33, 'sem', 'loss'), ('geo', 3, 'geo', 'loss_geo'))
STAGES = ('fcn32s', 'fcn16s', 'fcn8s')


def data_params(split):
    """The data layer's ``param_str`` dict; keys in the order of the reference's prototxts.

    >>> str(data_params('test'))
    "{'siftflow_dir': '../data/sift-flow', 'seed': 1337, 'split': 'test'}"
    """
    return dict(siftflow_dir=SIFTFLOW_DIR, seed=SEED, split=split)


def python_data(n, split):
    """Add the ``siftflow_layers`` data layer (tops ``data``, ``sem``, ``geo``) to ``n``."""
    n.data, n.sem, n.geo = L.Python(module='siftflow_layers', layer='SIFTFlowSegDataLayer',
                                    ntop=3, param_str=str(data_params(split)))


def two_headed(stage, split, width=1.0):
    """One SIFT Flow net: the trunk, then per task the stage's head and its loss.

    Parameters
    ----------
    stage : str
        'fcn32s', 'fcn16s' or 'fcn8s'.
    split : str
        The data layer's split.
    width : float
        Multiplier on the trunk's widths (narrow test variants); class counts stay.

    Returns
    -------
    NetParameter
    """
    if stage not in STAGES:
        raise ValueError('unknown SIFT Flow stage %r; known: %s' % (stage, ', '.join(STAGES)))
    n = caffe.NetSpec()
    python_data(n, split)
    top = vgg.fcn_trunk(n, n.data, width)
    for task, classes, label, loss in TASKS:
        fcn.HEADS[stage](n, top, classes, suffix='_' + task)
        n[loss] = fcn.softmax_loss(n['score_' + task], n[label])
    return n.to_proto()


def stage_nets(stage, width=1.0):
    """The reference's pair for ``stage``: {'trainval': NetParameter, 'test': ...}."""
    return {'trainval': two_headed(stage, TRAIN_SPLIT, width),
            'test': two_headed(stage, TEST_SPLIT, width)}
