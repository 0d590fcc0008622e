"""Databases under real faults: a conversion killed with SIGKILL, a conversion that hits
the file-size limit (standing in for a full disk), an LMDB / LevelDB / HDF5 file cut
short with os.truncate or with a flipped byte. Each test produces the fault for real,
then checks the message, the exit status and what is left on disk."""
import fcntl
import glob
import os
import re
import resource
import shutil
import signal
import subprocess
import sys

import h5py
import lmdb
import numpy as np
import plyvel
import pytest
from PIL import Image

import torchcaffe as caffe
from torchcaffe import db
from torchcaffe.errors import FormatError
from torchcaffe.tools import compute_image_mean, convert_imageset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONVERT = os.path.join(ROOT, 'tools', 'convert_imageset.py')
MEAN = os.path.join(ROOT, 'tools', 'compute_image_mean.py')
GLOG_LINE = re.compile(r'^[IWE]\d{4} \d\d:\d\d:\d\d\.\d{6} +\d+ \S+:\d+\] ')


def make_images(folder, count, size, seed=0):
    """``count`` random RGB PNGs of ``size`` (h, w) and their list; returns (root/, list)."""
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(folder, 'img'), exist_ok=True)
    with open(os.path.join(folder, 'list.txt'), 'w') as f:
        for i in range(count):
            rgb = rng.integers(0, 256, size + (3,), dtype=np.uint8)
            Image.fromarray(rgb).save(os.path.join(folder, 'img', '%d.png' % i))
            f.write('img/%d.png %d\n' % (i, i % 10))
    return folder + '/', os.path.join(folder, 'list.txt')


def count_records(path, backend):
    if backend == 'lmdb':
        env = lmdb.open(path, readonly=True, lock=False)
        try:
            return env.stat()['entries']
        finally:
            env.close()
    d = plyvel.DB(path)
    try:
        return sum(1 for _ in d.iterator(include_value=False))
    finally:
        d.close()


def error_lines(stderr):
    """stderr without torchcaffe's glog-style INFO / WARNING records."""
    return [line for line in stderr.strip().splitlines() if not GLOG_LINE.match(line)]


def beside(out):
    """What exists next to the database ``out``, under its name or a longer one."""
    return sorted(os.path.basename(p) for p in glob.glob(glob.escape(out) + '*'))


# ------------------------------------------------------------------ killed conversions

KILL_TOTAL = 2500


@pytest.fixture(scope='module')
def many_images(tmp_path_factory):
    return make_images(str(tmp_path_factory.mktemp('many')), KILL_TOTAL, (2, 2))


@pytest.mark.parametrize('backend', ['lmdb', 'leveldb'])
def test_killed_conversion_leaves_nothing_under_the_final_name_and_the_rerun_starts_again(
        many_images, tmp_path, backend, caplog):
    root, list_file = many_images
    out = str(tmp_path / ('train_' + backend))
    child = subprocess.Popen([sys.executable, CONVERT, '--backend', backend, root, list_file,
                              out], stderr=subprocess.PIPE, text=True)
    seen = []
    for line in child.stderr:
        seen.append(line)
        if 'Processed 1000 files.' in line:
            child.send_signal(signal.SIGKILL)
            break
    child.stderr.close()
    assert child.wait(60) == -signal.SIGKILL, ''.join(seen)
    partial = '%s.partial-%d' % (out, child.pid)
    assert beside(out) == [os.path.basename(partial)]  # nothing under the final name
    committed = count_records(partial, backend)  # what the killed run had committed
    assert committed in (1000, 2000) and committed < KILL_TOTAL

    assert convert_imageset.main(['--backend', backend, root, list_file, out]) == 0
    assert ('%s: found %s, an unfinished build left by a run that stopped (process %d); '
            'removing it and starting again' % (out, partial, child.pid)) in caplog.text
    assert beside(out) == [os.path.basename(out)]
    assert count_records(out, backend) == KILL_TOTAL


def test_a_build_whose_writer_still_runs_is_refused_not_removed(tmp_path, capsys, caplog):
    root, list_file = make_images(str(tmp_path), 3, (2, 2))
    out = str(tmp_path / 'db')
    building = out + '.partial-4242'
    os.mkdir(building)
    fd = os.open(building, os.O_RDONLY)  # the lock a running writer holds
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        assert convert_imageset.main([root, list_file, out]) == 1
        err = capsys.readouterr().err
        assert ('%s is being built by another run (process 4242, in %s)' % (out, building)
                in err)
        assert beside(out) == ['db.partial-4242']
    finally:
        os.close(fd)
    assert convert_imageset.main([root, list_file, out]) == 0  # the writer is gone now
    assert 'found %s, an unfinished build' % building in caplog.text
    assert beside(out) == ['db'] and count_records(out, 'lmdb') == 3


