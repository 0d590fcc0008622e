"""The generated nets, pinned layer for layer against the FCN reference.

The expected tables below are written from the reference's committed prototxts
(shelhamer/fcn.berkeleyvision.org: voc-fcn{32,16,8}s and voc-fcn8s-atonce
train/val.prototxt, voc-fcn8s/deploy.prototxt) and the VGG16 gist's ILSVRC
deploy net; they do not use ``nets/`` to build expectations.
"""
import os
import runpy
import subprocess
import sys

import pytest

from torchcaffe import io

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGES = {'fcn32s': 'voc-fcn32s', 'fcn16s': 'voc-fcn16s', 'fcn8s': 'voc-fcn8s',
          'fcn8s-atonce': 'voc-fcn8s-atonce'}
SPLITS = ('train', 'val', 'deploy')


# -- reading protos as plain data ---------------------------------------------------

def fields(msg):
    """The fields set in ``msg`` as a dict: enums by name, float32 to 7 digits."""
    out = {}
    for fd, value in msg.ListFields():
        if fd.is_repeated:
            out[fd.name] = [_plain(fd, v) for v in value]
        else:
            out[fd.name] = _plain(fd, value)
    return out


def _plain(fd, value):
    if fd.type == fd.TYPE_MESSAGE:
        return fields(value)
    if fd.type == fd.TYPE_ENUM:
        return fd.enum_type.values_by_number[value].name
    if fd.type == fd.TYPE_FLOAT:
        return float('%.7g' % value)
    return value


def read_net(path):
    # no upgrade: the committed files must already be in the current format
    return io.read_net_prototxt(path, upgrade=False)


def committed(stage, split):
    return read_net(os.path.join(ROOT, STAGES[stage], split + '.prototxt'))


def assert_layers(net, expected):
    got = [fields(layer) for layer in net.layer]
    assert [g['name'] for g in got] == [e['name'] for e in expected]
    for g, e in zip(got, expected):
        assert g == e, 'layer %s' % e['name']


# -- the expected tables ------------------------------------------------------------

LEARNED = [{'lr_mult': 1.0, 'decay_mult': 1.0}, {'lr_mult': 2.0, 'decay_mult': 0.0}]
FIXED = [{'lr_mult': 0.0}]
FULL = {64: 64, 128: 128, 256: 256, 512: 512, 4096: 4096}


def layer(name, type_, bottom, top, **more):
    d = {'name': name, 'type': type_}
    if bottom:
        d['bottom'] = list(bottom)
    if top:
        d['top'] = list(top)
    d.update(more)
    return d


def conv(name, bottom, nout, ks=3, pad=1):
    return layer(name, 'Convolution', [bottom], [name], param=LEARNED,
                 convolution_param={'num_output': nout, 'pad': [pad],
                                    'kernel_size': [ks], 'stride': [1]})


def relu(name, blob):
    return layer(name, 'ReLU', [blob], [blob])


def pool(name, bottom):
    return layer(name, 'Pooling', [bottom], [name],
                 pooling_param={'pool': 'MAX', 'kernel_size': 2, 'stride': 2})


def drop(name, blob):
    return layer(name, 'Dropout', [blob], [blob], dropout_param={'dropout_ratio': 0.5})


def score(name, bottom, classes):
    return layer(name, 'Convolution', [bottom], [name], param=LEARNED,
                 convolution_param={'num_output': classes, 'pad': [0], 'kernel_size': [1]})


def up(name, bottom, classes, kernel, stride):
    return layer(name, 'Deconvolution', [bottom], [name], param=FIXED,
                 convolution_param={'num_output': classes, 'bias_term': False,
                                    'kernel_size': [kernel], 'stride': [stride]})


def crop(name, bottom, like, offset):
    return layer(name, 'Crop', [bottom, like], [name],
                 crop_param={'axis': 2, 'offset': [offset]})


def fuse(name, a, b):
    return layer(name, 'Eltwise', [a, b], [name], eltwise_param={'operation': 'SUM'})


def scale(name, bottom, value):
    return layer(name, 'Scale', [bottom], [name], param=FIXED,
                 scale_param={'filler': {'type': 'constant', 'value': value}})


def python_data(layer_name, param_str):
    return layer('data', 'Python', [], ['data', 'label'],
                 python_param={'module': 'voc_layers', 'layer': layer_name,
                               'param_str': param_str})


DATA = {
    'train': python_data(
        'SBDDSegDataLayer',
        "{'sbdd_dir': '../data/sbdd/dataset', 'seed': 1337, 'split': 'train', "
        "'mean': (104.00699, 116.66877, 122.67892)}"),
    'val': python_data(
        'VOCSegDataLayer',
        "{'voc_dir': '../data/pascal/VOC2011', 'seed': 1337, 'split': 'seg11valid', "
        "'mean': (104.00699, 116.66877, 122.67892)}"),
    'deploy': layer('input', 'Input', [], ['data'],
                    input_param={'shape': [{'dim': [1, 3, 500, 500]}]}),
}

