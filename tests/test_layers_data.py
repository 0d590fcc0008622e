"""Caffe's data layers on files the tests make: image lists, HDF5 files, in-memory
arrays and DummyData's fillers."""
import os

import h5py
import numpy as np
import pytest
from PIL import Image

import torchcaffe as caffe
from torchcaffe import layers as L
from torchcaffe.layer_types.data import MemoryDataError, datum_image
from torchcaffe.proto import caffe_pb2


def net_from(tmp_path, text, phase=caffe.TEST, name='net.prototxt'):
    path = tmp_path / name
    path.write_text(text)
    return caffe.Net(str(path), phase)


# ------------------------------------------------------------------------ ImageData

@pytest.fixture
def image_list(tmp_path):
    rng = np.random.default_rng(5)
    folder = tmp_path / 'imgs'
    folder.mkdir()
    images = []
    lines = []
    for i in range(3):
        rgb = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
        Image.fromarray(rgb).save(str(folder / ('im %d.png' % i)))  # a space in the name
        lines.append('im %d.png %d' % (i, 2 * i))
        images.append(np.ascontiguousarray(rgb[:, :, ::-1].transpose(2, 0, 1)))
    (tmp_path / 'list.txt').write_text('\n'.join(lines) + '\n')
    return tmp_path, images


IMAGE_DATA = '''
layer { name: "data" type: "ImageData" top: "data" top: "label"
  image_data_param { source: "%s" root_folder: "%s/" batch_size: 2 %s }
  %s }
'''


def test_image_data_reads_the_list_in_order_with_labels_and_wraps(image_list):
    tmp_path, images = image_list
    net = net_from(tmp_path, IMAGE_DATA % (tmp_path / 'list.txt', tmp_path / 'imgs', '', ''))
    first = net.forward()
    np.testing.assert_array_equal(first['data'], images[:2])
    assert first['label'].tolist() == [0, 2]
    second = net.forward()
    np.testing.assert_array_equal(second['data'], [images[2], images[0]])
    assert second['label'].tolist() == [4, 0]


def test_image_data_resizes_grey_and_transforms(image_list):
    tmp_path, images = image_list
    net = net_from(tmp_path, IMAGE_DATA % (tmp_path / 'list.txt', tmp_path / 'imgs',
                                           'new_height: 4 new_width: 6 is_color: false',
                                           'transform_param { scale: 0.5 mean_value: 8 }'))
    data = net.forward()['data']
    assert data.shape == (2, 1, 4, 6)
    from torchcaffe.data_transformer import resize_bilinear, rgb_to_gray
    grey = rgb_to_gray(np.asarray(Image.open(str(tmp_path / 'imgs' / 'im 0.png'))))
    want = (resize_bilinear(grey[None], 4, 6).astype(np.float32) - 8) * np.float32(0.5)
    np.testing.assert_array_equal(data[0], want)


@pytest.mark.parametrize('is_color', [True, False])
def test_image_data_resizes_as_opencv_inter_linear_up_and_down(tmp_path, is_color):
    # Caffe's ReadImageToCVMat calls cv::resize (INTER_LINEAR); the border rows and
    # columns of an upscale are where a clamped fraction would round differently.
    import cv2
    rng = np.random.default_rng(22)
    folder = tmp_path / 'imgs'
    folder.mkdir()
    sizes = [(9, 11), (5, 7), (16, 12), (30, 41)]
    for i, (h, w) in enumerate(sizes):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
            str(folder / ('%d.png' % i)))
    (tmp_path / 'list.txt').write_text(''.join('%d.png %d\n' % (i, i)
                                               for i in range(len(sizes))))
    flag = cv2.IMREAD_COLOR if is_color else cv2.IMREAD_GRAYSCALE
    for new_h, new_w in ((23, 17), (41, 64), (4, 6)):
        params = 'new_height: %d new_width: %d is_color: %s' % (new_h, new_w,
                                                                  str(is_color).lower())
        text = IMAGE_DATA % (tmp_path / 'list.txt', folder, params, '')
        net = net_from(tmp_path, text.replace('batch_size: 2', 'batch_size: 4'))
        data = net.forward()['data']
        assert data.shape == (len(sizes), 3 if is_color else 1, new_h, new_w)
        for i in range(len(sizes)):
            image = cv2.imread(str(folder / ('%d.png' % i)), flag)  # BGR, as Caffe reads
            want = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
            want = want.transpose(2, 0, 1) if is_color else want[None]
            np.testing.assert_array_equal(data[i], want.astype(np.float32),
                                          err_msg='%s -> %s' % (sizes[i], (new_h, new_w)))


