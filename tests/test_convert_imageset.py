"""convert_imageset and compute_image_mean on PNGs the tests make, checked record by
record, and the Data layer reading what they wrote."""
import os

import lmdb
import numpy as np
import plyvel
import pytest
from PIL import Image

import torchcaffe as caffe
from torchcaffe import db
from torchcaffe.data_transformer import read_mean_file, rgb_to_gray
from torchcaffe.proto import caffe_pb2
from torchcaffe.tools import compute_image_mean, convert_imageset


def make_images(folder, count=5, size=(6, 8), seed=0):
    """``count`` random RGB PNGs in ``folder``/img and a list file; returns the list
    path and the images as H x W x 3 RGB arrays."""
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(folder, 'img'), exist_ok=True)
    images = []
    with open(os.path.join(folder, 'list.txt'), 'w') as f:
        for i in range(count):
            rgb = rng.integers(0, 256, size + (3,), dtype=np.uint8)
            Image.fromarray(rgb).save(os.path.join(folder, 'img', '%d.png' % i))
            f.write('img/%d.png %d\n' % (i, 10 + i))
            images.append(rgb)
    return os.path.join(folder, 'list.txt'), images


def chw_bgr(rgb):
    return np.ascontiguousarray(rgb[:, :, ::-1].transpose(2, 0, 1))


def lmdb_records(path):
    env = lmdb.open(path, readonly=True, lock=False)
    with env.begin() as txn:
        records = [(k, caffe_pb2.Datum.FromString(v)) for k, v in txn.cursor()]
    env.close()
    return records


def leveldb_records(path):
    d = plyvel.DB(path)
    records = [(k, caffe_pb2.Datum.FromString(v)) for k, v in d.iterator()]
    d.close()
    return records


@pytest.fixture
def images(tmp_path):
    list_file, imgs = make_images(str(tmp_path))
    return str(tmp_path) + '/', list_file, imgs


def test_lmdb_records_are_keyed_by_index_and_name_and_hold_bgr_chw_bytes(images, tmp_path):
    root, list_file, imgs = images
    out = str(tmp_path / 'train_lmdb')
    assert convert_imageset.main([root, list_file, out]) == 0
    records = lmdb_records(out)
    assert [k for k, _ in records] == [b'%08d_img/%d.png' % (i, i) for i in range(5)]
    for i, (_, datum) in enumerate(records):
        assert (datum.channels, datum.height, datum.width) == (3, 6, 8)
        assert datum.label == 10 + i and not datum.encoded
        assert datum.data == chw_bgr(imgs[i]).tobytes()


def test_leveldb_gray_records_hold_one_channel(images, tmp_path):
    root, list_file, imgs = images
    out = str(tmp_path / 'gray_leveldb')
    assert convert_imageset.main(['--backend=leveldb', '-gray', root, list_file, out]) == 0
    records = leveldb_records(out)
    assert len(records) == 5
    for (_, datum), rgb in zip(records, imgs, strict=True):
        assert (datum.channels, datum.height, datum.width) == (1, 6, 8)
        assert datum.data == rgb_to_gray(rgb).tobytes()  # OpenCV's PNG grey, exactly


def test_encoded_png_stores_the_file_itself(images, tmp_path):
    root, list_file, _ = images
    out = str(tmp_path / 'enc')
    assert convert_imageset.main(['--encoded', root, list_file, out]) == 0
    for i, (_, datum) in enumerate(lmdb_records(out)):
        assert datum.encoded
        with open(os.path.join(root, 'img', '%d.png' % i), 'rb') as f:
            assert datum.data == f.read()


def test_resize_and_reencode_as_jpg(images, tmp_path):
    root, list_file, _ = images
    out = str(tmp_path / 'small')
    assert convert_imageset.main(['--resize_height', '3', '--resize_width', '4',
                                  '--encode_type', 'jpg', root, list_file, out]) == 0
    datum = lmdb_records(out)[0][1]
    assert datum.encoded and datum.data[:2] == b'\xff\xd8'  # a JPEG
    assert Image.open(__import__('io').BytesIO(datum.data)).size == (4, 3)


def test_shuffle_keeps_every_image_once(images, tmp_path):
    root, list_file, _ = images
    out = str(tmp_path / 'shuffled')
    assert convert_imageset.main(['--shuffle', root, list_file, out]) == 0
    names = sorted(k[9:] for k, _ in lmdb_records(out))
    assert names == [b'img/%d.png' % i for i in range(5)]


