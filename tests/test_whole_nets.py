"""Whole nets through the engine, cross-checked against hand-written torch modules.

The FCNs (32s, 16s, 8s, 8s at-once) and the VGG16 classifier are built from
``nets/`` at width 1/16 and run by ``torchcaffe.Net``; ``benchmarks/fcn_module.py``
writes the same nets directly as ``nn.Module`` s, with hand-written crop offsets.
Given the same random weights, both must agree on every blob, the loss and every
learnable parameter's gradient. Inputs are tiny and odd-sized: the 100 pixels of
padding let a 37 x 45 image through the 7 x 7 fc6, and odd sizes exercise
Caffe's round-up pooling.
"""
import math

import numpy as np
import pytest
import torch

import torchcaffe as caffe
from nets import vgg, voc
from benchmarks.fcn_module import FCN, VGG16, STAGES, ATONCE_SCALES, caffe_params, \
    load_from_net, softmax_loss
from benchmarks.bench_engine import with_input_layer

CLASSES = 5
WIDTH = 1 / 16
SHAPE = (1, 3, 37, 45)


# -- building nets ------------------------------------------------------------------

def stage_net(stage, split, shape=SHAPE):
    """The ``split`` net of ``stage`` at the test's classes and width, with Input data."""
    proto = voc.stage_nets(stage, classes=CLASSES, width=WIDTH)[split]
    if split == 'deploy':
        return proto
    return with_input_layer(proto, shape)


def lr_mults(proto):
    """layer name -> lr_mult of each of its params (1 where the prototxt gives none)."""
    out = {}
    for layer in proto.layer:
        out[layer.name] = [spec.lr_mult if spec.HasField('lr_mult') else 1.0
                           for spec in layer.param]
    return out


def randomize(net, proto, seed):
    """Set every param of ``net`` to random non-zero values of a sensible scale.

    Weights get He-like normal values (the FCN score layers start at zero, which
    would hide most of the net), biases N(0, 0.1), Scale factors U(0.5, 1.5) so
    the at-once skips contribute visibly.
    """
    rng = np.random.default_rng(seed)
    types = {layer.name: layer.type for layer in proto.layer}
    for name, blobs in net.params.items():
        for i, blob in enumerate(blobs):
            shape = blob.data.shape
            if types[name] == 'Scale':
                values = rng.uniform(0.5, 1.5, shape)
            elif i == 1:
                values = rng.normal(0, 0.1, shape)
            elif types[name] == 'Deconvolution':
                # each output pixel sums about (k / stride)^2 = 4 taps of every input
                # channel; keep the upsampled scores from growing at each stage
                values = rng.normal(0, 1 / math.sqrt(16 * shape[0]), shape)
            else:
                values = rng.normal(0, math.sqrt(2 / math.prod(shape[1:])), shape)
            blob.data[...] = values


def random_inputs(seed, shape=SHAPE):
    """An image-like batch and labels in [0, CLASSES) with about 10% ignored (255)."""
    rng = np.random.default_rng(seed)
    n, _, h, w = shape
    data = rng.normal(0, 5, shape).astype(np.float32)
    label = rng.integers(0, CLASSES, (n, 1, h, w)).astype(np.float32)
    label[rng.random(label.shape) < 0.1] = 255
    return data, label


def module_for(stage, net):
    """The nn.Module of ``stage`` with ``net``'s weights, in eval mode."""
    module = FCN(stage, classes=CLASSES, width=WIDTH).eval()
    lines = load_from_net(module, net)
    assert len(lines) == sum(len(b) for b in net.params.values())
    return module


# -- comparing ----------------------------------------------------------------------

def assert_close(actual, expected, what, rtol=1e-4, atol_scale=1e-5):
    """allclose with an absolute tolerance relative to ``expected``'s largest value."""
    expected = np.asarray(expected, dtype=np.float64)
    actual = np.asarray(actual, dtype=np.float64)
    assert actual.shape == expected.shape, '%s: shape %s, expected %s' % (
        what, actual.shape, expected.shape)
    scale = float(np.abs(expected).max()) if expected.size else 0.0
    atol = atol_scale * scale
    bad = np.abs(actual - expected) > atol + rtol * np.abs(expected)
    assert not bad.any(), '%s: %d of %d values differ, max abs diff %.3g (scale %.3g)' % (
        what, bad.sum(), bad.size, np.abs(actual - expected).max(), scale)