def test_a_failed_conversion_leaves_nothing_and_a_good_one_only_the_database(tmp_path, capsys):
    root, list_file = make_images(str(tmp_path), 3, (2, 2))
    with open(os.path.join(root, 'img', '2.png'), 'wb') as f:
        f.write(b'\x89PNG but cut')
    Image.fromarray(np.zeros((3, 3, 3), np.uint8)).save(os.path.join(root, 'img', '1.png'))
    out = str(tmp_path / 'sized')
    assert convert_imageset.main(['--check_size', root, list_file, out]) == 1
    assert 'incorrect data field size' in capsys.readouterr().err
    assert beside(out) == []
    out = str(tmp_path / 'good')
    assert convert_imageset.main([root, list_file, out]) == 0
    assert beside(out) == ['good'] and sorted(os.listdir(out)) == ['data.mdb', 'lock.mdb']


# ------------------------------------------------------------------ a full disk

FSIZE_LIMIT = 512 * 1024


def limit_file_size():
    """In the child: writes past FSIZE_LIMIT fail with EFBIG instead of killing it
    (SIGXFSZ ignored), as they fail with ENOSPC on a full disk."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (FSIZE_LIMIT, FSIZE_LIMIT))


@pytest.mark.parametrize('backend', ['lmdb', 'leveldb'])
def test_conversion_past_the_file_size_limit_is_one_error_line_and_leaves_nothing(
        tmp_path, backend):
    # 120 images of 64 x 64 x 3 bytes: 1.4 MB of records for a 512 KB limit
    root, list_file = make_images(str(tmp_path), 120, (64, 64))
    out = str(tmp_path / ('full_' + backend))
    done = subprocess.run([sys.executable, CONVERT, '--backend', backend, root, list_file, out],
                          capture_output=True, text=True, timeout=120,
                          preexec_fn=limit_file_size)
    assert done.returncode == 1, done.stderr
    assert 'Traceback' not in done.stderr
    lines = error_lines(done.stderr)
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith('convert_imageset: cannot write %s database %s: the file-size '
                               'limit (ulimit -f) of %d bytes was reached'
                               % (backend, out, FSIZE_LIMIT)), lines[0]
    assert lines[0].endswith('the partial build was removed')
    assert beside(out) == []


def test_a_database_that_cannot_be_created_is_one_error_line(tmp_path, capsys):
    root, list_file = make_images(str(tmp_path), 2, (2, 2))
    (tmp_path / 'afile').write_text('a file where a folder should be')
    out = str(tmp_path / 'afile' / 'db')
    assert convert_imageset.main([root, list_file, out]) == 1
    err = error_lines(capsys.readouterr().err)
    assert len(err) == 1 and err[0].startswith(
        'convert_imageset: cannot create lmdb database %s: ' % out), err
    assert 'Not a directory' in err[0]
    assert (tmp_path / 'afile').is_file() and beside(out) == []


def test_write_causes_are_named():
    # The cause a writer reports for errors that carry an errno (a permission
    # fault cannot be produced for real here: the suite may run as root).
    import errno
    here = os.path.dirname(os.path.abspath(__file__))
    assert db._write_cause(PermissionError(errno.EACCES, 'Permission denied', 'x'),
                           here).startswith('permission denied ([Errno 13]')
    assert db._write_cause(OSError(errno.ENOSPC, 'No space left on device'),
                           here).startswith('no space left on the device (')
    assert db._write_cause(lmdb.Error('mdb_txn_commit: Input/output error'), here) == \
        'mdb_txn_commit: Input/output error'  # no limit, space free: the library's words


# ------------------------------------------------------------------ truncated LMDB

@pytest.fixture
def cut_lmdb(tmp_path):
    """An LMDB of 40 images cut to half its size; (path, size now, size it needs)."""
    root, list_file = make_images(str(tmp_path / 'src'), 40, (16, 16))
    out = str(tmp_path / 'train_lmdb')
    assert convert_imageset.main([root, list_file, out]) == 0
    env = lmdb.open(out, readonly=True, lock=False)
    need = (env.info()['last_pgno'] + 1) * env.stat()['psize']  # LMDB's own count
    env.close()
    data = os.path.join(out, 'data.mdb')
    assert os.path.getsize(data) >= need > 8 * 4096
    os.truncate(data, need // 2)
    return out, need // 2, need


def test_a_truncated_lmdb_kills_a_plain_lmdb_reader_with_sigbus(cut_lmdb):
    # The fault is real: without the check, reading the records dies of SIGBUS.
    out = cut_lmdb[0]
    code = ('import lmdb, sys\nenv = lmdb.open(sys.argv[1], readonly=True, lock=False)\n'
            'print(sum(len(v) for _, v in env.begin().cursor()))\n')
    done = subprocess.run([sys.executable, '-c', code, out], capture_output=True, timeout=60)
    assert done.returncode == -signal.SIGBUS


def test_the_data_layer_refuses_a_truncated_lmdb_naming_the_file_and_both_sizes(
        cut_lmdb, tmp_path):
    out, have, need = cut_lmdb
    net = tmp_path / 'net.prototxt'
    net.write_text('layer { name: "data" type: "Data" top: "data" top: "label" '
                   'data_param { source: "%s" backend: LMDB batch_size: 2 } }' % out)
    with pytest.raises(caffe.CaffeError) as info:
        caffe.Net(str(net), caffe.TRAIN)
    message = str(info.value)
    assert message.startswith("layer 'data' (Data): lmdb database %s is truncated: " % out)
    assert '%s holds %d bytes' % (os.path.join(out, 'data.mdb'), have) in message
    assert 'needs %d' % need in message
    assert os.path.getsize(os.path.join(out, 'data.mdb')) == have  # left as it was


def test_compute_image_mean_refuses_a_truncated_lmdb_with_one_line(cut_lmdb, tmp_path):
    out, have, need = cut_lmdb
    mean = str(tmp_path / 'mean.binaryproto')
    done = subprocess.run([sys.executable, MEAN, out, mean], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 1, done.stderr
    lines = error_lines(done.stderr)
    assert len(lines) == 1 and 'Traceback' not in done.stderr, done.stderr
    assert lines[0].startswith('compute_image_mean: lmdb database %s is truncated: %s holds '
                               '%d bytes' % (out, os.path.join(out, 'data.mdb'), have)), lines[0]
    assert 'needs %d' % need in lines[0]
    assert not os.path.exists(mean)


def test_an_lmdb_cut_inside_its_meta_pages_is_truncated_too(cut_lmdb):
    out = cut_lmdb[0]
    data = os.path.join(out, 'data.mdb')
    with open(data, 'rb') as f:
        whole = f.read()
    for size in (0, 100, 4096 + 50):  # nothing, part of meta page 0, part of meta page 1
        with open(data, 'wb') as f:
            f.write(whole[:size])
        with pytest.raises(db.DBError, match=r'is truncated: .*data\.mdb holds %d bytes'
                           % size):
            db.open_reader(out, 'lmdb')


def test_the_size_check_reads_the_newer_meta_page(tmp_path):
    # Two commits: the second meta page (txn 2) counts more pages than the first (txn 1).
    out = str(tmp_path / 'two')
    env = lmdb.open(out, map_size=1 << 24)
    with env.begin(write=True) as txn:
        txn.put(b'a', b'x' * 100)
    with env.begin(write=True) as txn:
        for i in range(200):
            txn.put(b'k%03d' % i, b'y' * 200)
    info, psize = env.info(), env.stat()['psize']
    env.close()
    need = (info['last_pgno'] + 1) * psize
    data = os.path.join(out, 'data.mdb')
    os.truncate(data, need - psize)  # enough for the older meta page, not the newer
    with pytest.raises(db.DBError, match='transaction %d\\) needs %d' % (info['last_txnid'],
                                                                         need)):
        db.open_reader(out, 'lmdb')


# ------------------------------------------------------------------ damaged LevelDB

def flip_byte(path, offset):
    with open(path, 'r+b') as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


@pytest.fixture
def leveldb_images(tmp_path):
    root, list_file = make_images(str(tmp_path / 'src'), 30, (16, 16))
    out = str(tmp_path / 'train_leveldb')
    assert convert_imageset.main(['--backend', 'leveldb', root, list_file, out]) == 0
    return out


def table_files(out):
    d = plyvel.DB(out)
    d.compact_range()  # records from the log into a table file
    d.close()
    return sorted(glob.glob(os.path.join(out, '*.ldb')))


def test_a_leveldb_log_record_failing_its_checksum_is_an_error_not_lost_records(
        leveldb_images, tmp_path, capsys):
    out = leveldb_images
    log_file, = [p for p in glob.glob(os.path.join(out, '*.log')) if os.path.getsize(p)]
    flip_byte(log_file, os.path.getsize(log_file) // 2)
    # LevelDB on its own defaults drops the damaged batch and opens what is left
    copy = str(tmp_path / 'copy')
    shutil.copytree(out, copy)
    plain = plyvel.DB(copy)
    assert sum(1 for _ in plain) < 30
    plain.close()
    mean = str(tmp_path / 'mean.binaryproto')
    capsys.readouterr()
    assert compute_image_mean.main(['--backend', 'leveldb', out, mean]) == 1
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1, lines
    assert 'cannot open leveldb database %s' % out in lines[0]
    assert 'checksum mismatch' in lines[0]
    assert not os.path.exists(mean)


def test_a_truncated_leveldb_table_is_refused_naming_the_file_and_both_sizes(leveldb_images):
    out = leveldb_images
    table, = table_files(out)
    size = os.path.getsize(table)
    os.truncate(table, size // 2)
    with pytest.raises(db.DBError) as info:
        db.open_reader(out, 'leveldb', "layer 'data' (Data)")
    assert str(info.value) == ("layer 'data' (Data): leveldb database %s is truncated: %s "
                               "holds %d bytes, its manifest says %d; copy it again or "
                               "rebuild it" % (out, table, size // 2, size))


@pytest.mark.parametrize('where', [0.1, 0.5, 0.9])
def test_a_leveldb_table_block_failing_its_checksum_is_an_error_naming_the_database(
        leveldb_images, where):
    out = leveldb_images
    table, = table_files(out)
    flip_byte(table, int(os.path.getsize(table) * where))
    with pytest.raises(db.DBError, match=r'cannot read leveldb database %s, it is damaged: '
                       r'.*checksum' % re.escape(out)):
        reader = db.open_reader(out, 'leveldb')
        try:
            for _ in reader:
                pass
        finally:
            reader.close()


def test_a_leveldb_read_that_stops_before_the_last_key_is_an_error(leveldb_images,
                                                                   monkeypatch):
    # plyvel ends an iteration quietly when LevelDB's iterator stops on an error; here
    # its iterator is made to stop after 12 records, as it does at a damaged block.
    out = leveldb_images
    reader = db.open_reader(out, 'leveldb')
    real = reader._db

    class QuietStop:
        def iterator(self, **kwargs):
            it = real.iterator(**kwargs)
            if kwargs.get('reverse'):
                return it
            return _Cut(it, 12)

    monkeypatch.setattr(reader, '_db', QuietStop())
    try:
        with pytest.raises(db.DBError, match=r"reading stopped after key b'00000011_img/11"
                           r"\.png', before its last key b'00000029_img/29\.png'"):
            reader.next(20)
    finally:
        monkeypatch.undo()
        reader.close()


class _Cut:
    def __init__(self, it, n):
        self.it, self.n = it, n

    def __iter__(self):
        for i, item in enumerate(self.it):
            if i == self.n:
                return
            yield item

    def close(self):
        self.it.close()


def test_a_single_block_leveldb_table_that_fails_its_checksum_is_not_called_empty(tmp_path):
    out = str(tmp_path / 'small')
    d = plyvel.DB(out, create_if_missing=True)
    for i in range(5):
        d.put(b'%d' % i, b'x' * 100)
    d.compact_range()
    d.close()
    table, = glob.glob(os.path.join(out, '*.ldb'))
    flip_byte(table, 50)
    with pytest.raises(db.DBError, match='its manifest lists tables, but no record can be '
                       'read'):
        db.open_reader(out, 'leveldb')


# ------------------------------------------------------------------ truncated HDF5

def test_the_hdf5_data_layer_names_a_truncated_source_file(tmp_path):
    path = str(tmp_path / 'train.h5')
    with h5py.File(path, 'w') as f:
        f['data'] = np.arange(4 * 3 * 8 * 8, dtype=np.float32).reshape(4, 3, 8, 8)
        f['label'] = np.arange(4, dtype=np.float32)
    os.truncate(path, os.path.getsize(path) // 2)
    (tmp_path / 'list.txt').write_text(path + '\n')
    net = tmp_path / 'net.prototxt'
    net.write_text('layer { name: "h5" type: "HDF5Data" top: "data" top: "label" '
                   'hdf5_data_param { source: "%s" batch_size: 2 } }' % (tmp_path / 'list.txt'))
    with pytest.raises(caffe.CaffeError, match=r"layer 'h5' \(HDF5Data\): cannot read HDF5 "
                       r"file %s: OSError: .*truncated file" % re.escape(path)):
        caffe.Net(str(net), caffe.TRAIN)


def test_truncated_hdf5_weights_are_refused_naming_the_file(tmp_path):
    proto = tmp_path / 'net.prototxt'
    proto.write_text('input: "data" input_shape { dim: 1 dim: 3 dim: 4 dim: 4 }\n'
                     'layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" '
                     'convolution_param { num_output: 2 kernel_size: 3 } }\n')
    net = caffe.Net(str(proto), caffe.TEST)
    weights = str(tmp_path / 'w.caffemodel.h5')
    net.save_hdf5(weights)
    os.truncate(weights, os.path.getsize(weights) // 2)
    with pytest.raises(FormatError, match=r'^%s: .*truncated file' % re.escape(weights)):
        caffe.Net(str(proto), caffe.TEST, weights=weights)