LOSS = layer('loss', 'SoftmaxWithLoss', ['score', 'label'], ['loss'],
             loss_param={'ignore_label': 255, 'normalize': False})

VGG_BLOCKS = ((1, 2, 64), (2, 2, 128), (3, 3, 256), (4, 3, 512), (5, 3, 512))


def fcn_trunk(widths, dropout):
    """conv1_1 (pad 100) ... pool5, fc6 7x7, fc7 1x1, with drop6/drop7 if ``dropout``."""
    layers, bottom = [], 'data'
    for b, convs, nout in VGG_BLOCKS:
        for c in range(1, convs + 1):
            name = 'conv%d_%d' % (b, c)
            layers += [conv(name, bottom, widths[nout], pad=100 if b == c == 1 else 1),
                       relu('relu%d_%d' % (b, c), name)]
            bottom = name
        layers.append(pool('pool%d' % b, bottom))
        bottom = 'pool%d' % b
    layers += [conv('fc6', 'pool5', widths[4096], ks=7, pad=0), relu('relu6', 'fc6')]
    layers += [drop('drop6', 'fc6')] if dropout else []
    layers += [conv('fc7', 'fc6', widths[4096], ks=1, pad=0), relu('relu7', 'fc7')]
    layers += [drop('drop7', 'fc7')] if dropout else []
    return layers


def head(stage, c):
    """The reference's score / upsample / fuse layers; crop offsets 19; 5, 27; 5, 9, 31."""
    if stage == 'fcn32s':
        return [score('score_fr', 'fc7', c),
                up('upscore', 'score_fr', c, 64, 32),
                crop('score', 'upscore', 'data', 19)]
    if stage == 'fcn16s':
        return [score('score_fr', 'fc7', c),
                up('upscore2', 'score_fr', c, 4, 2),
                score('score_pool4', 'pool4', c),
                crop('score_pool4c', 'score_pool4', 'upscore2', 5),
                fuse('fuse_pool4', 'upscore2', 'score_pool4c'),
                up('upscore16', 'fuse_pool4', c, 32, 16),
                crop('score', 'upscore16', 'data', 27)]
    if stage == 'fcn8s':
        return [score('score_fr', 'fc7', c),
                up('upscore2', 'score_fr', c, 4, 2),
                score('score_pool4', 'pool4', c),
                crop('score_pool4c', 'score_pool4', 'upscore2', 5),
                fuse('fuse_pool4', 'upscore2', 'score_pool4c'),
                up('upscore_pool4', 'fuse_pool4', c, 4, 2),
                score('score_pool3', 'pool3', c),
                crop('score_pool3c', 'score_pool3', 'upscore_pool4', 9),
                fuse('fuse_pool3', 'upscore_pool4', 'score_pool3c'),
                up('upscore8', 'fuse_pool3', c, 16, 8),
                crop('score', 'upscore8', 'data', 31)]
    assert stage == 'fcn8s-atonce'
    return [score('score_fr', 'fc7', c),
            up('upscore2', 'score_fr', c, 4, 2),
            scale('scale_pool4', 'pool4', 0.01),
            score('score_pool4', 'scale_pool4', c),
            crop('score_pool4c', 'score_pool4', 'upscore2', 5),
            fuse('fuse_pool4', 'upscore2', 'score_pool4c'),
            up('upscore_pool4', 'fuse_pool4', c, 4, 2),
            scale('scale_pool3', 'pool3', 0.0001),
            score('score_pool3', 'scale_pool3', c),
            crop('score_pool3c', 'score_pool3', 'upscore_pool4', 9),
            fuse('fuse_pool3', 'upscore_pool4', 'score_pool3c'),
            up('upscore8', 'fuse_pool3', c, 16, 8),
            crop('score', 'upscore8', 'data', 31)]


def expected_net(stage, split, classes=21, widths=FULL):
    """Train and val keep the reference's Dropout layers; its deploy net has none."""
    deploy = split == 'deploy'
    return ([DATA[split]] + fcn_trunk(widths, dropout=not deploy) + head(stage, classes)
            + ([] if deploy else [LOSS]))


# -- committed files are what the scripts write -------------------------------------

NET_SCRIPTS = {folder: [s + '.prototxt' for s in SPLITS] for folder in STAGES.values()}
NET_SCRIPTS['ilsvrc-nets'] = ['vgg16-deploy.prototxt', 'caffenet-deploy.prototxt']
NET_SCRIPTS.update({'demo/' + stage: [s + '.prototxt' for s in SPLITS]
                    for stage in ('fcn32s', 'fcn16s', 'fcn8s')})


