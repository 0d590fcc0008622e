"""The VOC / SBD data layers (voc_layers.py) and the demo data generator.

Samples come from the real PASCAL VOC image and label in data/demo/ (copied into a
temporary VOC tree) and from tiny trees written by data/make_demo_data.py.
"""
import gc
import logging
import math
import os
import random
import shutil
import textwrap

import numpy as np
import pytest
import scipy.io
from PIL import Image

import torchcaffe as caffe
import voc_layers
from demo import load_generator
from voc_layers import (VOCSegDataLayer, SBDDSegDataLayer, DataLayerError,
                        DataFileNotFoundError, MEAN_BGR)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_IMAGE = os.path.join(ROOT, 'data', 'demo', 'image.jpg')
DEMO_LABEL = os.path.join(ROOT, 'data', 'demo', 'label.png')


make_demo_data = load_generator()


# ------------------------------------------------------------------------ fixtures

@pytest.fixture(scope='module')
def demo(tmp_path_factory):
    """A small generated dataset: 6 train + 3 val samples, sides 20..32 px."""
    out = str(tmp_path_factory.mktemp('demo'))
    return make_demo_data.make_demo_data(out, num_train=6, num_val=3, seed=5,
                                         min_size=20, max_size=32)


def copy_tree(src, tmp_path):
    dst = str(tmp_path / os.path.basename(src))
    shutil.copytree(src, dst)
    return dst


@pytest.fixture
def voc_copy(demo, tmp_path):
    """A private copy of the generated VOC tree (tests may break it)."""
    return copy_tree(demo['voc_dir'], tmp_path)


@pytest.fixture
def sbdd_copy(demo, tmp_path):
    return copy_tree(demo['sbdd_dir'], tmp_path)


@pytest.fixture
def real_voc(demo, tmp_path):
    """A VOC tree holding the real demo image ('real') and one generated sample."""
    voc = str(tmp_path / 'VOC2011')
    for sub in ('JPEGImages', 'SegmentationClass', 'ImageSets/Segmentation'):
        os.makedirs(os.path.join(voc, sub))
    shutil.copy(DEMO_IMAGE, os.path.join(voc, 'JPEGImages', 'real.jpg'))
    shutil.copy(DEMO_LABEL, os.path.join(voc, 'SegmentationClass', 'real.png'))
    other = demo['val'][0]
    shutil.copy(os.path.join(demo['voc_dir'], 'JPEGImages', other + '.jpg'),
                os.path.join(voc, 'JPEGImages'))
    shutil.copy(os.path.join(demo['voc_dir'], 'SegmentationClass', other + '.png'),
                os.path.join(voc, 'SegmentationClass'))
    write_split(voc, 'seg11valid', ['real', other])
    return voc


def write_split(voc_dir, split, ids):
    path = os.path.join(voc_dir, 'ImageSets', 'Segmentation', split + '.txt')
    with open(path, 'w') as f:
        f.write(''.join(i + '\n' for i in ids))
    return path


def make_layer(cls, ntop=2, nbottom=0, **params):
    """Set a layer up as a net does: param_str, phase, setup, reshape."""
    params.setdefault('mean', MEAN_BGR)
    return make_layer_str(cls, repr(params), ntop, nbottom)


def make_layer_str(cls, param_str, ntop=2, nbottom=0):
    layer = cls()
    layer.param_str = param_str
    layer.phase = caffe.TRAIN
    top = [caffe.Blob() for _ in range(ntop)]
    bottom = [caffe.Blob((1,)) for _ in range(nbottom)]
    layer.setup(bottom, top)
    layer.reshape(bottom, top)
    return layer, top


def step(layer, top):
    """One reshape + forward; returns (sample id, data copy, label copy)."""
    layer.reshape([], top)
    sample = layer.indices[layer.idx]
    layer.forward([], top)
    return sample, top[0].data.copy(), top[1].data.copy()


# ------------------------------------------------------------------------ tops

