"""Caffe's loss layers and Accuracy, with Caffe's label, ignore and normalisation rules:
SoftmaxWithLoss, Accuracy, EuclideanLoss, SigmoidCrossEntropyLoss, InfogainLoss,
HingeLoss, MultinomialLogisticLoss, ContrastiveLoss.
"""
import torch

from .. import io
from ..errors import FormatError, LabelError
from ..proto import caffe_pb2
from .base import Layer, register, count

__all__ = ['SoftmaxWithLoss', 'Accuracy', 'EuclideanLoss', 'SigmoidCrossEntropyLoss',
           'InfogainLoss', 'HingeLoss', 'MultinomialLogisticLoss', 'ContrastiveLoss',
           'normalizer']

# Caffe clamps probabilities at FLT_MIN before the log (so a loss term is at most
# -log(FLT_MIN) ~ 87.34), whatever the blob's precision.
FLT_MIN = 1.1754943508222875e-38

# Score dtypes that losses and accuracies read as float32 (bfloat16 autocast's output).
REDUCED = (torch.bfloat16, torch.float16)


def _full_precision(scores):
    """``scores`` as float32 when autocast computed them in a reduced precision."""
    return scores.float() if scores.dtype in REDUCED else scores


_Norm = caffe_pb2.LossParameter


def normalization_mode(loss_param):
    """The effective NormalizationMode: the legacy ``normalize`` flag wins when
    ``normalization`` is unset (true -> VALID, false -> BATCH_SIZE)."""
    if not loss_param.HasField('normalization') and loss_param.HasField('normalize'):
        return _Norm.VALID if loss_param.normalize else _Norm.BATCH_SIZE
    return loss_param.normalization


def normalizer(mode, outer_num, inner_num, valid_count):
    """Caffe's loss normaliser, never below 1.

    >>> normalizer(caffe_pb2.LossParameter.VALID, 2, 6, 0)
    1.0
    >>> normalizer(caffe_pb2.LossParameter.FULL, 2, 6, 5)
    12.0
    >>> normalizer(caffe_pb2.LossParameter.BATCH_SIZE, 2, 6, 5)
    2.0
    """
    if mode == _Norm.FULL:
        value = outer_num * inner_num
    elif mode == _Norm.VALID:
        value = valid_count
    elif mode == _Norm.BATCH_SIZE:
        value = outer_num
    elif mode == _Norm.NONE:
        value = 1
    else:
        raise ValueError('unknown normalization mode %r' % mode)
    return float(max(1, value))


class _SoftmaxLoss(torch.autograd.Function):
    """Softmax + clamped log loss with Caffe's gradient ``(p - onehot) / normaliser``.

    ``scores`` is (outer, C, inner); ``labels`` (outer, inner) int64 with ignored
    positions already masked out by ``valid``. The gradient ignores the FLT_MIN
    clamp, as Caffe's does, and is zero at ignored positions.
    """

    @staticmethod
    def forward(ctx, scores, labels, valid, norm):
        prob = torch.softmax(scores, dim=1)
        picked = prob.gather(1, labels.unsqueeze(1)).squeeze(1)
        logs = torch.log(picked.clamp_min(FLT_MIN))
        loss = -(logs * valid.to(logs.dtype)).sum() / norm
        ctx.save_for_backward(prob, labels, valid)
        ctx.mark_non_differentiable(prob)
        ctx.norm = norm
        return loss, prob

    @staticmethod
    def backward(ctx, grad_loss, grad_prob):
        prob, labels, valid = ctx.saved_tensors
        grad = prob.clone()
        grad.scatter_add_(1, labels.unsqueeze(1),
                          torch.full_like(labels, -1, dtype=grad.dtype).unsqueeze(1))
        grad = grad * valid.unsqueeze(1).to(grad.dtype)
        return grad * (grad_loss / ctx.norm), None, None, None


def _outer_channels_inner(layer, shape, axis_value):
    """(axis, outer, channels, inner): the scores seen as (outer, channels, inner)."""
    axis = layer.canonical_axis(axis_value, len(shape), shape)
    return axis, count(shape, 0, axis), shape[axis], count(shape, axis + 1)


