"""Whole Caffe-style models, of the kinds users bring, built and trained end to end.

Each net is written here as Caffe's examples write theirs (in-place BatchNorm /
Scale / ReLU, data layers over files the tests make, a solver.prototxt picked by
``type`` through ``caffe.get_solver``), at toy sizes:

1. ResNet-style: conv -> BatchNorm -> Scale -> ReLU in place, two residual blocks
   (identity and 1x1 projection shortcuts, Eltwise SUM), global AVE pooling, HDF5Data
   for TRAIN and TEST, Nesterov.
2. CIFAR-10-full-style: conv / pool / ReLU / LRN WITHIN_CHANNEL over a Data layer
   reading an LMDB that convert_imageset made from PNGs, mean_file from
   compute_image_mean, SGD.
3. MNIST-autoencoder-style: InnerProduct encoder / decoder with Sigmoid,
   SigmoidCrossEntropyLoss and a loss_weight 0 EuclideanLoss, MemoryData, AdaGrad.
4. Siamese: Slice of a paired input, two InnerProduct towers sharing params by name,
   ContrastiveLoss, SGD.
5. Sequence: Embed -> LSTM (with cont) -> InnerProduct (axis 2) -> SoftmaxWithLoss
   (axis 2), Input layers, AdaDelta.

Every task is separable or memorisable, so "the loss decreases" is a real check.
"""
import importlib
import math
import os
import re

import h5py
import numpy as np
import pytest
import torch
from google.protobuf import text_format
from PIL import Image

import torchcaffe
from torchcaffe import caffe_pb2
from torchcaffe.tools import compute_image_mean, convert_imageset

try:  # as users' scripts say it; torchcaffe's own name if a real Caffe comes first
    import caffe
    if caffe.Net is not torchcaffe.Net:
        caffe = torchcaffe
except ImportError:
    caffe = torchcaffe
draw = importlib.import_module(caffe.__name__ + '.draw')  # caffe.draw

f32 = np.float32


@pytest.fixture(autouse=True)
def cpu_mode():
    caffe.set_mode_cpu()
    yield
    caffe.set_mode_cpu()


def write(path, text):
    path = str(path)
    with open(path, 'w') as f:
        f.write(text)
    return path


def losses_of(solver, iters, blob='loss', feed=None):
    """The train net's ``blob`` at each of ``iters`` single steps (``feed(net, i)``
    sets the inputs of iteration i first)."""
    out = []
    for _ in range(iters):
        if feed is not None:
            feed(solver.net, solver.iter)
        solver.step(1)
        out.append(float(solver.net.blobs[blob].data))
    return out


def clearly_decreased(losses, factor=0.7, window=5):
    """The mean of the last ``window`` losses is below ``factor`` times the first's."""
    first, last = np.mean(losses[:window]), np.mean(losses[-window:])
    return np.all(np.isfinite(losses)) and last < factor * first


# ---- 1. ResNet-style ----

RESNET_CLASSES = 2


def conv_bn(name, bottom, num_output, kernel, stride=1, pad=0, relu=True):
    """Caffe's ResNet unit: Convolution (no bias), then BatchNorm, Scale and ReLU,
    all in place on the convolution's top (as in the MSRA ResNet prototxts)."""
    text = '''
layer { name: "%(n)s" type: "Convolution" bottom: "%(b)s" top: "%(n)s"
  param { lr_mult: 1 decay_mult: 1 }
  convolution_param { num_output: %(o)d kernel_size: %(k)d stride: %(s)d pad: %(p)d
    bias_term: false weight_filler { type: "msra" } } }
layer { name: "bn_%(n)s" type: "BatchNorm" bottom: "%(n)s" top: "%(n)s"
  param { lr_mult: 0 } param { lr_mult: 0 } param { lr_mult: 0 } }
layer { name: "scale_%(n)s" type: "Scale" bottom: "%(n)s" top: "%(n)s"
  scale_param { bias_term: true } }
''' % dict(n=name, b=bottom, o=num_output, k=kernel, s=stride, p=pad)
    if relu:
        text += 'layer { name: "%s_relu" type: "ReLU" bottom: "%s" top: "%s" }\n' % (
            name, name, name)
    return text