def test_data_top_is_bgr_minus_mean_of_the_real_image(real_voc):
    layer, top = make_layer(VOCSegDataLayer, voc_dir=real_voc, split='seg11valid')
    sample, data, _ = step(layer, top)
    rgb = np.array(Image.open(DEMO_IMAGE))
    assert sample == 'real'
    assert data.dtype == np.float32 and data.shape == (1, 3, 500, 334)
    for y, x in [(0, 0), (250, 100), (499, 333), (123, 321)]:
        for c in range(3):  # top channel c is BGR channel c: RGB channel 2 - c
            expected = np.float32(float(rgb[y, x, 2 - c]) - MEAN_BGR[c])
            assert data[0, c, y, x] == expected


def test_label_top_keeps_the_real_label_values(real_voc):
    layer, top = make_layer(VOCSegDataLayer, voc_dir=real_voc, split='seg11valid')
    _, _, label = step(layer, top)
    assert label.shape == (1, 1, 500, 334)
    assert sorted(np.unique(label)) == [0, 2, 15, 255]
    np.testing.assert_array_equal(label[0, 0], np.array(Image.open(DEMO_LABEL)))


def test_layer_holds_the_sample_as_reference_arrays(real_voc):
    layer, top = make_layer(VOCSegDataLayer, voc_dir=real_voc, split='seg11valid')
    assert layer.data.dtype == np.float32 and layer.data.shape == (3, 500, 334)
    assert layer.label.dtype == np.uint8 and layer.label.shape == (1, 500, 334)
    assert top[0].shape == (1, 3, 500, 334) and top[1].shape == (1, 1, 500, 334)


def test_tops_follow_each_image_size(real_voc, demo):
    layer, top = make_layer(VOCSegDataLayer, voc_dir=real_voc, split='seg11valid')
    first = step(layer, top)[1].shape
    second = step(layer, top)[1].shape
    h, w = Image.open(os.path.join(real_voc, 'JPEGImages', demo['val'][0] + '.jpg')).size[::-1]
    assert first == (1, 3, 500, 334) and second == (1, 3, h, w)


def test_sbd_label_comes_from_gtcls_segmentation(demo):
    layer, top = make_layer(SBDDSegDataLayer, sbdd_dir=demo['sbdd_dir'], split='val')
    sample, data, label = step(layer, top)
    mat = scipy.io.loadmat(os.path.join(demo['sbdd_dir'], 'cls', sample + '.mat'))
    np.testing.assert_array_equal(label[0, 0], mat['GTcls'][0]['Segmentation'][0])
    assert data.shape[2:] == label.shape[2:]


# ------------------------------------------------------------------------ order

@pytest.mark.parametrize('split', ['val', 'seg11valid'])
def test_non_train_splits_go_in_order_and_wrap_around(demo, split):
    layer, top = make_layer(VOCSegDataLayer, voc_dir=demo['voc_dir'], split=split, seed=1)
    n = len(demo['val'])
    assert [step(layer, top)[0] for _ in range(n + 2)] == demo['val'] + demo['val'][:2]


def test_randomize_false_keeps_train_in_order(demo):
    layer, top = make_layer(SBDDSegDataLayer, sbdd_dir=demo['sbdd_dir'], split='train',
                            randomize=False)
    assert [step(layer, top)[0] for _ in range(7)] == demo['train'] + demo['train'][:1]


def reference_global_order(seed, n, count):
    """The reference's indices: random.seed(seed), then randint for the first and each next."""
    state = random.getstate()
    try:
        random.seed(seed)
        return [random.randint(0, n - 1) for _ in range(count)]
    finally:
        random.setstate(state)


@pytest.mark.parametrize('prefetch', [True, False])
def test_seeded_train_order_is_the_references(demo, prefetch):
    layer, top = make_layer(SBDDSegDataLayer, sbdd_dir=demo['sbdd_dir'], split='train',
                            seed=1337, prefetch=prefetch)
    n = len(demo['train'])
    order = []
    for _ in range(20):
        order.append(layer.idx)
        sample, data, _ = step(layer, top)
        np.testing.assert_array_equal(data[0], layer.load_image(sample))
    rng = random.Random(1337)
    assert order == [rng.randint(0, n - 1) for _ in range(20)]
    assert order == reference_global_order(1337, n, 20)
    assert len(set(order)) > 1