def assert_blobs_match(net, blobs, **tolerances):
    """Every blob the module recorded equals the net's blob of that name."""
    assert blobs, 'module recorded no blobs'
    for name, tensor in blobs.items():
        assert name in net.blobs, 'net has no blob %r' % name
        assert_close(net.blobs[name].data, tensor.detach().numpy(), 'blob %r' % name,
                     **tolerances)


@pytest.fixture(scope='module', params=STAGES)
def val_run(request):
    """One forward and backward of a stage's val net (TEST phase) and of its module."""
    stage = request.param
    proto = stage_net(stage, 'val')
    net = caffe.Net(proto, caffe.TEST)
    fills = {name: [b.data.copy() for b in blobs] for name, blobs in net.params.items()}
    randomize(net, proto, seed=1)
    module = module_for(stage, net)
    data, label = random_inputs(seed=2)

    out = net.forward(data=data, label=label)
    net.backward()

    blobs = {}
    score = module(torch.from_numpy(data), blobs)
    loss = softmax_loss(score, torch.from_numpy(label))
    loss.backward()
    return dict(stage=stage, proto=proto, net=net, module=module, out=out, blobs=blobs,
                loss=loss, fills=fills, data=data, label=label)


# -- FCN val nets (TEST phase) against the module -------------------------------------

def test_every_fcn_blob_equals_the_modules(val_run):
    net, out = val_run['net'], val_run['out']
    assert_blobs_match(net, val_run['blobs'])
    assert out['loss'].shape in ((), (1,))
    assert net.blobs['score'].data.shape == (1, CLASSES) + SHAPE[2:]


def test_fcn_score_is_not_trivial(val_run):
    # guard the comparisons: every skip and the final score carry real signal
    blobs = val_run['blobs']
    for name in ('score', 'score_fr', 'score_pool4c', 'score_pool3c'):
        if name in blobs:
            assert blobs[name].detach().abs().max() > 1e-3, name


def test_fcn_loss_is_the_unnormalized_cross_entropy(val_run):
    # Caffe clamps p at FLT_MIN before the log, cross_entropy does not: the scores
    # must stay far from that (a spread of 87 between classes) for the two to agree
    score = val_run['net'].blobs['score'].data
    assert (score.max(1) - score.min(1)).max() < 60
    loss = float(np.asarray(val_run['out']['loss']).reshape(()))
    assert loss > 0
    assert math.isclose(loss, val_run['loss'].item(), rel_tol=1e-5)


def test_fcn_learnable_param_diffs_equal_module_grads(val_run):
    net, proto, module = val_run['net'], val_run['proto'], val_run['module']
    mults = lr_mults(proto)
    compared = 0
    for layer, tensors in caffe_params(module).items():
        for i, (blob, tensor) in enumerate(zip(net.params[layer], tensors, strict=True)):
            if mults[layer][i] == 0:
                continue
            assert_close(blob.diff, tensor.grad.numpy(), '%s[%d] diff' % (layer, i))
            compared += 1
    # conv1_1 ... fc7 and the score layers, weights and biases
    assert compared == 2 * (15 + {'fcn32s': 1, 'fcn16s': 2}.get(val_run['stage'], 3))


def test_fcn_frozen_params_get_no_diff(val_run):
    # lr_mult 0: Caffe computes no diff although the module has a gradient for it
    net, proto, module = val_run['net'], val_run['proto'], val_run['module']
    mults = lr_mults(proto)
    frozen = [(layer, i) for layer, ms in mults.items() for i, m in enumerate(ms) if m == 0]
    assert frozen and all(layer.startswith(('upscore', 'scale_')) for layer, _ in frozen)
    grads = caffe_params(module)
    for layer, i in frozen:
        assert not net.params[layer][i].diff.any(), layer
        assert grads[layer][i].grad.abs().max() > 0, layer