def resnet_prototxt(train_list, test_list):
    return ('name: "TinyResNet"\n'
            'layer { name: "data" type: "HDF5Data" top: "data" top: "label"\n'
            '  include { phase: TRAIN } hdf5_data_param { source: "%s" batch_size: 8 } }\n'
            'layer { name: "data" type: "HDF5Data" top: "data" top: "label"\n'
            '  include { phase: TEST } hdf5_data_param { source: "%s" batch_size: 8 } }\n'
            % (train_list, test_list)
            + conv_bn('conv1', 'data', 4, 3, pad=1)
            # block 2a: identity shortcut
            + conv_bn('res2a_branch2a', 'conv1', 4, 3, pad=1)
            + conv_bn('res2a_branch2b', 'res2a_branch2a', 4, 3, pad=1, relu=False)
            + 'layer { name: "res2a" type: "Eltwise" bottom: "conv1" bottom: "res2a_branch2b"\n'
              '  top: "res2a" eltwise_param { operation: SUM } }\n'
              'layer { name: "res2a_relu" type: "ReLU" bottom: "res2a" top: "res2a" }\n'
            # block 3a: 1x1 stride-2 projection shortcut
            + conv_bn('res3a_branch1', 'res2a', 8, 1, stride=2, relu=False)
            + conv_bn('res3a_branch2a', 'res2a', 8, 3, stride=2, pad=1)
            + conv_bn('res3a_branch2b', 'res3a_branch2a', 8, 3, pad=1, relu=False)
            + 'layer { name: "res3a" type: "Eltwise" bottom: "res3a_branch1"\n'
              '  bottom: "res3a_branch2b" top: "res3a" }\n'
              'layer { name: "res3a_relu" type: "ReLU" bottom: "res3a" top: "res3a" }\n'
              'layer { name: "pool5" type: "Pooling" bottom: "res3a" top: "pool5"\n'
              '  pooling_param { pool: AVE global_pooling: true } }\n'
              'layer { name: "fc2" type: "InnerProduct" bottom: "pool5" top: "fc2"\n'
              '  param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }\n'
              '  inner_product_param { num_output: %d weight_filler { type: "msra" }\n'
              '    bias_filler { type: "constant" value: 0 } } }\n'
              'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc2" bottom: "label"\n'
              '  top: "loss" }\n'
              'layer { name: "accuracy" type: "Accuracy" bottom: "fc2" bottom: "label"\n'
              '  top: "accuracy" include { phase: TEST } }\n' % RESNET_CLASSES)


def stripes(rng, n):
    """Separable 3 x 8 x 8 images: class 0 has bright rows 2 and 5, class 1 bright
    columns 2 and 5, both under Gaussian noise; labels alternate."""
    label = np.arange(n) % RESNET_CLASSES
    data = rng.normal(0, 0.5, (n, 3, 8, 8))
    data[label == 0, :, [[2], [5]], :] += 2.0
    data[label == 1, :, :, [[2], [5]]] += 2.0
    return data.astype(f32), label.astype(f32)