def test_image_data_shuffle_is_a_seeded_permutation_per_epoch(image_list):
    tmp_path, images = image_list
    text = IMAGE_DATA % (tmp_path / 'list.txt', tmp_path / 'imgs', 'shuffle: true', '')
    text = text.replace('batch_size: 2', 'batch_size: 3')

    def epochs():
        caffe.set_random_seed(11)
        net = net_from(tmp_path, text)
        return [net.forward()['label'].tolist() for _ in range(4)]
    labels = epochs()
    assert all(sorted(e) == [0, 2, 4] for e in labels)
    assert len({tuple(e) for e in labels}) > 1  # reshuffled after each pass
    assert epochs() == labels


def test_image_data_errors_name_the_layer_and_file(image_list):
    tmp_path, _ = image_list
    (tmp_path / 'empty.txt').write_text('\n')
    with pytest.raises(caffe.CaffeError, match=r"layer 'data' \(ImageData\).*empty.txt is empty"):
        net_from(tmp_path, IMAGE_DATA % (tmp_path / 'empty.txt', tmp_path, '', ''))
    (tmp_path / 'bad.txt').write_text('im 0.png 0\nbroken.png 1\n')
    (tmp_path / 'imgs' / 'broken.png').write_bytes(b'no image')
    with pytest.raises(caffe.CaffeError, match=r'broken.png: could not decode'):
        net_from(tmp_path, IMAGE_DATA % (tmp_path / 'bad.txt', tmp_path / 'imgs', '', ''))
    (tmp_path / 'nolabel.txt').write_text('im0.png\n')
    with pytest.raises(caffe.CaffeError, match=r'nolabel.txt:1: expected "path label"'):
        net_from(tmp_path, IMAGE_DATA % (tmp_path / 'nolabel.txt', tmp_path, '', ''))


# ------------------------------------------------------------------------ HDF5

def write_h5(path, data, label):
    with h5py.File(str(path), 'w') as f:
        f['data'] = data
        f['label'] = label


HDF5_DATA = '''
layer { name: "h5" type: "HDF5Data" top: "data" top: "label"
  hdf5_data_param { source: "%s" batch_size: 3 %s } }
'''


def test_hdf5_data_reads_rows_file_after_file_and_loops(tmp_path):
    a = np.arange(4 * 2, dtype=np.float64).reshape(4, 2)
    b = 100 + np.arange(2 * 2, dtype=np.float64).reshape(2, 2)
    write_h5(tmp_path / 'a.h5', a, np.arange(4))
    write_h5(tmp_path / 'b.h5', b, 10 + np.arange(2))
    (tmp_path / 'files.txt').write_text('%s\n%s\n' % (tmp_path / 'a.h5', tmp_path / 'b.h5'))
    net = net_from(tmp_path, HDF5_DATA % (tmp_path / 'files.txt', ''))
    rows = np.concatenate([a, b])
    labels = [0, 1, 2, 3, 10, 11]
    for step in range(4):
        out = net.forward()
        idx = [(3 * step + k) % 6 for k in range(3)]
        assert out['data'].dtype == np.float32
        np.testing.assert_array_equal(out['data'], rows[idx])
        assert out['label'].tolist() == [labels[i] for i in idx]


def test_hdf5_data_shuffle_keeps_rows_paired_with_labels(tmp_path):
    data = np.arange(6, dtype=np.float32).reshape(6, 1)
    write_h5(tmp_path / 'a.h5', data, np.arange(6) * 10)
    (tmp_path / 'files.txt').write_text(str(tmp_path / 'a.h5'))
    net = net_from(tmp_path, HDF5_DATA % (tmp_path / 'files.txt', 'shuffle: true'))
    got = [net.forward() for _ in range(2)]
    rows = np.concatenate([g['data'][:, 0] for g in got])
    assert sorted(rows.tolist()) == list(range(6))
    np.testing.assert_array_equal(np.concatenate([g['label'] for g in got]), rows * 10)


