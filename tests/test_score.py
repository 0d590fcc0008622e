"""FCN metrics against confusion matrices worked out by hand; scoring nets and folders."""
import importlib
import importlib.util
import json
import math
import os
import re
import types
import uuid

import numpy as np
import pytest
from google.protobuf import text_format
from PIL import Image

import score
import surgery
import torchcaffe as caffe
import voc_layers
from nets import voc
from score import fast_hist, seg_metrics
from torchcaffe import io


def test_fast_hist_counts_gt_rows_against_prediction_columns_and_skips_void():
    gt = np.array([[0, 0, 1], [2, 255, 1]])
    pred = np.array([[0, 1, 1], [2, 2, 0]])
    hist = fast_hist(gt, pred, 3)
    expected = np.array([[1, 1, 0],
                         [1, 1, 0],
                         [0, 0, 1]])
    np.testing.assert_array_equal(hist, expected)


def test_metrics_match_hand_computed_values():
    # gt class 0: 3 px (2 right, 1 predicted as class 1); class 1: 1 px (right);
    # class 2: neither in the ground truth nor predicted, so its IU is undefined.
    hist = np.array([[2, 1, 0],
                     [0, 1, 0],
                     [0, 0, 0]])
    m = seg_metrics(hist)
    assert m['overall_acc'] == pytest.approx(3 / 4)
    assert m['mean_acc'] == pytest.approx((2 / 3 + 1) / 2)
    # IU0 = 2 / (3 + 2 - 2) = 2/3 ; IU1 = 1 / (1 + 2 - 1) = 1/2 ; IU2 undefined
    assert m['mean_iu'] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert m['fwavacc'] == pytest.approx(3 / 4 * 2 / 3 + 1 / 4 * 1 / 2)
    assert np.isnan(m['iu'][2])


def test_class_predicted_but_absent_from_ground_truth_has_zero_iu():
    hist = np.array([[1, 1],
                     [0, 0]])
    m = seg_metrics(hist)
    np.testing.assert_allclose(m['iu'], [0.5, 0.0])
    assert m['mean_iu'] == pytest.approx(0.25)
    assert m['mean_acc'] == pytest.approx(0.5)


# ------------------------------------------------------------------------ scoring a net
#
# A tiny net whose Python data layer gives two known samples in turn and whose score
# layer is a 1 x 1 identity convolution, so the scores are the data. Logits are 0 or
# ln 2 per pixel: softmax probabilities of 1/2 and 1/4 make the loss easy by hand.

LN2 = float(np.log(2))

KNOWN_LAYER = '''
import numpy as np
import torch
import torchcaffe as caffe

LN2 = float(np.log(2))
GRAD_ENABLED = []

# (logits per pixel as (H, W, 3), labels (H, W))
SAMPLES = [
    (np.array([[[0, LN2, 0], [LN2, 0, 0], [0, 0, LN2]]]), np.array([[1, 0, 255]])),
    (np.array([[[0, 0, LN2]], [[0, LN2, 0]]]), np.array([[0], [2]])),
]


class KnownSamples(caffe.Layer):
    def setup(self, bottom, top):
        self.index = 0

    def reshape(self, bottom, top):
        logits, label = SAMPLES[self.index % 2]
        top[0].reshape(1, 3, *label.shape)
        top[1].reshape(1, 1, *label.shape)

    def forward(self, bottom, top):
        GRAD_ENABLED.append(torch.is_grad_enabled())
        logits, label = SAMPLES[self.index % 2]
        top[0].data[...] = logits.transpose(2, 0, 1)[np.newaxis]
        top[1].data[...] = label
        self.index += 1
'''

KNOWN_NET = '''
layer { name: "data" type: "Python" top: "data" top: "label"
        python_param { module: "%s" layer: "KnownSamples" } }
layer { name: "score" type: "Convolution" bottom: "data" top: "score"
        convolution_param { num_output: 3 kernel_size: 1 bias_term: false } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "score" bottom: "label" top: "loss"
        loss_param { normalize: false ignore_label: 255 } }
'''

# gt rows, predicted columns: sample a gives (1 -> 1), (0 -> 0) and a void pixel;
# sample b gives (0 -> 2), (2 -> 1).
KNOWN_HIST = np.array([[1, 0, 1],
                       [0, 1, 0],
                       [0, 1, 0]])
# per image, summed over pixels: a: -log(1/2) twice; b: -log(1/4) twice
KNOWN_LOSS = (2 * LN2 + 2 * np.log(4)) / 2