def write_h5_split(folder, name, files, rows, seed):
    """``files`` .h5 files of ``rows`` rows each, and the list file naming them."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(files):
        data, label = stripes(rng, rows)
        path = os.path.join(folder, '%s_%d.h5' % (name, i))
        with h5py.File(path, 'w') as h5:
            h5['data'] = data
            h5['label'] = label
        paths.append(path)
    return write(os.path.join(folder, name + '.txt'), '\n'.join(paths) + '\n')


@pytest.fixture
def resnet(tmp_path):
    """(solver file, net file) of the ResNet-style model: 2 x 12 training rows in
    batches of 8 (so batches straddle files and epochs), 8 test rows."""
    folder = str(tmp_path)
    net = write(tmp_path / 'train_val.prototxt', resnet_prototxt(
        write_h5_split(folder, 'train', 2, 12, seed=1),
        write_h5_split(folder, 'test', 1, 8, seed=2)))
    solver = write(tmp_path / 'solver.prototxt', '''
net: "%s"
type: "Nesterov"
test_iter: 1
test_interval: 1000
test_initialization: false
base_lr: 0.05
momentum: 0.9
weight_decay: 0.0001
lr_policy: "fixed"
display: 0
max_iter: 30
snapshot_prefix: "%s/resnet"
random_seed: 7
''' % (net, folder))
    return solver, net


def test_resnet_style_net_with_in_place_batchnorm_trains_on_hdf5(resnet):
    solver = caffe.get_solver(resnet[0])
    assert isinstance(solver, caffe.NesterovSolver)
    losses = losses_of(solver, 30)
    assert clearly_decreased(losses, factor=0.5), losses
    test = solver.test_nets[0]
    test.share_with(solver.net)
    out = test.forward()
    assert out['accuracy'] == 1.0  # separable held-out rows


def test_batchnorm_running_statistics_accumulate_in_train(resnet):
    solver = caffe.get_solver(resnet[0])
    before = [b.data.copy() for b in solver.net.params['bn_conv1']]
    assert all(not b.any() for b in before)
    solver.step(30)
    mean_sum, var_sum, factor = (b.data for b in solver.net.params['bn_conv1'])
    # factor = maf * factor + 1 at each TRAIN forward, maf = 0.999 by default
    expected = f32(0)
    for _ in range(30):
        expected = expected * f32(0.999) + f32(1)
    assert factor[0] == pytest.approx(expected, rel=1e-6)
    assert mean_sum.any() and (var_sum > 0).all()
    for name in solver.net.params:  # every BatchNorm saw the 30 TRAIN forwards
        if name.startswith('bn_'):
            assert solver.net.params[name][2].data[0] == factor[0], name
    # one more TRAIN forward, by hand: the conv's output, then the in-place bn on it
    saved = [b.data.astype(np.float64) for b in solver.net.params['bn_conv1']]
    solver.net.forward(end='conv1')
    x = solver.net.blobs['conv1'].data.astype(np.float64)
    solver.net.forward(start='bn_conv1', end='bn_conv1')
    m = x.size // x.shape[1]  # N * H * W values per channel
    mean, var = x.mean((0, 2, 3)), x.var((0, 2, 3))
    got = [b.data for b in solver.net.params['bn_conv1']]
    np.testing.assert_allclose(got[0], 0.999 * saved[0] + mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[1], 0.999 * saved[1] + var * m / (m - 1), rtol=1e-5)
    assert got[2][0] == pytest.approx(0.999 * saved[2][0] + 1, rel=1e-6)
    np.testing.assert_allclose(solver.net.blobs['conv1'].data,
                               (x - mean[:, None, None]) / np.sqrt(var[:, None, None] + 1e-5),
                               rtol=1e-4, atol=1e-5)


def test_test_phase_batchnorm_normalises_with_the_stored_statistics(resnet, tmp_path):
    solver = caffe.get_solver(resnet[0])
    solver.step(30)
    model, _ = solver.snapshot()
    mean_sum, var_sum, factor = (b.data.astype(np.float64)
                                 for b in solver.net.params['bn_res2a_branch2a'])
    net = caffe.Net(resnet[1], caffe.TEST, weights=model)
    # the in-place chain shares one blob: read it after the conv, then after bn
    net.forward(end='res2a_branch2a')
    x = net.blobs['res2a_branch2a'].data.astype(np.float64).copy()
    net.forward(start='bn_res2a_branch2a', end='bn_res2a_branch2a')
    y = net.blobs['res2a_branch2a'].data
    mean = (mean_sum / factor[0])[None, :, None, None]
    var = (var_sum / factor[0])[None, :, None, None]
    expected = (x - mean) / np.sqrt(var + 1e-5)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
    # ... which is not what the batch's own statistics give
    batch = (x - x.mean((0, 2, 3), keepdims=True)) / np.sqrt(x.var((0, 2, 3), keepdims=True)
                                                             + 1e-5)
    assert np.abs(y - batch).max() > 1e-2
    # and the TEST net leaves its statistics alone
    np.testing.assert_array_equal(net.params['bn_res2a_branch2a'][0].data,
                                  solver.net.params['bn_res2a_branch2a'][0].data)


def assert_resume_is_exact(solver_file, before, after):
    """``before`` steps, snapshot, a new solver restored from it, ``after`` steps:
    the same losses, weights (BatchNorm statistics included) and history as
    ``before + after`` steps of one solver."""
    straight = caffe.get_solver(solver_file)
    straight_losses = losses_of(straight, before + after)

    first = caffe.get_solver(solver_file)
    first_losses = losses_of(first, before)
    _, state = first.snapshot()
    del first
    resumed = caffe.get_solver(solver_file)
    resumed.restore(state)
    assert resumed.iter == before
    resumed_losses = losses_of(resumed, after)

    assert first_losses + resumed_losses == straight_losses
    for name, blobs in straight.net.params.items():
        for a, b in zip(blobs, resumed.net.params[name], strict=True):
            np.testing.assert_array_equal(a.data, b.data, err_msg=name)
    assert len(straight.history) == len(resumed.history)
    for a, b in zip(straight.history, resumed.history):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize('kind', ['Nesterov', 'Adam'])
def test_resnet_snapshot_restore_continue_equals_an_uninterrupted_run(resnet, kind):
    # 10 iterations of 8 rows stop a third of the way into the second file of an epoch:
    # the HDF5Data layer goes on from there (torchcaffe.resume_state)
    solver_file = resnet[0]
    if kind != 'Nesterov':
        text = open(solver_file).read().replace('type: "Nesterov"', 'type: "%s"' % kind)
        solver_file = write(solver_file.replace('.prototxt', '_%s.prototxt' % kind), text)
    assert_resume_is_exact(solver_file, 10, 20)


# ---- 2. CIFAR-10-full-style ----

CIFAR_CLASSES = 3
CIFAR_SCALE = 0.00390625


def cifar_prototxt(train_lmdb, test_lmdb, mean_file):
    """Caffe's cifar10_full_train_test layout at 12 x 12: three conv / pool / ReLU
    stages, LRN within channel after the first two, an InnerProduct classifier."""
    data = '''
layer { name: "cifar" type: "Data" top: "data" top: "label" include { phase: %s }
  transform_param { mean_file: "%s" scale: %r }
  data_param { source: "%s" batch_size: 8 backend: LMDB } }'''
    stage = '''
layer { name: "conv%(i)d" type: "Convolution" bottom: "%(b)s" top: "conv%(i)d"
  param { lr_mult: 1 } param { lr_mult: 2 }
  convolution_param { num_output: %(o)d pad: 2 kernel_size: 5 stride: 1
    weight_filler { type: "gaussian" std: %(std)r } bias_filler { type: "constant" } } }'''
    pool = '''
layer { name: "pool%(i)d" type: "Pooling" bottom: "conv%(i)d" top: "pool%(i)d"
  pooling_param { pool: %(kind)s kernel_size: 3 stride: 2 } }'''
    relu = '\nlayer { name: "relu%(i)d" type: "ReLU" bottom: "%(t)s" top: "%(t)s" }'
    norm = '''
layer { name: "norm%(i)d" type: "LRN" bottom: "pool%(i)d" top: "norm%(i)d"
  lrn_param { local_size: 3 alpha: 5e-05 beta: 0.75 norm_region: WITHIN_CHANNEL } }'''
    return ('name: "CIFAR10_full_tiny"'
            + data % ('TRAIN', mean_file, CIFAR_SCALE, train_lmdb)
            + data % ('TEST', mean_file, CIFAR_SCALE, test_lmdb)
            # conv1 -> pool1 (MAX) -> relu1 -> norm1, as cifar10_full pools before ReLU
            + stage % dict(i=1, b='data', o=8, std=0.3) + pool % dict(i=1, kind='MAX')
            + relu % dict(i=1, t='pool1') + norm % dict(i=1)
            + stage % dict(i=2, b='norm1', o=8, std=0.3) + relu % dict(i=2, t='conv2')
            + pool % dict(i=2, kind='AVE') + norm % dict(i=2)
            + stage % dict(i=3, b='norm2', o=8, std=0.3) + relu % dict(i=3, t='conv3')
            + pool % dict(i=3, kind='AVE') + '''
layer { name: "ip1" type: "InnerProduct" bottom: "pool3" top: "ip1"
  param { lr_mult: 1 decay_mult: 250 } param { lr_mult: 2 decay_mult: 0 }
  inner_product_param { num_output: %d
    weight_filler { type: "gaussian" std: 0.3 } bias_filler { type: "constant" } } }
layer { name: "accuracy" type: "Accuracy" bottom: "ip1" bottom: "label" top: "accuracy"
  include { phase: TEST } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip1" bottom: "label" top: "loss" }
''' % CIFAR_CLASSES)


def colour_images(folder, split, count, seed):
    """``count`` 12 x 12 RGB PNGs whose class is their brightest channel (R, G or B),
    and the list file ``<split>.txt``; returns the list and the RGB arrays."""
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(folder, split), exist_ok=True)
    lines, images = [], []
    for i in range(count):
        label = i % CIFAR_CLASSES
        rgb = rng.integers(0, 120, (12, 12, 3))
        rgb[:, :, label] += 120
        rgb = rgb.astype(np.uint8)
        name = '%s/%03d.png' % (split, i)
        Image.fromarray(rgb).save(os.path.join(folder, name))
        lines.append('%s %d' % (name, label))
        images.append(rgb)
    return write(os.path.join(folder, split + '.txt'), '\n'.join(lines) + '\n'), images


@pytest.fixture(scope='module')
def cifar(tmp_path_factory):
    """The CIFAR-style model's files: LMDBs made by convert_imageset, the mean by
    compute_image_mean, the net and an SGD solver; and the training images."""
    folder = str(tmp_path_factory.mktemp('cifar'))
    root = folder + '/'
    train_list, train_images = colour_images(folder, 'train', 24, seed=3)
    test_list, _ = colour_images(folder, 'test', 9, seed=4)
    train_db, test_db = os.path.join(folder, 'train_lmdb'), os.path.join(folder, 'test_lmdb')
    assert convert_imageset.main([root, train_list, train_db]) == 0
    assert convert_imageset.main([root, test_list, test_db]) == 0
    mean_file = os.path.join(folder, 'mean.binaryproto')
    assert compute_image_mean.main([train_db, mean_file]) == 0
    net = write(os.path.join(folder, 'cifar10_full_train_test.prototxt'),
                cifar_prototxt(train_db, test_db, mean_file))
    solver = write(os.path.join(folder, 'cifar10_full_solver.prototxt'), '''
# cifar10_full_solver's shape; 10 x its rate so that 24 iterations show learning
net: "%s"
test_iter: 1
test_interval: 1000
base_lr: 0.01
momentum: 0.9
weight_decay: 0.004
lr_policy: "fixed"
display: 0
max_iter: 24
random_seed: 3
solver_mode: CPU
snapshot_prefix: "%s/cifar10_full"
''' % (net, folder))
    return dict(net=net, solver=solver, mean=mean_file, root=root, list=train_list,
                images=np.stack(train_images))


def test_cifar_data_layer_batches_are_the_pngs_mean_subtracted_and_scaled(cifar):
    blob = caffe_pb2.BlobProto.FromString(open(cifar['mean'], 'rb').read())
    mean = np.asarray(blob.data, dtype=f32).reshape(3, 12, 12)
    # the PNGs read back by hand, in list order: RGB -> BGR, HWC -> CHW
    bgr, labels = [], []
    for line in open(cifar['list']):
        name, label = line.split()
        rgb = np.asarray(Image.open(os.path.join(cifar['root'], name)))
        bgr.append(rgb[:, :, ::-1].transpose(2, 0, 1).astype(f32))
        labels.append(int(label))
    np.testing.assert_array_equal(np.stack(bgr)[:, ::-1].transpose(0, 2, 3, 1), cifar['images'])
    np.testing.assert_allclose(mean, np.mean(bgr, axis=0), rtol=1e-6)
    net = caffe.Net(cifar['net'], caffe.TRAIN)
    for batch in range(4):  # 24 records, 8 a batch: the fourth batch wraps to the first
        net.forward(end='cifar')
        rows = [(8 * batch + k) % 24 for k in range(8)]
        expected = np.stack([(bgr[r] - mean) * f32(CIFAR_SCALE) for r in rows])
        np.testing.assert_array_equal(net.blobs['data'].data, expected)
        assert net.blobs['label'].data.tolist() == [labels[r] for r in rows]


def test_cifar_full_style_net_with_lrn_within_channel_trains_with_sgd(cifar):
    solver = caffe.get_solver(cifar['solver'])
    assert type(solver) is caffe.SGDSolver
    assert [l.type for l in solver.net.layers].count('LRN') == 2
    losses = losses_of(solver, 24)
    assert clearly_decreased(losses, factor=0.3), losses
    test = solver.test_nets[0]
    test.share_with(solver.net)
    assert test.forward()['accuracy'] >= 7 / 8  # 8 held-out images


def test_cifar_resume_goes_on_reading_the_lmdb_where_the_snapshot_was(cifar):
    # 3 batches an epoch: 4 iterations stop one batch into the second epoch
    assert_resume_is_exact(cifar['solver'], 4, 4)


# ---- 3. MNIST-autoencoder-style ----

AUTOENCODER = '''
name: "MNISTAutoencoderTiny"
layer { name: "data" type: "MemoryData" top: "data" top: "label"
  memory_data_param { batch_size: 8 channels: 1 height: 6 width: 6 } }
layer { name: "silence" type: "Silence" bottom: "label" }
layer { name: "flatdata" type: "Flatten" bottom: "data" top: "flatdata" }
layer { name: "encode1" type: "InnerProduct" bottom: "data" top: "encode1"
  param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 1 decay_mult: 0 }
  inner_product_param { num_output: 16
    weight_filler { type: "gaussian" std: 1 sparse: 6 } bias_filler { type: "constant" } } }
layer { name: "encode1neuron" type: "Sigmoid" bottom: "encode1" top: "encode1neuron" }
layer { name: "encode2" type: "InnerProduct" bottom: "encode1neuron" top: "encode2"
  param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 1 decay_mult: 0 }
  inner_product_param { num_output: 4
    weight_filler { type: "gaussian" std: 1 sparse: 6 } bias_filler { type: "constant" } } }
layer { name: "decode2" type: "InnerProduct" bottom: "encode2" top: "decode2"
  param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 1 decay_mult: 0 }
  inner_product_param { num_output: 16
    weight_filler { type: "gaussian" std: 1 sparse: 4 } bias_filler { type: "constant" } } }
layer { name: "decode2neuron" type: "Sigmoid" bottom: "decode2" top: "decode2neuron" }
layer { name: "decode1" type: "InnerProduct" bottom: "decode2neuron" top: "decode1"
  param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 1 decay_mult: 0 }
  inner_product_param { num_output: 36
    weight_filler { type: "gaussian" std: 1 sparse: 6 } bias_filler { type: "constant" } } }
layer { name: "loss" type: "SigmoidCrossEntropyLoss" bottom: "decode1" bottom: "flatdata"
  top: "cross_entropy_loss" loss_weight: 1 }
layer { name: "decode1neuron" type: "Sigmoid" bottom: "decode1" top: "decode1neuron" }
layer { name: "loss" type: "EuclideanLoss" bottom: "decode1neuron" bottom: "flatdata"
  top: "l2_error" loss_weight: 0 }
'''


def autoencoder_inputs():
    """8 binary 6 x 6 'digits' (a bar, its transpose, crosses ...) and zero labels."""
    rng = np.random.default_rng(21)
    data = (rng.random((8, 1, 6, 6)) < 0.3).astype(f32)
    data[0, 0, 2, :] = data[1, 0, :, 2] = 1
    return data, np.zeros((8, 1, 1, 1), f32)


@pytest.fixture
def autoencoder(tmp_path):
    net = write(tmp_path / 'mnist_autoencoder.prototxt', AUTOENCODER)
    solver = write(tmp_path / 'mnist_autoencoder_solver_adagrad.prototxt', '''
net: "%s"
type: "AdaGrad"
base_lr: 0.1  # 10 x the example's, for a 40-iteration test
delta: 1e-8
lr_policy: "fixed"
weight_decay: 0.0005
display: 0
max_iter: 40
random_seed: 5
''' % net)
    return solver, net


def test_autoencoder_trains_on_the_cross_entropy_and_reports_the_zero_weight_l2(autoencoder):
    solver = caffe.get_solver(autoencoder[0])
    assert isinstance(solver, caffe.AdaGradSolver)
    data, labels = autoencoder_inputs()
    solver.net.set_input_arrays(data, labels)
    cross_entropy, l2 = [], []
    for _ in range(40):
        solver.step(1)
        cross_entropy.append(float(solver.net.blobs['cross_entropy_loss'].data))
        l2.append(float(solver.net.blobs['l2_error'].data))
    assert clearly_decreased(cross_entropy, factor=0.8), cross_entropy
    assert clearly_decreased(l2, factor=0.8), l2  # computed, though not trained on
    # the solver's loss is the weighted sum: the cross-entropy alone
    assert solver.smoothed_loss == pytest.approx(cross_entropy[-1], rel=1e-6)


def test_autoencoder_reconstruction_gradient_comes_from_the_cross_entropy_alone(autoencoder):
    # SigmoidCrossEntropyLoss normalises by the batch (its BATCH_SIZE default), and the
    # loss_weight 0 EuclideanLoss sends nothing back through its Sigmoid.
    net = caffe.Net(autoencoder[1], caffe.TRAIN)
    data, labels = autoencoder_inputs()
    net.set_input_arrays(data, labels)
    net.forward()
    net.backward()
    x = net.blobs['decode1'].data.astype(np.float64)
    target = data.reshape(8, 36).astype(np.float64)
    sigmoid = 1 / (1 + np.exp(-x))
    np.testing.assert_allclose(net.blobs['decode1'].diff, (sigmoid - target) / 8,
                               rtol=1e-5, atol=1e-7)
    expected_ce = -np.sum(target * np.log(sigmoid) + (1 - target) * np.log(1 - sigmoid)) / 8
    assert float(net.blobs['cross_entropy_loss'].data) == pytest.approx(expected_ce, rel=1e-5)
    expected_l2 = np.sum((sigmoid - target) ** 2) / 2 / 8
    assert float(net.blobs['l2_error'].data) == pytest.approx(expected_l2, rel=1e-5)
    assert net.blob_loss_weights['l2_error'] == 0
    assert not net.blobs['decode1neuron'].diff.any()


# ---- 4. Siamese ----

def siamese_prototxt(shared=True):
    """mnist_siamese_train_test's layout on 4 x 4 'images': pair_data sliced into the
    two inputs, two towers ip1 -> ReLU -> ip2 (feat), ContrastiveLoss on the pair.
    ``shared`` names the params so that both towers use one set (Caffe's way)."""
    def param(name):
        return 'param { name: "%s" lr_mult: 1 }' % name if shared else 'param { lr_mult: 1 }'

    def tower(suffix, bottom, top):
        return '''
layer { name: "ip1%(s)s" type: "InnerProduct" bottom: "%(b)s" top: "ip1%(s)s"
  %(w1)s %(b1)s inner_product_param { num_output: 8
    weight_filler { type: "xavier" } bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu1%(s)s" type: "ReLU" bottom: "ip1%(s)s" top: "ip1%(s)s" }
layer { name: "ip2%(s)s" type: "InnerProduct" bottom: "ip1%(s)s" top: "%(t)s"
  %(w2)s %(b2)s inner_product_param { num_output: 2
    weight_filler { type: "xavier" } bias_filler { type: "constant" } } }
''' % dict(s=suffix, b=bottom, t=top, w1=param('ip1_w'), b1=param('ip1_b'),
           w2=param('ip2_w'), b2=param('ip2_b'))

    return ('''name: "siamese_tiny"
layer { name: "pair_data" type: "Input" top: "pair_data" top: "sim"
  input_param { shape { dim: 16 dim: 2 dim: 4 dim: 4 } shape { dim: 16 } } }
layer { name: "slice_pair" type: "Slice" bottom: "pair_data" top: "data" top: "data_p"
  slice_param { slice_dim: 1 slice_point: 1 } }'''
            + tower('', 'data', 'feat') + tower('_p', 'data_p', 'feat_p') + '''
layer { name: "loss" type: "ContrastiveLoss" bottom: "feat" bottom: "feat_p" bottom: "sim"
  top: "loss" contrastive_loss_param { margin: 1 } }
''')


def siamese_pairs():
    """16 pairs of 4 x 4 images drawn around 4 prototypes; sim = same prototype."""
    rng = np.random.default_rng(8)
    prototypes = rng.normal(0, 1, (4, 4, 4))
    i = np.arange(16)
    first = i % 4
    second = (first + np.where(i % 2 == 0, 0, 1 + (i // 2) % 3)) % 4  # odd i: another one
    pairs = np.stack([prototypes[first], prototypes[second]], axis=1)
    pairs += rng.normal(0, 0.1, pairs.shape)
    return pairs.astype(f32), (first == second).astype(f32)


def siamese_net(tmp_path, shared, seed=4):
    path = write(tmp_path / ('siamese_%s.prototxt' % shared), siamese_prototxt(shared))
    caffe.set_random_seed(seed)
    net = caffe.Net(path, caffe.TRAIN)
    pairs, sim = siamese_pairs()
    net.blobs['pair_data'].data[...] = pairs
    net.blobs['sim'].data[...] = sim
    return net


def test_siamese_towers_share_one_set_of_params_by_name(tmp_path):
    net = siamese_net(tmp_path, shared=True)
    assert len(net.learnable_params) == 4  # ip1_w, ip1_b, ip2_w, ip2_b once each
    net.params['ip1'][0].data[0, 0] = 3.0
    assert net.params['ip1_p'][0].data[0, 0] == 3.0
    pairs, sim = siamese_pairs()
    assert sim.sum() == 8  # as many similar pairs as dissimilar ones


def test_siamese_shared_param_diff_is_the_sum_of_both_towers_diffs(tmp_path):
    shared = siamese_net(tmp_path, shared=True)
    unshared = siamese_net(tmp_path, shared=False)
    for name in ('ip1', 'ip2'):
        for k in range(2):
            for twin in (name, name + '_p'):
                unshared.params[twin][k].data[...] = shared.params[name][k].data
    for net in (shared, unshared):
        net.forward()
        net.backward()
    assert float(shared.blobs['loss'].data) == float(unshared.blobs['loss'].data)
    for name in ('ip1', 'ip2'):
        for k in range(2):
            towers = unshared.params[name][k].diff + unshared.params[name + '_p'][k].diff
            assert np.abs(unshared.params[name + '_p'][k].diff).max() > 0
            np.testing.assert_allclose(shared.params[name][k].diff, towers,
                                       rtol=1e-5, atol=1e-7, err_msg='%s %d' % (name, k))
            np.testing.assert_array_equal(shared.params[name + '_p'][k].diff,
                                          shared.params[name][k].diff)


def test_siamese_shared_weight_gradient_matches_a_float64_finite_difference(tmp_path):
    net = siamese_net(tmp_path, shared=True).to(torch.float64)
    net.forward()
    net.backward()
    weight = net.params['ip1'][0]
    for index in [(0, 0), (3, 9), (7, 15)]:
        analytic = weight.diff[index]
        original = weight.data[index]
        h = 1e-6
        weight.data[index] = original + h
        plus = float(net.forward()['loss'])
        weight.data[index] = original - h
        minus = float(net.forward()['loss'])
        weight.data[index] = original
        numeric = (plus - minus) / (2 * h)
        # Caffe's dissimilar-pair gradient divides by d + 1e-4, not d
        # (contrastive_loss_layer.cpp): about 1e-4 relative off the true derivative.
        assert analytic == pytest.approx(numeric, rel=1e-3), index
        assert analytic != 0


def test_siamese_net_learns_to_pull_similar_pairs_together(tmp_path):
    net = write(tmp_path / 'mnist_siamese_train_test.prototxt', siamese_prototxt())
    solver = write(tmp_path / 'mnist_siamese_solver.prototxt', '''
net: "%s"
base_lr: 0.05
momentum: 0.9
lr_policy: "inv"
gamma: 0.0001
power: 0.75
display: 0
max_iter: 40
random_seed: 4
''' % net)
    solver = caffe.get_solver(solver)
    pairs, sim = siamese_pairs()

    def feed(net, _):
        net.blobs['pair_data'].data[...] = pairs
        net.blobs['sim'].data[...] = sim
    losses = losses_of(solver, 40, feed=feed)
    assert clearly_decreased(losses, factor=0.5), losses
    feat, feat_p = solver.net.blobs['feat'].data, solver.net.blobs['feat_p'].data
    distance = np.linalg.norm(feat - feat_p, axis=1)
    assert distance[sim == 1].max() < distance[sim == 0].min()


# ---- 5. Sequence (LRCN-style) ----

VOCAB, STEPS, STREAMS = 6, 10, 2

SEQUENCE = '''
name: "lstm_language_model_tiny"
layer { name: "input_sentence" type: "Input" top: "input_sentence"
  input_param { shape { dim: %(t)d dim: %(n)d } } }
layer { name: "cont_sentence" type: "Input" top: "cont_sentence"
  input_param { shape { dim: %(t)d dim: %(n)d } } }
layer { name: "target_sentence" type: "Input" top: "target_sentence"
  input_param { shape { dim: %(t)d dim: %(n)d } } }
layer { name: "embedding" type: "Embed" bottom: "input_sentence"
  top: "embedded_input_sentence" param { lr_mult: 1 }
  embed_param { bias_term: false input_dim: %(v)d num_output: 8
    weight_filler { type: "uniform" min: -0.08 max: 0.08 } } }
layer { name: "lstm1" type: "LSTM" bottom: "embedded_input_sentence" bottom: "cont_sentence"
  top: "lstm1"
  recurrent_param { num_output: 16
    weight_filler { type: "uniform" min: -0.08 max: 0.08 }
    bias_filler { type: "constant" value: 0 } } }
layer { name: "predict" type: "InnerProduct" bottom: "lstm1" top: "predict"
  param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
  inner_product_param { num_output: %(v)d axis: 2
    weight_filler { type: "uniform" min: -0.08 max: 0.08 }
    bias_filler { type: "constant" value: 0 } } }
layer { name: "cross_entropy_loss" type: "SoftmaxWithLoss" bottom: "predict"
  bottom: "target_sentence" top: "cross_entropy_loss" loss_weight: 20
  loss_param { ignore_label: -1 } softmax_param { axis: 2 } }
''' % dict(t=STEPS, n=STREAMS, v=VOCAB)


def sentences():
    """Two streams of tokens, a new sequence at t = 0 (cont 0), each target the next
    token; stream 1 is shorter and padded (token 0, target -1: ignored), as LRCN pads."""
    stream0 = [0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4]
    stream1 = [5, 3, 1, 4, 2, 0, 5, 3, 1]
    tokens = np.zeros((STEPS, STREAMS), f32)
    target = np.full((STEPS, STREAMS), -1, f32)
    for n, stream in enumerate((stream0, stream1)):
        length = min(len(stream) - 1, STEPS)
        tokens[:length, n] = stream[:length]
        target[:length, n] = stream[1:length + 1]
    cont = np.ones((STEPS, STREAMS), f32)
    cont[0] = 0
    return dict(input_sentence=tokens, cont_sentence=cont, target_sentence=target)


@pytest.fixture
def sequence_solver(tmp_path):
    net = write(tmp_path / 'lstm_lm.prototxt', SEQUENCE)
    return write(tmp_path / 'lstm_lm_solver.prototxt', '''
net: "%s"
type: "AdaDelta"
base_lr: 5.0  # 5 x the AdaDelta examples' 1.0: a 30-iteration test
momentum: 0.95
delta: 1e-6
lr_policy: "fixed"
display: 0
max_iter: 30
random_seed: 9
''' % net)


def test_embed_lstm_language_model_memorises_its_sequence_with_adadelta(sequence_solver):
    solver = caffe.get_solver(sequence_solver)
    assert isinstance(solver, caffe.AdaDeltaSolver)
    inputs = sentences()

    def feed(net, _):
        for name, value in inputs.items():
            net.blobs[name].data[...] = value
    losses = losses_of(solver, 30, blob='cross_entropy_loss', feed=feed)
    assert losses[0] == pytest.approx(math.log(VOCAB), abs=0.05)  # small uniform weights
    assert clearly_decreased(losses, factor=0.2), losses
    net = solver.net
    predict = net.blobs['predict'].data
    assert predict.shape == (STEPS, STREAMS, VOCAB)
    target = inputs['target_sentence']
    kept = target != -1
    np.testing.assert_array_equal(predict.argmax(axis=2)[kept], target[kept])
    # padded steps (target -1) send no gradient back; inputs as pycaffe's keywords
    net.forward(**inputs)
    net.backward()
    assert not net.blobs['predict'].diff[~kept].any()
    assert net.blobs['predict'].diff[kept].any()


# ---- 6. every model ----

MODELS = {
    'resnet': lambda: resnet_prototxt('train_h5.txt', 'test_h5.txt'),
    'cifar10_full': lambda: cifar_prototxt('train_lmdb', 'test_lmdb', 'mean.binaryproto'),
    'mnist_autoencoder': lambda: AUTOENCODER,
    'siamese': siamese_prototxt,
    'lstm_language_model': lambda: SEQUENCE,
}


@pytest.mark.parametrize('model', sorted(MODELS))
def test_every_layer_type_of_the_model_is_registered(model):
    proto = text_format.Parse(MODELS[model](), caffe_pb2.NetParameter())
    types = {layer.type for layer in proto.layer}
    assert types <= set(caffe.layer_type_list()), types - set(caffe.layer_type_list())


@pytest.mark.parametrize('model', sorted(MODELS))
def test_the_model_draws_every_layer_and_blob_of_each_phase(model):
    proto = text_format.Parse(MODELS[model](), caffe_pb2.NetParameter())
    for phase in (caffe.TRAIN, caffe.TEST):
        layers = [layer for layer in proto.layer if draw.layer_in_phase(layer, phase)]
        blobs = {b for layer in layers for b in list(layer.bottom) + list(layer.top)}
        graph = draw.get_pydot_graph(proto, 'TB', phase=phase)
        # in-place layers are nodes of their own; their blob is drawn once
        assert len(graph.get_nodes()) == len(layers) + len(blobs)
        assert len(graph.get_edges()) == sum(len(layer.bottom) + len(layer.top)
                                             for layer in layers)
    # Graphviz renders it: each TRAIN layer's "name (Type ...)" heads a text of the picture
    svg = draw.draw_net(proto, 'TB', 'svg', phase=caffe.TRAIN).decode()
    texts = set(re.findall(r'>([^<]*)</text>', svg))
    for layer in proto.layer:
        if draw.layer_in_phase(layer, caffe.TRAIN):
            label = '%s (%s' % (layer.name, layer.type)  # pooling adds " MAX)"
            assert any(t.startswith(label) for t in texts), label