def _labels(layer, label, outer, inner, channels, ignore_label):
    """Labels as int64 (outer, inner) with Caffe's truncation, and the valid mask."""
    if label.numel() != outer * inner:
        raise layer.shape_error('label count %d does not match %d x %d predictions'
                                % (label.numel(), outer, inner), tuple(label.shape))
    values = label.detach().reshape(outer, inner).to(torch.int64)
    if ignore_label is None:
        valid = torch.ones_like(values, dtype=torch.bool)
    else:
        valid = values != ignore_label
    bad = valid & ((values < 0) | (values >= channels))
    if values.device.type != 'cpu':
        # No host sync per forward for a check Caffe does not make at all (its
        # release build reads past the blob): the device asserts, which stops the
        # process at its next sync with this message, before a kernel indexes with it.
        torch._assert_async(~bad.any(), 'layer %r (%s): a label is out of range [0, %d) '
                            '(ignore_label is %s)' % (layer.name, layer.type, channels,
                                                      ignore_label))
    elif bool(bad.any()):
        raise LabelError('layer %r (%s): label %d out of range [0, %d) at %d position(s); '
                         'ignore_label is %s' % (layer.name, layer.type, int(values[bad][0]),
                                                 channels, int(bad.sum()), ignore_label))
    return torch.where(valid, values, torch.zeros_like(values)), valid


class _LossBase(Layer):
    bottom_counts = (2, 2)

    def allow_force_backward(self, bottom_index):
        # Caffe's LossLayer: no diff to the labels, even under force_backward
        # (Accuracy is no LossLayer there: it keeps the default).
        return not self.is_loss or bottom_index != 1

    def _ignore_label(self, param):
        return param.ignore_label if param.HasField('ignore_label') else None


@register
class SoftmaxWithLoss(_LossBase):
    """Caffe's SoftmaxWithLoss.

    ``loss = -sum log(max(p_label, FLT_MIN)) / normaliser`` over positions whose label
    is not ``loss_param.ignore_label``; the softmax runs along ``softmax_param.axis``.
    The normaliser follows ``loss_param`` (see :func:`normalization_mode`). Gradient
    to the scores: ``(p - onehot) * top_diff / normaliser``, zero where ignored; none
    to the labels. An optional second top is the probabilities (no gradient).
    """
    type = 'SoftmaxWithLoss'
    is_loss = True
    top_counts = (1, 2)

    def top_shapes(self, bottom_shapes):
        scores, label = (tuple(s) for s in bottom_shapes)
        axis_value = self.layer_param.softmax_param.axis
        _, outer, _, inner = _outer_channels_inner(self, scores, axis_value)
        if scores[0] != (label[0] if label else 1) or count(label) != outer * inner:
            raise self.shape_error('labels must be one per prediction (N x spatial)',
                                   scores, label)
        return [()] + ([scores] if self.num_tops() > 1 else [])

    def forward(self, bottoms, params):
        scores, label = bottoms
        scores = _full_precision(scores)
        shape = tuple(scores.shape)
        _, outer, channels, inner = _outer_channels_inner(
            self, shape, self.layer_param.softmax_param.axis)
        loss_param = self.layer_param.loss_param
        ignore_label = self._ignore_label(loss_param)
        labels, valid = _labels(self, label, outer, inner, channels, ignore_label)
        norm_mode = normalization_mode(loss_param)
        if norm_mode == _Norm.VALID and ignore_label is not None:
            # The count stays on the device (no host sync); as Caffe's Dtype
            # normaliser, it is max(1, count) in the scores' precision.
            norm = valid.sum().clamp_min(1).to(scores.dtype)
        else:
            norm = normalizer(norm_mode, outer, inner, outer * inner)
        loss, prob = _SoftmaxLoss.apply(scores.reshape(outer, channels, inner), labels, valid,
                                        norm)
        tops = [loss]
        if self.num_tops() > 1:
            tops.append(prob.detach().reshape(shape))
        return tops