def test_existing_database_and_size_mismatch_are_refused(images, tmp_path, capsys):
    root, list_file, _ = images
    out = str(tmp_path / 'db')
    assert convert_imageset.main([root, list_file, out]) == 0
    assert convert_imageset.main([root, list_file, out]) == 1
    assert 'already exists' in capsys.readouterr().err
    Image.fromarray(np.zeros((7, 7, 3), np.uint8)).save(os.path.join(root, 'img', '4.png'))
    assert convert_imageset.main(['--check_size', root, list_file, str(tmp_path / 'x')]) == 1
    assert 'incorrect data field size' in capsys.readouterr().err


def test_unreadable_image_is_skipped(images, tmp_path):
    root, list_file, _ = images
    with open(os.path.join(root, 'img', '2.png'), 'wb') as f:
        f.write(b'not a png')
    out = str(tmp_path / 'db')
    assert convert_imageset.main([root, list_file, out]) == 0
    assert [k[:8] for k, _ in lmdb_records(out)] == [b'%08d' % i for i in (0, 1, 3, 4)]


@pytest.mark.parametrize('backend', ['lmdb', 'leveldb'])
def test_compute_image_mean_equals_the_numpy_mean(images, tmp_path, backend):
    root, list_file, imgs = images
    out = str(tmp_path / 'db')
    convert_imageset.main(['--backend', backend, root, list_file, out])
    mean_file = str(tmp_path / 'mean.binaryproto')
    assert compute_image_mean.main(['--backend', backend, out, mean_file]) == 0
    want = np.mean([chw_bgr(i).astype(np.float64) for i in imgs], axis=0)
    got = read_mean_file(mean_file)
    assert got.shape == (3, 6, 8)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    blob = caffe_pb2.BlobProto.FromString(open(mean_file, 'rb').read())
    assert (blob.num, blob.channels, blob.height, blob.width) == (1, 3, 6, 8)


DATA_NET = '''
layer { name: "data" type: "Data" top: "data" top: "label"
  data_param { source: "%s" backend: %s batch_size: 2 }
  %s }
'''


def data_net(tmp_path, source, backend, transform='', phase=caffe.TEST):
    path = tmp_path / 'net.prototxt'
    path.write_text(DATA_NET % (source, backend, transform))
    return caffe.Net(str(path), phase)


@pytest.mark.parametrize('backend', ['lmdb', 'leveldb'])
def test_data_layer_reads_the_records_in_order_and_cycles(images, tmp_path, backend):
    root, list_file, imgs = images
    out = str(tmp_path / 'db')
    convert_imageset.main(['--backend', backend, root, list_file, out])
    net = data_net(tmp_path, out, backend.upper())
    order = [0, 1, 2, 3, 4, 0, 1, 2]
    for step in range(4):
        blobs = net.forward()
        idx = order[2 * step:2 * step + 2]
        assert blobs['label'].tolist() == [10 + i for i in idx]
        np.testing.assert_array_equal(blobs['data'], [chw_bgr(imgs[i]) for i in idx])
        assert blobs['data'].dtype == np.float32


def test_data_layer_with_mean_file_center_crop_and_scale(images, tmp_path):
    root, list_file, imgs = images
    out = str(tmp_path / 'db')
    convert_imageset.main([root, list_file, out])
    mean_file = str(tmp_path / 'mean.binaryproto')
    compute_image_mean.main([out, mean_file])
    mean = read_mean_file(mean_file)
    net = data_net(tmp_path, out, 'LMDB', 'transform_param { crop_size: 4 scale: 0.25 '
                   'mean_file: "%s" }' % mean_file)
    data = net.forward()['data']
    # TEST: centre crop at ((6 - 4) / 2, (8 - 4) / 2) = (1, 2), mean at the same place
    want = (chw_bgr(imgs[0]).astype(np.float32)[:, 1:5, 2:6] - mean[:, 1:5, 2:6]) * np.float32(.25)
    np.testing.assert_array_equal(data[0], want)


def test_data_layer_on_encoded_records_with_force_gray(images, tmp_path):
    root, list_file, imgs = images
    out = str(tmp_path / 'db')
    convert_imageset.main(['--encoded', root, list_file, out])
    net = data_net(tmp_path, out, 'LMDB', 'transform_param { force_gray: true }')
    data = net.forward()['data']
    assert data.shape == (2, 1, 6, 8)
    np.testing.assert_array_equal(data[1, 0], rgb_to_gray(imgs[1]))
    net = data_net(tmp_path, out, 'LMDB')
    np.testing.assert_array_equal(net.forward()['data'][0], chw_bgr(imgs[0]))


