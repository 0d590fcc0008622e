"""PASCAL-Context: pascalcontext_layers.py, the pascalcontext-fcn{32,16,8}s folders and
data/pascal-context/.

The expected tables are written from the reference's committed
pascalcontext-fcn{32,16,8}s/net.py and train/val.prototxt and its
pascalcontext_layers.py (shelhamer/fcn.berkeleyvision.org); they do not use
``nets/``. The data layer runs on a tiny tree in the dataset's layout: VOC2010
JPEGImages and ImageSets/Main, PASCAL-Context trainval/<id>.mat (LabelMap, uint16
as the dataset stores it), labels.txt and 59_labels.txt.
"""
import math
import os
import runpy

import numpy as np
import pytest
import scipy.io
from PIL import Image

import pascalcontext_layers as pcl
import score
import torchcaffe as caffe
import training
from torchcaffe import io
from voc_layers import DataFileNotFoundError, DataLayerError
from nets import pascalcontext, write
from test_nets import assert_layers, conv, crop, fields, fuse, layer
from test_nets import score as nets_score, up as nets_up

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGES = {'fcn32s': 'pascalcontext-fcn32s', 'fcn16s': 'pascalcontext-fcn16s',
          'fcn8s': 'pascalcontext-fcn8s'}
SPLITS = ('train', 'val', 'deploy')
WIDTH = 1 / 16


# ------------------------------------------------------------------------ the reference nets

def score_layer(name, bottom, c=60):
    return nets_score(name, bottom, c)


def up(name, bottom, kernel, stride, c=60):
    return nets_up(name, bottom, c, kernel, stride)


def data_layer(split):
    if split == 'deploy':
        return layer('input', 'Input', [], ['data'],
                     input_param={'shape': [{'dim': [1, 3, 500, 500]}]})
    # the reference's param_str, with its ../../data made ../data (see nets/pascalcontext.py)
    return layer('data', 'Python', [], ['data', 'label'], python_param={
        'module': 'pascalcontext_layers', 'layer': 'PASCALContextSegDataLayer',
        'param_str': "{'context_dir': '../data/pascal-context', 'seed': 1337, "
                     "'split': '%s', 'voc_dir': '../data/pascal'}" % split})


def trunk(dropout, w=lambda c: c):
    layers, bottom = [], 'data'
    for b, convs, nout in ((1, 2, 64), (2, 2, 128), (3, 3, 256), (4, 3, 512), (5, 3, 512)):
        for c in range(1, convs + 1):
            name = 'conv%d_%d' % (b, c)
            layers += [conv(name, bottom, w(nout), pad=100 if b == c == 1 else 1),
                       layer('relu%d_%d' % (b, c), 'ReLU', [name], [name])]
            bottom = name
        layers.append(layer('pool%d' % b, 'Pooling', [bottom], ['pool%d' % b], pooling_param={
            'pool': 'MAX', 'kernel_size': 2, 'stride': 2}))
        bottom = 'pool%d' % b
    for i, bottom, ks in ((6, 'pool5', 7), (7, 'fc6', 1)):
        name = 'fc%d' % i
        layers += [conv(name, bottom, w(4096), ks=ks, pad=0),
                   layer('relu%d' % i, 'ReLU', [name], [name])]
        if dropout:
            layers.append(layer('drop%d' % i, 'Dropout', [name], [name],
                                dropout_param={'dropout_ratio': 0.5}))
    return layers


HEADS = {
    'fcn32s': [score_layer('score_fr', 'fc7'), up('upscore', 'score_fr', 64, 32),
               crop('score', 'upscore', 'data', 19)],
    'fcn16s': [score_layer('score_fr', 'fc7'), up('upscore2', 'score_fr', 4, 2),
               score_layer('score_pool4', 'pool4'),
               crop('score_pool4c', 'score_pool4', 'upscore2', 5),
               fuse('fuse_pool4', 'upscore2', 'score_pool4c'),
               up('upscore16', 'fuse_pool4', 32, 16), crop('score', 'upscore16', 'data', 27)],
    'fcn8s': [score_layer('score_fr', 'fc7'), up('upscore2', 'score_fr', 4, 2),
              score_layer('score_pool4', 'pool4'),
              crop('score_pool4c', 'score_pool4', 'upscore2', 5),
              fuse('fuse_pool4', 'upscore2', 'score_pool4c'),
              up('upscore_pool4', 'fuse_pool4', 4, 2),
              score_layer('score_pool3', 'pool3'),
              crop('score_pool3c', 'score_pool3', 'upscore_pool4', 9),
              fuse('fuse_pool3', 'upscore_pool4', 'score_pool3c'),
              up('upscore8', 'fuse_pool3', 16, 8), crop('score', 'upscore8', 'data', 31)],
}
LOSS = layer('loss', 'SoftmaxWithLoss', ['score', 'label'], ['loss'],
             loss_param={'ignore_label': 255, 'normalize': False})