def test_hdf5_data_errors_name_the_dataset_and_list(tmp_path):
    write_h5(tmp_path / 'a.h5', np.zeros((2, 1)), np.zeros(3))
    (tmp_path / 'files.txt').write_text(str(tmp_path / 'a.h5'))
    with pytest.raises(caffe.CaffeError, match='need the same'):
        net_from(tmp_path, HDF5_DATA % (tmp_path / 'files.txt', ''))
    with pytest.raises(caffe.CaffeError, match=r"HDF5 source list .*missing.txt not found"):
        net_from(tmp_path, HDF5_DATA % (tmp_path / 'missing.txt', ''))
    text = HDF5_DATA.replace('top: "label"', 'top: "other"') % (tmp_path / 'files.txt', '')
    with pytest.raises(caffe.CaffeError, match="has no dataset 'other'"):
        net_from(tmp_path, text)


def test_hdf5_output_writes_what_it_got(tmp_path):
    out_file = tmp_path / 'out.h5'
    text = '''
input: "x" input_shape { dim: 2 dim: 3 }
input: "y" input_shape { dim: 2 }
layer { name: "out" type: "HDF5Output" bottom: "x" bottom: "y"
  hdf5_output_param { file_name: "%s" } }
''' % out_file
    net = net_from(tmp_path, text)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    net.forward(x=x, y=np.array([4, 5], np.float32))
    with h5py.File(str(out_file), 'r') as f:
        np.testing.assert_array_equal(f['data'][()], x)
        np.testing.assert_array_equal(f['label'][()], [4, 5])


# ------------------------------------------------------------------------ DummyData

def test_dummy_data_shapes_legacy_dims_and_one_filler_for_all():
    ns = caffe.NetSpec()
    ns.a, ns.b = L.DummyData(shape=[dict(dim=[2, 3]), dict(dim=[4])],
                             data_filler=dict(type='constant', value=7), ntop=2)
    net = caffe.Net(ns.to_proto(), caffe.TEST)
    out = net.forward()
    np.testing.assert_array_equal(out['a'], np.full((2, 3), 7, np.float32))
    np.testing.assert_array_equal(out['b'], np.full(4, 7, np.float32))
    lp = caffe_pb2.NetParameter()
    layer = lp.layer.add(name='d', type='DummyData', top=['c'])
    p = layer.dummy_data_param
    p.num.append(2), p.channels.append(1), p.height.append(3), p.width.append(4)
    assert caffe.Net(lp, caffe.TEST).blobs['c'].shape == (2, 1, 3, 4)


def test_dummy_data_refills_random_fillers_but_keeps_constant_ones():
    ns = caffe.NetSpec()
    ns.r, ns.c = L.DummyData(shape=dict(dim=[50]), data_filler=[
        dict(type='uniform', min=-1, max=1), dict(type='constant', value=2)], ntop=2)
    net = caffe.Net(ns.to_proto(), caffe.TEST)
    first = net.forward()['r'].copy()
    net.blobs['c'].data[0] = 5  # a constant top is not refilled: the write stays
    out = net.forward()
    assert np.all(np.abs(first) <= 1) and not np.array_equal(first, out['r'])
    assert out['c'][0] == 5 and np.all(out['c'][1:] == 2)


def test_dummy_data_refuses_a_wrong_number_of_fillers():
    ns = caffe.NetSpec()
    ns.a, ns.b, ns.c = L.DummyData(shape=dict(dim=[1]), ntop=3, data_filler=[
        dict(type='constant'), dict(type='constant')])
    with pytest.raises(caffe.CaffeError, match='2 data_filler for 3 tops'):
        caffe.Net(ns.to_proto(), caffe.TEST)


# ------------------------------------------------------------------------ MemoryData

MEMORY = '''
layer { name: "mem" type: "MemoryData" top: "data" top: "label"
  memory_data_param { batch_size: 2 channels: 1 height: 2 width: 3 } }
layer { name: "scale" type: "Power" bottom: "data" top: "scaled" power_param { scale: 2 } }
'''