def test_fcn_filled_params_match_caffe_fillers(val_run):
    # Convolution without a filler is constant 0 (the score layers); the at-once
    # Scale layers are constant 0.01 and 0.0001 as the module's defaults.
    fills = val_run['fills']
    for layer in ('score_fr', 'score_pool4', 'score_pool3'):
        if layer in fills:
            assert not any(f.any() for f in fills[layer]), layer
    if val_run['stage'] == 'fcn8s-atonce':
        for pool, value in ATONCE_SCALES.items():
            fill = fills['scale_' + pool][0]
            assert fill.dtype == np.float32 and (fill == np.float32(value)).all(), pool


@pytest.mark.parametrize('stage', STAGES)
def test_fcn_in_float64_matches_module_to_double_precision(stage):
    proto = stage_net(stage, 'val')
    net = caffe.Net(proto, caffe.TEST)
    randomize(net, proto, seed=7)
    net.to(torch.float64)
    module = module_for(stage, net).double()
    data, label = random_inputs(seed=8)
    out = net.forward(data=data, label=label)
    net.backward()
    blobs = {}
    score = module(torch.from_numpy(data).double(), blobs)
    loss = softmax_loss(score, torch.from_numpy(label))
    loss.backward()

    tight = dict(rtol=1e-9, atol_scale=1e-11)
    assert net.blobs['score'].data.dtype == np.float64
    assert_blobs_match(net, blobs, **tight)
    assert math.isclose(float(np.asarray(out['loss']).reshape(())), loss.item(), rel_tol=1e-11)
    mults = lr_mults(proto)
    for layer, tensors in caffe_params(module).items():
        for i, (blob, tensor) in enumerate(zip(net.params[layer], tensors, strict=True)):
            expected = tensor.grad.numpy() if mults[layer][i] else np.zeros(tensor.shape)
            assert_close(blob.diff, expected, '%s[%d] diff' % (layer, i), **tight)


# -- deploy and train nets ----------------------------------------------------------

def test_deploy_net_with_saved_val_weights_gives_the_val_score(val_run, tmp_path):
    # the val net runs in TEST phase, where its Dropout layers are the identity
    stage = val_run['stage']
    path = str(tmp_path / 'val.caffemodel')
    val_run['net'].save(path)
    deploy = caffe.Net(stage_net(stage, 'deploy'), path, caffe.TEST)
    deploy.blobs['data'].reshape(*SHAPE)
    out = deploy.forward(data=val_run['data'])
    assert set(out) == {'score'}
    np.testing.assert_array_equal(out['score'], val_run['net'].blobs['score'].data)


def test_deploy_net_sharing_val_weights_gives_the_val_score(val_run):
    net = val_run['net']
    deploy = caffe.Net(stage_net(val_run['stage'], 'deploy'), caffe.TEST)
    deploy.share_with(net)
    deploy.blobs['data'].reshape(*SHAPE)
    score = deploy.forward(data=val_run['data'])['score'].copy()
    np.testing.assert_array_equal(score, net.blobs['score'].data)
    # shared storage: a write through the val net shows in the deploy net
    bias = net.params['score_fr'][1]
    saved = bias.data.copy()
    bias.data[...] += 1
    try:
        np.testing.assert_array_equal(deploy.params['score_fr'][1].data, saved + 1)
        shifted = deploy.forward(data=val_run['data'])['score']
        assert not np.array_equal(shifted, score)
    finally:
        bias.data[...] = saved


def test_caffemodel_written_by_save_loads_back_bit_identically(val_run, tmp_path):
    net, proto = val_run['net'], val_run['proto']
    path = str(tmp_path / 'w.caffemodel')
    net.save(path)
    fresh = caffe.Net(proto, caffe.TEST)
    fresh.copy_from(path)
    assert list(fresh.params) == list(net.params)
    for layer, blobs in net.params.items():
        assert len(fresh.params[layer]) == len(blobs)
        for a, b in zip(fresh.params[layer], blobs):
            assert a.data.dtype == b.data.dtype
            np.testing.assert_array_equal(a.data, b.data, err_msg=layer)