@pytest.mark.parametrize('folder', sorted(NET_SCRIPTS))
def test_regenerated_prototxts_equal_the_committed_files(folder, tmp_path):
    script = runpy.run_path(os.path.join(ROOT, folder, 'net.py'))
    assert script['HERE'] == os.path.join(ROOT, folder)  # default output: beside itself
    script['main'](str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == sorted(NET_SCRIPTS[folder])
    for name in NET_SCRIPTS[folder]:
        with open(os.path.join(ROOT, folder, name), 'rb') as f:
            want = f.read()
        assert (tmp_path / name).read_bytes() == want, '%s/%s is stale' % (folder, name)


def test_net_script_runs_from_any_working_directory(tmp_path):
    out = tmp_path / 'out'
    subprocess.run([sys.executable, os.path.join(ROOT, 'voc-fcn32s', 'net.py'), str(out)],
                   cwd=str(tmp_path), check=True, capture_output=True)
    assert sorted(os.listdir(out)) == ['deploy.prototxt', 'train.prototxt', 'val.prototxt']


# -- layer for layer against the reference ------------------------------------------

@pytest.mark.parametrize('split', SPLITS)
@pytest.mark.parametrize('stage', sorted(STAGES))
def test_net_matches_the_reference_layer_for_layer(stage, split):
    net = committed(stage, split)
    assert list(fields(net)) == ['layer']  # no name, no legacy input fields
    assert_layers(net, expected_net(stage, split))


@pytest.mark.parametrize('stage, offsets', [
    ('fcn32s', {'score': 19}),
    ('fcn16s', {'score_pool4c': 5, 'score': 27}),
    ('fcn8s', {'score_pool4c': 5, 'score_pool3c': 9, 'score': 31}),
    ('fcn8s-atonce', {'score_pool4c': 5, 'score_pool3c': 9, 'score': 31}),
])
def test_crop_offsets_are_the_references(stage, offsets):
    for split in SPLITS:
        crops = {l.name: (l.crop_param.axis, list(l.crop_param.offset))
                 for l in committed(stage, split).layer if l.type == 'Crop'}
        assert crops == {name: (2, [off]) for name, off in offsets.items()}


def test_data_layer_param_str_is_a_python_literal_with_the_reference_values():
    import ast
    train = ast.literal_eval(committed('fcn8s', 'train').layer[0].python_param.param_str)
    val = ast.literal_eval(committed('fcn8s', 'val').layer[0].python_param.param_str)
    assert list(train) == ['sbdd_dir', 'seed', 'split', 'mean']
    assert train['mean'] == (104.00699, 116.66877, 122.67892)
    assert (val['voc_dir'], val['split'], val['seed']) == ('../data/pascal/VOC2011',
                                                           'seg11valid', 1337)


def test_python_param_str_is_written_with_escaped_quotes_as_pycaffe_writes_it():
    with open(os.path.join(ROOT, 'voc-fcn32s', 'train.prototxt')) as f:
        text = f.read()
    assert ("param_str: \"{\\'sbdd_dir\\': \\'../data/sbdd/dataset\\', \\'seed\\': 1337, "
            "\\'split\\': \\'train\\', \\'mean\\': (104.00699, 116.66877, 122.67892)}\"") in text


def spatial_sizes(net, size):
    """Height (= width) of every blob of a deploy net on a size x size input,
    checking on the way that every Crop fits and every Eltwise sums equal sizes."""
    from torchcaffe import shapes
    blobs = {}
    for l in net.layer:
        b = [blobs[name] for name in l.bottom]
        if l.type == 'Input':
            out = size
        elif l.type in ('Convolution', 'Deconvolution'):
            p = l.convolution_param
            fn = shapes.conv_output_size if l.type == 'Convolution' else shapes.deconv_output_size
            out = fn(b[0], p.kernel_size[0], p.stride[0] if p.stride else 1,
                     p.pad[0] if p.pad else 0)
        elif l.type == 'Pooling':
            p = l.pooling_param
            out = shapes.pool_output_size(b[0], p.kernel_size, p.stride, p.pad)
        elif l.type == 'Crop':
            assert b[0] >= l.crop_param.offset[0] + b[1], (l.name, size, b)
            out = b[1]
        elif l.type == 'Eltwise':
            assert b[0] == b[1], (l.name, size, b)
            out = b[0]
        else:
            assert l.type in ('ReLU', 'Scale'), l.type
            out = b[0]
        blobs[l.top[0]] = out
    return blobs


@pytest.mark.parametrize('stage', sorted(STAGES))
def test_crops_fit_and_score_has_the_input_size_for_any_input(stage):
    net = committed(stage, 'deploy')
    for size in (1, 2, 31, 32, 33, 100, 224, 333, 500):
        assert spatial_sizes(net, size)['score'] == size
    at500 = spatial_sizes(net, 500)
    assert (at500['conv1_1'], at500['pool5'], at500['fc6']) == (698, 22, 16)


# -- the same code at other widths and class counts ---------------------------------

@pytest.mark.parametrize('stage', sorted(STAGES))
def test_narrow_variant_changes_only_widths(stage):
    from nets import voc
    narrow = {64: 16, 128: 32, 256: 64, 512: 128, 4096: 1024}
    protos = voc.stage_nets(stage, classes=5, width=0.25)
    assert list(protos) == list(SPLITS)
    for split in SPLITS:
        assert_layers(protos[split], expected_net(stage, split, classes=5, widths=narrow))


def test_unknown_stage_names_the_known_ones():
    from nets import fcn
    with pytest.raises(ValueError, match='fcn32s'):
        fcn.deploy('fcn4s')


# -- the ILSVRC classifier ----------------------------------------------------------

def test_vgg16_classifier_is_the_ilsvrc_deploy_net_upgraded():
    net = read_net(os.path.join(ROOT, 'ilsvrc-nets', 'vgg16-deploy.prototxt'))
    assert net.name == 'VGG_ILSVRC_16_layers'
    expected = [layer('input', 'Input', [], ['data'],
                      input_param={'shape': [{'dim': [10, 3, 224, 224]}]})]
    bottom = 'data'
    for b, convs, nout in VGG_BLOCKS:
        for c in range(1, convs + 1):
            name = 'conv%d_%d' % (b, c)
            expected += [layer(name, 'Convolution', [bottom], [name],
                               convolution_param={'num_output': nout, 'pad': [1],
                                                  'kernel_size': [3]}),
                         relu('relu%d_%d' % (b, c), name)]
            bottom = name
        expected.append(pool('pool%d' % b, bottom))
        bottom = 'pool%d' % b
    for i, (nout, bottom) in enumerate([(4096, 'pool5'), (4096, 'fc6'), (1000, 'fc7')], 6):
        name = 'fc%d' % i
        expected.append(layer(name, 'InnerProduct', [bottom], [name],
                              inner_product_param={'num_output': nout}))
        if i < 8:
            expected += [relu('relu%d' % i, name), drop('drop%d' % i, name)]
    expected.append(layer('prob', 'Softmax', ['fc8'], ['prob']))
    assert_layers(net, expected)


# -- solvers and weights ------------------------------------------------------------

SOLVER_COMMON = {
    'train_net': 'train.prototxt', 'test_net': ['val.prototxt'], 'test_iter': [736],
    'test_interval': 999999999, 'display': 20, 'average_loss': 20, 'lr_policy': 'fixed',
    'momentum': 0.99, 'iter_size': 1, 'weight_decay': 0.0005, 'snapshot': 4000,
    'snapshot_prefix': 'snapshot/train', 'test_initialization': False,
}


@pytest.mark.parametrize('stage, base_lr, max_iter', [
    ('fcn32s', 1e-10, 100000), ('fcn16s', 1e-12, 100000),
    ('fcn8s', 1e-14, 100000), ('fcn8s-atonce', 1e-10, 300000),
])
def test_solver_has_the_stage_values_and_says_why(stage, base_lr, max_iter):
    path = os.path.join(ROOT, STAGES[stage], 'solver.prototxt')
    with open(path) as f:
        text = f.read()
    solver = io.read_solver_prototxt(path)
    assert fields(solver) == dict(SOLVER_COMMON, base_lr=base_lr, max_iter=max_iter)
    lines = text.splitlines()
    for comment, setting in [('# lr for unnormalized softmax', 'base_lr:'),
                             ('# high momentum', 'momentum:'),
                             ("# make test net, but don't invoke it from the solver itself",
                              'test_interval:')]:
        assert lines[lines.index(comment) + 1].startswith(setting)


@pytest.mark.parametrize('folder, url', [
    ('voc-fcn32s', 'http://dl.caffe.berkeleyvision.org/fcn32s-heavy-pascal.caffemodel'),
    ('voc-fcn16s', 'http://dl.caffe.berkeleyvision.org/fcn16s-heavy-pascal.caffemodel'),
    ('voc-fcn8s', 'http://dl.caffe.berkeleyvision.org/fcn8s-heavy-pascal.caffemodel'),
    ('voc-fcn8s-atonce', 'http://dl.caffe.berkeleyvision.org/fcn8s-atonce-pascal.caffemodel'),
    ('ilsvrc-nets', 'http://www.robots.ox.ac.uk/~vgg/software/very_deep/caffe/'
                    'VGG_ILSVRC_16_layers.caffemodel'),
])
def test_caffemodel_url_names_the_published_weights(folder, url):
    with open(os.path.join(ROOT, folder, 'caffemodel-url')) as f:
        assert f.read().strip() == url