def test_memory_data_serves_the_arrays_in_batches_and_cycles(tmp_path):
    net = net_from(tmp_path, MEMORY)
    data = np.arange(4 * 6, dtype=np.float32).reshape(4, 1, 2, 3)
    labels = np.array([3, 1, 4, 1], np.float32)
    net.set_input_arrays(data, labels)  # pycaffe turns 1-d labels into N x 1 x 1 x 1
    for batch in (0, 1, 0):
        out = net.forward(blobs=['data', 'label'])
        np.testing.assert_array_equal(out['data'], data[2 * batch:2 * batch + 2])
        np.testing.assert_array_equal(out['scaled'], 2 * data[2 * batch:2 * batch + 2])
        np.testing.assert_array_equal(out['label'], labels[2 * batch:2 * batch + 2])


@pytest.mark.parametrize('data, labels, message', [
    (np.zeros((3, 1, 2, 3), np.float32), np.zeros(3, np.float32), 'multiple of batch size'),
    (np.zeros((2, 1, 2, 3), np.float64), np.zeros(2, np.float32), 'must be float32'),
    (np.zeros((2, 1, 3, 2), np.float32).transpose(0, 1, 3, 2), np.zeros(2, np.float32),
     'must be C contiguous'),
    (np.zeros((2, 2, 2, 3), np.float32), np.zeros(2, np.float32), 'wrong number of channels'),
    (np.zeros((2, 1, 2, 3), np.float32), np.zeros(4, np.float32), 'same first dimension'),
    (np.zeros((2, 6), np.float32), np.zeros(2, np.float32), 'must be 4-d'),
])
def test_set_input_arrays_checks_as_pycaffe(tmp_path, data, labels, message):
    net = net_from(tmp_path, MEMORY)
    with pytest.raises(RuntimeError, match=message):
        net.set_input_arrays(data, labels)
    assert issubclass(MemoryDataError, caffe.CaffeError)


def test_set_input_arrays_needs_a_memory_data_first_layer_and_forward_needs_arrays(tmp_path):
    net = net_from(tmp_path, 'input: "x" input_shape { dim: 1 }\n')
    with pytest.raises(RuntimeError, match='first layer is a MemoryDataLayer'):
        net.set_input_arrays(np.zeros((1, 1, 1, 1), np.float32), np.zeros(1, np.float32))
    net = net_from(tmp_path, MEMORY)
    with pytest.raises(caffe.CaffeError, match='set_input_arrays'):
        net.forward()


# ------------------------------------------------------------------------ Datum

def test_datum_size_mismatch_is_named():
    datum = caffe_pb2.Datum(channels=1, height=2, width=2, data=b'abc')
    with pytest.raises(caffe.CaffeError, match='record x: datum size mismatch.*4 bytes, data '
                                               'has 3'):
        datum_image(datum, where='record x')


def test_io_datum_to_array_decodes_encoded_datums():
    import io as pyio
    rgb = np.zeros((2, 3, 3), np.uint8)
    rgb[..., 0] = 200
    buf = pyio.BytesIO()
    Image.fromarray(rgb).save(buf, 'PNG')
    arr = caffe.io.datum_to_array(caffe_pb2.Datum(data=buf.getvalue(), encoded=True))
    assert arr.shape == (3, 2, 3) and np.all(arr[2] == 200) and np.all(arr[:2] == 0)


