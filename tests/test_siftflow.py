"""SIFT Flow: the two-headed nets against the reference, the data layer on a generated
tree in the dataset's layout, training and scoring both heads, and the present-only metric.

The expected tables are written from the reference's committed
siftflow-fcn{32,16,8}s/trainval.prototxt and test.prototxt
(shelhamer/fcn.berkeleyvision.org), not from ``nets/``.
"""
import json
import os
import random
import runpy

import numpy as np
import pytest
import scipy.io
from PIL import Image

import score
import siftflow_layers
import training
from score import seg_metrics
from siftflow_layers import SIFTFlowSegDataLayer
from test_nets import (FULL, assert_layers, crop, fcn_trunk, fields, fuse, layer,
                       read_net, score as score_layer, up)
from voc_layers import DataFileNotFoundError, DataLayerError
import torchcaffe as caffe

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGES = ('fcn32s', 'fcn16s', 'fcn8s')
CAT = 'spatial_envelope_256x256_static_8outdoorcategories'


# ------------------------------------------------------------------------ the nets

def data_layer(split):
    return layer('data', 'Python', [], ['data', 'sem', 'geo'],
                 python_param={'module': 'siftflow_layers', 'layer': 'SIFTFlowSegDataLayer',
                               'param_str': "{'siftflow_dir': '../data/sift-flow', "
                                            "'seed': 1337, 'split': '%s'}" % split})


def head(stage, task, c):
    """The reference's layers of one task's head; crop offsets 19; 5, 27; 5, 9, 31."""
    s = '_' + task
    if stage == 'fcn32s':
        return [score_layer('score_fr' + s, 'fc7', c),
                up('upscore' + s, 'score_fr' + s, c, 64, 32),
                crop('score' + s, 'upscore' + s, 'data', 19)]
    layers = [score_layer('score_fr' + s, 'fc7', c),
              up('upscore2' + s, 'score_fr' + s, c, 4, 2),
              score_layer('score_pool4' + s, 'pool4', c),
              crop('score_pool4%sc' % s, 'score_pool4' + s, 'upscore2' + s, 5),
              fuse('fuse_pool4' + s, 'upscore2' + s, 'score_pool4%sc' % s)]
    if stage == 'fcn16s':
        return layers + [up('upscore16' + s, 'fuse_pool4' + s, c, 32, 16),
                         crop('score' + s, 'upscore16' + s, 'data', 27)]
    return layers + [up('upscore_pool4' + s, 'fuse_pool4' + s, c, 4, 2),
                     score_layer('score_pool3' + s, 'pool3', c),
                     crop('score_pool3%sc' % s, 'score_pool3' + s, 'upscore_pool4' + s, 9),
                     fuse('fuse_pool3' + s, 'upscore_pool4' + s, 'score_pool3%sc' % s),
                     up('upscore8' + s, 'fuse_pool3' + s, c, 16, 8),
                     crop('score' + s, 'upscore8' + s, 'data', 31)]


def loss(name, score_blob, label):
    return layer(name, 'SoftmaxWithLoss', [score_blob, label], [name],
                 loss_param={'ignore_label': 255, 'normalize': False})


def expected_net(stage, split):
    return ([data_layer(split)] + fcn_trunk(FULL, dropout=True)
            + head(stage, 'sem', 33) + [loss('loss', 'score_sem', 'sem')]
            + head(stage, 'geo', 3) + [loss('loss_geo', 'score_geo', 'geo')])