def test_data_layer_names_a_missing_database(tmp_path):
    with pytest.raises(caffe.CaffeError, match=r"layer 'data' \(Data\).*not found"):
        data_net(tmp_path, str(tmp_path / 'nowhere'), 'LMDB')


def test_data_layer_names_the_record_too_small_for_the_crop(images, tmp_path):
    root, list_file, _ = images
    out = str(tmp_path / 'db')
    convert_imageset.main([root, list_file, out])
    with pytest.raises(caffe.CaffeError, match=r"record '00000000_img/0.png'.*crop_size 7"):
        data_net(tmp_path, out, 'LMDB', 'transform_param { crop_size: 7 }')


def test_database_reader_cycles_and_peeks(images, tmp_path):
    root, list_file, _ = images
    out = str(tmp_path / 'db')
    convert_imageset.main([root, list_file, out])
    reader = db.open_reader(out, 'lmdb')
    assert reader.peek()[0] == b'00000000_img/0.png'
    keys = [k[:8] for k, _ in reader.next(7)]
    assert keys == [b'%08d' % i for i in (0, 1, 2, 3, 4, 0, 1)]
    assert reader.peek()[0][:8] == b'00000002'
    reader.close()


def test_data_parallel_ranks_read_alternate_records(images, tmp_path):
    from torchcaffe.data_transformer import DataTransformer
    from torchcaffe.layer_types.data import _DatumSource
    root, list_file, _ = images
    out = str(tmp_path / 'db')
    convert_imageset.main([root, list_file, out])
    labels = {}
    for rank in (0, 1):
        reader = db.open_reader(out, 'lmdb')
        source = _DatumSource(reader, 2, DataTransformer(caffe_pb2.TransformationParameter(),
                                                         caffe.TRAIN), None, 'd', rank, 2)
        labels[rank] = [source.load()[1].tolist() for _ in range(2)]
        reader.close()
    # offsets 0..7 run over records 0 1 2 3 4 0 1 2: even offsets to rank 0, odd to rank 1
    assert labels[0] == [[10, 12], [14, 11]]
    assert labels[1] == [[11, 13], [10, 12]]


def test_net_spec_data_layer_as_the_lenet_notebook_writes_it(images, tmp_path):
    from torchcaffe import layers as L, params as P
    root, list_file, imgs = images
    out = str(tmp_path / 'db')
    convert_imageset.main(['--gray', root, list_file, out])
    n = caffe.NetSpec()
    n.data, n.label = L.Data(batch_size=5, backend=P.Data.LMDB, source=out,
                             transform_param=dict(scale=1. / 255), ntop=2)
    path = tmp_path / 'lenet_data.prototxt'
    path.write_text(str(n.to_proto()))
    net = caffe.Net(str(path), caffe.TRAIN)
    blobs = net.forward()
    assert blobs['label'].tolist() == [10, 11, 12, 13, 14]
    np.testing.assert_array_equal(blobs['data'][2, 0],
                                  rgb_to_gray(imgs[2]).astype(np.float32) * np.float32(1. / 255))


def test_tools_print_usage_for_help_and_fail_without_arguments(capsys):
    assert convert_imageset.main(['--help']) == 0
    assert 'ROOTFOLDER/ LISTFILE DB_NAME' in capsys.readouterr().out
    assert convert_imageset.main(['a', 'b']) == 1
    assert '-encode_type' in capsys.readouterr().err
    assert compute_image_mean.main([]) == 1
    assert 'INPUT_DB [OUTPUT_FILE]' in capsys.readouterr().err
    assert compute_image_mean.main(['--bogus', 'x']) == 1
    assert "unknown command line flag 'bogus'" in capsys.readouterr().err


def test_old_v1_data_layer_keeps_its_scale_and_crop_through_the_upgrade(images, tmp_path):
    root, list_file, imgs = images
    out = str(tmp_path / 'db')
    convert_imageset.main([root, list_file, out])
    path = tmp_path / 'v1.prototxt'
    path.write_text('layers { name: "d" type: DATA top: "data" top: "label" data_param { '
                    'source: "%s" backend: LMDB batch_size: 1 scale: 0.5 crop_size: 2 } }' % out)
    data = caffe.Net(str(path), caffe.TEST).forward()['data']
    # centre crop of 6 x 8 at (2, 3)
    np.testing.assert_array_equal(data[0], chw_bgr(imgs[0])[:, 2:4, 3:5] * np.float32(0.5))