@pytest.fixture
def known(tmp_path, monkeypatch):
    """(module, make_net): the layer module and a factory of identity-score nets."""
    name = 'known_layers_%s' % uuid.uuid4().hex[:8]
    (tmp_path / (name + '.py')).write_text(KNOWN_LAYER)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv('TORCHCAFFE_PYTHON_LAYER_PATH', str(tmp_path))  # allow its folder
    module = importlib.import_module(name)

    def make_net(identity=True, phase=caffe.TEST):
        proto = text_format.Parse(KNOWN_NET % name, caffe.caffe_pb2.NetParameter())
        net = caffe.Net(proto, phase)
        if identity:
            net.params['score'][0].data[...] = np.eye(3).reshape(3, 3, 1, 1)
        return net
    return module, make_net


def test_compute_hist_and_loss_match_the_hand_computed_values(known):
    module, make_net = known
    net = make_net()
    hist, loss = score.compute_hist(net, None, ['a', 'b'])
    np.testing.assert_array_equal(hist, KNOWN_HIST)
    assert loss == pytest.approx(KNOWN_LOSS, rel=1e-6)
    # scored without recording gradients, and the net's setting is restored
    assert module.GRAD_ENABLED == [False, False]
    assert net.autograd is True


def test_compute_hist_saves_each_prediction_as_a_png_of_class_indices(known, tmp_path):
    _, make_net = known
    save_dir = tmp_path / 'preds'
    score.compute_hist(make_net(), str(save_dir), ['a', 'b'])
    assert sorted(os.listdir(save_dir)) == ['a.png', 'b.png']
    with Image.open(save_dir / 'a.png') as im:
        assert im.mode == 'P'
        np.testing.assert_array_equal(np.array(im), [[1, 0, 2]])
    with Image.open(save_dir / 'b.png') as im:
        np.testing.assert_array_equal(np.array(im), [[2], [1]])


def test_compute_hist_without_a_loss_blob_gives_nan_loss(known):
    _, make_net = known
    hist, loss = score.compute_hist(make_net(), None, ['a', 'b'], loss=None)
    np.testing.assert_array_equal(hist, KNOWN_HIST)
    assert np.isnan(loss)


def test_do_seg_tests_prints_the_reference_lines_and_per_class_iu(known, capsys):
    _, make_net = known
    hist = score.do_seg_tests(make_net(), 7, False, ['a', 'b'], names=['bg', 'one', 'two'])
    np.testing.assert_array_equal(hist, KNOWN_HIST)
    lines = capsys.readouterr().out.splitlines()
    stamp = r'>>> \d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d+)? Iteration 7 '
    expected = [r'loss 2\.07944', r'overall accuracy 0\.5', r'mean accuracy 0\.5',
                r'mean IU 0\.333333', r'fwavacc 0\.375', 'per-class IU']
    for line, pattern in zip(lines[:6], expected, strict=True):  # then the per-class lines
        assert re.fullmatch(stamp + pattern, line), line
    # IU: bg 1 / (2 + 1 - 1), one 1 / (1 + 2 - 1), two 0 / (1 + 1)
    assert [line.split()[:3] for line in lines[6:]] == [['bg', 'IU', '0.5000'],
                                                        ['one', 'IU', '0.5000'],
                                                        ['two', 'IU', '0.0000']]


def test_seg_tests_scores_the_test_net_with_the_train_nets_weights(known, capsys):
    _, make_net = known
    train = make_net(identity=True, phase=caffe.TRAIN)
    test = make_net(identity=False)
    assert not test.params['score'][0].data.any()
    solver = types.SimpleNamespace(net=train, test_nets=[test], iter=12)
    hist = score.seg_tests(solver, False, ['a', 'b'])
    np.testing.assert_array_equal(hist, KNOWN_HIST)
    out = capsys.readouterr().out
    assert re.search(r'>>> .* Begin seg tests', out) and 'Iteration 12 mean IU' in out
    train.params['score'][0].data[0, 0] = 9  # storage is shared from now on
    assert test.params['score'][0].data[0, 0, 0, 0] == 9


def test_confusion_matrix_accumulates_and_prints_a_per_class_table():
    cm = score.ConfusionMatrix(3, ['bg', 'cat', 'dog'])
    cm.update(np.array([[0, 1], [1, 255]]), np.array([[0, 1], [0, 2]]))
    cm.update(np.array([2]), np.array([2]))
    np.testing.assert_array_equal(cm.hist, [[1, 0, 0], [1, 1, 0], [0, 0, 1]])
    assert cm.compute()['mean_iu'] == pytest.approx((1 / 2 + 1 / 2 + 1) / 3)
    text = str(cm)
    assert 'mean IU 0.666667' in text
    assert re.search(r'cat\s+IU 0\.5000\s+acc 0\.5000\s+pixels 2', text)
    with pytest.raises(ValueError, match='2 class names for 3 classes'):
        score.ConfusionMatrix(3, ['a', 'b'])


