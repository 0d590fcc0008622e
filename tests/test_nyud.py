"""NYUDv2: the four FCN-32s nets against the reference, the data layer on a generated
tree in the dataset's layout, training and scoring, and the surgeries that start the
color-D and late-fusion color-HHA nets.

The expected tables are written from the reference's committed
nyud-fcn32s-{color,hha,color-d,color-hha}/trainval.prototxt and test.prototxt
(shelhamer/fcn.berkeleyvision.org), not from ``nets/``.
"""
import os
import runpy

import numpy as np
import pytest
import scipy.io
from PIL import Image

import nyud_layers
import score
import surgery
import training
from nyud_layers import NYUDSegDataLayer
from test_nets import (FULL, assert_layers, conv, crop, drop, fcn_trunk, fields,
                       layer, pool, read_net, relu, score as score_layer, up)
from voc_layers import DataFileNotFoundError, DataLayerError
import torchcaffe as caffe

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = {'color': ['color', 'label'], 'hha': ['hha', 'label'],
          'color-d': ['color', 'depth', 'label'], 'color-hha': ['color', 'hha', 'label']}


# ------------------------------------------------------------------------ the nets

def data_layer(model, split):
    tops = MODELS[model]
    names = ['data', 'label'] if len(tops) == 2 else tops
    param_str = ("{'tops': %r, 'seed': 1337, 'nyud_dir': '../data/nyud', 'split': '%s'}"
                 % (tops, split))
    return layer(names[0], 'Python', [], names,
                 python_param={'module': 'nyud_layers', 'layer': 'NYUDSegDataLayer',
                               'param_str': param_str})


def suffixed_trunk(bottom, m):
    """The reference's modality_fcn: VGG16 with every name ending in ``m``."""
    layers = []
    for b, convs, nout in ((1, 2, 64), (2, 2, 128), (3, 3, 256), (4, 3, 512), (5, 3, 512)):
        for c in range(1, convs + 1):
            name = 'conv%d_%d%s' % (b, c, m)
            layers += [conv(name, bottom, nout, pad=100 if b == c == 1 else 1),
                       relu('relu%d_%d%s' % (b, c, m), name)]
            bottom = name
        layers.append(pool('pool%d%s' % (b, m), bottom))
        bottom = 'pool%d%s' % (b, m)
    return layers + [conv('fc6' + m, 'pool5' + m, 4096, ks=7, pad=0), relu('relu6' + m, 'fc6' + m),
                     drop('drop6' + m, 'fc6' + m),
                     conv('fc7' + m, 'fc6' + m, 4096, ks=1, pad=0), relu('relu7' + m, 'fc7' + m),
                     drop('drop7' + m, 'fc7' + m),
                     score_layer('score_fr' + m, 'fc7' + m, 40)]


LOSS = layer('loss', 'SoftmaxWithLoss', ['score', 'label'], ['loss'],
             loss_param={'ignore_label': 255, 'normalize': False})


def expected_net(model, split):
    first = [data_layer(model, split)]
    if model == 'color-hha':
        return (first + suffixed_trunk('color', 'color') + suffixed_trunk('hha', 'hha')
                + [layer('score_fused', 'Eltwise', ['score_frcolor', 'score_frhha'],
                         ['score_fused'], eltwise_param={'operation': 'SUM',
                                                         'coeff': [0.5, 0.5]}),
                   up('upscore', 'score_fused', 40, 64, 32),
                   crop('score', 'upscore', 'color', 19), LOSS])
    trunk = fcn_trunk(FULL, dropout=True)
    if model == 'color-d':
        first.append(layer('data', 'Concat', ['color', 'depth'], ['data']))
        trunk[:3] = [conv('conv1_1_bgrd', 'data', 64, pad=100),
                     relu('relu1_1', 'conv1_1_bgrd'), conv('conv1_2', 'conv1_1_bgrd', 64)]
    return first + trunk + [score_layer('score_fr', 'fc7', 40),
                            up('upscore', 'score_fr', 40, 64, 32),
                            crop('score', 'upscore', 'data', 19), LOSS]


