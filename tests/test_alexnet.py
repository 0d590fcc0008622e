"""FCN-AlexNet (voc-fcn-alexnet/) and its ILSVRC source, CaffeNet (ilsvrc-nets/).

The expected tables are written from the reference's committed
voc-fcn-alexnet/train.prototxt and val.prototxt (shelhamer/fcn.berkeleyvision.org,
the version with ``normalize: true`` and ``module: "voc_layers"``) and from Caffe's
models/bvlc_reference_caffenet/deploy.prototxt; they do not use ``nets/``. The
numerical checks run a 1/16-wide variant against torch code written here, on a
tiny generated SBD / VOC tree.
"""
import os
import runpy

import numpy as np
import pytest
import scipy.io
import torch
import torch.nn.functional as F
from PIL import Image

import score
import surgery
import torchcaffe as caffe
from torchcaffe import caffe_pb2, io
from nets import alexnet, fcn, voc, write
from test_nets import LEARNED, assert_layers, fields, layer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FOLDER = os.path.join(ROOT, 'voc-fcn-alexnet')
WIDTH = 1 / 16


# ------------------------------------------------------------------------ the reference

LRN = {'local_size': 5, 'alpha': 0.0001, 'beta': 0.75}
MEAN = '(104.00699, 116.66877, 122.67892)'
DATA = {
    'train': layer('data', 'Python', [], ['data', 'label'], python_param={
        'module': 'voc_layers', 'layer': 'SBDDSegDataLayer',
        'param_str': "{'sbdd_dir': '../data/sbdd/dataset', 'seed': 1337, 'split': 'train', "
                     "'mean': %s}" % MEAN}),
    'val': layer('data', 'Python', [], ['data', 'label'], python_param={
        'module': 'voc_layers', 'layer': 'VOCSegDataLayer',
        'param_str': "{'voc_dir': '../data/pascal/VOC2011', 'seed': 1337, "
                     "'split': 'seg11valid', 'mean': %s}" % MEAN}),
    'deploy': layer('input', 'Input', [], ['data'],
                    input_param={'shape': [{'dim': [1, 3, 500, 500]}]}),
}


def conv(name, bottom, nout, ks, stride=1, pad=0, group=1):
    """The reference FCN-AlexNet writes every field, defaults included, and no param specs."""
    return layer(name, 'Convolution', [bottom], [name], convolution_param={
        'num_output': nout, 'pad': [pad], 'kernel_size': [ks], 'group': group,
        'stride': [stride]})


def relu(i, blob):
    return layer('relu%d' % i, 'ReLU', [blob], [blob])


def pool(i, bottom):
    return layer('pool%d' % i, 'Pooling', [bottom], ['pool%d' % i],
                 pooling_param={'pool': 'MAX', 'kernel_size': 3, 'stride': 2})


def norm(i):
    return layer('norm%d' % i, 'LRN', ['pool%d' % i], ['norm%d' % i], lrn_param=LRN)


def drop(i, blob):
    return layer('drop%d' % i, 'Dropout', [blob], [blob], dropout_param={'dropout_ratio': 0.5})


def expected_fcn(split, classes=21, w=lambda c: c):
    deploy = split == 'deploy'
    layers = [DATA[split],
              conv('conv1', 'data', w(96), 11, stride=4, pad=100), relu(1, 'conv1'),
              pool(1, 'conv1'), norm(1),
              conv('conv2', 'norm1', w(256), 5, pad=2, group=2), relu(2, 'conv2'),
              pool(2, 'conv2'), norm(2),
              conv('conv3', 'norm2', w(384), 3, pad=1), relu(3, 'conv3'),
              conv('conv4', 'conv3', w(384), 3, pad=1, group=2), relu(4, 'conv4'),
              conv('conv5', 'conv4', w(256), 3, pad=1, group=2), relu(5, 'conv5'),
              pool(5, 'conv5'),
              conv('fc6', 'pool5', w(4096), 6), relu(6, 'fc6')]
    layers += [] if deploy else [drop(6, 'fc6')]
    layers += [conv('fc7', 'fc6', w(4096), 1), relu(7, 'fc7')]
    layers += [] if deploy else [drop(7, 'fc7')]
    layers += [
        layer('score_fr', 'Convolution', ['fc7'], ['score_fr'], param=LEARNED,
              convolution_param={'num_output': classes, 'pad': [0], 'kernel_size': [1]}),
        layer('upscore', 'Deconvolution', ['score_fr'], ['upscore'], param=[{'lr_mult': 0.0}],
              convolution_param={'num_output': classes, 'bias_term': False,
                                 'kernel_size': [63], 'stride': [32]}),
        layer('score', 'Crop', ['upscore', 'data'], ['score'],
              crop_param={'axis': 2, 'offset': [18]})]
    if not deploy:
        layers.append(layer('loss', 'SoftmaxWithLoss', ['score', 'label'], ['loss'],
                            loss_param={'ignore_label': 255, 'normalize': True}))
    return layers