# ------------------------------------------------------------------------ folder vs folder

def write_png(path, labels, mode='P'):
    if mode == 'P':
        score.save_label_png(np.array(labels), str(path))
    else:
        Image.fromarray(np.array(labels, np.uint8), mode='L').save(str(path))


@pytest.fixture
def folders(tmp_path):
    pred, gt = tmp_path / 'pred', tmp_path / 'gt'
    pred.mkdir()
    gt.mkdir()
    write_png(pred / 'x1.png', [[0, 1], [0, 1]])
    write_png(gt / 'x1.png', [[0, 1], [1, 255]])          # (0,0) (1,1) (1,0), one void
    write_png(pred / 'x2.png', [[2, 0, 0]], mode='L')
    write_png(gt / 'x2.png', [[2, 2, 0]], mode='L')       # (2,2) (2,0) (0,0)
    return pred, gt


def test_folder_scoring_writes_every_number_to_json(folders, tmp_path, capsys):
    pred, gt = folders
    out = tmp_path / 'scores.json'
    score.main(['--pred-dir', str(pred), '--gt-dir', str(gt), '--classes', '3',
                '--json', str(out)])
    result = json.loads(out.read_text())
    assert result['hist'] == [[2, 0, 0], [1, 1, 0], [1, 0, 1]]
    assert result['images'] == 2 and result['loss'] is None
    assert result['overall_acc'] == pytest.approx(4 / 6)
    assert result['mean_acc'] == pytest.approx((1 + 1 / 2 + 1 / 2) / 3)
    assert result['iu'] == pytest.approx([1 / 2, 1 / 2, 1 / 2])
    assert result['mean_iu'] == pytest.approx(1 / 2)
    assert result['fwavacc'] == pytest.approx(1 / 2)
    assert result['classes'] == ['class 0', 'class 1', 'class 2']
    printed = capsys.readouterr().out
    assert 'scored 2 images' in printed and 'mean IU 0.5' in printed


def test_folder_scoring_follows_the_split_file_and_class_names(folders, tmp_path):
    pred, gt = folders
    (tmp_path / 'split.txt').write_text('x2\n\n')
    (tmp_path / 'names.txt').write_text('bg\ncat\ndog\n\nnotes after a blank line\n')
    result = score.main(['--pred-dir', str(pred), '--gt-dir', str(gt), '--split-file',
                         str(tmp_path / 'split.txt'), '--classes', str(tmp_path / 'names.txt')])
    assert result['hist'] == [[1, 0, 0], [0, 0, 0], [1, 0, 1]]
    assert result['classes'] == ['bg', 'cat', 'dog']
    assert result['iu'][1] is None  # cat: never labelled, never predicted


def test_folder_scoring_names_the_file_whose_size_differs(folders):
    pred, gt = folders
    write_png(gt / 'x2.png', [[2, 2, 0], [0, 0, 0]])
    with pytest.raises(SystemExit, match=r'x2\.png is 1 x 3 but its ground truth .*x2\.png '
                                         r'is 2 x 3'):
        score.main(['--pred-dir', str(pred), '--gt-dir', str(gt), '--classes', '3'])


def test_folder_scoring_refuses_predictions_beyond_the_classes(folders):
    pred, gt = folders
    with pytest.raises(SystemExit, match=r'x2\.png predicts class 2, but there are 2 classes'):
        score.main(['--pred-dir', str(pred), '--gt-dir', str(gt), '--classes', '2'])
    os.remove(gt / 'x1.png')
    with pytest.raises(SystemExit, match=r'label PNG not found: .*gt.x1\.png'):
        score.main(['--pred-dir', str(pred), '--gt-dir', str(gt), '--classes', '3'])


# ------------------------------------------------------------------------ a snapshot's val net