@pytest.mark.parametrize('stage', STAGES)
def test_regenerated_prototxts_equal_the_committed_files(stage, tmp_path):
    folder = os.path.join(ROOT, 'siftflow-' + stage)
    runpy.run_path(os.path.join(folder, 'net.py'))['main'](str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ['test.prototxt', 'trainval.prototxt']
    for name in os.listdir(tmp_path):
        with open(os.path.join(folder, name), 'rb') as f:
            assert (tmp_path / name).read_bytes() == f.read(), '%s/%s is stale' % (stage, name)


@pytest.mark.parametrize('split', ['trainval', 'test'])
@pytest.mark.parametrize('stage', STAGES)
def test_net_matches_the_reference_layer_for_layer(stage, split):
    net = read_net(os.path.join(ROOT, 'siftflow-' + stage, split + '.prototxt'))
    assert list(fields(net)) == ['layer']
    assert_layers(net, expected_net(stage, split))


def test_solvers_keep_the_references_values():
    expected = {'fcn32s': 1e-10, 'fcn16s': 1e-12, 'fcn8s': 1e-12}
    for stage, lr in expected.items():
        p = caffe.io.read_solver_prototxt(os.path.join(ROOT, 'siftflow-' + stage,
                                                       'solver.prototxt'))
        assert (p.train_net, p.test_net, p.test_iter, p.base_lr, p.momentum, p.max_iter,
                p.weight_decay, p.lr_policy) == ('trainval.prototxt', ['test.prototxt'], [200],
                                                 pytest.approx(lr), pytest.approx(0.99),
                                                 300000, pytest.approx(0.0005), 'fixed')
        with open(os.path.join(ROOT, 'siftflow-' + stage, 'caffemodel-url')) as f:
            assert f.read() == ('http://dl.caffe.berkeleyvision.org/siftflow-%s-heavy.caffemodel\n'
                                % stage)


def test_each_stage_starts_from_the_previous_ones_final_snapshot():
    starts = {'fcn32s': '../ilsvrc-nets/vgg16-fcn.caffemodel',
              'fcn16s': '../siftflow-fcn32s/snapshot/train_iter_100000.caffemodel',
              'fcn8s': '../siftflow-fcn16s/snapshot/train_iter_100000.caffemodel'}
    for stage, weights in starts.items():
        script = runpy.run_path(os.path.join(ROOT, 'siftflow-' + stage, 'solve.py'),
                                run_name='not_main')
        assert script['WEIGHTS'] == weights


def test_split_lists_are_the_references():
    with open(os.path.join(ROOT, 'data', 'sift-flow', 'trainval.txt')) as f:
        trainval = f.read().split()
    with open(os.path.join(ROOT, 'data', 'sift-flow', 'test.txt')) as f:
        test = f.read().split()
    # 2,688 images, less 200 for test and the 2 without annotations
    assert (len(trainval), len(test), len(set(trainval) | set(test))) == (2486, 200, 2686)
    assert test[0] == 'coast_natu975' and 'highway_bost181' not in trainval + test


def test_class_list_gives_33_semantic_and_3_geometric_names_in_output_order():
    names = siftflow_layers.read_classes()
    assert len(names['semantic']) == 33 and names['geometric'] == ['sky', 'horizontal',
                                                                   'vertical']
    # the three classes the reference notes are absent from the test set
    assert [names['semantic'][i] for i in (8, 10, 15)] == ['cow', 'desert', 'moon']
    assert names['semantic'][0] == 'awning' and names['semantic'][32] == 'window'


# ------------------------------------------------------------------------ a generated tree

def write_sample(root, name, rgb, sem, geo, sem_dtype=np.float64, geo_dtype=np.float64):
    """One image in the layout of SiftFlowDataset.zip: JPEG, and S in two MAT files."""
    for folder in ('Images', 'SemanticLabels', 'GeoLabels'):
        os.makedirs(os.path.join(root, folder, CAT), exist_ok=True)
    Image.fromarray(np.asarray(rgb, np.uint8)).save(
        os.path.join(root, 'Images', CAT, name + '.jpg'), quality=100, subsampling=0)
    scipy.io.savemat(os.path.join(root, 'SemanticLabels', CAT, name + '.mat'),
                     {'S': np.asarray(sem, sem_dtype)})
    scipy.io.savemat(os.path.join(root, 'GeoLabels', CAT, name + '.mat'),
                     {'S': np.asarray(geo, geo_dtype)})


def make_tree(root, splits, size=(24, 20), seed=0):
    """Random samples for each split {name: count}; the labels use every value."""
    rng = np.random.default_rng(seed)
    h, w = size
    for split, count in splits.items():
        names = ['%s_%s%d' % (split, 'coast' if i % 2 else 'street', i) for i in range(count)]
        for name in names:
            write_sample(root, name, rng.integers(0, 256, (h, w, 3)),
                         rng.integers(0, 34, (h, w)), rng.integers(-1, 4, (h, w)))
        with open(os.path.join(root, split + '.txt'), 'w') as f:
            f.write('\n'.join(names))  # no final newline, as the reference's lists
    return root


def make_layer(root, split, ntop=3, **params):
    """Set the layer up as a net does: param_str, phase, setup, reshape."""
    layer_obj = SIFTFlowSegDataLayer()
    layer_obj.param_str = repr(dict(siftflow_dir=str(root), split=split, **params))
    layer_obj.phase = caffe.TRAIN
    top = [caffe.Blob() for _ in range(ntop)]
    layer_obj.setup([], top)
    layer_obj.reshape([], top)
    return layer_obj, top


def step(layer_obj, top):
    """One reshape + forward: (sample name, copies of the three tops)."""
    layer_obj.reshape([], top)
    name = layer_obj.indices[layer_obj.idx]
    layer_obj.forward([], top)
    return (name,) + tuple(t.data.copy() for t in top)


@pytest.fixture(scope='module')
def tree(tmp_path_factory):
    return make_tree(str(tmp_path_factory.mktemp('sift-flow')), {'trainval': 5, 'test': 3})


@pytest.fixture
def hand(tmp_path):
    """One 2 x 4 sample whose labels hold every boundary value."""
    root = str(tmp_path / 'sift-flow')
    rgb = np.array([[[10, 20, 30]] * 4, [[200, 150, 100]] * 4])
    write_sample(root, 'coast_hand1', rgb,
                 sem=[[0, 1, 2, 33], [9, 11, 16, 0]],
                 geo=[[-1, 1, 2, 3], [0, 3, 2, 1]])
    with open(os.path.join(root, 'test.txt'), 'w') as f:
        f.write('coast_hand1\n')
    return root


# ------------------------------------------------------------------------ the data layer

def test_semantic_labels_shift_to_classes_0_to_32_and_void_to_255(hand):
    layer_obj, top = make_layer(hand, 'test')
    _, _, sem, _ = step(layer_obj, top)
    assert sem.dtype == np.float32 and sem.shape == (1, 1, 2, 4)
    np.testing.assert_array_equal(sem[0, 0], [[255, 0, 1, 32], [8, 10, 15, 255]])


def test_geometric_void_minus_one_becomes_255_and_classes_0_to_2(hand):
    layer_obj, top = make_layer(hand, 'test')
    _, _, _, geo = step(layer_obj, top)
    # -1 (void) -> 255; 0 would wrap to 255 too, as in the reference
    np.testing.assert_array_equal(geo[0, 0], [[255, 0, 1, 2], [255, 2, 1, 0]])


@pytest.mark.parametrize('sem_dtype, geo_dtype', [(np.uint8, np.int16), (np.int32, np.int8)])
def test_labels_read_the_same_from_integer_mat_fields(hand, sem_dtype, geo_dtype):
    write_sample(hand, 'coast_hand1', np.zeros((2, 4, 3)), [[0, 1, 2, 33], [9, 11, 16, 0]],
                 [[-1, 1, 2, 3], [0, 3, 2, 1]], sem_dtype, geo_dtype)
    layer_obj, top = make_layer(hand, 'test')
    _, _, sem, geo = step(layer_obj, top)
    np.testing.assert_array_equal(sem[0, 0], [[255, 0, 1, 32], [8, 10, 15, 255]])
    np.testing.assert_array_equal(geo[0, 0], [[255, 0, 1, 2], [255, 2, 1, 0]])


def test_data_is_bgr_minus_the_siftflow_mean(hand):
    layer_obj, top = make_layer(hand, 'test')
    _, data, _, _ = step(layer_obj, top)
    with Image.open(os.path.join(hand, 'Images', CAT, 'coast_hand1.jpg')) as im:
        rgb = np.array(im, dtype=np.float32)
    mean = np.array([114.578, 115.294, 108.353], np.float32)  # B, G, R
    assert data.shape == (1, 3, 2, 4) and data.dtype == np.float32
    for c, source in enumerate((2, 1, 0)):
        np.testing.assert_array_equal(data[0, c], rgb[:, :, source] - mean[c])
    # the flat rows survive a quality-100 JPEG to within a few levels
    assert abs(data[0, 0, 0, 0] - (30 - 114.578)) < 4 and abs(data[0, 2, 1, 0] - 91.647) < 4


def test_layer_holds_the_sample_under_the_references_names(hand):
    layer_obj, top = make_layer(hand, 'test')
    _, data, sem, geo = step(layer_obj, top)
    np.testing.assert_array_equal(layer_obj.data, data[0])
    np.testing.assert_array_equal(layer_obj.label_semantic, sem[0])
    np.testing.assert_array_equal(layer_obj.label_geometric, geo[0])
    np.testing.assert_array_equal(layer_obj.load_label('coast_hand1', 'geometric'), geo[0])
    np.testing.assert_array_equal(layer_obj.load_image('coast_hand1'), data[0])
    with pytest.raises(ValueError, match='semantic or geometric'):
        layer_obj.load_label('coast_hand1', 'depth')


def test_test_split_goes_in_list_order_and_wraps(tree):
    layer_obj, top = make_layer(tree, 'test')
    names = [step(layer_obj, top)[0] for _ in range(4)]
    assert names == ['test_street0', 'test_coast1', 'test_street2', 'test_street0']


@pytest.mark.parametrize('prefetch', [True, False])
def test_seeded_trainval_order_is_the_references(tree, prefetch):
    layer_obj, top = make_layer(tree, 'trainval', seed=1337, prefetch=prefetch)
    rng = random.Random(1337)
    expected = [rng.randint(0, 4) for _ in range(6)]
    got = []
    for _ in range(6):
        got.append(layer_obj.idx)
        name, data, sem, geo = step(layer_obj, top)
        assert name == layer_obj.indices[got[-1]]
    assert got == expected


def test_state_dict_resumes_the_random_order(tree):
    layer_obj, top = make_layer(tree, 'trainval', seed=3)
    step(layer_obj, top)
    state = json.loads(json.dumps(layer_obj.state_dict()))
    ahead = [step(layer_obj, top)[0] for _ in range(4)]
    other, other_top = make_layer(tree, 'trainval', seed=99)
    other.load_state_dict(state)
    assert [step(other, other_top)[0] for _ in range(4)] == ahead


def test_semantic_value_beyond_33_is_refused_naming_the_file(hand):
    write_sample(hand, 'coast_hand1', np.zeros((2, 4, 3)), [[0, 34, 2, 3]] * 2,
                 [[1, 1, 1, 1]] * 2)
    with pytest.raises(DataLayerError, match=r'SemanticLabels.*coast_hand1\.mat.*0\.\.33'):
        make_layer(hand, 'test')


def test_geometric_value_below_minus_one_is_refused(hand):
    write_sample(hand, 'coast_hand1', np.zeros((2, 4, 3)), [[1] * 4] * 2, [[-2, 1, 1, 1]] * 2)
    with pytest.raises(DataLayerError, match=r'GeoLabels.*-1\.\.3'):
        make_layer(hand, 'test')


def test_missing_geometric_label_is_found_at_setup(hand):
    os.remove(os.path.join(hand, 'GeoLabels', CAT, 'coast_hand1.mat'))
    with pytest.raises(DataFileNotFoundError) as err:
        make_layer(hand, 'test')
    assert err.value.filename.endswith(os.path.join('GeoLabels', CAT, 'coast_hand1.mat'))


def test_mat_without_field_s_is_named(hand):
    scipy.io.savemat(os.path.join(hand, 'SemanticLabels', CAT, 'coast_hand1.mat'),
                     {'labels': np.zeros((2, 4))})
    with pytest.raises(DataLayerError, match="coast_hand1.mat: no field 'S'"):
        make_layer(hand, 'test')


def test_label_of_another_size_names_both_files(hand):
    write_sample(hand, 'coast_hand1', np.zeros((2, 4, 3)), np.ones((3, 4)), np.ones((2, 4)))
    with pytest.raises(DataLayerError, match=r'SemanticLabels.*is 3 x 4 but .*Images.*2 x 4'):
        make_layer(hand, 'test')


def test_three_tops_are_required(hand):
    with pytest.raises(DataLayerError, match=r'needs 3 tops \(data, sem, geo\), got 2'):
        make_layer(hand, 'test', ntop=2)


# ------------------------------------------------------------------------ training and scoring

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


@pytest.fixture
def narrow_model(tmp_path):
    """A model folder of the narrow (1/16 width) FCN-16s beside ../data/sift-flow."""
    from nets import siftflow, write
    make_tree(str(tmp_path / 'data' / 'sift-flow'), {'trainval': 3, 'test': 2}, (32, 28), 1)
    model = tmp_path / 'siftflow-fcn16s'
    write.write_nets(siftflow.stage_nets('fcn16s', width=1 / 16), str(model))
    (model / 'solver.prototxt').write_text(SOLVER)
    with training.working_dir(str(model)):
        net = caffe.Net('trainval.prototxt', caffe.TEST)
    rng = np.random.default_rng(0)
    for blobs in net.params.values():
        for b in blobs:
            b.data[...] = rng.normal(0, 0.05, b.shape)
    net.save(str(model / 'init.caffemodel'))
    return model


def labelled_pixels(root, split):
    """Pixels with a class, per task, over the split's generated MAT files."""
    with open(os.path.join(root, split + '.txt')) as f:
        names = f.read().split()
    sem = sum(int((scipy.io.loadmat(os.path.join(root, 'SemanticLabels', CAT, n + '.mat'))['S']
                   > 0).sum()) for n in names)
    geo = sum(int((scipy.io.loadmat(os.path.join(root, 'GeoLabels', CAT, n + '.mat'))['S']
                   > 0).sum()) for n in names)
    return sem, geo


def test_one_step_trains_both_heads_and_scoring_reports_both(narrow_model, capsys):
    with training.working_dir(str(narrow_model)):
        solver = training.prepare_solver(weights='init.caffemodel')
        assert sorted(solver.net.outputs) == ['loss', 'loss_geo']
        before = {k: solver.net.params[k][0].data.copy() for k in ('score_fr_sem',
                                                                    'score_fr_geo', 'fc7')}
        results = training.train(solver, 1, 1, training.val_ids(solver),
                                 heads=siftflow_layers.scoring_heads())
        # one more pass: every labelled pixel of the two test images, per head
        hists = score.do_head_tests(solver.test_nets[0], 1, False, ['a', 'b'],
                                    siftflow_layers.scoring_heads())
    for k, w in before.items():
        assert not np.array_equal(solver.net.params[k][0].data, w), k
    (it, metrics), = results
    assert it == 1 and sorted(metrics) == ['score_geo', 'score_sem']
    out = capsys.readouterr().out
    assert 'Iteration 1 head score_sem (labels sem, means over classes present' in out
    assert 'Iteration 1 head score_geo (labels geo)' in out
    # two passes (training's test, then the one above), two heads each
    assert out.count('Iteration 1 mean IU') == 4 and '  awning' in out and '  vertical' in out
    assert [h.shape for h in hists] == [(33, 33), (3, 3)]
    sem, geo = labelled_pixels(str(narrow_model / '..' / 'data' / 'sift-flow'), 'test')
    assert (hists[0].sum(), hists[1].sum()) == (sem, geo)
    assert metrics['score_sem']['mean_iu'] == pytest.approx(
        seg_metrics(hists[0], present_only=True)['mean_iu'], nan_ok=True)


def test_score_command_scores_one_head_with_present_only_means(narrow_model, tmp_path,
                                                               capsys):
    out = score.main([str(narrow_model / 'test.prototxt'), str(narrow_model / 'init.caffemodel'),
                      '--layer', 'score_geo', '--gt', 'geo', '--loss', 'loss_geo',
                      '--classes', '3', '--present-only', '--json', str(tmp_path / 'geo.json')])
    hist = np.array(out['hist'])
    assert hist.shape == (3, 3) and out['images'] == 2 and out['present_only'] is True
    _, geo = labelled_pixels(str(narrow_model / '..' / 'data' / 'sift-flow'), 'test')
    assert hist.sum() == geo
    assert out['mean_iu'] == pytest.approx(seg_metrics(hist, present_only=True)['mean_iu'])
    assert 'scored 2 images' in capsys.readouterr().out


# ------------------------------------------------------------------------ present-only means

# Four classes, hand-counted. Class 0: 4 pixels, 3 right, 1 taken for class 3.
# Class 1: 2 pixels, 1 right, 1 taken for class 0. Class 2: never in the ground truth,
# never predicted. Class 3: never in the ground truth, predicted once.
HIST = np.array([[3, 0, 0, 1],
                 [1, 1, 0, 0],
                 [0, 0, 0, 0],
                 [0, 0, 0, 0]])


def test_present_only_means_leave_out_classes_absent_from_the_ground_truth():
    # IU0 = 3 / (4 + 4 - 3) = 3/5; IU1 = 1 / (2 + 1 - 1) = 1/2; IU3 = 0 / (0 + 1 - 0) = 0
    m = seg_metrics(HIST, present_only=True)
    assert m['mean_iu'] == pytest.approx((3 / 5 + 1 / 2) / 2)
    assert np.isnan(m['iu'][2]) and np.isnan(m['iu'][3])
    np.testing.assert_allclose(m['iu'][:2], [3 / 5, 1 / 2])


def test_reference_means_count_a_predicted_absent_class_at_zero():
    m = seg_metrics(HIST)
    assert m['mean_iu'] == pytest.approx((3 / 5 + 1 / 2 + 0) / 3)
    assert m['iu'][3] == 0 and np.isnan(m['iu'][2])


def test_present_only_changes_neither_accuracies_nor_fwavacc():
    for present_only in (False, True):
        m = seg_metrics(HIST, present_only=present_only)
        assert m['overall_acc'] == pytest.approx(4 / 6)
        assert m['mean_acc'] == pytest.approx((3 / 4 + 1 / 2) / 2)
        assert m['fwavacc'] == pytest.approx(4 / 6 * 3 / 5 + 2 / 6 * 1 / 2)


def test_confusion_matrix_and_results_carry_the_present_only_choice():
    cm = score.ConfusionMatrix(4, present_only=True)
    cm.hist = HIST.copy()
    assert cm.compute()['mean_iu'] == pytest.approx(0.55)
    assert 'mean IU 0.55' in str(cm)
    out = score.results(HIST, names=list('abcd'), present_only=True)
    assert out['present_only'] is True and out['mean_iu'] == pytest.approx(0.55)
    assert out['iu'][3] is None


def test_missing_dataset_folders_say_where_to_get_the_dataset(tmp_path):
    root = tmp_path / 'sift-flow'
    root.mkdir()
    (root / 'test.txt').write_text('coast_a\n')
    with pytest.raises(DataFileNotFoundError, match=r'Images.*SiftFlowDataset\.zip'):
        make_layer(root, 'test')
