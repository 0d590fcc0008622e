"""EuclideanLoss, SigmoidCrossEntropyLoss, InfogainLoss, HingeLoss,
MultinomialLogisticLoss and ContrastiveLoss: values against hand-computed numbers,
gradients against Caffe's backward formulas and float64 finite differences."""
import math

import numpy as np
import pytest
import torch

from test_layers_loss import make_layer
from torchcaffe import caffe_pb2
from torchcaffe.errors import CaffeError, FormatError, LabelError, ShapeError


def rand(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def gradcheck(fn, *inputs):
    return torch.autograd.gradcheck(fn, tuple(t.detach().requires_grad_() for t in inputs))


def grads(layer, bottoms, top_diff=1.0, wrt=(0,)):
    """Forward, backward with ``top_diff`` as the loss weight; the bottoms' grads."""
    bottoms = [b.detach().clone().requires_grad_(i in wrt) for i, b in enumerate(bottoms)]
    (loss,) = layer.forward(bottoms, [])[:1]
    loss.backward(torch.tensor(top_diff, dtype=loss.dtype))
    return loss, [b.grad for b in bottoms]


# ---- EuclideanLoss -------------------------------------------------------------------

def test_euclidean_loss_is_half_the_squared_distance_over_num():
    layer = make_layer('type: "EuclideanLoss"')
    a = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64)
    b = torch.tensor([[0.0, 2.0], [1.0, 1.0]], dtype=torch.float64)
    assert layer.top_shapes([(2, 2), (2, 2)]) == [()]
    assert layer.loss_weights() == [1.0]
    loss, (ga, gb) = grads(layer, [a, b], top_diff=3.0, wrt=(0, 1))
    assert loss.item() == (1 + 0 + 4 + 9) / 2 / 2
    # Caffe: +-(a - b) * top_diff / num to the two bottoms
    assert ga.tolist() == [[1.5, 0.0], [3.0, 4.5]]
    assert gb.tolist() == [[-1.5, 0.0], [-3.0, -4.5]]


def test_euclidean_loss_takes_bottoms_of_equal_count1_and_finite_differences():
    layer = make_layer('type: "EuclideanLoss"')
    a, b = rand(3, 2, 2), rand(3, 4, seed=1)
    assert layer.top_shapes([(3, 2, 2), (3, 4)]) == [()]
    assert gradcheck(lambda p, q: layer.forward([p, q], [])[0], a, b)
    with pytest.raises(ShapeError, match='same dimension'):
        layer.top_shapes([(3, 4), (3, 5)])
    with pytest.raises(ShapeError, match='first dimension'):
        layer.top_shapes([(3, 4), (4, 3)])


# ---- SigmoidCrossEntropyLoss --------------------------------------------------------

def sigmoid_ce(x, t, ignore=None):
    """Per-entry -[t log s + (1 - t) log(1 - s)] and (s - t), zero where ignored."""
    s = 1 / (1 + np.exp(-x))
    terms = -(t * np.log(s) + (1 - t) * np.log(1 - s))
    grad = s - t
    if ignore is not None:
        mask = t.astype(int) == ignore     # Caffe truncates the target to int
        terms[mask] = 0
        grad[mask] = 0
    return terms.sum(), grad


X = np.array([[0.5, -2.0, 3.0], [0.0, 1.5, -0.25]])
T = np.array([[1.0, 0.0, 0.3], [0.0, 1.0, 1.0]])


@pytest.mark.parametrize('loss_param, norm', [
    ('', 2),                               # unset: BATCH_SIZE, not the proto's VALID
    ('normalization: BATCH_SIZE', 2),
    ('normalization: FULL', 6),
    ('normalization: VALID', 6),           # nothing ignored: every entry
    ('normalization: NONE', 1),
    ('normalize: true', 6),
    ('normalize: false', 2),
])
def test_sigmoid_cross_entropy_normalizations(loss_param, norm):
    layer = make_layer('type: "SigmoidCrossEntropyLoss" loss_param { %s }' % loss_param)
    total, grad = sigmoid_ce(X, T)
    loss, (gx, _) = grads(layer, [torch.tensor(X), torch.tensor(T)], top_diff=2.0)
    assert loss.item() == pytest.approx(total / norm, rel=1e-13)
    np.testing.assert_allclose(gx.numpy(), 2.0 * grad / norm, rtol=1e-13, atol=1e-16)
    assert gradcheck(lambda p: layer.forward([p, torch.tensor(T)], [])[0], torch.tensor(X))