def test_private_generator_ignores_global_random(demo):
    a, top_a = make_layer(SBDDSegDataLayer, sbdd_dir=demo['sbdd_dir'], split='train', seed=3)
    b, top_b = make_layer(SBDDSegDataLayer, sbdd_dir=demo['sbdd_dir'], split='train', seed=3)
    seq_a = [step(a, top_a)[0] for _ in range(8)]
    seq_b = []
    for _ in range(8):
        random.random()
        seq_b.append(step(b, top_b)[0])
    assert seq_a == seq_b


def test_prefetch_gives_the_same_samples_as_loading_in_place(demo):
    kw = dict(sbdd_dir=demo['sbdd_dir'], split='train', seed=7)
    a, top_a = make_layer(SBDDSegDataLayer, prefetch=True, **kw)
    b, top_b = make_layer(SBDDSegDataLayer, prefetch=False, **kw)
    for _ in range(10):
        sa, da, la = step(a, top_a)
        sb, db, lb = step(b, top_b)
        assert sa == sb
        np.testing.assert_array_equal(da, db)
        np.testing.assert_array_equal(la, lb)


def test_reshape_without_forward_keeps_the_sample(demo):
    layer, top = make_layer(VOCSegDataLayer, voc_dir=demo['voc_dir'], split='val')
    for _ in range(3):
        layer.reshape([], top)
    assert step(layer, top)[0] == demo['val'][0]
    assert step(layer, top)[0] == demo['val'][1]


# ------------------------------------------------------------------------ prefetch thread

def test_prefetch_thread_is_a_daemon_that_close_stops(demo):
    layer, top = make_layer(VOCSegDataLayer, voc_dir=demo['voc_dir'], split='val')
    thread = layer._prefetcher._thread
    step(layer, top)
    assert thread.daemon and thread.is_alive()
    layer.close()
    assert not thread.is_alive()
    assert step(layer, top)[0] == demo['val'][1]  # still works, loading in place


def test_collecting_the_layer_stops_its_thread(demo):
    layer, top = make_layer(VOCSegDataLayer, voc_dir=demo['voc_dir'], split='val')
    step(layer, top)
    thread = layer._prefetcher._thread
    del layer
    gc.collect()
    thread.join(5)
    assert not thread.is_alive()


@pytest.mark.parametrize('prefetch', [True, False])
def test_missing_image_during_training_names_it(voc_copy, demo, prefetch):
    layer, top = make_layer(VOCSegDataLayer, voc_dir=voc_copy, split='val', prefetch=prefetch)
    path = os.path.join(voc_copy, 'JPEGImages', demo['val'][1] + '.jpg')
    os.remove(path)
    layer.forward([], top)  # copies sample 0, starts loading sample 1
    with pytest.raises(DataFileNotFoundError) as info:
        layer.reshape([], top)
    assert path in str(info.value) and info.value.filename == path
    if prefetch:
        assert 'prefetch thread' in ' '.join(getattr(info.value, '__notes__', []))


def test_unreadable_image_from_the_worker_names_it(voc_copy, demo):
    layer, top = make_layer(VOCSegDataLayer, voc_dir=voc_copy, split='val')
    path = os.path.join(voc_copy, 'JPEGImages', demo['val'][1] + '.jpg')
    with open(path, 'wb') as f:
        f.write(b'not a jpeg')
    layer.forward([], top)
    with pytest.raises(DataLayerError, match='cannot read image') as info:
        layer.reshape([], top)
    assert path in str(info.value)


# ------------------------------------------------------------------------ inside a net

NET = '''
name: "voc_layers_test"
layer {{
  name: "data" type: "Python" top: "data" top: "label"
  python_param {{ module: "voc_layers" layer: "VOCSegDataLayer" param_str: "{params}" }}
}}
layer {{
  name: "score" type: "Convolution" bottom: "data" top: "score"
  convolution_param {{ num_output: 21 kernel_size: 1 }}
}}
layer {{
  name: "loss" type: "SoftmaxWithLoss" bottom: "score" bottom: "label" top: "loss"
  loss_param {{ ignore_label: 255 }}
}}
'''