def test_train_net_in_train_phase_matches_module_with_the_same_dropout_masks():
    """TRAIN phase: Dropout scales kept units by 2; recover the net's masks from fc6/fc7."""
    stage = 'fcn8s'
    proto = stage_net(stage, 'train')
    net = caffe.Net(proto, caffe.TRAIN)
    randomize(net, proto, seed=3)
    module = module_for(stage, net)
    data, label = random_inputs(seed=4)
    out = net.forward(data=data, label=label)
    net.backward()

    # fc6 / fc7 hold the dropped-out values (ReLU and Dropout run in place)
    masks = {name: torch.from_numpy(net.blobs[name].data != 0) for name in ('fc6', 'fc7')}
    module.train()
    module.drop6 = FixedDropout(masks['fc6'])
    module.drop7 = FixedDropout(masks['fc7'])
    blobs = {}
    score = module(torch.from_numpy(data), blobs)
    loss = softmax_loss(score, torch.from_numpy(label))
    loss.backward()

    for drop in (module.drop6, module.drop7):
        positive = drop.seen > 0
        assert positive.sum() > 100
        kept = drop.keep[positive].float().mean()
        assert 0.4 < kept < 0.6, 'Dropout 0.5 kept %.2f of the units' % kept

    assert_blobs_match(net, blobs)
    assert math.isclose(float(np.asarray(out['loss']).reshape(())), loss.item(), rel_tol=1e-5)
    mults = lr_mults(proto)
    for layer, tensors in caffe_params(module).items():
        for i, (blob, tensor) in enumerate(zip(net.params[layer], tensors, strict=True)):
            if mults[layer][i]:
                assert_close(blob.diff, tensor.grad.numpy(), '%s[%d] diff' % (layer, i))


class FixedDropout(torch.nn.Module):
    """Dropout with a given keep mask: kept units scaled by 1 / (1 - 0.5)."""

    def __init__(self, keep):
        super().__init__()
        self.keep = keep

    def forward(self, x):
        # where the ReLU output is 0 the net's blob is 0 whatever the mask said
        self.seen = x.detach()
        return torch.where(self.keep, x * 2.0, torch.zeros_like(x))


def test_param_diffs_accumulate_over_two_backward_passes(val_run):
    net, proto, module = val_run['net'], val_run['proto'], val_run['module']
    before = {layer: [b.diff.copy() for b in blobs] for layer, blobs in net.params.items()}
    net.forward(data=val_run['data'], label=val_run['label'])
    net.backward()
    after = {layer: [b.diff.copy() for b in blobs] for layer, blobs in net.params.items()}
    for layer, diffs in before.items():  # leave the fixture as it was
        for blob, diff in zip(net.params[layer], diffs, strict=True):
            blob.diff[...] = diff
    mults = lr_mults(proto)
    for layer, tensors in caffe_params(module).items():
        for i, tensor in enumerate(tensors):
            expected = 2 * tensor.grad.numpy() if mults[layer][i] else 0 * tensor.grad.numpy()
            assert_close(after[layer][i], expected, 'twice %s[%d] diff' % (layer, i))


# -- the VGG16 classifier -------------------------------------------------------------

def test_vgg16_classifier_fc8_and_prob_equal_the_modules():
    proto = vgg.classifier(shape=(1, 3, 224, 224), classes=10, width=WIDTH)
    net = caffe.Net(proto, caffe.TEST)
    randomize(net, proto, seed=5)
    module = VGG16(classes=10, width=WIDTH).eval()
    load_from_net(module, net)
    data = np.random.default_rng(6).normal(0, 50, (1, 3, 224, 224)).astype(np.float32)

    out = net.forward(data=data)
    blobs = {}
    fc8 = module(torch.from_numpy(data), blobs)
    assert_blobs_match(net, blobs)
    assert fc8.abs().max() > 1e-3
    assert_close(out['prob'], torch.softmax(fc8, 1).detach().numpy(), 'prob')
    np.testing.assert_allclose(out['prob'].sum(1), 1, rtol=1e-6)
