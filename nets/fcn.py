"""The FCN heads on the VGG16 trunk: FCN-32s, FCN-16s, FCN-8s and FCN-8s at-once.

A net is built from a data function (adds ``data``, and ``label`` when there is a
loss, to a NetSpec), the trunk, the stage's head, and for train/val the loss.
Crop offsets are not written here: ``crop`` computes them from coordinate maps.
"""
import torchcaffe as caffe
from torchcaffe import layers as L, params as P
from torchcaffe.coord_map import crop

from . import vgg

# Input of the deploy nets. Only an example size: callers reshape the net to
# each image before forward.
DEPLOY_INPUT = (1, 3, 500, 500)

# The at-once net scales its skips so that pool4 and pool3 features start at
# about the magnitude of the coarser scores they are summed with.
ATONCE_SCALES = {'pool4': 0.01, 'pool3': 0.0001}


def input_data(n, shape=DEPLOY_INPUT):
    """Add an Input layer named "input" with top ``data`` to ``n`` (deploy nets)."""
    n.data = L.Input(name='input', shape=dict(dim=list(shape)))


def score(bottom, classes):
    """A 1 x 1 class scorer. No filler: Caffe's default constant 0 starts it at zero."""
    return L.Convolution(bottom, num_output=classes, kernel_size=1, pad=0,
                         param=vgg.LEARNED)


def upsample(bottom, classes, factor):
    """A fixed (lr_mult 0) Deconvolution upsampling by ``factor``.

    Kernel 2f - f % 2 is the support of bilinear interpolation; the weights are
    set by net surgery (bilinear filters) after the net is made.
    """
    return L.Deconvolution(
        bottom,
        convolution_param=dict(num_output=classes, kernel_size=2 * factor - factor % 2,
                               stride=factor, bias_term=False),
        param=[dict(lr_mult=0)])


def skip(n, pool, upscored, classes, scale=None):
    """Fuse ``pool`` into the upsampled scores ``upscored``: score, crop, sum.

    Adds ``score_<pool>``, ``score_<pool>c`` and ``fuse_<pool>`` (and first
    ``scale_<pool>``, a fixed per-channel Scale filled with ``scale``, when given).

    Returns
    -------
    Top : fuse_<pool>.
    """
    bottom = getattr(n, pool)
    if scale is not None:
        setattr(n, 'scale_' + pool,
                L.Scale(bottom, filler=dict(type='constant', value=scale),
                        param=[dict(lr_mult=0)]))
        bottom = getattr(n, 'scale_' + pool)
    setattr(n, 'score_' + pool, score(bottom, classes))
    setattr(n, 'score_%sc' % pool, crop(getattr(n, 'score_' + pool), upscored))
    setattr(n, 'fuse_' + pool,
            L.Eltwise(upscored, getattr(n, 'score_%sc' % pool), operation=P.Eltwise.SUM))
    return getattr(n, 'fuse_' + pool)


def fcn32s_head(n, top, classes):
    """score_fr, upsampled 32x and cropped to the input."""
    n.score_fr = score(top, classes)
    n.upscore = upsample(n.score_fr, classes, 32)
    n.score = crop(n.upscore, n.data)


def fcn16s_head(n, top, classes):
    """score_fr upsampled 2x, fused with pool4, upsampled 16x."""
    n.score_fr = score(top, classes)
    n.upscore2 = upsample(n.score_fr, classes, 2)
    fused = skip(n, 'pool4', n.upscore2, classes)
    n.upscore16 = upsample(fused, classes, 16)
    n.score = crop(n.upscore16, n.data)


def fcn8s_head(n, top, classes, scales=None):
    """FCN-16s's fusion, upsampled 2x, fused with pool3, upsampled 8x."""
    scales = scales or {}
    n.score_fr = score(top, classes)
    n.upscore2 = upsample(n.score_fr, classes, 2)
    fused = skip(n, 'pool4', n.upscore2, classes, scales.get('pool4'))
    n.upscore_pool4 = upsample(fused, classes, 2)
    fused = skip(n, 'pool3', n.upscore_pool4, classes, scales.get('pool3'))
    n.upscore8 = upsample(fused, classes, 8)
    n.score = crop(n.upscore8, n.data)


def fcn8s_atonce_head(n, top, classes):
    """FCN-8s with its skips scaled, for training all at once."""
    fcn8s_head(n, top, classes, ATONCE_SCALES)


HEADS = {
    'fcn32s': fcn32s_head,
    'fcn16s': fcn16s_head,
    'fcn8s': fcn8s_head,
    'fcn8s-atonce': fcn8s_atonce_head,
}


def fcn(stage, data, classes=21, width=1.0, loss=True, dropout=True):
    """Make one FCN net.

    Parameters
    ----------
    stage : str
        One of ``HEADS``: 'fcn32s', 'fcn16s', 'fcn8s', 'fcn8s-atonce'.
    data : callable
        ``data(n)`` adds the top ``data`` (and ``label`` when ``loss``) to NetSpec ``n``.
    classes : int
        Number of classes (21 for PASCAL VOC, background included).
    width : float
        Multiplier on the trunk's widths; score layers keep ``classes`` outputs.
    loss : bool
        Add the SoftmaxWithLoss on ``score`` and ``label``. Its loss is summed
        over pixels and divided by the batch only (``normalize: false``), hence
        the tiny learning rates of the FCN solvers; label 255 is ignored.
    dropout : bool
        Add drop6/drop7 (the reference deploy net has none).

    Returns
    -------
    NetParameter
    """
    if stage not in HEADS:
        raise ValueError('unknown FCN stage %r; known: %s' % (stage, ', '.join(HEADS)))
    n = caffe.NetSpec()
    data(n)
    top = vgg.fcn_trunk(n, n.data, width, dropout=dropout)
    HEADS[stage](n, top, classes)
    if loss:
        n.loss = L.SoftmaxWithLoss(n.score, n.label,
                                   loss_param=dict(normalize=False, ignore_label=255))
    return n.to_proto()


def deploy(stage, classes=21, width=1.0, shape=DEPLOY_INPUT):
    """The deploy form of ``stage``: Input layer, no dropout, no loss."""
    return fcn(stage, lambda n: input_data(n, shape), classes, width,
               loss=False, dropout=False)
