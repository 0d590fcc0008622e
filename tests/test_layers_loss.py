"""SoftmaxWithLoss and Accuracy: Caffe's values, normalisers and gradient rule."""
import numpy as np
import pytest
import torch
from google.protobuf import text_format

from torchcaffe import caffe_pb2
from torchcaffe.errors import CaffeError, ShapeError
from torchcaffe.layer_types import create_layer

FLT_MIN = float(np.finfo(np.float32).tiny)


def make_layer(text, tops=1):
    param = caffe_pb2.LayerParameter()
    text_format.Merge(text, param)
    param.name = param.name or 'loss'
    if not param.top:
        param.top.extend('t%d' % i for i in range(tops))
    return create_layer(param, caffe_pb2.TRAIN)


def scores_and_labels(seed=0, ignore=255):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(2, 3, 2, 3, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 3, (2, 1, 2, 3), generator=g).double()
    labels[0, 0, 0, 0] = ignore
    labels[1, 0, 1, 2] = ignore
    return scores, labels


def numpy_softmax_loss(scores, labels, ignore, norm):
    s = scores.numpy()
    e = np.exp(s - s.max(axis=1, keepdims=True))
    p = e / e.sum(axis=1, keepdims=True)
    lab = labels.numpy()[:, 0].astype(int)
    loss, grad = 0.0, p.copy()
    for n, h, w in np.ndindex(*lab.shape):
        if lab[n, h, w] == ignore:
            grad[n, :, h, w] = 0
            continue
        loss -= np.log(max(p[n, lab[n, h, w], h, w], FLT_MIN))
        grad[n, lab[n, h, w], h, w] -= 1
    return loss / norm, grad / norm


@pytest.mark.parametrize('loss_param, norm', [
    ('', 10),                          # default: VALID = 12 positions - 2 ignored
    ('normalization: VALID', 10),
    ('normalization: FULL', 12),       # N * H * W
    ('normalization: BATCH_SIZE', 2),  # N
    ('normalization: NONE', 1),
    ('normalize: true', 10),           # legacy flag: true -> VALID
    ('normalize: false', 2),           # legacy flag: false -> BATCH_SIZE (the FCN setting)
    ('normalize: false normalization: FULL', 12),   # an explicit normalization wins
])
def test_softmax_loss_value_and_gradient_per_normalization(loss_param, norm):
    layer = make_layer('type: "SoftmaxWithLoss" loss_param { ignore_label: 255 %s }' % loss_param)
    scores, labels = scores_and_labels()
    scores.requires_grad_()
    (loss,) = layer.forward([scores, labels], [])
    expected_loss, expected_grad = numpy_softmax_loss(scores.detach(), labels, 255, norm)
    assert loss.shape == () and layer.top_shapes([(2, 3, 2, 3), (2, 1, 2, 3)]) == [()]
    assert loss.item() == pytest.approx(expected_loss, rel=1e-12)
    loss.backward()
    np.testing.assert_allclose(scores.grad.numpy(), expected_grad, rtol=1e-12, atol=1e-15)


def test_softmax_loss_gradient_scales_with_top_diff_and_is_zero_when_ignored():
    layer = make_layer('type: "SoftmaxWithLoss" loss_param { ignore_label: 255 normalize: false }')
    scores, labels = scores_and_labels()
    scores.requires_grad_()
    (loss,) = layer.forward([scores, labels], [])
    loss.backward(torch.tensor(2.5, dtype=torch.float64))     # a loss_weight of 2.5
    _, expected = numpy_softmax_loss(scores.detach(), labels, 255, 2)
    np.testing.assert_allclose(scores.grad.numpy(), 2.5 * expected, rtol=1e-12)
    assert torch.all(scores.grad[0, :, 0, 0] == 0) and torch.all(scores.grad[1, :, 1, 2] == 0)


def test_softmax_loss_clamps_probability_at_flt_min_but_not_the_gradient():
    layer = make_layer('type: "SoftmaxWithLoss"')
    scores = torch.tensor([[0.0, -200.0]], requires_grad=True)   # float32: p_1 underflows to 0
    (loss,) = layer.forward([scores, torch.tensor([1.0])], [])
    assert loss.item() == pytest.approx(-np.log(FLT_MIN), rel=1e-6)     # 87.3365
    loss.backward()
    assert scores.grad.tolist() == [[1.0, -1.0]]                      # p - onehot


def test_softmax_loss_with_everything_ignored_is_zero():
    layer = make_layer('type: "SoftmaxWithLoss" loss_param { ignore_label: 4 }')
    scores = torch.randn(1, 3, 2, 2, requires_grad=True)
    (loss,) = layer.forward([scores, torch.full((1, 1, 2, 2), 4.0)], [])
    loss.backward()
    assert loss.item() == 0 and torch.all(scores.grad == 0)


