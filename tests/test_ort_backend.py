"""``--backend onnxruntime``: the exported deploy net run by onnxruntime, cached beside
the weights, against the engine on the demo's nets and images."""
import os
import shutil

import numpy as np
import pytest
from PIL import Image

import demo
import infer
import score
import torchcaffe as caffe
from torchcaffe import io, ort_backend
from torchcaffe.ort_backend import BackendError, OnnxRuntimeNet, deploy_part
from tests.random_weights import randomize

pytest.importorskip('onnxruntime')  # pinned in the test extra: this never skips in CI

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_NET = os.path.join(ROOT, 'demo', 'fcn8s')
VOC = os.path.join(demo.DATA_DIR, 'VOC')
IMAGES = 4


@pytest.fixture(scope='module')
def weights(tmp_path_factory):
    """Random weights for the demo's FCN-8s, saved beside copies of its prototxts (the
    val net reads the demo data through its own relative path, so it stays in place)."""
    demo.ensure_data()
    folder = tmp_path_factory.mktemp('fcn8s')
    net = caffe.Net(os.path.join(DEMO_NET, 'deploy.prototxt'), caffe.TEST)
    randomize(net, seed=5)
    path = str(folder / 'weights.caffemodel')
    net.save(path)
    shutil.copy(os.path.join(DEMO_NET, 'deploy.prototxt'), folder / 'deploy.prototxt')
    return path


def val_ids(count=IMAGES):
    with open(os.path.join(VOC, 'ImageSets', 'Segmentation', 'val.txt')) as f:
        return f.read().split()[:count]


def deploy_of(weights):
    return os.path.join(os.path.dirname(weights), 'deploy.prototxt')


def test_deploy_part_of_the_val_net_keeps_data_to_score_and_drops_the_loss():
    net_param = ort_backend.test_net_param(os.path.join(DEMO_NET, 'val.prototxt'))
    deploy, kept, sources = deploy_part(net_param, ['score'], {'data': (1, 3, 8, 8)})
    assert sources == ['data']
    assert deploy.layer[0].type == 'Input' and list(deploy.layer[0].top) == ['data']
    assert list(deploy.layer[0].input_param.shape[0].dim) == [1, 3, 8, 8]
    assert kept[0] == 'conv1_1' and kept[-1] == 'score'
    assert 'loss' not in kept and all(lp.type != 'Python' for lp in deploy.layer)


def test_deploy_part_names_a_blob_the_net_lacks():
    net_param = ort_backend.test_net_param(os.path.join(DEMO_NET, 'val.prototxt'))
    with pytest.raises(BackendError, match="no blob 'scores'"):
        deploy_part(net_param, ['scores'], {})


def test_infer_labels_are_the_engines_on_the_demo_val_images(weights, tmp_path, capsys):
    images = [os.path.join(VOC, 'JPEGImages', i + '.jpg') for i in val_ids()]
    folder = tmp_path / 'images'
    folder.mkdir()
    for path in images:
        shutil.copy(path, folder)
    labels = {}
    for backend in ('torch', 'onnxruntime'):
        out = tmp_path / backend
        assert infer.main([deploy_of(weights), weights, str(folder), '--out', str(out),
                           '--backend', backend]) == 0
        labels[backend] = {p.stem: np.array(Image.open(p)) for p in out.glob('*.png')}
    assert sorted(labels['torch']) == sorted(labels['onnxruntime']) and len(labels['torch'])
    differing = sum(int((labels['torch'][k] != labels['onnxruntime'][k]).sum())
                    for k in labels['torch'])
    pixels = sum(a.size for a in labels['torch'].values())
    print('infer: %d of %d pixels differ between the backends' % (differing, pixels))
    assert differing <= pixels * 1e-4  # float-rounding ties only


def test_score_mean_iu_is_the_same_with_either_backend(weights, capsys):
    results = {}
    for backend in ('torch', 'onnxruntime'):
        results[backend] = score.main([os.path.join(DEMO_NET, 'val.prototxt'), weights,
                                       '--count', str(IMAGES), '--backend', backend])
    capsys.readouterr()
    torch_iu, ort_iu = results['torch']['mean_iu'], results['onnxruntime']['mean_iu']
    hist, ort_hist = (np.array(results[b]['hist']) for b in ('torch', 'onnxruntime'))
    moved = int(np.abs(hist - ort_hist).sum()) // 2  # pixels counted in another cell
    with capsys.disabled():
        print('\nscore.py mean IU on %d demo val images: torch %.6f  onnxruntime %.6f; '
              '%d of %d pixels in another cell of the confusion matrix'
              % (IMAGES, torch_iu, ort_iu, moved, hist.sum()))
    assert results['torch']['images'] == results['onnxruntime']['images'] == IMAGES
    # The confusion matrices: the same pixels of each true class (rows), and the same
    # predictions but for float-rounding ties, as in the infer test above (none here).
    classes = len(results['torch']['classes'])
    assert classes > 1 and hist.shape == ort_hist.shape == (classes, classes)
    assert hist.sum() > 0
    np.testing.assert_array_equal(hist.sum(axis=1), ort_hist.sum(axis=1))
    assert moved <= hist.sum() * 1e-4
    # the loss is the engine's own SoftmaxWithLoss on onnxruntime's scores
    assert results['onnxruntime']['loss'] == pytest.approx(results['torch']['loss'], rel=1e-4)