def expected_net(stage, split):
    deploy = split == 'deploy'
    return [data_layer(split)] + trunk(not deploy) + HEADS[stage] + ([] if deploy else [LOSS])


@pytest.mark.parametrize('stage', sorted(STAGES))
def test_regenerated_prototxts_equal_the_committed_files(stage, tmp_path):
    folder = os.path.join(ROOT, STAGES[stage])
    script = runpy.run_path(os.path.join(folder, 'net.py'))
    assert script['HERE'] == folder
    script['main'](str(tmp_path))
    names = sorted(s + '.prototxt' for s in SPLITS)
    assert sorted(os.listdir(tmp_path)) == names
    for name in names:
        with open(os.path.join(folder, name), 'rb') as f:
            assert (tmp_path / name).read_bytes() == f.read(), '%s/%s is stale' % (stage, name)


@pytest.mark.parametrize('split', SPLITS)
@pytest.mark.parametrize('stage', sorted(STAGES))
def test_net_matches_the_reference_layer_for_layer(stage, split):
    net = io.read_net_prototxt(os.path.join(ROOT, STAGES[stage], split + '.prototxt'),
                               upgrade=False)
    assert_layers(net, expected_net(stage, split))


@pytest.mark.parametrize('stage, base_lr', [('fcn32s', 1e-10), ('fcn16s', 1e-12),
                                            ('fcn8s', 1e-14)])
def test_solver_has_the_references_values_and_comments(stage, base_lr):
    path = os.path.join(ROOT, STAGES[stage], 'solver.prototxt')
    assert fields(io.read_solver_prototxt(path)) == {
        'train_net': 'train.prototxt', 'test_net': ['val.prototxt'], 'test_iter': [5105],
        'test_interval': 999999999, 'display': 20, 'average_loss': 20, 'lr_policy': 'fixed',
        'base_lr': base_lr, 'momentum': 0.99, 'iter_size': 1, 'max_iter': 300000,
        'weight_decay': 0.0005, 'snapshot': 4000, 'snapshot_prefix': 'snapshot/train',
        'test_initialization': False}
    lines = open(path).read().splitlines()
    for comment, setting in [('# lr for unnormalized softmax', 'base_lr:'),
                             ('# high momentum', 'momentum:'),
                             ('# no gradient accumulation', 'iter_size:')]:
        assert lines[lines.index(comment) + 1].startswith(setting)


@pytest.mark.parametrize('stage, weights', [
    ('fcn32s', '../ilsvrc-nets/vgg16-fcn-pascalcontext.caffemodel'),
    ('fcn16s', '../pascalcontext-fcn32s/snapshot/train_iter_300000.caffemodel'),
    ('fcn8s', '../pascalcontext-fcn16s/snapshot/train_iter_300000.caffemodel'),
])
def test_urls_and_each_stage_starts_from_the_previous(stage, weights):
    folder = os.path.join(ROOT, STAGES[stage])
    url = 'http://dl.caffe.berkeleyvision.org/pascalcontext-%s-heavy.caffemodel\n' % stage
    with open(os.path.join(folder, 'caffemodel-url')) as f:
        assert f.read() == url
    script = runpy.run_path(os.path.join(folder, 'solve.py'))
    assert (script['WEIGHTS'], script['TEST_EVERY']) == (weights, 8000)


# ------------------------------------------------------------------------ class lists

DATA_DIR = os.path.join(ROOT, 'data', 'pascal-context')


def reference_table(full_path, task_path):
    """The reference's mapping, done its way: line positions, spaces removed, renames."""
    def names(path):
        lines = [l for l in open(path).read().splitlines() if l.strip()]
        return [l.split(':', 1)[1].replace(' ', '') for l in lines
                if not l.startswith('0:')]  # the dataset's 59_labels.txt has no 0 line
    labels_400, labels_59 = names(full_path), names(task_path)
    for main_label, task_label in zip(('table', 'bedclothes', 'cloth'),
                                      ('diningtable', 'bedcloth', 'clothes')):
        labels_59[labels_59.index(task_label)] = main_label
    table = {}
    for idx, l in enumerate(labels_59):
        table[labels_400.index(l) + 1] = idx + 1
    return table