@register
class Accuracy(_LossBase):
    """Caffe's Accuracy: the fraction of non-ignored positions whose label is among
    the ``top_k`` scores.

    A position counts as correct when fewer than ``top_k`` scores are ``>=`` the
    true class's score besides itself (ties count against it), as Caffe counts. An
    optional second top gives the accuracy per class (0 for absent classes).
    """
    type = 'Accuracy'
    top_counts = (1, 2)

    def top_shapes(self, bottom_shapes):
        scores, label = (tuple(s) for s in bottom_shapes)
        _, outer, channels, inner = _outer_channels_inner(
            self, scores, self.layer_param.accuracy_param.axis)
        if self.layer_param.accuracy_param.top_k > channels:
            raise self.shape_error('top_k %d exceeds %d classes'
                                   % (self.layer_param.accuracy_param.top_k, channels), scores)
        if count(label) != outer * inner:
            raise self.shape_error('labels must be one per prediction', scores, label)
        return [()] + ([(channels,)] if self.num_tops() > 1 else [])

    def forward(self, bottoms, params):
        scores, label = (b.detach() for b in bottoms)
        scores = _full_precision(scores)
        shape = tuple(scores.shape)
        p = self.layer_param.accuracy_param
        _, outer, channels, inner = _outer_channels_inner(self, shape, p.axis)
        labels, valid = _labels(self, label, outer, inner, channels, self._ignore_label(p))
        flat = scores.reshape(outer, channels, inner)
        true_score = flat.gather(1, labels.unsqueeze(1))
        at_least = (flat >= true_score).sum(dim=1)  # includes the true class itself
        correct = (at_least <= p.top_k) & valid
        # Counts stay on the device (no host sync); with no valid position the
        # accuracy is 0 / 1 = 0, as Caffe's.
        num_valid = valid.sum().clamp_min(1).to(scores.dtype)
        accuracy = correct.sum().to(scores.dtype) / num_valid
        tops = [accuracy.reshape(())]
        if self.num_tops() > 1:
            flat_labels = labels.reshape(-1)
            hits = torch.zeros(channels, dtype=scores.dtype, device=scores.device)
            hits.index_add_(0, flat_labels, correct.reshape(-1).to(scores.dtype))
            seen = torch.zeros_like(hits).index_add_(0, flat_labels,
                                                      valid.reshape(-1).to(scores.dtype))
            tops.append(torch.where(seen > 0, hits / seen.clamp_min(1), torch.zeros_like(seen)))
        return tops


# ---- the other loss layers -------------------------------------------------------------
#
# Caffe's LossLayer (src/caffe/layers/loss_layer.cpp) checks that the predictions and
# the labels have the same first dimension; each loss divides by a normaliser and
# multiplies its bottom diff by the top's diff, which the net seeds with loss_weight.

# Caffe clamps probabilities read from a bottom at kLOG_THRESHOLD before the log
# (include/caffe/layers/loss_layer.hpp), in the loss and in the gradient alike.
LOG_THRESHOLD = 1e-20


def _legacy_dim(layer, shape, index):
    """Blob::LegacyShape: num, channels, height, width; 1 past the last axis."""
    if len(shape) > 4:
        raise layer.shape_error('needs at most 4 axes (num, channels, height, width)', shape)
    return shape[index] if index < len(shape) else 1


def _same_num(layer, scores, label):
    """LossLayer::Reshape's check: one label item per prediction item."""
    first = scores[0] if scores else 1
    if first != (label[0] if label else 1):
        raise layer.shape_error('the data and label should have the same first dimension',
                                scores, label)


def _one_label_per_item(layer, scores, label):
    """MultinomialLogisticLoss's / InfogainLoss's / HingeLoss's label checks: (N, 1, 1, 1)."""
    _same_num(layer, scores, label)
    if any(_legacy_dim(layer, label, i) != 1 for i in (1, 2, 3)):
        raise layer.shape_error('labels must be one per item, shape (N,) or (N, 1, 1, 1)',
                                scores, label)


def _valid_norm(valid, dtype):
    """max(1, number of valid positions), on the device (no host sync)."""
    return valid.sum().clamp_min(1).to(dtype)