def test_layer_feeds_a_real_net_at_two_sizes(real_voc, demo, tmp_path):
    params = repr(dict(voc_dir=real_voc, split='seg11valid', mean=MEAN_BGR))
    path = tmp_path / 'net.prototxt'
    path.write_text(textwrap.dedent(NET.format(params=params.replace("'", "\\'"))))
    net = caffe.Net(str(path), caffe.TRAIN)
    shapes = []
    for _ in range(2):
        loss = float(net.forward()['loss'])
        shapes.append(net.blobs['data'].data.shape)
        assert net.blobs['score'].data.shape[2:] == net.blobs['label'].data.shape[2:]
        # zero-filled 1x1 scores: uniform softmax over 21 classes at every valid pixel
        assert loss == pytest.approx(math.log(21), rel=1e-5)
        net.backward()
    h, w = Image.open(os.path.join(real_voc, 'JPEGImages', demo['val'][0] + '.jpg')).size[::-1]
    assert shapes == [(1, 3, 500, 334), (1, 3, h, w)]
    assert sorted(np.unique(net.blobs['label'].data)) != [0, 2, 15, 255]  # second sample


# ------------------------------------------------------------------------ errors

def test_missing_dataset_folder_is_named(tmp_path):
    path = str(tmp_path / 'nowhere')
    with pytest.raises(DataFileNotFoundError, match='nowhere') as info:
        make_layer(VOCSegDataLayer, voc_dir=path, split='val')
    assert info.value.filename == path


def test_missing_split_list_is_named(voc_copy):
    with pytest.raises(DataFileNotFoundError) as info:
        make_layer(VOCSegDataLayer, voc_dir=voc_copy, split='trainval')
    assert info.value.filename == os.path.join(voc_copy, 'ImageSets', 'Segmentation',
                                               'trainval.txt')


def test_empty_split_list_is_named(voc_copy):
    path = write_split(voc_copy, 'empty', ['', '  '])
    with pytest.raises(DataLayerError, match='split list is empty') as info:
        make_layer(VOCSegDataLayer, voc_dir=voc_copy, split='empty')
    assert path in str(info.value)


def test_missing_image_is_found_at_setup(voc_copy, demo):
    path = os.path.join(voc_copy, 'JPEGImages', demo['val'][2] + '.jpg')
    os.remove(path)
    with pytest.raises(DataFileNotFoundError, match='1 of the 3 samples') as info:
        make_layer(VOCSegDataLayer, voc_dir=voc_copy, split='val')
    assert info.value.filename == path


def test_missing_sbd_label_is_found_at_setup(sbdd_copy, demo):
    path = os.path.join(sbdd_copy, 'cls', demo['train'][0] + '.mat')
    os.remove(path)
    with pytest.raises(DataFileNotFoundError) as info:
        make_layer(SBDDSegDataLayer, sbdd_dir=sbdd_copy, split='train', seed=0)
    assert info.value.filename == path


def test_missing_label_folder_is_named(voc_copy):
    shutil.rmtree(os.path.join(voc_copy, 'SegmentationClass'))
    with pytest.raises(DataFileNotFoundError, match='label folder') as info:
        make_layer(VOCSegDataLayer, voc_dir=voc_copy, split='val')
    assert info.value.filename == os.path.join(voc_copy, 'SegmentationClass')


def first_val(voc_copy, demo, folder, ext):
    return os.path.join(voc_copy, folder, demo['val'][0] + ext)


def test_label_of_another_size_names_both_files(voc_copy, demo):
    path = first_val(voc_copy, demo, 'SegmentationClass', '.png')
    Image.fromarray(np.zeros((5, 7), np.uint8)).save(path)
    with pytest.raises(DataLayerError, match='5 x 7') as info:
        make_layer(VOCSegDataLayer, voc_dir=voc_copy, split='val')
    assert path in str(info.value)
    assert first_val(voc_copy, demo, 'JPEGImages', '.jpg') in str(info.value)