@pytest.mark.parametrize('loss_param, norm', [
    ('normalization: VALID', 3),           # 6 entries, 3 ignored
    ('normalization: FULL', 6),
    ('', 2),
])
def test_sigmoid_cross_entropy_ignore_label_truncates_targets(loss_param, norm):
    layer = make_layer('type: "SigmoidCrossEntropyLoss" loss_param { ignore_label: 0 %s }'
                       % loss_param)
    # Targets 0.0 and 0.3 truncate to 0, so all three are ignored (Caffe's static_cast<int>).
    total, grad = sigmoid_ce(X, T, ignore=0)
    loss, (gx, gt) = grads(layer, [torch.tensor(X), torch.tensor(T)], wrt=(0, 1))
    assert loss.item() == pytest.approx(total / norm, rel=1e-13)
    np.testing.assert_allclose(gx.numpy(), grad / norm, rtol=1e-13, atol=1e-16)
    assert gx[0, 1] == 0 and gx[0, 2] == 0 and gx[1, 0] == 0 and gt is None


def test_sigmoid_cross_entropy_is_stable_for_large_logits():
    layer = make_layer('type: "SigmoidCrossEntropyLoss"')
    x = torch.tensor([[800.0, -800.0]])
    (loss,) = layer.forward([x, torch.tensor([[0.0, 1.0]])], [])
    assert loss.item() == pytest.approx(1600.0)     # each term is |x|, no inf or nan


@pytest.mark.parametrize('loss_param', ['', 'normalization: VALID ignore_label: 1',
                                        'normalization: FULL'])