@register
class EuclideanLoss(_LossBase):
    """Caffe's EuclideanLoss: ``sum((a - b)^2) / (2 N)``, N = bottom 0's first axis.

    Both bottoms get a gradient, with opposite signs: ``+-(a - b) * top_diff / N``
    (src/caffe/layers/euclidean_loss_layer.cpp). The bottoms must agree in
    ``count(1)``.
    """
    type = 'EuclideanLoss'
    is_loss = True

    def allow_force_backward(self, bottom_index):
        return True  # euclidean_loss_layer.hpp: both inputs may get diffs

    def top_shapes(self, bottom_shapes):
        a, b = (tuple(s) for s in bottom_shapes)
        _same_num(self, a, b)
        if count(a, 1) != count(b, 1):
            raise self.shape_error('inputs must have the same dimension (count(1))', a, b)
        return [()]

    def forward(self, bottoms, params):
        a, b = (_full_precision(t) for t in bottoms)
        diff = a - b.reshape(a.shape)
        num = a.shape[0] if a.dim() else 1
        # Caffe: dot(diff, diff) / num / 2, in that order.
        return [(diff * diff).sum() / num / 2]


def _sigmoid_normalization(loss_param):
    """SigmoidCrossEntropyLoss's mode: ``normalization`` if set, else the legacy
    ``normalize`` flag (true: VALID, false: BATCH_SIZE), else BATCH_SIZE.

    The quirk: with neither field set Caffe does not take the proto default (VALID)
    but BATCH_SIZE, the layer's behaviour before it had normalisation modes
    (src/caffe/layers/sigmoid_cross_entropy_loss_layer.cpp, LayerSetUp).
    """
    if loss_param.HasField('normalization'):
        return loss_param.normalization
    if loss_param.HasField('normalize'):
        return _Norm.VALID if loss_param.normalize else _Norm.BATCH_SIZE
    return _Norm.BATCH_SIZE


class _SigmoidCrossEntropy(torch.autograd.Function):
    """Caffe's numerically stable sigmoid cross-entropy with gradient
    ``(sigmoid(x) - t) * top_diff / normaliser``, zero where ignored."""

    @staticmethod
    def forward(ctx, x, target, valid, norm):
        positive = (x >= 0).to(x.dtype)
        # -[x (t - [x >= 0]) - log(1 + exp(x - 2 x [x >= 0]))]
        terms = -(x * (target - positive) - torch.log(1 + torch.exp(x - 2 * x * positive)))
        loss = torch.where(valid, terms, torch.zeros_like(terms)).sum() / norm
        ctx.save_for_backward(x, target, valid)
        ctx.norm = norm
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        x, target, valid = ctx.saved_tensors
        grad = torch.where(valid, torch.sigmoid(x) - target, torch.zeros_like(x))
        return grad * (grad_loss / ctx.norm), None, None, None


@register
class SigmoidCrossEntropyLoss(_LossBase):
    """Caffe's SigmoidCrossEntropyLoss on logits ``x`` and targets ``t`` in [0, 1].

    ``loss = -sum [x (t - [x >= 0]) - log(1 + exp(x - 2 x [x >= 0]))] / normaliser``,
    the stable form of ``-[t log s + (1 - t) log(1 - s)]`` with ``s = sigmoid(x)``,
    summed over the entries whose target, truncated to an int as Caffe's
    ``static_cast<int>``, is not ``loss_param.ignore_label``. The normaliser follows
    :func:`_sigmoid_normalization` (BATCH_SIZE unless the prototxt says otherwise);
    BATCH_SIZE is the first axis, FULL the count, VALID the non-ignored count, never
    below 1. Gradient ``(s - t) * top_diff / normaliser``, zero where ignored; none
    to the targets.
    """
    type = 'SigmoidCrossEntropyLoss'
    is_loss = True

    def top_shapes(self, bottom_shapes):
        x, t = (tuple(s) for s in bottom_shapes)
        _same_num(self, x, t)
        if count(x) != count(t):
            raise self.shape_error('inputs must have the same count', x, t)
        return [()]

    def forward(self, bottoms, params):
        x = _full_precision(bottoms[0])
        target = bottoms[1].detach().to(x.dtype).reshape(x.shape)
        loss_param = self.layer_param.loss_param
        ignore_label = self._ignore_label(loss_param)
        if ignore_label is None:
            valid = torch.ones_like(x, dtype=torch.bool)
        else:
            valid = target.to(torch.int64) != ignore_label   # truncates as static_cast<int>
        mode = _sigmoid_normalization(loss_param)
        outer = x.shape[0] if x.dim() else 1
        if mode == _Norm.VALID and ignore_label is not None:
            norm = _valid_norm(valid, x.dtype)
        else:
            norm = normalizer(mode, outer, count(x.shape, 1), x.numel())
        return [_SigmoidCrossEntropy.apply(x, target, valid, norm)]