@pytest.mark.parametrize('model', sorted(MODELS))
def test_regenerated_prototxts_equal_the_committed_files(model, tmp_path):
    folder = os.path.join(ROOT, 'nyud-fcn32s-' + model)
    runpy.run_path(os.path.join(folder, 'net.py'))['main'](str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ['test.prototxt', 'trainval.prototxt']
    for name in os.listdir(tmp_path):
        with open(os.path.join(folder, name), 'rb') as f:
            assert (tmp_path / name).read_bytes() == f.read(), '%s/%s is stale' % (model, name)


@pytest.mark.parametrize('split', ['trainval', 'test'])
@pytest.mark.parametrize('model', sorted(MODELS))
def test_net_matches_the_reference_layer_for_layer(model, split):
    net = read_net(os.path.join(ROOT, 'nyud-fcn32s-' + model, split + '.prototxt'))
    assert list(fields(net)) == ['layer']
    assert_layers(net, expected_net(model, split))


def test_solvers_and_model_urls_are_the_references():
    for model, lr in (('color', 1e-10), ('hha', 1e-10), ('color-d', 1e-10),
                      ('color-hha', 1e-12)):
        folder = os.path.join(ROOT, 'nyud-fcn32s-' + model)
        p = caffe.io.read_solver_prototxt(os.path.join(folder, 'solver.prototxt'))
        assert (list(p.test_iter), p.base_lr, p.momentum, p.max_iter, p.snapshot,
                p.snapshot_prefix) == ([654], pytest.approx(lr), pytest.approx(0.99), 300000,
                                       2000, 'snapshot/train')
        url = os.path.join(folder, 'caffemodel-url')
        if model == 'color-d':  # the reference published no color-D model
            assert not os.path.exists(url)
            continue
        with open(url) as f:
            assert f.read() == ('http://dl.caffe.berkeleyvision.org/nyud-fcn32s-%s-heavy'
                                '.caffemodel\n' % model)


def test_split_lists_give_795_trainval_and_654_test_frames():
    def read(name):
        with open(os.path.join(ROOT, 'data', 'nyud', name + '.txt')) as f:
            return f.read().split()
    train, val, trainval, test = read('train'), read('val'), read('trainval'), read('test')
    assert (len(train), len(val), len(test)) == (381, 414, 654)
    assert trainval == train + val and not set(trainval) & set(test)
    with open(os.path.join(ROOT, 'data', 'nyud', 'classes.txt')) as f:
        assert score.read_class_names(f.name)[::39] == ['wall', 'otherprop']


# ------------------------------------------------------------------------ a generated tree

def write_frame(root, idx, color, depth, hha, label, label_dtype=np.uint8):
    """One frame in the layout of nyud.tar.gz."""
    for folder in ('data/images', 'data/depth', 'data/hha', 'segmentation'):
        os.makedirs(os.path.join(root, folder), exist_ok=True)
    Image.fromarray(np.asarray(color, np.uint8)).save(
        os.path.join(root, 'data', 'images', 'img_%s.png' % idx))
    Image.fromarray(np.asarray(depth, np.uint16)).save(
        os.path.join(root, 'data', 'depth', 'img_%s.png' % idx))
    Image.fromarray(np.asarray(hha, np.uint8)).save(
        os.path.join(root, 'data', 'hha', 'img_%s.png' % idx))
    scipy.io.savemat(os.path.join(root, 'segmentation', 'img_%s.mat' % idx),
                     {'segmentation': np.asarray(label, label_dtype)})


def make_tree(root, splits, size=(24, 20), seed=0):
    rng = np.random.default_rng(seed)
    h, w = size
    first = 5001
    for split, count in splits.items():
        ids = [str(first + i) for i in range(count)]
        first += count
        for idx in ids:
            write_frame(root, idx, rng.integers(0, 256, (h, w, 3)),
                        rng.integers(500, 10000, (h, w)), rng.integers(0, 256, (h, w, 3)),
                        rng.integers(0, 41, (h, w)))
        with open(os.path.join(root, split + '.txt'), 'w') as f:
            f.write('\n'.join(ids))
    return root


def make_layer(root, split, tops, ntop=None, **params):
    layer_obj = NYUDSegDataLayer()
    layer_obj.param_str = repr(dict(nyud_dir=str(root), split=split, tops=tops, **params))
    layer_obj.phase = caffe.TRAIN
    top = [caffe.Blob() for _ in range(len(tops) if ntop is None else ntop)]
    layer_obj.setup([], top)
    layer_obj.reshape([], top)
    return layer_obj, top


def step(layer_obj, top):
    layer_obj.reshape([], top)
    layer_obj.forward([], top)
    return [t.data.copy() for t in top]


@pytest.fixture
def hand(tmp_path):
    """Frame 1234, 2 x 3, with hand-chosen values in every file."""
    root = str(tmp_path / 'nyud')
    write_frame(root, '1234',
                color=[[[10, 20, 30], [200, 100, 50], [0, 0, 0]]] * 2,
                depth=[[2540, 1000, 65535], [1, 7000, 2548]],
                hha=[[[10, 200, 30], [132, 94, 118], [255, 255, 255]]] * 2,
                label=[[0, 1, 40], [2, 39, 0]])
    with open(os.path.join(root, 'test.txt'), 'w') as f:
        f.write('1234\n')
    return root


# ------------------------------------------------------------------------ the data layer

def test_label_shifts_to_classes_0_to_39_and_void_to_255(hand):
    layer_obj, top = make_layer(hand, 'test', ['label'])
    label, = step(layer_obj, top)
    np.testing.assert_array_equal(label[0, 0], [[255, 0, 39], [1, 38, 255]])


def test_color_is_bgr_minus_the_nyud_mean(hand):
    layer_obj, top = make_layer(hand, 'test', ['color'])
    color, = step(layer_obj, top)
    mean = np.float32([116.190, 97.203, 92.318])
    np.testing.assert_array_equal(color[0, :, 0, 0], np.float32([30, 20, 10]) - mean)
    np.testing.assert_array_equal(color[0, :, 0, 1], np.float32([50, 100, 200]) - mean)


def test_depth_is_log_depth_minus_its_mean(hand):
    layer_obj, top = make_layer(hand, 'test', ['depth'])
    depth, = step(layer_obj, top)
    assert depth.shape == (1, 1, 2, 3)
    raw = np.float32([[2540, 1000, 65535], [1, 7000, 2548]])
    np.testing.assert_array_equal(depth[0, 0], np.log(raw) - np.float32(7.844))
    assert depth[0, 0, 1, 0] == pytest.approx(-7.844, abs=1e-6)     # log 1 = 0
    assert abs(depth[0, 0, 1, 2]) < 1e-3                             # e^7.844 is about 2548 mm


def test_hha_keeps_its_channel_order_minus_its_mean(hand):
    layer_obj, top = make_layer(hand, 'test', ['hha'])
    hha, = step(layer_obj, top)
    mean = np.float32([132.431, 94.076, 118.477])
    np.testing.assert_array_equal(hha[0, :, 0, 0], np.float32([10, 200, 30]) - mean)
    np.testing.assert_allclose(hha[0, :, 0, 1], [-0.431, -0.076, -0.477], atol=1e-4)


def test_tops_come_in_the_order_asked_and_are_kept_by_kind(hand):
    layer_obj, top = make_layer(hand, 'test', ['label', 'hha', 'depth', 'color'])
    label, hha, depth, color = step(layer_obj, top)
    assert [t.shape for t in (label, hha, depth, color)] == [(1, 1, 2, 3), (1, 3, 2, 3),
                                                             (1, 1, 2, 3), (1, 3, 2, 3)]
    assert sorted(layer_obj.data) == ['color', 'depth', 'hha', 'label']
    np.testing.assert_array_equal(layer_obj.data['hha'], hha[0])
    np.testing.assert_array_equal(layer_obj.load('depth', '1234'), depth[0])
    np.testing.assert_array_equal(layer_obj.load_label('1234'), label[0])


def test_integer_label_fields_read_the_same(hand):
    write_frame(hand, '1234', np.zeros((2, 3, 3)), np.ones((2, 3)), np.zeros((2, 3, 3)),
                [[0, 1, 40], [2, 39, 0]], np.float64)
    layer_obj, top = make_layer(hand, 'test', ['label'])
    np.testing.assert_array_equal(step(layer_obj, top)[0][0, 0], [[255, 0, 39], [1, 38, 255]])


def test_zero_depth_is_refused_naming_the_file(hand):
    write_frame(hand, '1234', np.zeros((2, 3, 3)), [[0, 1, 2], [3, 4, 0]],
                np.zeros((2, 3, 3)), np.ones((2, 3)))
    layer_obj, top = make_layer(hand, 'test', ['color', 'label'])  # depth not asked: fine
    step(layer_obj, top)
    with pytest.raises(DataLayerError, match=r'depth.img_1234\.png: 2 pixels have depth 0'):
        make_layer(hand, 'test', ['depth'])


def test_eight_bit_depth_is_refused(hand):
    Image.fromarray(np.ones((2, 3), np.uint8)).save(
        os.path.join(hand, 'data', 'depth', 'img_1234.png'))
    with pytest.raises(DataLayerError, match=r"16-bit grayscale PNG .*mode 'L'"):
        make_layer(hand, 'test', ['depth'])


def test_label_beyond_40_is_refused(hand):
    write_frame(hand, '1234', np.zeros((2, 3, 3)), np.ones((2, 3)), np.zeros((2, 3, 3)),
                [[41, 1, 1], [1, 1, 1]])
    with pytest.raises(DataLayerError, match=r'img_1234\.mat: label values must be in 0\.\.40'):
        make_layer(hand, 'test', ['label'])


def test_missing_hha_is_found_at_setup_only_when_asked_for(hand):
    os.remove(os.path.join(hand, 'data', 'hha', 'img_1234.png'))
    make_layer(hand, 'test', ['color', 'depth', 'label'])
    with pytest.raises(DataFileNotFoundError) as err:
        make_layer(hand, 'test', ['color', 'hha', 'label'])
    assert err.value.filename.endswith(os.path.join('data', 'hha', 'img_1234.png'))


@pytest.mark.parametrize('tops, message', [
    (['color', 'rgb'], 'tops must be a list of distinct names'),
    (['color', 'color'], 'tops must be a list of distinct names'),
    ('color', 'tops must be a list'),
])
def test_bad_tops_are_explained(hand, tops, message):
    with pytest.raises(DataLayerError, match=message):
        make_layer(hand, 'test', tops, ntop=2)


def test_top_count_must_match_tops(hand):
    with pytest.raises(DataLayerError, match=r'needs 3 tops \(color, hha, label\), got 2'):
        make_layer(hand, 'test', ['color', 'hha', 'label'], ntop=2)


# ------------------------------------------------------------------------ training, surgery

SOLVER = '''train_net: "trainval.prototxt"
test_net: "test.prototxt"
test_iter: 2
test_interval: 999999999
display: 1
average_loss: 1
lr_policy: "fixed"
base_lr: 1e-6
momentum: 0.9
weight_decay: 0.0005
max_iter: 2
snapshot_prefix: "snapshot/train"
test_initialization: false
random_seed: 3
'''
WIDTH = 1 / 16


@pytest.fixture(scope='module')
def workspace(tmp_path_factory):
    """<tmp>/data/nyud (2 trainval + 2 test frames) and a narrow VGG16 FCN's weights."""
    from nets import fcn, write
    root = tmp_path_factory.mktemp('nyud-work')
    make_tree(str(root / 'data' / 'nyud'), {'trainval': 2, 'test': 2}, (32, 28), 1)
    write.write_nets({'vgg': fcn.deploy('fcn32s', 21, WIDTH, (1, 3, 32, 32))}, str(root))
    vgg = caffe.Net(str(root / 'vgg.prototxt'), caffe.TEST)
    randomize(vgg, 0)
    vgg.save(str(root / 'vgg.caffemodel'))
    return root


def randomize(net, seed):
    rng = np.random.default_rng(seed)
    for blobs in net.params.values():
        for b in blobs:
            b.data[...] = rng.normal(0, 0.05, b.shape)


def model_folder(workspace, model):
    """nyud-fcn32s-<model> in the workspace: narrow nets and the test solver."""
    from nets import nyud, write
    folder = workspace / ('nyud-fcn32s-' + model)
    write.write_nets(nyud.model_nets(model, WIDTH), str(folder))
    (folder / 'solver.prototxt').write_text(SOLVER)
    return folder


def params(path):
    return surgery.SavedParams(str(path)).params


def test_color_d_starts_from_vgg16_with_the_depth_channel_at_the_mean(workspace, capsys):
    folder = model_folder(workspace, 'color-d')
    init = runpy.run_path(os.path.join(ROOT, 'nyud-fcn32s-color-d', 'solve.py'),
                          run_name='not_main')['init']
    vgg = params(workspace / 'vgg.caffemodel')
    with training.working_dir(str(folder)):
        solver = training.prepare_solver('../vgg.caffemodel', init=init)
        net = solver.net
        w = net.params['conv1_1_bgrd'][0].data
        assert w.shape[1] == 4
        np.testing.assert_array_equal(w[:, :3], vgg['conv1_1'][0].data)
        np.testing.assert_array_equal(w[:, 3], vgg['conv1_1'][0].data.mean(axis=1))
        np.testing.assert_array_equal(net.params['conv1_1_bgrd'][1].data, vgg['conv1_1'][1].data)
        np.testing.assert_array_equal(net.params['fc7'][0].data, vgg['fc7'][0].data)
        # 21-class score_fr does not fit 40 classes: left at its zero filler
        assert not net.params['score_fr'][0].data.any()
        np.testing.assert_array_equal(net.params['upscore'][0].data[3, 3],
                                      surgery.upsample_filt(64))
        assert 'skipping score_fr 0' in capsys.readouterr().out
        # one step and one scoring pass over the 4-channel input
        results = training.train(solver, 1, 1, training.val_ids(solver),
                                 heads=nyud_layers.scoring_heads())
        hist, = score.do_head_tests(solver.test_nets[0], 1, False, ['5003', '5004'],
                                    nyud_layers.scoring_heads())
    # the zero score layer takes the first step (the trunk gets no gradient through it yet)
    assert net.params['score_fr'][0].data.any()
    (it, metrics), = results
    assert it == 1 and sorted(metrics) == ['score']
    assert metrics['score']['mean_iu'] == pytest.approx(score.seg_metrics(hist)['mean_iu'])
    out = capsys.readouterr().out
    assert 'Iteration 1 mean IU' in out and '  otherprop' in out
    assert solver.test_nets[0].blobs['data'].channels == 4
    # every labelled pixel of the two test frames was scored
    labelled = sum(int((scipy.io.loadmat(str(workspace / 'data' / 'nyud' / 'segmentation' /
                                             ('img_%s.mat' % i)))['segmentation'] > 0).sum())
                   for i in ('5003', '5004'))
    assert hist.shape == (40, 40) and hist.sum() == labelled


def test_transplant_init_copies_vgg16_and_leaves_the_40_class_score_at_zero(workspace):
    folder = model_folder(workspace, 'hha')
    vgg = params(workspace / 'vgg.caffemodel')
    with training.working_dir(str(folder)):
        net = caffe.Net('test.prototxt', caffe.TEST)
        training.transplant_init(net, '../vgg.caffemodel')
    assert not net.params['score_fr'][0].data.any()
    for name in ('conv1_1', 'conv3_2', 'fc6'):
        np.testing.assert_array_equal(net.params[name][0].data, vgg[name][0].data)


@pytest.fixture(scope='module')
def single_nets(workspace):
    """Trained-looking color and HHA snapshots where the late-fusion script expects them."""
    nets = {}
    for seed, (model, it) in enumerate((('color', 28000), ('hha', 60000)), start=1):
        folder = model_folder(workspace, model)
        with training.working_dir(str(folder)):
            net = caffe.Net('test.prototxt', caffe.TEST)
            randomize(net, seed)
            surgery.interp(net, ['upscore'])
            (folder / 'snapshot').mkdir(exist_ok=True)
            net.save('snapshot/train_iter_%d.caffemodel' % it)
            net.forward()
        nets[model] = {k: net.blobs[k].data.copy() for k in ('score_fr', 'score')}
        nets[model]['path'] = folder / 'snapshot' / ('train_iter_%d.caffemodel' % it)
    return nets


def late_fusion_init():
    return runpy.run_path(os.path.join(ROOT, 'nyud-fcn32s-color-hha', 'solve.py'),
                          run_name='not_main')['init']


def test_late_fusion_transplants_each_net_into_its_suffixed_stream(workspace, single_nets):
    folder = model_folder(workspace, 'color-hha')
    with training.working_dir(str(folder)):
        solver = training.prepare_solver(init=late_fusion_init())
        for model in ('color', 'hha'):
            source = params(single_nets[model]['path'])
            for name in ('conv1_1', 'conv5_3', 'fc6', 'fc7', 'score_fr'):
                for i in (0, 1):
                    np.testing.assert_array_equal(solver.net.params[name + model][i].data,
                                                  source[name][i].data)
        np.testing.assert_array_equal(solver.net.params['upscore'][0].data[5, 5],
                                      surgery.upsample_filt(64))
        # the same first test frame through the fused net: the average of the two nets
        net = solver.test_nets[0]
        net.share_with(solver.net)
        net.forward()
    color, hha = single_nets['color'], single_nets['hha']
    np.testing.assert_allclose(net.blobs['score_fused'].data,
                               0.5 * (color['score_fr'] + hha['score_fr']), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(net.blobs['score'].data, 0.5 * (color['score'] + hha['score']),
                               rtol=1e-4, atol=1e-5)
    assert net.blobs['score'].data.shape == (1, 40, 32, 28)


def test_late_fusion_without_a_snapshot_names_the_missing_file(workspace, single_nets, capsys):
    folder = model_folder(workspace, 'color-hha')
    hidden = str(single_nets['hha']['path']) + '.hidden'
    os.rename(single_nets['hha']['path'], hidden)
    try:
        code = training.main(str(folder), None, ['--max-iter', '1'], init=late_fusion_init())
    finally:
        os.rename(hidden, single_nets['hha']['path'])
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert ('hha weights %s not found: train nyud-fcn32s-hha first'
            % single_nets['hha']['path']) in err


def test_missing_dataset_folders_say_where_to_get_the_dataset(tmp_path):
    root = tmp_path / 'nyud'
    root.mkdir()
    (root / 'test.txt').write_text('5001\n')
    with pytest.raises(DataFileNotFoundError, match=r'images.*nyud\.tar\.gz'):
        make_layer(root, 'test', ['color', 'label'])


def test_saved_params_name_a_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match='weights not found: .*nowhere.caffemodel'):
        surgery.SavedParams(str(tmp_path / 'nowhere.caffemodel'))


def test_expand_input_puts_the_channel_mean_on_each_extra_channel():
    class Blob:
        def __init__(self, data):
            self.data = data

    class Params:
        def __init__(self, **params):
            self.params = {k: [Blob(np.asarray(a, np.float32)) for a in v]
                           for k, v in params.items()}

    # 2 outputs, 2 inputs, 1 x 1 kernels, hand-chosen
    old = Params(conv=[[[[[1.]], [[3.]]], [[[-2.]], [[4.]]]], [5., 6.]])
    new = Params(conv_rgbd=[np.zeros((2, 4, 1, 1)), np.zeros(2)])
    surgery.expand_input(new, 'conv_rgbd', old, 'conv')
    np.testing.assert_array_equal(new.params['conv_rgbd'][0].data[:, :, 0, 0],
                                  [[1, 3, 2, 2], [-2, 4, 1, 1]])
    np.testing.assert_array_equal(new.params['conv_rgbd'][1].data, [5, 6])
    with pytest.raises(ValueError, match='more inputs'):
        surgery.expand_input(old, 'conv', new, 'conv_rgbd')