def test_sigmoid_cross_entropy_finite_differences(loss_param):
    layer = make_layer('type: "SigmoidCrossEntropyLoss" loss_param { %s }' % loss_param)
    x = rand(2, 3, 2)
    t = torch.rand(2, 3, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    t[0, 0, 0] = 1.0
    assert gradcheck(lambda p: layer.forward([p, t], [])[0], x)


def test_sigmoid_cross_entropy_count_mismatch_names_the_layer():
    layer = make_layer('name: "sce" type: "SigmoidCrossEntropyLoss"')
    with pytest.raises(ShapeError, match="'sce'.*same count"):
        layer.top_shapes([(2, 3), (2, 4)])


# ---- MultinomialLogisticLoss --------------------------------------------------------

def test_multinomial_logistic_loss_values_and_caffe_gradient():
    layer = make_layer('type: "MultinomialLogisticLoss"')
    p = torch.tensor([[0.2, 0.5, 0.3], [0.6, 0.4, 0.0]], dtype=torch.float64)
    labels = torch.tensor([1.0, 2.0])          # the second picks p = 0: clamped at 1e-20
    assert layer.top_shapes([(2, 3), (2,)]) == [()]
    loss, (gp, _) = grads(layer, [p, labels], top_diff=0.5)
    assert loss.item() == pytest.approx((-math.log(0.5) - math.log(1e-20)) / 2, rel=1e-13)
    expected = np.zeros((2, 3))
    expected[0, 1] = -0.5 / 2 / 0.5
    expected[1, 2] = -0.5 / 2 / 1e-20          # Caffe divides by the clamped value
    np.testing.assert_allclose(gp.numpy(), expected, rtol=1e-13)


def test_multinomial_logistic_loss_finite_differences_and_label_checks():
    layer = make_layer('name: "mll" type: "MultinomialLogisticLoss"')
    p = torch.softmax(rand(3, 4, 1, 1), 1)
    labels = torch.tensor([[[[3.0]]], [[[0.0]]], [[[2.0]]]])
    assert gradcheck(lambda q: layer.forward([q, labels], [])[0], p)
    with pytest.raises(LabelError, match="'mll'.*label 4"):
        layer.forward([p, torch.tensor([4.0, 0.0, 1.0])], [])
    with pytest.raises(ShapeError, match='one per item'):
        layer.top_shapes([(3, 4), (3, 2)])


# ---- InfogainLoss -------------------------------------------------------------------

H = np.array([[1.0, 0.5, 0.0], [0.25, 2.0, 0.0], [0.0, 0.0, 1.0]])


def infogain_reference(scores, labels, h, ignore=None):
    """Loop over (n, position) as Caffe's Forward_cpu/Backward_cpu, softmax on axis 1."""
    s = scores.reshape(scores.shape[0], scores.shape[1], -1)
    e = np.exp(s - s.max(1, keepdims=True))
    p = e / e.sum(1, keepdims=True)
    lab = labels.reshape(s.shape[0], s.shape[2]).astype(int)
    loss, grad, valid = 0.0, np.zeros_like(p), 0
    for n, j in np.ndindex(*lab.shape):
        y = lab[n, j]
        if y == ignore:
            continue
        loss -= sum(h[y, l] * np.log(max(p[n, l, j], 1e-20)) for l in range(s.shape[1]))
        grad[n, :, j] = p[n, :, j] * h[y].sum() - h[y]
        valid += 1
    return loss, grad.reshape(scores.shape), valid


def blobproto_file(path, array):
    blob = caffe_pb2.BlobProto()
    blob.shape.dim.extend([1, 1] + list(array.shape))
    blob.data.extend(array.ravel().tolist())
    path.write_bytes(blob.SerializeToString())
    return str(path)


@pytest.mark.parametrize('loss_param, norm', [
    ('', 'valid'), ('normalization: FULL', 6), ('normalization: BATCH_SIZE', 2),
    ('normalization: NONE', 1)])
def test_infogain_loss_from_a_source_file_per_normalization(tmp_path, loss_param, norm):
    source = blobproto_file(tmp_path / 'H.binaryproto', H)
    layer = make_layer('type: "InfogainLoss" infogain_loss_param { source: "%s" } '
                       'loss_param { ignore_label: 7 %s }' % (source, loss_param))
    scores = rand(2, 3, 3)
    labels = torch.tensor([[0.0, 1.0, 7.0], [2.0, 1.0, 1.0]])
    ref_loss, ref_grad, valid = infogain_reference(scores.numpy(), labels.numpy(), H, ignore=7)
    norm = valid if norm == 'valid' else norm
    assert layer.top_shapes([(2, 3, 3), (2, 3)]) == [()]
    loss, (gs, _) = grads(layer, [scores, labels], top_diff=1.5)
    assert loss.item() == pytest.approx(ref_loss / norm, rel=1e-12)
    np.testing.assert_allclose(gs.numpy(), 1.5 * ref_grad / norm, rtol=1e-12, atol=1e-15)
    assert torch.all(gs[0, :, 2] == 0)      # the ignored position
    assert gradcheck(lambda s: layer.forward([s, labels], [])[0], scores)


def test_infogain_loss_matrix_as_third_bottom_along_another_axis():
    layer = make_layer('type: "InfogainLoss" bottom: "s" bottom: "l" bottom: "H" '
                       'infogain_loss_param { axis: 2 }', tops=2)
    scores = rand(2, 2, 3)                       # softmax along axis 2: 3 classes
    labels = torch.tensor([[0.0, 2.0], [1.0, 1.0]])
    h = torch.tensor(H).reshape(1, 1, 3, 3)
    assert layer.top_shapes([(2, 2, 3), (2, 2), (1, 1, 3, 3)]) == [(), (2, 2, 3)]
    loss, prob = layer.forward([scores, labels, h], [])
    moved = scores.numpy().transpose(0, 2, 1)    # classes to axis 1 for the reference
    ref_loss, _, valid = infogain_reference(moved, labels.numpy(), H)
    assert loss.item() == pytest.approx(ref_loss / valid, rel=1e-12)
    assert torch.allclose(prob, torch.softmax(scores, 2)) and not prob.requires_grad
    assert gradcheck(lambda s: layer.forward([s, labels, h], [])[0], scores)


def test_infogain_loss_with_identity_matrix_is_softmax_loss():
    scores, labels = rand(2, 4, 3), torch.tensor([[0.0, 3.0, 1.0], [2.0, 2.0, 0.0]])
    eye = torch.eye(4, dtype=torch.float64)
    info = make_layer('type: "InfogainLoss" bottom: "s" bottom: "l" bottom: "H"')
    softmax = make_layer('type: "SoftmaxWithLoss"')
    a = info.forward([scores, labels, eye], [])[0]
    b = softmax.forward([scores, labels], [])[0]
    assert a.item() == pytest.approx(b.item(), rel=1e-13)


def test_infogain_loss_finite_differences_with_ignore_label(tmp_path):
    source = blobproto_file(tmp_path / 'H.binaryproto', H)
    layer = make_layer('type: "InfogainLoss" infogain_loss_param { source: "%s" } '
                       'loss_param { ignore_label: 1 }' % source)
    labels = torch.tensor([[0.0, 1.0], [2.0, 0.0]])
    assert gradcheck(lambda s: layer.forward([s, labels], [])[0], rand(2, 3, 2))


def test_infogain_loss_errors_name_the_layer(tmp_path):
    with pytest.raises(CaffeError, match="'ig'.*source"):
        make_layer('name: "ig" type: "InfogainLoss"')
    with pytest.raises(CaffeError, match="'ig'.*normalize is deprecated"):
        make_layer('name: "ig" type: "InfogainLoss" bottom: "a" bottom: "b" bottom: "c" '
                   'loss_param { normalize: true }')
    bad = tmp_path / 'bad.binaryproto'
    bad.write_bytes(b'\xff\xff\xff')
    with pytest.raises(FormatError, match="bad.binaryproto.*'ig'"):
        make_layer('name: "ig" type: "InfogainLoss" infogain_loss_param { source: "%s" }' % bad)
    source = blobproto_file(tmp_path / 'H.binaryproto', H)
    layer = make_layer('name: "ig" type: "InfogainLoss" infogain_loss_param { source: "%s" }'
                       % source)
    with pytest.raises(ShapeError, match="'ig'.*needs 4 x 4"):
        layer.top_shapes([(2, 4), (2,)])
    with pytest.raises(ShapeError, match="'ig'.*same first dimension"):
        layer.top_shapes([(2, 3, 2), (1, 4)])
    with pytest.raises(LabelError, match="'ig'.*label 3"):
        layer.forward([rand(2, 3), torch.tensor([3.0, 0.0])], [])


# ---- HingeLoss ----------------------------------------------------------------------

def test_hinge_loss_l1_and_l2_values_and_gradients():
    x = torch.tensor([[0.5, -0.2, 2.0], [-1.5, 0.3, 0.0]], dtype=torch.float64)
    labels = torch.tensor([2.0, 0.0])
    # s = -1 at the label: m = max(0, 1 + s x)
    m = np.array([[1.5, 0.8, 0.0], [2.5, 1.3, 1.0]])
    s = np.array([[1, 1, -1], [-1, 1, 1]])
    l1 = make_layer('type: "HingeLoss"')
    loss, (g, _) = grads(l1, [x, labels], top_diff=2.0)
    assert loss.item() == pytest.approx(m.sum() / 2, rel=1e-13)
    np.testing.assert_allclose(g.numpy(), s * (m > 0) * 2.0 / 2, rtol=1e-13)
    l2 = make_layer('type: "HingeLoss" hinge_loss_param { norm: L2 }')
    loss, (g, _) = grads(l2, [x, labels], top_diff=2.0)
    assert loss.item() == pytest.approx((m * m).sum() / 2, rel=1e-13)
    np.testing.assert_allclose(g.numpy(), 2 * s * m * 2.0 / 2, rtol=1e-13)


@pytest.mark.parametrize('norm', ['L1', 'L2'])
def test_hinge_loss_finite_differences(norm):
    layer = make_layer('type: "HingeLoss" hinge_loss_param { norm: %s }' % norm)
    labels = torch.tensor([1.0, 3.0, 0.0])
    x = rand(3, 4) * 0.4     # margins stay away from the kink at 0
    assert gradcheck(lambda p: layer.forward([p, labels], [])[0], x)


def test_hinge_loss_label_out_of_range_names_the_layer():
    layer = make_layer('name: "hinge" type: "HingeLoss"')
    with pytest.raises(LabelError, match="'hinge'"):
        layer.forward([rand(2, 3), torch.tensor([0.0, -1.0])], [])


# ---- ContrastiveLoss ----------------------------------------------------------------

A = np.array([[1.0, 0.0], [0.0, 0.0], [0.3, 0.4], [2.0, 0.0]])
B = np.array([[0.0, 0.0], [0.0, 0.5], [0.0, 0.0], [0.0, 0.0]])
Y = np.array([1.0, 0.0, 0.0, 0.0])        # distances 1, 0.5, 0.5, 2


def contrastive_layer(extra=''):
    return make_layer('type: "ContrastiveLoss" bottom: "a" bottom: "b" bottom: "y" '
                      'contrastive_loss_param { margin: 1.0 %s }' % extra)


def contrastive_bottoms():
    return [torch.tensor(A).reshape(4, 2, 1, 1), torch.tensor(B).reshape(4, 2, 1, 1),
            torch.tensor(Y).reshape(4, 1, 1, 1)]


def test_contrastive_loss_values_and_caffe_gradient():
    layer = contrastive_layer()
    assert layer.top_shapes([(4, 2, 1, 1), (4, 2, 1, 1), (4, 1, 1, 1)]) == [()]
    loss, (ga, gb, gy) = grads(layer, contrastive_bottoms(), top_diff=2.0, wrt=(0, 1, 2))
    # similar: d^2 = 1; dissimilar: max(1 - d, 0)^2 = 0.25, 0.25, 0
    assert loss.item() == pytest.approx((1 + 0.25 + 0.25 + 0) / 4 / 2, rel=1e-13)
    alpha = 2.0 / 4
    diff = A - B
    expected = np.zeros((4, 2))
    expected[0] = alpha * diff[0]
    for j in (1, 2):             # d = 0.5 < margin: beta = -alpha (m - d) / (d + 1e-4)
        expected[j] = -alpha * 0.5 / (0.5 + 1e-4) * diff[j]
    np.testing.assert_allclose(ga.numpy().reshape(4, 2), expected, rtol=1e-13)
    np.testing.assert_allclose(gb.numpy().reshape(4, 2), -expected, rtol=1e-13)
    assert gy is None or torch.all(gy == 0)


def test_contrastive_loss_legacy_version():
    layer = contrastive_layer('legacy_version: true')
    loss, (ga, gb, _) = grads(layer, contrastive_bottoms(), wrt=(0, 1))
    # dissimilar: max(margin - d^2, 0) = 0.75, 0.75, 0
    assert loss.item() == pytest.approx((1 + 0.75 + 0.75) / 4 / 2, rel=1e-13)
    diff = A - B
    expected = np.array([diff[0], -diff[1], -diff[2], [0.0, 0.0]]) / 4
    np.testing.assert_allclose(ga.numpy().reshape(4, 2), expected, rtol=1e-13)
    np.testing.assert_allclose(gb.numpy().reshape(4, 2), -expected, rtol=1e-13)


def test_contrastive_loss_finite_differences_both_versions():
    a, b = rand(5, 3) * 0.3, rand(5, 3, seed=1) * 0.3
    y = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0])
    legacy = contrastive_layer('legacy_version: true')
    assert gradcheck(lambda p, q: legacy.forward([p, q, y], [])[0], a, b)
    # The non-legacy gradient divides by d + 1e-4 rather than d: finite differences
    # agree to about 1e-4 / d relative (d ~ 0.5 here), and exactly once that is undone.
    layer = contrastive_layer()
    _, (ga, _, _) = grads(layer, [a, b, y], wrt=(0, 1))
    numeric = central_differences(lambda p: layer.forward([p, b, y], [])[0].item(), a)
    np.testing.assert_allclose(ga.numpy(), numeric, rtol=1e-3, atol=1e-8)
    d = torch.linalg.norm(a - b, dim=1, keepdim=True)
    undone = torch.where(y[:, None] == 0, ga * (d + 1e-4) / d, ga)
    np.testing.assert_allclose(undone.numpy(), numeric, rtol=1e-6, atol=1e-9)