def test_rgb_coloured_label_is_refused(voc_copy, demo):
    path = first_val(voc_copy, demo, 'SegmentationClass', '.png')
    Image.open(path).convert('RGB').save(path)
    with pytest.raises(DataLayerError, match="mode 'RGB'") as info:
        make_layer(VOCSegDataLayer, voc_dir=voc_copy, split='val')
    assert path in str(info.value)


def test_unreadable_label_is_named(voc_copy, demo):
    path = first_val(voc_copy, demo, 'SegmentationClass', '.png')
    with open(path, 'wb') as f:
        f.write(b'\x89PNG garbage')
    with pytest.raises(DataLayerError, match='cannot read label') as info:
        make_layer(VOCSegDataLayer, voc_dir=voc_copy, split='val')
    assert path in str(info.value)


def test_mat_without_gtcls_is_named(sbdd_copy, demo):
    path = os.path.join(sbdd_copy, 'cls', demo['val'][0] + '.mat')
    scipy.io.savemat(path, {'GTinst': {'Segmentation': np.zeros((3, 3), np.uint8)}})
    with pytest.raises(DataLayerError, match='GTcls') as info:
        make_layer(SBDDSegDataLayer, sbdd_dir=sbdd_copy, split='val')
    assert path in str(info.value)


def test_sixteen_bit_image_is_refused(voc_copy, demo):
    path = first_val(voc_copy, demo, 'JPEGImages', '.jpg')
    h, w = Image.open(path).size[::-1]
    Image.fromarray(np.full((h, w), 1000, np.uint16)).save(path, format='PNG')
    with pytest.raises(DataLayerError, match='not supported') as info:
        make_layer(VOCSegDataLayer, voc_dir=voc_copy, split='val')
    assert path in str(info.value)


@pytest.mark.parametrize('mode', ['L', 'CMYK', 'RGBA'])
def test_other_colour_modes_become_rgb_with_a_warning(voc_copy, demo, caplog, mode):
    path = first_val(voc_copy, demo, 'JPEGImages', '.jpg')
    rgb = Image.open(path)
    converted = rgb.convert(mode)
    converted.save(path, format='PNG' if mode == 'RGBA' else 'JPEG', quality=95)
    expected_rgb = np.array(Image.open(path).convert('RGB'), np.float64)
    with caplog.at_level(logging.WARNING, logger='voc_layers'):
        layer, top = make_layer(VOCSegDataLayer, voc_dir=voc_copy, split='val')
    assert any(path in r.getMessage() and mode in r.getMessage() for r in caplog.records)
    data = step(layer, top)[1][0]
    expected = (expected_rgb[:, :, ::-1] - np.array(MEAN_BGR)).transpose(2, 0, 1)
    np.testing.assert_array_equal(data, expected.astype(np.float32))
    if mode == 'L':
        bgr = data + np.array(MEAN_BGR, np.float32)[:, None, None]
        np.testing.assert_allclose(bgr[0], bgr[2], atol=1e-4)


@pytest.mark.parametrize('ntop, nbottom, message', [(1, 0, 'two tops'), (3, 0, 'two tops'),
                                                    (2, 1, 'no bottoms')])
def test_tops_and_bottoms_are_checked(demo, ntop, nbottom, message):
    with pytest.raises(DataLayerError, match=message):
        make_layer(VOCSegDataLayer, ntop, nbottom, voc_dir=demo['voc_dir'], split='val')


def test_code_in_param_str_is_not_run(demo, tmp_path):
    marker = tmp_path / 'ran'
    code = "__import__('os').system('touch %s')" % marker
    param_str = "{'voc_dir': %s, 'split': 'val', 'mean': (1, 2, 3)}" % code
    with pytest.raises(DataLayerError, match='literal_eval'):
        make_layer_str(VOCSegDataLayer, param_str)
    with pytest.raises(DataLayerError, match='literal_eval'):
        make_layer_str(VOCSegDataLayer, code)
    assert not marker.exists()


