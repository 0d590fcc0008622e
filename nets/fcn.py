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


def upsample(bottom, classes, factor, kernel=None):
    """A fixed (lr_mult 0) Deconvolution upsampling by ``factor``.

    Kernel 2f - f % 2 (unless ``kernel`` is given) is the support of bilinear
    interpolation; the weights are set by net surgery (bilinear filters) after
    the net is made. ``surgery.upsample_filt`` gives an odd kernel 2f - 1 the same
    factor f, centred on a pixel instead of between two.
    """
    if kernel is None:
        kernel = 2 * factor - factor % 2
    return L.Deconvolution(
        bottom,
        convolution_param=dict(num_output=classes, kernel_size=kernel,
                               stride=factor, bias_term=False),
        param=[dict(lr_mult=0)])


def _add(n, name, top):
    """Assign ``top`` to ``n`` under ``name`` and return it (names built at run time)."""
    n[name] = top
    return n[name]


def skip(n, pool, upscored, classes, scale=None, suffix=''):
    """Fuse ``pool`` into the upsampled scores ``upscored``: score, crop, sum.

    Adds ``score_<pool>``, ``score_<pool>c`` and ``fuse_<pool>`` (and first
    ``scale_<pool>``, a fixed per-channel Scale filled with ``scale``, when given).
    ``suffix`` ends each name, before the crop's "c" (``score_pool4_semc`` for
    SIFT Flow's '_sem' head).

    Returns
    -------
    Top : fuse_<pool><suffix>.
    """
    bottom = getattr(n, pool)
    if scale is not None:
        bottom = _add(n, 'scale_' + pool + suffix,
                      L.Scale(bottom, filler=dict(type='constant', value=scale),
                              param=[dict(lr_mult=0)]))
    scored = _add(n, 'score_' + pool + suffix, score(bottom, classes))
    cropped = _add(n, 'score_%s%sc' % (pool, suffix), crop(scored, upscored))
    return _add(n, 'fuse_' + pool + suffix,
                L.Eltwise(upscored, cropped, operation=P.Eltwise.SUM))


def fcn32s_head(n, top, classes, kernel=None, suffix=''):
    """score_fr, upsampled 32x (by a ``kernel`` x ``kernel`` Deconvolution) and
    cropped to the input.

    Every head's layer names end in ``suffix`` (SIFT Flow's two heads on one
    trunk: 'score_fr_sem', 'upscore_sem', 'score_sem', ...)."""
    fr = _add(n, 'score_fr' + suffix, score(top, classes))
    up = _add(n, 'upscore' + suffix, upsample(fr, classes, 32, kernel))
    _add(n, 'score' + suffix, crop(up, n.data))


def fcn16s_head(n, top, classes, suffix=''):
    """score_fr upsampled 2x, fused with pool4, upsampled 16x."""
    fr = _add(n, 'score_fr' + suffix, score(top, classes))
    up2 = _add(n, 'upscore2' + suffix, upsample(fr, classes, 2))
    fused = skip(n, 'pool4', up2, classes, suffix=suffix)
    up16 = _add(n, 'upscore16' + suffix, upsample(fused, classes, 16))
    _add(n, 'score' + suffix, crop(up16, n.data))


def fcn8s_head(n, top, classes, scales=None, suffix=''):
    """FCN-16s's fusion, upsampled 2x, fused with pool3, upsampled 8x."""
    scales = scales or {}
    fr = _add(n, 'score_fr' + suffix, score(top, classes))
    up2 = _add(n, 'upscore2' + suffix, upsample(fr, classes, 2))
    fused = skip(n, 'pool4', up2, classes, scales.get('pool4'), suffix)
    up4 = _add(n, 'upscore_pool4' + suffix, upsample(fused, classes, 2))
    fused = skip(n, 'pool3', up4, classes, scales.get('pool3'), suffix)
    up8 = _add(n, 'upscore8' + suffix, upsample(fused, classes, 8))
    _add(n, 'score' + suffix, crop(up8, n.data))


def fcn8s_atonce_head(n, top, classes, suffix=''):
    """FCN-8s with its skips scaled, for training all at once."""
    fcn8s_head(n, top, classes, ATONCE_SCALES, suffix)


HEADS = {
    'fcn32s': fcn32s_head,
    'fcn16s': fcn16s_head,
    'fcn8s': fcn8s_head,
    'fcn8s-atonce': fcn8s_atonce_head,
}


def fcn(stage, data, classes=21, width=1.0, loss=True, dropout=True, trunk=None,
        normalize=False, **head_args):
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
        Add the SoftmaxWithLoss on ``score`` and ``label``; label 255 is ignored.
    dropout : bool
        Add drop6/drop7 (the reference deploy net has none).
    trunk : callable, optional
        ``trunk(n, bottom, width, dropout=...)`` adds the feature layers and returns
        the top the score layer reads; default ``nets.vgg.fcn_trunk``. Skip heads
        also read the trunk's ``pool4`` / ``pool3``.
    normalize : bool
        The loss's ``normalize``. False (the VGG16 FCNs) sums over pixels and divides
        by the batch only, hence their tiny learning rates; True divides by the
        number of labelled pixels.
    **head_args :
        Passed to the stage's head (``kernel`` of FCN-32s's upscore).

    Returns
    -------
    NetParameter
    """
    if stage not in HEADS:
        raise ValueError('unknown FCN stage %r; known: %s' % (stage, ', '.join(HEADS)))
    n = caffe.NetSpec()
    data(n)
    top = (trunk or vgg.fcn_trunk)(n, n.data, width, dropout=dropout)
    HEADS[stage](n, top, classes, **head_args)
    if loss:
        n.loss = L.SoftmaxWithLoss(n.score, n.label,
                                   loss_param=dict(normalize=normalize, ignore_label=255))
    return n.to_proto()


def deploy(stage, classes=21, width=1.0, shape=DEPLOY_INPUT, **fcn_args):
    """The deploy form of ``stage``: Input layer, no dropout, no loss.

    ``fcn_args`` (``trunk``, head arguments) as for :func:`fcn`.
    """
    return fcn(stage, lambda n: input_data(n, shape), classes, width,
               loss=False, dropout=False, **fcn_args)


def stage_nets(stage, data, train_split, val_split, classes=21, width=1.0, **fcn_args):
    """The train, val and deploy NetParameters of ``stage`` on one dataset.

    Parameters
    ----------
    data : callable
        ``data(n, split)`` adds the dataset's data layer (tops ``data``, ``label``)
        reading ``split`` to NetSpec ``n``.
    train_split, val_split : str
        The splits of the train and val nets.
    classes, width, **fcn_args :
        As for :func:`fcn` (``trunk``, ``normalize``, head arguments).

    Returns
    -------
    dict : {'train': NetParameter, 'val': ..., 'deploy': ...}, in that order.
    """
    def on(split):
        return lambda n: data(n, split)
    return {
        'train': fcn(stage, on(train_split), classes, width, **fcn_args),
        'val': fcn(stage, on(val_split), classes, width, **fcn_args),
        'deploy': deploy(stage, classes, width, **fcn_args),
    }


def softmax_loss(score, label, normalize=False):
    """The FCN loss: SoftmaxWithLoss ignoring label 255 (``normalize`` as for :func:`fcn`)."""
    return L.SoftmaxWithLoss(score, label,
                             loss_param=dict(normalize=normalize, ignore_label=255))