def test_a_train_and_a_test_net_read_one_database(tmp_path):
    from test_convert_imageset import chw_bgr, make_images
    from torchcaffe.tools import convert_imageset
    list_file, images = make_images(str(tmp_path), count=3)  # 6 x 8 pixels each
    source = str(tmp_path / 'db')
    convert_imageset.main([str(tmp_path) + os.sep, list_file, source])
    text = ('layer { name: "d" type: "Data" top: "data" data_param { source: "%s" '
            'backend: LMDB batch_size: 1 } transform_param { crop_size: 4 mirror: true } }'
            % source)
    caffe.set_random_seed(2)
    train = net_from(tmp_path, text, caffe.TRAIN)
    test = net_from(tmp_path, text, caffe.TEST)
    first, tested = train.forward()['data'].copy(), test.forward()['data'].copy()
    assert first.shape == tested.shape == (1, 3, 4, 4)
    # Both read record 0 (BGR, channels first). TEST crops the centre, at ((6 - 4) / 2,
    # (8 - 4) / 2); TRAIN a random 4 x 4 window. Caffe mirrors in either phase when
    # mirror is set (data_transformer.cpp: do_mirror = mirror() && Rand(2)).
    record = chw_bgr(images[0]).astype(np.float32)
    centre = record[:, 1:5, 2:6]
    assert any(np.array_equal(tested[0], c) for c in (centre, centre[:, :, ::-1]))
    windows = [record[:, h:h + 4, w:w + 4] for h in range(3) for w in range(5)]
    assert any(np.array_equal(first[0], c) for w in windows for c in (w, w[:, :, ::-1]))
    caffe.set_random_seed(2)
    again = net_from(tmp_path, text, caffe.TRAIN, name='again.prototxt')
    train_runs = [train.forward()['data'].copy() for _ in range(4)]
    again.forward()
    again_runs = [again.forward()['data'].copy() for _ in range(4)]
    assert all(np.array_equal(a, b) for a, b in zip(train_runs, again_runs))


# ------------------------------------------------------------------------ WindowData

WINDOW_DATA = '''
layer { name: "win" type: "WindowData" top: "data" top: "label"
  window_data_param { source: "%s" root_folder: "%s/" batch_size: 4 fg_fraction: 0.5
                      fg_threshold: 0.5 bg_threshold: 0.3 scale: 0.5 %s }
  transform_param { crop_size: 4 mean_value: 10 mean_value: 20 mean_value: 30 %s } }
'''


@pytest.fixture
def window_file(tmp_path):
    rng = np.random.default_rng(9)
    rgb = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(str(tmp_path / 'scene.png'))
    bgr = rgb[:, :, ::-1].transpose(2, 0, 1).astype(np.float32)
    # class 3 at x 2..5, y 1..4 (fg); a background box at x 6..9, y 5..8; one between
    # the thresholds, never used.
    (tmp_path / 'windows.txt').write_text(
        '# 0\nscene.png\n3\n10\n12\n3\n3 0.9 2 1 5 4\n7 0.1 6 5 9 8\n5 0.4 0 0 3 3\n')
    return tmp_path, bgr


def expected_window(bgr, x1, y1):
    mean = np.array([10, 20, 30], np.float32)[:, None, None]
    return (bgr[:, y1:y1 + 4, x1:x1 + 4] - mean) * np.float32(0.5)


def test_window_data_draws_background_then_foreground_windows(window_file):
    tmp_path, bgr = window_file
    net = net_from(tmp_path, WINDOW_DATA % (tmp_path / 'windows.txt', tmp_path, '', ''))
    out = net.forward()
    assert out['label'].tolist() == [0, 0, 3, 3]
    for k, (x1, y1) in enumerate([(6, 5), (6, 5), (2, 1), (2, 1)]):
        np.testing.assert_array_equal(out['data'][k], expected_window(bgr, x1, y1))


def test_window_data_mirror_flips_some_windows(window_file):
    tmp_path, bgr = window_file
    net = net_from(tmp_path, WINDOW_DATA % (tmp_path / 'windows.txt', tmp_path, '',
                                            'mirror: true'), caffe.TRAIN)
    fg = expected_window(bgr, 2, 1)
    flips = []
    for _ in range(6):
        for item in net.forward()['data'][2:]:
            same, flipped = np.array_equal(item, fg), np.array_equal(item, fg[:, :, ::-1])
            assert same or flipped
            flips.append(flipped)
    assert any(flips) and not all(flips)