class _MultinomialLogistic(torch.autograd.Function):
    """``-sum log(max(p_label, 1e-20)) / N``; gradient ``-top_diff / (N max(p_label,
    1e-20))`` at the label entries, 0 elsewhere (the clamped value, as Caffe's)."""

    @staticmethod
    def forward(ctx, prob, labels, num):
        picked = prob.gather(1, labels.unsqueeze(1)).clamp_min(LOG_THRESHOLD)
        ctx.save_for_backward(picked, labels)
        ctx.shape, ctx.num = prob.shape, num
        return -torch.log(picked).sum() / num

    @staticmethod
    def backward(ctx, grad_loss):
        picked, labels = ctx.saved_tensors
        grad = torch.zeros(ctx.shape, dtype=picked.dtype, device=picked.device)
        grad.scatter_(1, labels.unsqueeze(1), -(grad_loss / ctx.num) / picked)
        return grad, None, None


@register
class MultinomialLogisticLoss(_LossBase):
    """Caffe's MultinomialLogisticLoss on probabilities (N, dim...), one label per item.

    ``loss = -sum_n log(max(p[n, label_n], 1e-20)) / N``; only the label entries get
    a gradient, ``-top_diff / (N max(p, 1e-20))``
    (src/caffe/layers/multinomial_logistic_loss_layer.cpp). Labels truncate to int;
    one outside [0, dim) raises LabelError (Caffe does not check).
    """
    type = 'MultinomialLogisticLoss'
    is_loss = True

    def top_shapes(self, bottom_shapes):
        p, label = (tuple(s) for s in bottom_shapes)
        _one_label_per_item(self, p, label)
        return [()]

    def forward(self, bottoms, params):
        prob = _full_precision(bottoms[0])
        num = prob.shape[0]
        flat = prob.reshape(num, -1)
        labels, _ = _labels(self, bottoms[1], num, 1, flat.shape[1], None)
        return [_MultinomialLogistic.apply(flat, labels.reshape(num), num)]


class _InfogainSoftmax(torch.autograd.Function):
    """Softmax + ``-sum_l H[y, l] log(max(p_l, 1e-20))``; Caffe's gradient
    ``p * sum_l H[y, l] - H[y, :]`` (the clamp ignored), zero where ignored."""

    @staticmethod
    def forward(ctx, scores, labels, valid, infogain, norm):
        prob = torch.softmax(scores, dim=1)                       # (outer, C, inner)
        rows = infogain[labels].transpose(1, 2)                   # H[y, :] as (outer, C, inner)
        terms = (rows * torch.log(prob.clamp_min(LOG_THRESHOLD))).sum(1)
        loss = -(terms * valid.to(terms.dtype)).sum() / norm
        ctx.save_for_backward(prob, rows, valid)
        ctx.mark_non_differentiable(prob)
        ctx.norm = norm
        return loss, prob

    @staticmethod
    def backward(ctx, grad_loss, grad_prob):
        prob, rows, valid = ctx.saved_tensors
        grad = prob * rows.sum(1, keepdim=True) - rows
        grad = grad * valid.unsqueeze(1).to(grad.dtype)
        return grad * (grad_loss / ctx.norm), None, None, None, None


def read_infogain_matrix(path, layer):
    """The matrix H stored in a binaryproto BlobProto file, as a float64 array."""
    try:
        array = io.read_blobproto(path)
    except OSError as err:
        raise FormatError(path, 'layer %r (%s): cannot read the infogain matrix: %s'
                          % (layer.name, layer.type, err.strerror)) from None
    except FormatError as err:
        raise FormatError(path, 'layer %r (%s): not a BlobProto infogain matrix (%s)'
                          % (layer.name, layer.type, err.message)) from None
    return array.astype('float64')