def test_shipped_class_lists_map_all_59_classes_as_the_reference():
    full = pcl.read_class_list(os.path.join(DATA_DIR, 'classes-400.txt'))
    task = pcl.read_class_list(os.path.join(DATA_DIR, 'classes-59.txt'))
    assert len(full) == 459 and full[0] == (1, 'accordion') and full[-1] == (459, 'wool')
    assert task[0] == (0, 'background') and len(task) == 60 and task[-1] == (59, 'wood')
    table = pcl.class_table(full, task)
    assert sorted(table[table > 0]) == list(range(1, 60))
    want = reference_table(os.path.join(DATA_DIR, 'classes-400.txt'),
                           os.path.join(DATA_DIR, 'classes-59.txt'))
    assert {i: int(t) for i, t in enumerate(table) if t} == want
    names = dict(full)
    # the three renamed classes, and a two-word full label left to background
    assert (names[397], table[397]) == ('table', 11)  # 11: diningtable
    assert (names[19], table[19]) == ('bedclothes', 52)  # 52: bedcloth
    assert (names[80], table[80]) == ('cloth', 28)  # 28: clothes
    assert (names[3], table[3]) == ('airconditioner', 0)


# The tiny tree's lists, in the dataset's own files: a duplicate name (8: cat), a
# two-word task name, the three renames, and no background line in 59_labels.txt.
LABELS_TXT = ('1: accordion\n2: aeroplane\n3: air conditioner\n4: cat\n5: table\n'
              '6: bedclothes\n7: cloth\n8: cat\n')
TASK_TXT = '1: aeroplane\n2: diningtable\n3: cat\n4: bedcloth\n5: clothes\n6: air conditioner\n'
TABLE = [0, 0, 1, 6, 3, 2, 4, 5, 0]  # full id -> task class


def write_lists(context_dir, full=LABELS_TXT, task=TASK_TXT, names=pcl.CLASS_FILES[0]):
    os.makedirs(context_dir, exist_ok=True)
    for name, text in zip(names, (full, task)):
        with open(os.path.join(context_dir, name), 'w') as f:
            f.write(text)


def test_mapping_of_hand_chosen_labels(tmp_path):
    write_lists(str(tmp_path))
    full_path, task_path = pcl.find_class_files(str(tmp_path))
    assert os.path.basename(full_path) == 'labels.txt'
    table = pcl.class_table(pcl.read_class_list(full_path), pcl.read_class_list(task_path))
    assert table.tolist() == TABLE
    label_map = np.array([[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 300, 2]], np.uint16)
    got = pcl.to_task_labels(label_map, table)
    assert got.dtype == np.uint8 and got.shape == (1, 3, 4)
    assert got[0].tolist() == [[0, 0, 1, 6], [3, 2, 4, 5], [0, 0, 0, 1]]


def test_a_task_name_missing_from_the_full_list_is_named(tmp_path):
    write_lists(str(tmp_path), task=TASK_TXT + '7: unicorn\n')
    full, task = (pcl.read_class_list(p) for p in pcl.find_class_files(str(tmp_path)))
    with pytest.raises(DataLayerError, match="task class 7 'unicorn' is not in"):
        pcl.class_table(full, task)


@pytest.mark.parametrize('text, message', [
    ('1: a\n3: b\n', r'labels.txt:2: class id 3 out of sequence \(expected 2'),
    ('1: a\nb\n', r'labels.txt:2: expected "N: name"'),
    ('0: background\n0: other\n', r'labels.txt:2: class id 0 out of sequence'),
])
def test_class_lists_with_other_numbering_are_refused(tmp_path, text, message):
    write_lists(str(tmp_path), full=text)
    with pytest.raises(DataLayerError, match=message):
        pcl.read_class_list(str(tmp_path / 'labels.txt'))


def test_without_any_class_lists_both_names_are_said(tmp_path):
    with pytest.raises(DataFileNotFoundError, match='labels.txt and 59_labels.txt or '
                                                    'classes-400.txt and classes-59.txt'):
        pcl.find_class_files(str(tmp_path))


# ------------------------------------------------------------------------ a tiny dataset