def net_on(weights, **kw):
    return OnnxRuntimeNet(deploy_of(weights), weights, **kw)


def test_the_export_is_cached_beside_the_weights_and_reused(weights, monkeypatch):
    first = net_on(weights)
    assert first.cache_file and os.path.dirname(first.cache_file) == os.path.dirname(weights)
    assert os.path.basename(first.cache_file).startswith('weights.caffemodel.')

    def no_export(*args):
        raise AssertionError('a fresh cache must not be exported again')
    monkeypatch.setattr(ort_backend, '_export', no_export)
    second = net_on(weights)
    assert not second.rebuilt and second.cache_file == first.cache_file


def test_a_cache_made_for_other_weights_is_rebuilt_never_used(weights, tmp_path):
    own = tmp_path / 'w.caffemodel'
    shutil.copy(weights, own)
    shutil.copy(deploy_of(weights), tmp_path / 'deploy.prototxt')
    before = net_on(str(own))
    data = np.random.default_rng(1).normal(0, 30, (1, 3, 40, 52)).astype(np.float32)
    old = before.forward(data=data)['score'].copy()
    net = caffe.Net(str(tmp_path / 'deploy.prototxt'), str(own), caffe.TEST)
    randomize(net, seed=9)
    net.save(str(own))  # same path, new weights
    after = net_on(str(own))
    assert after.rebuilt and after.cache_file == before.cache_file
    new = after.forward(data=data)['score']
    net.blobs['data'].reshape(*data.shape)
    expected = net.forward(data=data)['score']
    assert not np.allclose(new, old)
    np.testing.assert_allclose(new, expected, atol=1e-4 * np.abs(expected).max())


def test_a_damaged_cache_is_rebuilt(weights, tmp_path, caplog):
    own = tmp_path / 'w.caffemodel'
    shutil.copy(weights, own)
    shutil.copy(deploy_of(weights), tmp_path / 'deploy.prototxt')
    path = net_on(str(own)).cache_file
    with open(path, 'r+b') as f:
        f.truncate(100)
    again = net_on(str(own))
    assert again.rebuilt and os.path.getsize(path) > 100
    assert 'unreadable ONNX cache' in caplog.text


def test_another_prototxt_or_other_outputs_get_their_own_cache_file(weights, tmp_path):
    own = tmp_path / 'w.caffemodel'
    shutil.copy(weights, own)
    deploy = io.read_net_prototxt(deploy_of(weights))
    io.write_prototxt(deploy, str(tmp_path / 'deploy.prototxt'))
    a = net_on(str(own))
    b = OnnxRuntimeNet(str(tmp_path / 'deploy.prototxt'), str(own), outputs=['score_fr'])
    assert a.cache_file != b.cache_file and b.outputs == ['score_fr']
    deploy.layer[-1].crop_param.offset[0] += 1  # another net, same weights
    io.write_prototxt(deploy, str(tmp_path / 'deploy.prototxt'))
    c = net_on(str(own))
    assert c.rebuilt and c.cache_file not in (a.cache_file, b.cache_file)


def test_cpu_runs_on_the_cpu_provider_only():
    assert ort_backend.providers_for(None) == ['CPUExecutionProvider']


def test_gpu_without_onnxruntime_gpu_is_a_clear_error(monkeypatch):
    import onnxruntime
    monkeypatch.setattr(onnxruntime, 'get_available_providers',
                        lambda: ['CPUExecutionProvider'])
    with pytest.raises(BackendError, match='onnxruntime-gpu'):
        ort_backend.providers_for(0)


def test_gpu_with_onnxruntime_gpu_asks_for_that_device_first(monkeypatch):
    import onnxruntime
    monkeypatch.setattr(onnxruntime, 'get_available_providers',
                        lambda: ['CUDAExecutionProvider', 'CPUExecutionProvider'])
    assert ort_backend.providers_for(1) == [('CUDAExecutionProvider', {'device_id': 1}),
                                            'CPUExecutionProvider']


def test_onnxruntime_with_bf16_is_refused_in_one_line(weights, tmp_path, capsys):
    image = os.path.join(VOC, 'JPEGImages', val_ids(1)[0] + '.jpg')
    with pytest.raises(SystemExit) as info:
        infer.main([deploy_of(weights), weights, image, '--out', str(tmp_path / 'o'),
                    '--backend', 'onnxruntime', '--precision', 'bf16'])
    assert 'runs float32' in str(info.value)