@register
class InfogainLoss(_LossBase):
    """Caffe's InfogainLoss (newest BVLC master): a softmax along
    ``infogain_loss_param.axis`` then ``-sum_l H[label, l] log(max(p_l, 1e-20))``.

    H (C x C) comes from a third bottom or else from the BlobProto file
    ``infogain_loss_param.source``. ``loss_param.ignore_label`` and
    ``loss_param.normalization`` (default VALID) act as in SoftmaxWithLoss; the
    legacy ``normalize`` flag is an error, as in Caffe. Gradient to the scores
    ``(p * rowsum(H)[label] - H[label, :]) * top_diff / normaliser``
    (src/caffe/layers/infogain_loss_layer.cpp); none to the labels nor to H. An
    optional second top is the softmax (no gradient). With H the identity this is
    SoftmaxWithLoss with a 1e-20 clamp.
    """
    type = 'InfogainLoss'
    is_loss = True
    bottom_counts = (2, 3)
    top_counts = (1, 2)

    def __init__(self, layer_param, phase):
        super().__init__(layer_param, phase)
        if layer_param.loss_param.HasField('normalize'):
            raise self.error('normalize is deprecated for InfogainLoss; use normalization')
        self.infogain = None
        if len(layer_param.bottom) < 3:
            source = layer_param.infogain_loss_param.source
            if not source:
                raise self.error('infogain_loss_param.source must give the infogain matrix '
                                 '(or give it as a third bottom)')
            self.infogain = torch.from_numpy(read_infogain_matrix(source, self))

    def top_shapes(self, bottom_shapes):
        scores, label = (tuple(s) for s in bottom_shapes[:2])
        _same_num(self, scores, label)
        _, outer, channels, inner = _outer_channels_inner(
            self, scores, self.layer_param.infogain_loss_param.axis)
        if count(label) != outer * inner:
            raise self.shape_error('number of labels must match number of predictions '
                                   '(%d x %d)' % (outer, inner), scores, label)
        h_count = (count(bottom_shapes[2]) if len(bottom_shapes) > 2
                   else self.infogain.numel())
        if h_count != channels * channels:
            raise self.shape_error('the infogain matrix has %d values, needs %d x %d'
                                   % (h_count, channels, channels), scores)
        return [()] + ([scores] if self.num_tops() > 1 else [])

    def forward(self, bottoms, params):
        scores = _full_precision(bottoms[0])
        shape = tuple(scores.shape)
        _, outer, channels, inner = _outer_channels_inner(
            self, shape, self.layer_param.infogain_loss_param.axis)
        h = bottoms[2].detach() if len(bottoms) > 2 else self.infogain
        h = h.to(dtype=scores.dtype, device=scores.device).reshape(channels, channels)
        loss_param = self.layer_param.loss_param
        ignore_label = self._ignore_label(loss_param)
        labels, valid = _labels(self, bottoms[1], outer, inner, channels, ignore_label)
        mode = loss_param.normalization
        if mode == _Norm.VALID:
            norm = _valid_norm(valid, scores.dtype)
        else:
            norm = normalizer(mode, outer, inner, outer * inner)
        loss, prob = _InfogainSoftmax.apply(scores.reshape(outer, channels, inner), labels,
                                            valid, h, norm)
        tops = [loss]
        if self.num_tops() > 1:
            tops.append(prob.detach().reshape(shape))
        return tops


_Hinge = caffe_pb2.HingeLossParameter


@register
class HingeLoss(_LossBase):
    """Caffe's HingeLoss (one-vs-all) on scores (N, dim...), one label per item.

    With ``s = -1`` at the label and ``+1`` elsewhere, ``m = max(0, 1 + s x)``;
    L1: ``sum(m) / N``, L2: ``sum(m^2) / N`` (``hinge_loss_param.norm``). Caffe's
    gradient is ``s [m > 0] top_diff / N`` (L1) and ``2 s m top_diff / N`` (L2),
    autograd's, 0 at the kink (src/caffe/layers/hinge_loss_layer.cpp).
    """
    type = 'HingeLoss'
    is_loss = True

    def top_shapes(self, bottom_shapes):
        scores, label = (tuple(s) for s in bottom_shapes)
        _one_label_per_item(self, scores, label)
        return [()]

    def forward(self, bottoms, params):
        scores = _full_precision(bottoms[0])
        num = scores.shape[0]
        flat = scores.reshape(num, -1)
        labels, _ = _labels(self, bottoms[1], num, 1, flat.shape[1], None)
        sign = torch.ones_like(flat).scatter_(1, labels, -1.0)
        margins = torch.relu(1 + sign * flat)
        if self.layer_param.hinge_loss_param.norm == _Hinge.L2:
            return [(margins * margins).sum() / num]
        return [margins.sum() / num]