def test_window_data_context_pad_leaves_zeros_past_the_image_edge(tmp_path):
    rgb = np.full((6, 6, 3), 100, np.uint8)
    Image.fromarray(rgb).save(str(tmp_path / 'flat.png'))
    (tmp_path / 'w.txt').write_text('# 0\nflat.png\n3\n6\n6\n1\n1 1.0 0 0 3 3\n')
    text = '''
layer { name: "win" type: "WindowData" top: "data" top: "label"
  window_data_param { source: "%s" root_folder: "%s/" batch_size: 1 fg_fraction: 1
                      context_pad: 2 }
  transform_param { crop_size: 8 } }''' % (tmp_path / 'w.txt', tmp_path)
    data = net_from(tmp_path, text).forward()['data'][0]
    # window_geometry((0, 0, 3, 3), (6, 6), 8, 2): source 0..5 (clipped at the right edge
    # too: x2 = 6 -> 5), warped to 5 x 5 at (2, 2); see its doctest for the arithmetic
    from torchcaffe.layer_types.window_data import window_geometry
    (x1, y1, x2, y2), (h, w), (ph, pw) = window_geometry((0, 0, 3, 3), (6, 6), 8, 2)
    assert (ph, pw) == (2, 2)
    want = np.zeros((3, 8, 8), np.float32)
    want[:, ph:ph + h, pw:pw + w] = 100
    np.testing.assert_array_equal(data, want)


def test_window_data_refuses_unusable_window_files(tmp_path, window_file):
    tmp_path, _ = window_file
    (tmp_path / 'nobg.txt').write_text('# 0\nscene.png\n3\n10\n12\n1\n3 0.9 2 1 5 4\n')
    with pytest.raises(caffe.CaffeError, match='no background windows'):
        net_from(tmp_path, WINDOW_DATA % (tmp_path / 'nobg.txt', tmp_path, '', ''))
    (tmp_path / 'zero.txt').write_text('# 0\nscene.png\n3\n10\n12\n1\n0 0.9 2 1 5 4\n')
    with pytest.raises(caffe.CaffeError, match='foreground window of class 0'):
        net_from(tmp_path, WINDOW_DATA % (tmp_path / 'zero.txt', tmp_path, '', ''))
    (tmp_path / 'cut.txt').write_text('# 0\nscene.png\n3\n10\n')
    with pytest.raises(caffe.CaffeError, match='ends in the middle'):
        net_from(tmp_path, WINDOW_DATA % (tmp_path / 'cut.txt', tmp_path, '', ''))


def test_net_reshape_after_forward_keeps_the_data_layer_shapes(image_list):
    tmp_path, images = image_list
    net = net_from(tmp_path, IMAGE_DATA % (tmp_path / 'list.txt', tmp_path / 'imgs', '', ''))
    net.forward()
    net.reshape()
    assert net.blobs['data'].shape == (2, 3, 5, 7) and net.blobs['label'].shape == (2,)


# ------------------------------------------------------------------------ exact resume

def test_a_data_layer_loaded_with_a_saved_state_goes_on_with_the_same_batches(
        image_list, tmp_path):
    # Shuffling, random crops and mirrors, and files read in turn: the state of a layer
    # that gave out 4 batches makes a fresh layer (built under another seed) give out
    # what the first gives next. torchcaffe.resume_state saves it beside a solverstate.
    images_dir, _ = image_list
    for name, rows in (('a', 5), ('b', 3)):  # the tops name the datasets
        with h5py.File(str(tmp_path / (name + '.h5')), 'w') as f:
            f['h5data'] = np.arange(2 * rows, dtype=np.float32).reshape(rows, 2) + ord(name)
            f['h5label'] = np.arange(rows)
    (tmp_path / 'files.txt').write_text('%s\n%s\n' % (tmp_path / 'a.h5', tmp_path / 'b.h5'))
    text = (IMAGE_DATA % (images_dir / 'list.txt', images_dir / 'imgs', 'shuffle: true',
                          'transform_param { crop_size: 3 mirror: true }')
            + HDF5_DATA.replace('top: "data" top: "label"', 'top: "h5data" top: "h5label"')
            % (tmp_path / 'files.txt', 'shuffle: true'))
    caffe.set_random_seed(11)
    first = net_from(tmp_path, text, caffe.TRAIN, 'a.prototxt')
    for _ in range(4):
        first.forward()
    states = {name: first.layer_dict[name].state_dict() for name in ('data', 'h5')}
    assert states['data']['batches'] == 4
    caffe.set_random_seed(12)
    second = net_from(tmp_path, text, caffe.TRAIN, 'b.prototxt')
    second.forward()
    for name, state in states.items():
        second.layer_dict[name].load_state_dict(state)
    for _ in range(3):
        want, got = first.forward(), second.forward()
        for top in ('data', 'label', 'h5data', 'h5label'):
            np.testing.assert_array_equal(got[top], want[top], err_msg=top)