MAPS = {  # full-list ids of each sample's pixels (before mapping)
    'tr0': np.array([[2, 2, 5, 0], [3, 4, 4, 8], [1, 6, 7, 9]], np.uint16),
    'tr1': np.array([[5, 5, 5], [4, 4, 0], [2, 3, 7], [6, 6, 6]], np.uint16),
    'va0': np.array([[0, 4, 4, 2, 2], [5, 5, 6, 7, 3]], np.uint16),
    'va1': np.array([[8, 1, 4], [2, 5, 0]], np.uint16),
}
SCALE = 6  # each map cell covers SCALE x SCALE pixels


def write_tree(root, lists=pcl.CLASS_FILES[0], task=TASK_TXT):
    """data/pascal/VOC2010 and data/pascal-context under ``root``, as a model folder
    ``root``/model sees them."""
    rng = np.random.default_rng(3)
    voc2010 = os.path.join(root, 'data', 'pascal', 'VOC2010')
    context = os.path.join(root, 'data', 'pascal-context')
    for d in (os.path.join(voc2010, 'JPEGImages'), os.path.join(voc2010, 'ImageSets', 'Main'),
              os.path.join(context, 'trainval')):
        os.makedirs(d)
    for sid, cells in MAPS.items():
        label_map = np.kron(cells, np.ones((SCALE, SCALE), np.uint16))
        image = rng.integers(0, 256, label_map.shape + (3,), dtype=np.uint8)
        Image.fromarray(image).save(os.path.join(voc2010, 'JPEGImages', sid + '.jpg'))
        scipy.io.savemat(os.path.join(context, 'trainval', sid + '.mat'),
                         {'LabelMap': label_map})
    for split in ('train', 'val'):
        ids = [s for s in MAPS if s.startswith(split[:2])]
        with open(os.path.join(voc2010, 'ImageSets', 'Main', split + '.txt'), 'w') as f:
            f.write('\n'.join(ids) + '\n')
    write_lists(context, task=task, names=lists)
    return os.path.join(root, 'data', 'pascal'), context


def expected_label(sid):
    return np.kron(np.array(TABLE, np.uint8)[MAPS[sid]], np.ones((SCALE, SCALE), np.uint8))


def make_layer(**params):
    layer = pcl.PASCALContextSegDataLayer()
    layer.param_str = repr(params)
    layer.phase = caffe.TRAIN
    top = [caffe.Blob(), caffe.Blob()]
    layer.setup([], top)
    return layer, top


def forward(layer, top):
    layer.reshape([], top)
    sid = layer.indices[layer.idx]
    layer.forward([], top)
    return sid, top[0].data.copy(), top[1].data.copy()


def test_the_mat_files_hold_uint16_label_maps_as_the_dataset(tmp_path):
    _, context = write_tree(str(tmp_path))
    label_map = pcl.read_label_map(os.path.join(context, 'trainval', 'va1.mat'))
    assert label_map.dtype == np.uint16 and label_map.shape == (12, 18)


@pytest.mark.parametrize('prefetch', [False, True])
def test_val_split_gives_mapped_labels_and_reference_preprocessing_in_order(tmp_path,
                                                                            prefetch):
    voc_dir, context = write_tree(str(tmp_path))
    layer, top = make_layer(voc_dir=voc_dir, context_dir=context, split='val', seed=1337,
                            prefetch=prefetch)
    assert layer.indices == ['va0', 'va1'] and not layer.random
    seen = [forward(layer, top) for _ in range(3)]
    assert [s[0] for s in seen] == ['va0', 'va1', 'va0']  # in order, wrapping around
    for sid, data, label in seen:
        assert label.shape == (1, 1) + expected_label(sid).shape
        np.testing.assert_array_equal(label[0, 0], expected_label(sid))
        # as the reference: float32 image, RGB -> BGR, minus a float32 mean, channels first
        rgb = np.array(Image.open(os.path.join(voc_dir, 'VOC2010', 'JPEGImages', sid + '.jpg')),
                       dtype=np.float32)
        want = (rgb[:, :, ::-1] - np.array((104.007, 116.669, 122.679), np.float32))
        np.testing.assert_array_equal(data[0], want.transpose(2, 0, 1))
    layer.close()


def test_train_split_is_shuffled_by_the_seed(tmp_path):
    voc_dir, context = write_tree(str(tmp_path))
    layer, top = make_layer(voc_dir=voc_dir, context_dir=context, split='train', seed=7,
                            prefetch=False)
    rng = __import__('random').Random(7)
    want = [layer.indices[rng.randint(0, 1)] for _ in range(4)]
    assert [forward(layer, top)[0] for _ in range(4)] == want