class _Contrastive(torch.autograd.Function):
    """Caffe's contrastive loss and its gradient, which divides by ``dist + 1e-4``
    (not ``dist``) in the non-legacy dissimilar case."""

    @staticmethod
    def forward(ctx, a, b, similar, margin, legacy):
        diff = a - b
        dist_sq = (diff * diff).sum(1)
        if legacy:
            far = (margin - dist_sq).clamp_min(0)
        else:
            far = (margin - torch.sqrt(dist_sq)).clamp_min(0)
            far = far * far
        loss = torch.where(similar, dist_sq, far).sum() / a.shape[0] / 2
        ctx.save_for_backward(diff, dist_sq, similar)
        ctx.margin, ctx.legacy = margin, legacy
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        diff, dist_sq, similar = ctx.saved_tensors
        alpha = grad_loss / diff.shape[0]
        if ctx.legacy:
            mdist = ctx.margin - dist_sq
            beta = -alpha * torch.ones_like(dist_sq)
        else:
            dist = torch.sqrt(dist_sq)
            mdist = ctx.margin - dist
            beta = -alpha * mdist / (dist + 1e-4)
        factor = torch.where(similar, alpha * torch.ones_like(dist_sq),
                             torch.where(mdist > 0, beta, torch.zeros_like(beta)))
        grad_a = factor.unsqueeze(1) * diff
        return grad_a, -grad_a, None, None, None


@register
class ContrastiveLoss(_LossBase):
    """Caffe's ContrastiveLoss on two feature blobs (N, C[, 1, 1]) and a pair label.

    With ``d`` the Euclidean distance of a pair: similar pairs (label, truncated to
    int, nonzero) add ``d^2``, dissimilar ones ``max(margin - d, 0)^2``, or with
    ``legacy_version: true`` ``max(margin - d^2, 0)``; the sum is divided by 2N.
    Both feature bottoms get gradients of opposite signs; Caffe's non-legacy
    dissimilar gradient divides by ``d + 1e-4`` (src/caffe/layers/
    contrastive_loss_layer.cpp). The label gets none.
    """
    type = 'ContrastiveLoss'
    is_loss = True
    bottom_counts = (3, 3)

    def allow_force_backward(self, bottom_index):
        return bottom_index != 2  # contrastive_loss_layer.hpp: not to the pair label

    def top_shapes(self, bottom_shapes):
        a, b, y = (tuple(s) for s in bottom_shapes)
        _same_num(self, a, b)
        for shape, what in ((a, 'bottom 0'), (b, 'bottom 1')):
            if _legacy_dim(self, shape, 2) != 1 or _legacy_dim(self, shape, 3) != 1:
                raise self.shape_error('%s must be (N, C, 1, 1)' % what, a, b, y)
        if _legacy_dim(self, a, 1) != _legacy_dim(self, b, 1):
            raise self.shape_error('both feature bottoms need the same channels', a, b)
        if any(_legacy_dim(self, y, i) != 1 for i in (1, 2, 3)) or (y[0] if y else 1) != a[0]:
            raise self.shape_error('the pair label must be (N, 1, 1, 1)', a, y)
        return [()]

    def forward(self, bottoms, params):
        a, b = (_full_precision(t) for t in bottoms[:2])
        num = a.shape[0]
        similar = bottoms[2].detach().reshape(num).to(torch.int64) != 0
        p = self.layer_param.contrastive_loss_param
        # margin is a proto float: Caffe reads it as Dtype.
        return [_Contrastive.apply(a.reshape(num, -1), b.reshape(num, -1), similar,
                                   p.margin, p.legacy_version)]