# A resume puts each source where it was (position, orders, generators) from the
# state saved with the last batch given out; it reads nothing already read.

def write_datum_db(path, backend, count=7, seed=3):
    from torchcaffe import db
    rng = np.random.default_rng(seed)
    with db.open_writer(str(path), backend) as writer:
        for i in range(count):
            pixels = rng.integers(0, 256, (3, 6, 5), dtype=np.uint8)
            datum = caffe_pb2.Datum(channels=3, height=6, width=5, data=pixels.tobytes(),
                                    label=i)
            writer.put('%08d' % i, datum.SerializeToString())
    return path


DATA = ('layer { name: "data" type: "Data" top: "data" top: "label" data_param { '
        'source: "%s" backend: %s batch_size: 3 rand_skip: 4 } transform_param { '
        'crop_size: 4 mirror: true } }')


def two_h5_files(tmp_path):
    for name, rows in (('a', 5), ('b', 4)):
        write_h5(tmp_path / (name + '.h5'),
                 np.arange(2 * rows, dtype=np.float32).reshape(rows, 2) + 100 * ord(name),
                 np.arange(rows) + 10 * ord(name))
    (tmp_path / 'files.txt').write_text('%s\n%s\n' % (tmp_path / 'a.h5', tmp_path / 'b.h5'))
    return HDF5_DATA.replace('"h5"', '"data"') % (tmp_path / 'files.txt', 'shuffle: true')


@pytest.fixture(params=['lmdb', 'leveldb', 'image_data', 'hdf5', 'window_data'])
def resumable(request, tmp_path, image_list, window_file):
    """The text of a one-layer TRAIN net (layer "data") that shuffles, crops or mirrors."""
    kind = request.param
    if kind in ('lmdb', 'leveldb'):
        return DATA % (write_datum_db(tmp_path / kind, kind), kind.upper())
    if kind == 'image_data':
        images_dir, _ = image_list
        return IMAGE_DATA % (images_dir / 'list.txt', images_dir / 'imgs', 'shuffle: true',
                             'transform_param { crop_size: 3 mirror: true }')
    if kind == 'hdf5':
        return two_h5_files(tmp_path)
    windows_dir, _ = window_file
    return WINDOW_DATA.replace('"win"', '"data"') % (windows_dir / 'windows.txt', windows_dir,
                                                     '', 'mirror: true')


def saved_after(tmp_path, text, k, seed=21):
    """A TRAIN net that gave out ``k`` batches, and its data layer's state as the
    resume sidecar writes and reads it."""
    from torchcaffe import resume_state
    caffe.set_random_seed(seed)
    net = net_from(tmp_path, text, caffe.TRAIN, 'straight.prototxt')
    for _ in range(k):
        net.forward()
    resume_state.write(str(tmp_path / 'x.solverstate'), k, net)
    return net, resume_state.read(str(tmp_path / 'x.solverstate'))['layers']['data']


def resumed_from(tmp_path, text, state):
    caffe.set_random_seed(99)  # the saved seed, not this one, drives the generators
    net = net_from(tmp_path, text, caffe.TRAIN, 'resumed.prototxt')
    net.layer_dict['data'].load_state_dict(state)
    return net


def assert_same_batches(want_net, got_net, m):
    for _ in range(m):
        want, got = want_net.forward(), got_net.forward()
        for top in want:
            np.testing.assert_array_equal(got[top], want[top], err_msg=top)


@pytest.mark.parametrize('k', [0, 1, 5])
def test_a_layer_restored_from_its_saved_source_state_goes_on_bit_for_bit(
        resumable, tmp_path, k):
    straight, state = saved_after(tmp_path, resumable, k)
    assert ('source' in state) == (k > 0) and state['batches'] == k
    assert_same_batches(straight, resumed_from(tmp_path, resumable, state), 6)


def test_an_old_state_without_source_resumes_exactly_by_reading_again(resumable, tmp_path):
    straight, state = saved_after(tmp_path, resumable, 4)
    del state['source']  # a sidecar written before sources saved their state
    assert_same_batches(straight, resumed_from(tmp_path, resumable, state), 4)