# ------------------------------------------------------------------------ the files

def test_regenerated_prototxts_equal_the_committed_files(tmp_path):
    script = runpy.run_path(os.path.join(FOLDER, 'net.py'))
    assert script['HERE'] == FOLDER
    script['main'](str(tmp_path))
    names = ['deploy.prototxt', 'train.prototxt', 'val.prototxt']
    assert sorted(os.listdir(tmp_path)) == names
    for name in names:
        with open(os.path.join(FOLDER, name), 'rb') as f:
            assert (tmp_path / name).read_bytes() == f.read(), '%s is stale' % name


@pytest.mark.parametrize('split', ['train', 'val', 'deploy'])
def test_net_matches_the_reference_layer_for_layer(split):
    net = io.read_net_prototxt(os.path.join(FOLDER, split + '.prototxt'), upgrade=False)
    assert list(fields(net)) == ['layer']
    assert_layers(net, expected_fcn(split))


def test_upscore_kernel_63_is_what_makes_the_crop_offset_whole():
    assert alexnet.UPSCORE_KERNEL == 63
    with pytest.raises(caffe.errors.CoordMapError, match='18.5'):
        fcn.deploy('fcn32s', trunk=alexnet.fcn_trunk, kernel=64)


def test_narrow_variant_changes_only_widths():
    protos = alexnet.stage_nets(classes=5, width=WIDTH)
    for split in ('train', 'val', 'deploy'):
        assert_layers(protos[split], expected_fcn(split, 5, lambda c: c // 16))


def test_caffenet_classifier_is_caffes_reference_deploy_net_upgraded():
    net = io.read_net_prototxt(os.path.join(ROOT, 'ilsvrc-nets', 'caffenet-deploy.prototxt'),
                               upgrade=False)
    assert net.name == 'CaffeNet'

    def cconv(name, bottom, nout, ks, **extra):
        return layer(name, 'Convolution', [bottom], [name], convolution_param=dict(
            {'num_output': nout, 'kernel_size': [ks]},
            **{k: [v] if k != 'group' else v for k, v in extra.items()}))

    def ip(i, bottom, nout):
        return layer('fc%d' % i, 'InnerProduct', [bottom], ['fc%d' % i],
                     inner_product_param={'num_output': nout})

    expected = [
        layer('input', 'Input', [], ['data'], input_param={'shape': [{'dim': [10, 3, 227, 227]}]}),
        cconv('conv1', 'data', 96, 11, stride=4), relu(1, 'conv1'), pool(1, 'conv1'), norm(1),
        cconv('conv2', 'norm1', 256, 5, pad=2, group=2), relu(2, 'conv2'), pool(2, 'conv2'),
        norm(2),
        cconv('conv3', 'norm2', 384, 3, pad=1), relu(3, 'conv3'),
        cconv('conv4', 'conv3', 384, 3, pad=1, group=2), relu(4, 'conv4'),
        cconv('conv5', 'conv4', 256, 3, pad=1, group=2), relu(5, 'conv5'), pool(5, 'conv5'),
        ip(6, 'pool5', 4096), relu(6, 'fc6'), drop(6, 'fc6'),
        ip(7, 'fc6', 4096), relu(7, 'fc7'), drop(7, 'fc7'),
        ip(8, 'fc7', 1000), layer('prob', 'Softmax', ['fc8'], ['prob'])]
    assert_layers(net, expected)
    # on its 227 x 227 crops pool5 is 6 x 6: what fc6's 6 x 6 convolution replaces
    shapes = caffe.Net(alexnet.classifier(shape=(1, 3, 227, 227), width=WIDTH), caffe.TEST)
    assert shapes.blobs['pool5'].data.shape == (1, 16, 6, 6)


def test_solver_has_the_references_values_and_comments():
    path = os.path.join(FOLDER, 'solver.prototxt')
    assert fields(io.read_solver_prototxt(path)) == {
        'train_net': 'train.prototxt', 'test_net': ['val.prototxt'], 'test_iter': [736],
        'test_interval': 999999999, 'display': 20, 'average_loss': 20, 'lr_policy': 'fixed',
        'base_lr': 1e-4, 'momentum': 0.9, 'iter_size': 20, 'max_iter': 100000,
        'weight_decay': 0.0005, 'snapshot': 4000, 'snapshot_prefix': 'snapshot/train',
        'test_initialization': False}
    lines = open(path).read().splitlines()
    for comment, setting in [('# lr for normalized softmax', 'base_lr:'),
                             ('# standard momentum', 'momentum:'),
                             ('# gradient accumulation', 'iter_size:')]:
        assert lines[lines.index(comment) + 1].startswith(setting)


def test_weights_urls_and_starting_point():
    with open(os.path.join(FOLDER, 'caffemodel-url')) as f:
        assert f.read() == 'http://dl.caffe.berkeleyvision.org/fcn-alexnet-pascal.caffemodel\n'
    source = surgery.SOURCES['alexnet-fcn']
    assert source.url == 'http://dl.caffe.berkeleyvision.org/bvlc_reference_caffenet.caffemodel'
    assert os.path.basename(source.out) == 'alexnet-fcn.caffemodel'
    script = runpy.run_path(os.path.join(FOLDER, 'solve.py'))
    assert script['WEIGHTS'] == '../ilsvrc-nets/alexnet-fcn.caffemodel'
    assert os.path.abspath(os.path.join(FOLDER, script['WEIGHTS'])) == source.out


# ------------------------------------------------------------------------ by hand

def lrn_by_hand(x, size=5, alpha=1e-4, beta=0.75, k=1.0):
    """Caffe's ACROSS_CHANNELS LRN, one channel at a time, in float64."""
    x = np.asarray(x, np.float64)
    out = np.empty_like(x)
    half = size // 2
    for c in range(x.shape[1]):
        window = x[:, max(0, c - half):c + half + 1]
        out[:, c] = x[:, c] / (k + alpha / size * (window ** 2).sum(1)) ** beta
    return out


def grouped_conv(x, w, b, stride, pad, group):
    """A grouped convolution as Caffe defines it: each group sees its share of channels."""
    xs, ws, bs = x.chunk(group, 1), w.chunk(group, 0), b.chunk(group, 0)
    return torch.cat([F.conv2d(xi, wi, bi, stride, pad)
                      for xi, wi, bi in zip(xs, ws, bs, strict=True)], 1)


def max_pool(x):
    # Caffe's output size rounds up; with no padding that is torch's ceil_mode
    return F.max_pool2d(x, 3, 2, ceil_mode=True)


def fcn_alexnet_by_hand(x, p):
    """FCN-AlexNet's deploy forward from its parameters ``p`` (name -> list of tensors)."""
    blobs = {}
    h = F.relu(grouped_conv(x, *p['conv1'], 4, 100, 1))
    blobs['pool1'] = h = max_pool(h)
    blobs['norm1'] = h = torch.from_numpy(lrn_by_hand(h)).float()
    blobs['conv2'] = h = F.relu(grouped_conv(h, *p['conv2'], 1, 2, 2))
    h = torch.from_numpy(lrn_by_hand(max_pool(h))).float()
    h = F.relu(grouped_conv(h, *p['conv3'], 1, 1, 1))
    h = F.relu(grouped_conv(h, *p['conv4'], 1, 1, 2))
    blobs['pool5'] = h = max_pool(F.relu(grouped_conv(h, *p['conv5'], 1, 1, 2)))
    h = F.relu(F.conv2d(h, *p['fc6']))
    h = F.relu(F.conv2d(h, *p['fc7']))
    h = F.conv2d(h, *p['score_fr'])
    h = F.conv_transpose2d(h, p['upscore'][0], stride=32)
    blobs['score'] = h[:, :, 18:18 + x.shape[2], 18:18 + x.shape[3]]
    return blobs


def test_lrn_by_hand_on_a_few_numbers():
    # one pixel, three channels: channel 0 sees 0..1, channel 1 sees 0..2 (window 5)
    x = np.array([3.0, 4.0, 12.0]).reshape(1, 3, 1, 1)
    y = lrn_by_hand(x, size=5, alpha=5.0, beta=0.5).ravel()
    np.testing.assert_allclose(y, [3 / np.sqrt(1 + 169), 4 / np.sqrt(1 + 169),
                                   12 / np.sqrt(1 + 169)])
    y = lrn_by_hand(x, size=3, alpha=3.0, beta=1.0).ravel()
    np.testing.assert_allclose(y, [3 / (1 + 25), 4 / (1 + 169), 12 / (1 + 160)])


def test_narrow_fcn_alexnet_forward_matches_torch_by_hand():
    net = caffe.Net(fcn.deploy('fcn32s', classes=5, width=WIDTH, shape=(1, 3, 64, 80),
                               **alexnet.FCN_ARGS), caffe.TEST)
    rng = np.random.default_rng(0)
    for name, blobs in net.params.items():
        for b in blobs:
            b.data[...] = rng.normal(0, 0.05, b.data.shape)
    surgery.interp(net, ['upscore'])
    x = rng.normal(0, 50, (1, 3, 64, 80)).astype(np.float32)
    net.blobs['data'].data[...] = x
    net.forward()
    params = {name: [torch.from_numpy(b.data.copy()) for b in blobs]
              for name, blobs in net.params.items()}
    want = fcn_alexnet_by_hand(torch.from_numpy(x), params)
    assert net.params['conv2'][0].data.shape == (16, 3, 5, 5)  # 6 inputs in 2 groups
    # LRN really acts here: it changes pool1 by far more than the tolerance
    assert np.abs(want['norm1'].numpy() - want['pool1'].numpy()).max() > 1
    for name, value in want.items():
        np.testing.assert_allclose(net.blobs[name].data, value.numpy(), rtol=2e-4,
                                   atol=2e-4 * float(value.abs().max()), err_msg=name)
    assert net.blobs['score'].data.shape == (1, 5, 64, 80)


# ------------------------------------------------------------------------ a tiny dataset

def write_tree(root, n_train=4, n_val=2, classes=5, seed=0):
    """SBD (img/, cls/*.mat, train.txt) and VOC2011 (JPEGImages/, SegmentationClass/,
    ImageSets/Segmentation/seg11valid.txt) trees under ``root``/data, as the model
    folders see them from ``root``/model."""
    rng = np.random.default_rng(seed)
    sbd = os.path.join(root, 'data', 'sbdd', 'dataset')
    vocd = os.path.join(root, 'data', 'pascal', 'VOC2011')
    for d in (os.path.join(sbd, 'img'), os.path.join(sbd, 'cls'),
              os.path.join(vocd, 'JPEGImages'), os.path.join(vocd, 'SegmentationClass'),
              os.path.join(vocd, 'ImageSets', 'Segmentation')):
        os.makedirs(d)

    def sample(h, w):
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        label = rng.integers(0, classes, (h, w)).astype(np.uint8)
        label[:2] = 255
        return image, label

    train = ['t%d' % i for i in range(n_train)]
    for i, sid in enumerate(train):
        image, label = sample(30 + i, 36)
        Image.fromarray(image).save(os.path.join(sbd, 'img', sid + '.jpg'), quality=95)
        scipy.io.savemat(os.path.join(sbd, 'cls', sid + '.mat'),
                         {'GTcls': {'Segmentation': label}})
    val = ['v%d' % i for i in range(n_val)]
    for i, sid in enumerate(val):
        image, label = sample(34, 28 + 3 * i)
        Image.fromarray(image).save(os.path.join(vocd, 'JPEGImages', sid + '.jpg'), quality=95)
        Image.fromarray(label, mode='L').save(os.path.join(vocd, 'SegmentationClass',
                                                           sid + '.png'))
    with open(os.path.join(sbd, 'train.txt'), 'w') as f:
        f.write('\n'.join(train) + '\n')
    with open(os.path.join(vocd, 'ImageSets', 'Segmentation', 'seg11valid.txt'), 'w') as f:
        f.write('\n'.join(val) + '\n')
    return train, val


SOLVER = '''train_net: "train.prototxt"
test_net: "val.prototxt"
test_iter: 2
test_interval: 999999999
display: 1
average_loss: 1
lr_policy: "fixed"
base_lr: 0.01
momentum: 0.9
weight_decay: 0
# gradient accumulation, as the reference's iter_size 20
iter_size: 2
max_iter: 10
snapshot: 0
snapshot_prefix: "snapshot/train"
test_initialization: false
'''


@pytest.fixture
def model(tmp_path):
    """A narrow FCN-AlexNet folder (5 classes; no dropout, so gradients are deterministic)."""
    write_tree(str(tmp_path))
    folder = tmp_path / 'model'
    nets = {split: fcn.fcn('fcn32s', lambda n, s=split: voc.python_data(n, s), 5, WIDTH,
                           dropout=False, **alexnet.FCN_ARGS)
            for split in (voc.TRAIN_SPLIT, voc.VAL_SPLIT)}
    write.write_nets({'train': nets['train'], 'val': nets['seg11valid']}, str(folder))
    (folder / 'solver.prototxt').write_text(SOLVER)
    return folder


def randomize(net, seed=1):
    rng = np.random.default_rng(seed)
    values = {}
    for name, blobs in net.params.items():
        for j, b in enumerate(blobs):
            b.data[...] = rng.normal(0, 0.05, b.data.shape)
            values[name, j] = b.data.copy()
    surgery.interp(net, ['upscore'])
    values['upscore', 0] = net.params['upscore'][0].data.copy()
    return values


def test_one_training_step_accumulates_iter_size_normalised_gradients(model, monkeypatch):
    monkeypatch.chdir(model)
    solver = caffe.SGDSolver('solver.prototxt')
    before = randomize(solver.net)
    # the same two images through a second net: its diffs add up over two backward passes
    ref = caffe.Net('train.prototxt', caffe.TRAIN)
    for (name, j), value in before.items():
        ref.params[name][j].data[...] = value
    losses = []
    for _ in range(2):
        losses.append(float(ref.forward()['loss']))
        ref.backward()
    solver.step(1)
    assert solver.iter == 1
    # seed 1337 over 4 images draws t2 then t1: two different images, two different losses
    assert ref.layers[0].indices[2] == 't2' and abs(losses[0] - losses[1]) > 1e-3
    # normalize: true -- a loss per labelled pixel, about log(5) for near-uniform scores
    assert 0.5 < np.mean(losses) < 5
    for name, j, mult in [('conv1', 0, 1), ('conv2', 0, 1), ('fc6', 1, 1),
                          ('score_fr', 0, 1), ('score_fr', 1, 2)]:
        # momentum history starts at zero: the first update is lr * lr_mult * diff / iter_size
        want = before[name, j] - 0.01 * mult * ref.params[name][j].diff / 2
        got = solver.net.params[name][j].data
        assert np.abs(got - before[name, j]).max() > 0, name
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-7, err_msg=name)
    np.testing.assert_array_equal(solver.net.params['upscore'][0].data, before['upscore', 0])


def test_scoring_pass_counts_every_labelled_pixel(model, monkeypatch):
    monkeypatch.chdir(model)
    net = caffe.Net('val.prototxt', caffe.TEST)
    randomize(net)
    ids = ['v0', 'v1']
    hist, loss = score.compute_hist(net, None, ids)
    vocd = model.parent / 'data' / 'pascal' / 'VOC2011' / 'SegmentationClass'
    labels = [np.array(Image.open(vocd / (i + '.png'))) for i in ids]
    assert hist.shape == (5, 5)
    assert hist.sum() == sum(int((l != 255).sum()) for l in labels)
    np.testing.assert_array_equal(hist.sum(1), np.bincount(
        np.concatenate([l[l != 255] for l in labels]), minlength=5))
    assert np.isfinite(loss) and loss > 0


# ------------------------------------------------------------------------ surgery

V1 = caffe_pb2.V1LayerParameter
V1_TYPES = {'Convolution': V1.CONVOLUTION, 'ReLU': V1.RELU, 'Pooling': V1.POOLING,
            'LRN': V1.LRN, 'InnerProduct': V1.INNER_PRODUCT, 'Dropout': V1.DROPOUT,
            'Softmax': V1.SOFTMAX}


def write_v1_caffemodel(proto, params, path):
    """``proto``'s layers in the old V1 form (type enums, legacy 4-D blob dims)."""
    net = caffe_pb2.NetParameter(name=proto.name)
    for l in proto.layer:
        if l.type == 'Input':
            continue
        v1 = net.layers.add(name=l.name, type=V1_TYPES[l.type], bottom=l.bottom, top=l.top)
        for array in params.get(l.name, []):
            blob = v1.blobs.add()
            blob.num, blob.channels, blob.height, blob.width = (1,) * (4 - array.ndim) + \
                array.shape
            blob.data.extend(array.ravel().tolist())
    with open(path, 'wb') as f:
        f.write(net.SerializeToString())


def test_alexnet_fcn_surgery_from_a_v1_caffenet(tmp_path, capsys):
    classifier = alexnet.classifier(shape=(1, 3, 227, 227), classes=10, width=WIDTH)
    paths = {k: str(tmp_path / v) for k, v in [('classifier', 'caffenet.prototxt'),
                                              ('fcn', 'fcn.prototxt'),
                                              ('weights', 'caffenet.caffemodel'),
                                              ('out', 'alexnet-fcn.caffemodel')]}
    io.write_prototxt(classifier, paths['classifier'])
    io.write_prototxt(fcn.deploy('fcn32s', classes=5, width=WIDTH, shape=(1, 3, 64, 64),
                                 **alexnet.FCN_ARGS), paths['fcn'])
    rng = np.random.default_rng(2)
    params = {name: [rng.normal(size=b.data.shape).astype(np.float32) for b in blobs]
              for name, blobs in caffe.Net(paths['classifier'], caffe.TEST).params.items()}
    write_v1_caffemodel(classifier, params, paths['weights'])
    raw = caffe_pb2.NetParameter.FromString(open(paths['weights'], 'rb').read())
    assert len(raw.layer) == 0 and V1.LRN in [l.type for l in raw.layers]

    surgery.main(['alexnet-fcn', '--weights', paths['weights'], '--out', paths['out'],
                  '--classifier', paths['classifier'], '--fcn', paths['fcn']])
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.startswith('wrote %s: 12 blobs copied; 2 coerced (fc6, fc7); dropped fc8;'
                           % paths['out'])
    net = caffe.Net(paths['fcn'], paths['out'], caffe.TEST)
    for name in ('conv1', 'conv2', 'conv5'):  # grouped weights copy as they are
        np.testing.assert_array_equal(net.params[name][0].data, params[name][0])
        np.testing.assert_array_equal(net.params[name][1].data, params[name][1])
    assert params['fc6'][0].shape == (256, 16 * 6 * 6)
    np.testing.assert_array_equal(net.params['fc6'][0].data,
                                  params['fc6'][0].reshape(256, 16, 6, 6))
    np.testing.assert_array_equal(net.params['fc7'][0].data[:, :, 0, 0], params['fc7'][0])
    assert not net.params['score_fr'][0].data.any()
    up = net.params['upscore'][0].data
    assert up.shape == (5, 5, 63, 63)
    np.testing.assert_array_equal(up[3, 3], surgery.upsample_filt(63).astype(np.float32))
    assert up[3, 3].max() == 1.0 and not up[3, 2].any()  # odd kernel: centre weight 1


def test_missing_caffenet_weights_say_where_to_download_them(tmp_path):
    missing = str(tmp_path / 'bvlc_reference_caffenet.caffemodel')
    with pytest.raises(SystemExit) as exc:
        surgery.main(['alexnet-fcn', '--weights', missing])
    message = str(exc.value)
    assert missing in message and 'CaffeNet' in message
    assert 'http://dl.caffe.berkeleyvision.org/bvlc_reference_caffenet.caffemodel' in message