def test_softmax_loss_gradient_matches_finite_differences():
    layer = make_layer('type: "SoftmaxWithLoss"')
    scores, labels = scores_and_labels(ignore=1)
    labels[labels > 2] = 0
    assert torch.autograd.gradcheck(lambda s: layer.forward([s, labels], [])[0],
                                    (scores.requires_grad_(),))


def test_softmax_loss_second_top_is_the_probability_without_gradient():
    layer = make_layer('type: "SoftmaxWithLoss"', tops=2)
    scores, labels = scores_and_labels(ignore=0)
    loss, prob = layer.forward([scores.requires_grad_(), labels], [])
    assert layer.top_shapes([(2, 3, 2, 3), (2, 1, 2, 3)]) == [(), (2, 3, 2, 3)]
    assert torch.allclose(prob, torch.softmax(scores, 1)) and not prob.requires_grad


def test_softmax_loss_along_another_axis():
    layer = make_layer('type: "SoftmaxWithLoss" softmax_param { axis: 2 }')
    scores = torch.randn(2, 3, 4, dtype=torch.float64)
    labels = torch.tensor([[0.0, 3.0, 1.0], [2.0, 2.0, 0.0]])
    (loss,) = layer.forward([scores, labels], [])
    logp = torch.log_softmax(scores, 2).gather(2, labels.long().unsqueeze(2))
    assert loss.item() == pytest.approx(-logp.sum().item() / 6, rel=1e-12)


def test_softmax_loss_label_errors_name_the_layer():
    layer = make_layer('name: "cls" type: "SoftmaxWithLoss"')
    with pytest.raises(ShapeError, match="cls"):
        layer.top_shapes([(1, 3, 2, 2), (1, 1, 2, 3)])
    with pytest.raises(CaffeError, match="cls.*label 3 out of range"):
        layer.forward([torch.zeros(1, 3, 1, 1), torch.tensor([[[[3.0]]]])], [])


# ---- Accuracy ------------------------------------------------------------------------

def test_accuracy_top1_with_ignore_label():
    layer = make_layer('type: "Accuracy" accuracy_param { ignore_label: 9 }')
    scores = torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.3, 0.3, 0.4], [0.9, 0.0, 0.1]])
    labels = torch.tensor([1.0, 1.0, 2.0, 9.0])
    (acc,) = layer.forward([scores, labels], [])
    assert layer.top_shapes([(4, 3), (4,)]) == [()]
    assert acc.item() == pytest.approx(2 / 3)


def test_accuracy_top_k_counts_ties_against_the_true_class():
    top2 = make_layer('type: "Accuracy" accuracy_param { top_k: 2 }')
    scores = torch.tensor([[0.5, 0.3, 0.2], [0.4, 0.4, 0.4], [0.1, 0.5, 0.4]])
    labels = torch.tensor([2.0, 0.0, 2.0])
    # row 0: label 2 is third -> wrong; row 1: three scores >= 0.4 -> wrong; row 2: second -> right
    assert top2.forward([scores, labels], [])[0].item() == pytest.approx(1 / 3)
    top1 = make_layer('type: "Accuracy"')
    tie = torch.tensor([[0.5, 0.5]])
    assert top1.forward([tie, torch.tensor([0.0])], [])[0].item() == 0.0


def test_accuracy_per_class_top_over_pixels():
    layer = make_layer('type: "Accuracy"', tops=2)
    scores = torch.zeros(1, 3, 1, 4)
    scores[0, :, 0, 0] = torch.tensor([1.0, 0, 0])   # predicts 0
    scores[0, :, 0, 1] = torch.tensor([0, 1.0, 0])   # predicts 1
    scores[0, :, 0, 2] = torch.tensor([0, 1.0, 0])   # predicts 1
    scores[0, :, 0, 3] = torch.tensor([1.0, 0, 0])   # predicts 0
    labels = torch.tensor([[[[0.0, 1.0, 0.0, 0.0]]]])
    acc, per_class = layer.forward([scores, labels], [])
    assert acc.item() == pytest.approx(3 / 4)
    assert per_class.tolist() == pytest.approx([2 / 3, 1.0, 0.0])
    assert layer.top_shapes([(1, 3, 1, 4), (1, 1, 1, 4)]) == [(), (3,)]


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
def test_softmax_loss_on_cuda_matches_numpy():
    layer = make_layer('type: "SoftmaxWithLoss" loss_param { ignore_label: 255 normalize: false }')
    scores, labels = scores_and_labels()
    scores = scores.cuda().requires_grad_()
    (loss,) = layer.forward([scores, labels.cuda()], [])
    loss.backward()
    expected_loss, expected_grad = numpy_softmax_loss(scores.detach().cpu(), labels, 255, 2)
    assert loss.item() == pytest.approx(expected_loss, rel=1e-12)
    np.testing.assert_allclose(scores.grad.cpu().numpy(), expected_grad, rtol=1e-12, atol=1e-15)
