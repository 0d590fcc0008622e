"""The demo nets: narrow FCN-32s, FCN-16s and FCN-8s for the generated dataset.

The same nets as the PASCAL VOC ones (``nets.fcn`` heads on the VGG16 trunk, the
same Python data layers, layer names and crop offsets) at 1/8 of VGG16's widths,
scoring the four classes of ``data/make_demo_data.py``. Paths are relative to a
demo model folder (``demo/fcn32s/`` etc.), so ``../../data/demo-gen`` is the
generated dataset: training reads its SBD layout, validation its VOC layout.

Where they differ from the reference nets, because the demo trains FCN-32s from
scratch instead of from the ILSVRC VGG16 weights:

- every trunk convolution has a weight filler: MSRA (He et al.'s, for ReLU nets),
  and for conv1_1 a gaussian of std ``FIRST_STD``: its inputs are pixel values
  minus the mean (tens, not the unit scale MSRA assumes), so that MSRA would
  start every later layer's activations about 100 times too large. The score
  layers keep Caffe's constant-0 default, as in the reference, so a new skip
  starts by adding nothing to the previous stage's scores;
- the loss is normalized (divided by the labelled pixels), so the solvers take a
  usual learning rate instead of the reference's 1e-10.
"""
import functools

from . import fcn, vgg, voc

CLASSES = 4  # background, disc, polygon, stripe
WIDTH = 1 / 8
DATA_DIR = '../../data/demo-gen'
SBDD_DIR = DATA_DIR + '/sbdd'
VOC_DIR = DATA_DIR + '/VOC'
TRAIN_SPLIT = 'train'
VAL_SPLIT = 'val'
STAGES = ('fcn32s', 'fcn16s', 'fcn8s')

WEIGHT_FILLER = dict(type='msra')
FIRST_STD = 0.005
FIRST_FILLER = dict(type='gaussian', std=FIRST_STD)


def stage_nets(stage):
    """The train, val and deploy NetParameters of a demo stage.

    Parameters
    ----------
    stage : str
        'fcn32s', 'fcn16s' or 'fcn8s'.

    Returns
    -------
    dict : {'train': NetParameter, 'val': ..., 'deploy': ...}, in that order.
    """
    if stage not in STAGES:
        raise ValueError('unknown demo stage %r; known: %s' % (stage, ', '.join(STAGES)))
    data = functools.partial(voc.python_data, sbdd_dir=SBDD_DIR, voc_dir=VOC_DIR)
    trunk = functools.partial(vgg.fcn_trunk, weight_filler=WEIGHT_FILLER,
                              first_filler=FIRST_FILLER)
    return fcn.stage_nets(stage, data, TRAIN_SPLIT, VAL_SPLIT, CLASSES, WIDTH, trunk=trunk,
                          normalize=True)
