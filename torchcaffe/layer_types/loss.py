"""SoftmaxWithLoss and Accuracy, with Caffe's label, ignore and normalisation rules."""
import torch

from ..errors import LabelError
from ..proto import caffe_pb2
from .base import Layer, register, count

__all__ = ['SoftmaxWithLoss', 'Accuracy', 'normalizer']

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
