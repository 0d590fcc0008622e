"""NYUDv2 nets: FCN-32s on color, on HHA, on color and depth (early fusion), and the
late fusion of color and HHA.

The reference's nyud-fcn32s-{color,hha,color-d,color-hha} nets, 40 classes:

- 'color', 'hha': FCN-32s on one 3-channel input (the data layer's top is ``data``);
- 'color-d': the data layer gives ``color`` and ``depth``, a Concat makes the
  4-channel ``data``, and the first convolution is ``conv1_1_bgrd`` (its weights
  are not VGG16's conv1_1 shape, so it has its own name);
- 'color-hha': two VGG16 streams whose names end in 'color' and 'hha'
  (``conv1_1color``, ``score_frhha``), their scores averaged (Eltwise SUM with
  coefficients 0.5, 0.5: ``score_fused``), upsampled once and cropped to ``color``.

Paths are relative to a model folder, where ``solve.py`` runs.
"""
import functools

import torchcaffe as caffe
from torchcaffe import layers as L, params as P
from torchcaffe.coord_map import crop

from . import fcn, vgg

CLASSES = 40
NYUD_DIR = '../data/nyud'
SEED = 1337
TRAIN_SPLIT = 'trainval'  # 795 images: train (381) then val (414)
TEST_SPLIT = 'test'       # 654 images
# The data layer's tops for each model, as the reference's net.py files list them.
MODELS = {
    'color': ('color', 'label'),
    'hha': ('hha', 'label'),
    'color-d': ('color', 'depth', 'label'),
    'color-hha': ('color', 'hha', 'label'),
}
LATE_FUSION = ('color', 'hha')


def data_params(split, tops):
    """The data layer's ``param_str`` dict; keys in the order of the reference's prototxts.

    >>> str(data_params('test', ['hha', 'label']))
    "{'tops': ['hha', 'label'], 'seed': 1337, 'nyud_dir': '../data/nyud', 'split': 'test'}"
    """
    return dict(tops=list(tops), seed=SEED, nyud_dir=NYUD_DIR, split=split)


def python_data(split, tops):
    """The ``nyud_layers`` data layer giving ``tops`` (a tuple of Tops)."""
    return L.Python(module='nyud_layers', layer='NYUDSegDataLayer', ntop=len(tops),
                    param_str=str(data_params(split, tops)))


def rename(proto, old, new):
    """Rename layer ``old`` and its blob ``old`` (as top or bottom) to ``new``, in place."""
    for layer in proto.layer:
        if layer.name == old:
            layer.name = new
        for blobs in (layer.bottom, layer.top):
            for i, blob in enumerate(blobs):
                if blob == old:
                    blobs[i] = new
    return proto


def single_stream(model, split, width=1.0):
    """FCN-32s on 'color', 'hha' or 'color-d' (see the module docstring)."""
    tops = MODELS[model]

    def data(n):
        if model == 'color-d':
            n.color, n.depth, n.label = python_data(split, tops)
            n.data = L.Concat(n.color, n.depth)
        else:
            n.data, n.label = python_data(split, tops)
    proto = fcn.fcn('fcn32s', data, CLASSES, width)
    return rename(proto, 'conv1_1', 'conv1_1_bgrd') if model == 'color-d' else proto


def late_fusion(split, width=1.0):
    """The color-HHA net: a suffixed VGG16 stream per modality, scores averaged."""
    n = caffe.NetSpec()
    n.color, n.hha, n.label = python_data(split, MODELS['color-hha'])
    for modality in LATE_FUSION:
        top = vgg.fcn_trunk(n, n[modality], width, suffix=modality)
        n['score_fr' + modality] = fcn.score(top, CLASSES)
    n.score_fused = L.Eltwise(*[n['score_fr' + m] for m in LATE_FUSION],
                              operation=P.Eltwise.SUM, coeff=[0.5, 0.5])
    n.upscore = fcn.upsample(n.score_fused, CLASSES, 32)
    n.score = crop(n.upscore, n.color)
    n.loss = fcn.softmax_loss(n.score, n.label)
    return n.to_proto()


def model_nets(model, width=1.0):
    """The reference's pair for ``model``: {'trainval': NetParameter, 'test': ...}.

    Parameters
    ----------
    model : str
        'color', 'hha', 'color-d' or 'color-hha'.
    width : float
        Multiplier on the trunks' widths (narrow test variants); 40 classes stay.
    """
    if model not in MODELS:
        raise ValueError('unknown NYUDv2 model %r; known: %s' % (model, ', '.join(MODELS)))
    if model == 'color-hha':
        build = late_fusion
    else:
        build = functools.partial(single_stream, model)
    return {'trainval': build(TRAIN_SPLIT, width), 'test': build(TEST_SPLIT, width)}