def central_differences(f, x, eps=1e-6):
    out = np.zeros(x.shape)
    for idx in np.ndindex(*x.shape):
        up, down = x.clone(), x.clone()
        up[idx] += eps
        down[idx] -= eps
        out[idx] = (f(up) - f(down)) / (2 * eps)
    return out


def test_contrastive_loss_shape_checks_name_the_layer():
    layer = make_layer('name: "pair" type: "ContrastiveLoss" bottom: "a" bottom: "b" '
                       'bottom: "y"')
    with pytest.raises(ShapeError, match="'pair'.*same channels"):
        layer.top_shapes([(4, 2), (4, 3), (4,)])
    with pytest.raises(ShapeError, match="'pair'.*N, C, 1, 1"):
        layer.top_shapes([(4, 2, 2, 1), (4, 2, 2, 1), (4,)])
    with pytest.raises(ShapeError, match="'pair'.*pair label"):
        layer.top_shapes([(4, 2), (4, 2), (4, 2)])


# ---- in a net ------------------------------------------------------------------------

def test_loss_weight_scales_the_gradient_in_a_net():
    from torchcaffe.net import Net
    import tempfile
    import os
    text = '''
    input: "a" input_shape { dim: 2 dim: 3 }
    input: "b" input_shape { dim: 2 dim: 3 }
    force_backward: true
    layer { name: "l2" type: "EuclideanLoss" bottom: "a" bottom: "b" top: "loss"
            loss_weight: 4 }
    '''
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, 'net.prototxt')
        with open(path, 'w') as f:
            f.write(text)
        net = Net(path, caffe_pb2.TRAIN)
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.ones((2, 3), np.float32)
    out = net.forward(a=a, b=b)
    assert out['loss'] == pytest.approx(((a - b) ** 2).sum() / 2 / 2)
    net.backward()
    np.testing.assert_allclose(net.blobs['a'].diff, 4 * (a - b) / 2, rtol=1e-6)
    np.testing.assert_allclose(net.blobs['b'].diff, -4 * (a - b) / 2, rtol=1e-6)