def test_generator_states_round_trip_through_json_exactly():
    import json
    from torchcaffe.data_transformer import rng_state, set_rng_state
    rng = np.random.default_rng([7, 8])
    rng.integers(10, size=5)
    state = rng_state(rng)
    assert state['state']['state'] > 2 ** 64  # PCG64's 128-bit state, beyond a double
    again = np.random.default_rng()
    set_rng_state(again, json.loads(json.dumps(state)))
    assert again.integers(2 ** 62, size=4).tolist() == rng.integers(2 ** 62, size=4).tolist()


def counting(monkeypatch, owner, name):
    """Patch ``owner.name`` to count its calls (and the records a Reader.next returns)."""
    calls = {'calls': 0, 'records': 0}
    original = getattr(owner, name)

    def counted(*args, **kwargs):
        out = original(*args, **kwargs)
        calls['calls'] += 1
        calls['records'] += len(out) if isinstance(out, list) else 0
        return out
    monkeypatch.setattr(owner, name, counted)
    return calls


def restore_counting(tmp_path, text, state, monkeypatch, owner, name):
    """Load ``state`` into a fresh net's data layer and give out one batch, counting the
    calls of ``owner.name`` meanwhile (the next batch, prefetched, included)."""
    caffe.set_random_seed(99)
    net = net_from(tmp_path, text, caffe.TRAIN, 'resumed.prototxt')
    layer = net.layer_dict['data']
    layer._prefetcher.close()  # the fresh net's own prefetch is done
    calls = counting(monkeypatch, owner, name)
    layer.load_state_dict(state)
    got = {top: blob.copy() for top, blob in net.forward().items()}
    layer._prefetcher.close()  # waits for the prefetch of the batch after
    monkeypatch.undo()
    return got, calls


def next_after(net):
    """The next batch of ``net``, its prefetching stopped after."""
    got = {top: blob.copy() for top, blob in net.forward().items()}
    net.layer_dict['data']._prefetcher.close()
    return got


@pytest.mark.parametrize('old_sidecar', [False, True])
def test_restoring_a_database_layer_after_50_batches_reads_only_the_next_batches(
        tmp_path, monkeypatch, old_sidecar):
    from torchcaffe import db
    text = DATA.replace(' rand_skip: 4', '') % (write_datum_db(tmp_path / 'db', 'lmdb'), 'LMDB')
    straight, state = saved_after(tmp_path, text, 50)
    want = next_after(straight)
    if old_sidecar:
        del state['source']
    got, reads = restore_counting(tmp_path, text, state, monkeypatch, db.Reader, 'next')
    for top in want:
        np.testing.assert_array_equal(got[top], want[top])
    # batch 51 and, prefetched, batch 52: 3 records each; an old sidecar reads the 50
    # batches before them again
    assert reads['records'] == (52 if old_sidecar else 2) * 3


@pytest.mark.parametrize('old_sidecar', [False, True])
def test_restoring_an_image_list_after_50_batches_decodes_only_the_next_batches(
        image_list, monkeypatch, old_sidecar):
    from torchcaffe.layer_types import data
    images_dir, _ = image_list
    text = IMAGE_DATA % (images_dir / 'list.txt', images_dir / 'imgs', 'shuffle: true',
                         'transform_param { crop_size: 3 mirror: true }')
    straight, state = saved_after(images_dir, text, 50)
    want = next_after(straight)
    if old_sidecar:
        del state['source']
    got, decodes = restore_counting(images_dir, text, state, monkeypatch, data, 'read_image')
    for top in want:
        np.testing.assert_array_equal(got[top], want[top])
    assert decodes['calls'] == (52 if old_sidecar else 2) * 2


def test_a_saved_state_that_does_not_fit_the_source_names_the_layer(image_list):
    from torchcaffe.layer_types.data import DataLayerError
    images_dir, _ = image_list
    text = IMAGE_DATA % (images_dir / 'list.txt', images_dir / 'imgs', 'shuffle: true', '')
    _, state = saved_after(images_dir, text, 2)
    state['source']['order'] = [0, 1, 2, 3]  # the list had 3 images when it was saved
    with pytest.raises(DataLayerError, match=r"layer 'data' \(ImageData\).*4 entries.*3 images"):
        resumed_from(images_dir, text, state)