@pytest.mark.parametrize('params, message', [
    ("['voc_dir']", 'must be a dict'),
    ("{'split': 'val', 'mean': (1, 2, 3)}", "lacks 'voc_dir'"),
    ("{'voc_dir': 'x', 'split': 'val', 'mean': (1, 2, 3), 'randomise': False}",
     "unknown param_str key.*'randomise'"),
    ("{'voc_dir': 'x', 'split': 'val', 'mean': (1, 2)}", "'mean' must be three numbers"),
    ("{'voc_dir': 'x', 'split': 'val', 'mean': (1, 2, 3), 'randomize': 'no'}",
     "'randomize' must be True or False"),
])
def test_bad_param_str_is_explained(params, message):
    with pytest.raises(DataLayerError, match=message):
        make_layer_str(VOCSegDataLayer, params)


# ------------------------------------------------------------------------ demo data

def read_tree(root):
    files = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, 'rb') as f:
                files[os.path.relpath(path, root)] = f.read()
    return files


def test_demo_data_is_byte_identical_for_a_seed(tmp_path):
    kw = dict(num_train=3, num_val=2, min_size=20, max_size=30)
    make_demo_data.make_demo_data(str(tmp_path / 'a'), seed=11, **kw)
    make_demo_data.make_demo_data(str(tmp_path / 'b'), seed=11, **kw)
    make_demo_data.make_demo_data(str(tmp_path / 'c'), seed=12, **kw)
    a, b, c = (read_tree(str(tmp_path / x)) for x in 'abc')
    assert len(a) == 2 * 5 * 2 + 3 + 2 + 1  # jpg+label in 2 layouts, 5 split lists, classes
    assert a == b
    jpg = os.path.join('VOC', 'JPEGImages', 'demo_000001.jpg')
    assert a[jpg] != c[jpg]


def test_demo_splits_and_layouts(demo):
    voc, sbdd = demo['voc_dir'], demo['sbdd_dir']
    assert voc_layers.read_split(os.path.join(voc, 'ImageSets', 'Segmentation', 'train.txt')) \
        == demo['train'] == voc_layers.read_split(os.path.join(sbdd, 'train.txt'))
    for split in ('val', 'seg11valid'):
        assert voc_layers.read_split(
            os.path.join(voc, 'ImageSets', 'Segmentation', split + '.txt')) == demo['val']
    assert len(demo['train']) == 6 and len(demo['val']) == 3
    assert not set(demo['train']) & set(demo['val'])


def test_demo_labels_have_the_classes_void_and_sizes(demo):
    voc, sbdd = demo['voc_dir'], demo['sbdd_dir']
    values, shapes = set(), set()
    for sample in demo['train'] + demo['val']:
        png = Image.open(os.path.join(voc, 'SegmentationClass', sample + '.png'))
        assert png.mode == 'P'
        voc_label = np.array(png)
        mat = scipy.io.loadmat(os.path.join(sbdd, 'cls', sample + '.mat'))
        sbd_label = mat['GTcls'][0]['Segmentation'][0]  # the reference's expression
        image = Image.open(os.path.join(voc, 'JPEGImages', sample + '.jpg'))
        assert image.mode == 'RGB'
        assert sbd_label.dtype == np.uint8 and sbd_label.shape == voc_label.shape
        assert image.size[::-1] == voc_label.shape
        assert 255 not in sbd_label  # SBD has no void
        known = voc_label != 255
        np.testing.assert_array_equal(voc_label[known], sbd_label[known])
        values |= set(np.unique(voc_label).tolist())
        shapes.add(voc_label.shape)
        assert all(20 <= s <= 32 for s in voc_label.shape)
    assert values == {0, 1, 2, 3, 255}
    assert len(shapes) > 1


def test_voc_palette_is_the_real_labels(demo):
    real = Image.open(DEMO_LABEL).getpalette()
    assert make_demo_data.voc_palette() == real
    png = Image.open(os.path.join(demo['voc_dir'], 'SegmentationClass',
                                  demo['train'][0] + '.png'))
    assert png.getpalette() == real