def test_repository_class_lists_are_used_when_the_dataset_files_are_absent(tmp_path):
    # the tiny lists under the repository's names, the task list with its background line
    voc_dir, context = write_tree(str(tmp_path), lists=pcl.CLASS_FILES[1],
                                  task='0: background\n' + TASK_TXT)
    assert not os.path.exists(os.path.join(context, 'labels.txt'))
    layer, top = make_layer(voc_dir=voc_dir, context_dir=context, split='val',
                            mean=(1, 2, 3), prefetch=False)
    assert layer.labels_59[:2] == [(0, 'background'), (1, 'aeroplane')]
    sid, data, label = forward(layer, top)
    np.testing.assert_array_equal(label[0, 0], expected_label(sid))
    assert layer.mean.dtype == np.float32 and layer.mean.tolist() == [1, 2, 3]


def test_missing_label_file_is_found_at_setup(tmp_path):
    voc_dir, context = write_tree(str(tmp_path))
    os.remove(os.path.join(context, 'trainval', 'va1.mat'))
    with pytest.raises(DataFileNotFoundError, match='1 of the 2 samples') as exc:
        make_layer(voc_dir=voc_dir, context_dir=context, split='val')
    assert exc.value.filename.endswith(os.path.join('trainval', 'va1.mat'))


def test_missing_voc2010_and_unknown_keys_are_named(tmp_path):
    with pytest.raises(DataFileNotFoundError, match='VOC2010'):
        make_layer(voc_dir=str(tmp_path), context_dir=str(tmp_path), split='val')
    with pytest.raises(DataLayerError, match="unknown param_str key.*'sbdd_dir'"):
        make_layer(voc_dir='a', context_dir='b', split='val', sbdd_dir='c')


def test_mat_without_labelmap_is_named(tmp_path):
    path = str(tmp_path / 'x.mat')
    scipy.io.savemat(path, {'GTcls': np.zeros((2, 2))})
    with pytest.raises(DataLayerError, match='no LabelMap.*GTcls'):
        pcl.read_label_map(path)


# ------------------------------------------------------------------------ training, scoring

SOLVER = '''train_net: "train.prototxt"
test_net: "val.prototxt"
test_iter: 2
test_interval: 999999999
display: 1
average_loss: 1
lr_policy: "fixed"
base_lr: 1e-4
momentum: 0.99
weight_decay: 0
iter_size: 1
max_iter: 10
snapshot: 0
snapshot_prefix: "snapshot/train"
test_initialization: false
'''


@pytest.fixture
def model(tmp_path):
    """Narrow FCN-8s train / val nets with the committed nets' data layers, and the tree."""
    write_tree(str(tmp_path))
    folder = tmp_path / 'model'
    nets = pascalcontext.stage_nets('fcn8s', width=WIDTH)
    write.write_nets({k: v for k, v in nets.items() if k != 'deploy'}, str(folder))
    (folder / 'solver.prototxt').write_text(SOLVER)
    return folder


def test_one_training_step_on_the_tree(model, monkeypatch):
    monkeypatch.chdir(model)
    solver = training.prepare_solver()  # as solve.py: the upsampling layers made bilinear
    conv = solver.net.params['conv1_1'][0].data.copy()
    solver.step(1)
    label = solver.net.blobs['label'].data
    assert label.max() <= 59 and label.shape[1] == 1
    # the score layers start at zero: uniform over 60 classes at every pixel (none ignored),
    # summed over pixels (normalize: false)
    loss = float(solver.net.blobs['loss'].data)
    assert loss == pytest.approx(label.size * math.log(60), rel=1e-5)
    # and only they learn in the first step (no gradient reaches the trunk through zeros)
    for name in ('score_fr', 'score_pool4', 'score_pool3'):
        assert np.abs(solver.net.params[name][1].data).max() > 0, name
    np.testing.assert_array_equal(solver.net.params['conv1_1'][0].data, conv)


def test_scoring_pass_counts_every_pixel_in_60_classes(model, monkeypatch):
    monkeypatch.chdir(model)
    net = caffe.Net('val.prototxt', caffe.TEST)
    rng = np.random.default_rng(4)
    for blobs in net.params.values():
        for b in blobs:
            b.data[...] = rng.normal(0, 0.1, b.data.shape)
    hist, loss = score.compute_hist(net, None, ['va0', 'va1'])
    truth = np.concatenate([expected_label(s).ravel() for s in ('va0', 'va1')])
    assert hist.shape == (60, 60) and hist.sum() == truth.size
    np.testing.assert_array_equal(hist.sum(1), np.bincount(truth, minlength=60))
    assert np.isfinite(loss)