def _load_demo_generator():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = importlib.util.spec_from_file_location(
        'make_demo_data', os.path.join(root, 'data', 'make_demo_data.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='module')
def snapshot(tmp_path_factory):
    """A narrow FCN-32s val net over a generated VOC tree, random weights, expectations.

    Laid out as the repository: ``model/val.prototxt`` reads ``../data/VOC``. The
    expected scores come from the deploy net run image by image, independently of
    score.py's data-layer plumbing.
    """
    tmp = tmp_path_factory.mktemp('snapshot')
    info = _load_demo_generator().make_demo_data(str(tmp / 'data'), num_train=1, num_val=3,
                                                 seed=4, min_size=24, max_size=40)
    nets = voc.stage_nets('fcn32s', classes=4, width=1 / 16)
    val = nets['val']
    val.layer[0].python_param.param_str = str(dict(voc_dir='../data/VOC', seed=1337,
                                                   split='val', mean=voc.MEAN))
    (tmp / 'model').mkdir()
    io.write_prototxt(val, str(tmp / 'model' / 'val.prototxt'))

    deploy = caffe.Net(nets['deploy'], caffe.TEST)
    rng = np.random.default_rng(0)
    for name, blobs in deploy.params.items():
        for i, b in enumerate(blobs):
            scale = 0.1 if i else math.sqrt(2 / math.prod(b.data.shape[1:]))
            b.data[...] = rng.normal(0, scale, b.data.shape)
    surgery.interp(deploy, ['upscore'])

    def run(idx):
        rgb = voc_layers.read_rgb(os.path.join(info['voc_dir'], 'JPEGImages', idx + '.jpg'))
        data = voc_layers.preprocess(rgb, np.array(voc.MEAN))
        deploy.blobs['data'].reshape(1, *data.shape)
        return deploy.forward(data=data[np.newaxis], blobs=['score_fr'])

    # Random nets score every pixel alike; centring score_fr on the first image makes
    # the prediction vary with the position and the image.
    deploy.params['score_fr'][1].data[...] -= run(info['val'][0])['score_fr'][0].mean((1, 2))
    weights = str(tmp / 'model' / 'snap.caffemodel')
    deploy.save(weights)

    preds, hists, losses = {}, [], []
    for idx in info['val']:
        label = voc_layers.read_voc_label(
            os.path.join(info['voc_dir'], 'SegmentationClass', idx + '.png'))[0]
        scores = run(idx)['score'][0].astype(np.float64)
        preds[idx] = scores.argmax(0)
        hists.append(fast_hist(label, preds[idx], 4))
        log_p = scores - scores.max(0) - np.log(np.exp(scores - scores.max(0)).sum(0))
        valid = label != 255
        picked = np.take_along_axis(log_p, label[np.newaxis].astype(np.int64) % 255, 0)[0]
        losses.append(-picked[valid].sum())
    return dict(tmp=tmp, info=info, preds=preds, hists=hists, losses=losses)


def test_snapshot_scoring_matches_the_deploy_net_image_by_image(snapshot, monkeypatch,
                                                                capsys):
    tmp = snapshot['tmp']
    monkeypatch.chdir(tmp)
    result = score.main(['model/val.prototxt', 'model/snap.caffemodel', '--classes',
                         'data/classes.txt', '--json', 'scores.json', '--save-dir', 'preds'])
    assert os.getcwd() == str(tmp)  # the net ran from model/ and came back
    expected = sum(snapshot['hists'])
    assert all(len(np.unique(p)) > 1 for p in snapshot['preds'].values())
    written = json.loads((tmp / 'scores.json').read_text())
    assert written == result
    assert written['images'] == 3
    assert written['hist'] == expected.tolist()
    assert written['classes'] == ['background', 'disc', 'polygon', 'stripe']
    assert written['mean_iu'] == pytest.approx(seg_metrics(expected)['mean_iu'])
    assert written['loss'] == pytest.approx(np.mean(snapshot['losses']), rel=1e-4)
    for idx, pred in snapshot['preds'].items():
        with Image.open(tmp / 'preds' / (idx + '.png')) as im:
            np.testing.assert_array_equal(np.array(im), pred)
    printed = capsys.readouterr().out
    assert 'scored 3 images' in printed and re.search(r'stripe\s+IU', printed)


def test_snapshot_scoring_of_the_first_n_images(snapshot, monkeypatch):
    monkeypatch.chdir(snapshot['tmp'])
    result = score.main(['model/val.prototxt', 'model/snap.caffemodel', '--count', '2'])
    assert result['images'] == 2
    assert result['hist'] == sum(snapshot['hists'][:2]).tolist()
    with pytest.raises(SystemExit, match='--count 5, but the split has only 3 images'):
        score.main(['model/val.prototxt', 'model/snap.caffemodel', '--count', '5'])


def test_snapshot_scoring_refuses_a_split_file_in_another_order(snapshot, monkeypatch):
    monkeypatch.chdir(snapshot['tmp'])
    ids = snapshot['info']['val']
    (snapshot['tmp'] / 'reversed.txt').write_text('\n'.join(ids[::-1]) + '\n')
    with pytest.raises(SystemExit, match='reversed.txt does not list the images'):
        score.main(['model/val.prototxt', 'model/snap.caffemodel', '--split-file',
                    'reversed.txt'])
