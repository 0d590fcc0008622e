"""LeNet end to end through Caffe's tools, on generated digits (examples/mnist/).

make_digits.py renders digits and runs convert_imageset into LMDBs; ``caffe train``
(the console script, in a subprocess) trains the example's LeNet from them; its log
parses with parse_log, its curve plots, and ``caffe test`` scores the snapshot. The
example's prototxts are used as committed, with a shorter schedule (40 iterations
of 32 digits at 3x Caffe's base_lr) so that the test stays short.
"""
import os
import re
import shutil
import subprocess
import sys

import pytest
from PIL import Image

from torchcaffe import io
from torchcaffe.tools import parse_log

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, 'examples', 'mnist')
ITERS = 40


def caffe_command():
    """The installed ``caffe`` console script beside this Python, else the module."""
    script = os.path.join(os.path.dirname(sys.executable), 'caffe')
    return [script] if os.path.isfile(script) else [sys.executable, '-m',
                                                     'torchcaffe.tools.caffe_cli']


def run_caffe(args, cwd):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''))
    done = subprocess.run(caffe_command() + args, cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stderr


@pytest.fixture(scope='module')
def lenet(tmp_path_factory):
    """A run folder laid out as Caffe's root: examples/mnist/ with LMDBs and prototxts."""
    run = tmp_path_factory.mktemp('lenet')
    folder = run / 'examples' / 'mnist'
    folder.mkdir(parents=True)
    sys.path.insert(0, EXAMPLE)
    try:
        import make_digits
        make_digits.make_lmdbs(str(folder), num_train=400, num_test=200, seed=0)
    finally:
        sys.path.remove(EXAMPLE)
    shutil.copy(os.path.join(EXAMPLE, 'lenet_train_test.prototxt'), folder)
    solver = io.read_solver_prototxt(os.path.join(EXAMPLE, 'lenet_solver.prototxt'),
                                     upgrade=False)
    solver.max_iter = solver.snapshot = solver.test_interval = ITERS
    solver.test_iter[0] = 2  # 2 x 100 = the 200 test digits
    solver.display = 10
    solver.base_lr = 0.03  # a higher rate than Caffe's 0.01, for the short run
    io.write_prototxt(solver, str(folder / 'lenet_solver.prototxt'))
    net = (folder / 'lenet_train_test.prototxt').read_text()
    (folder / 'lenet_train_test.prototxt').write_text(
        net.replace('batch_size: 64', 'batch_size: 32'))
    log = run_caffe(['train', '--solver=examples/mnist/lenet_solver.prototxt', '--plot'],
                    str(run))
    return run, log


def test_generated_digits_become_lmdbs_of_grey_28x28_datums(lenet):
    run, _ = lenet
    from torchcaffe import caffe_pb2, db
    reader = db.open_reader(str(run / 'examples/mnist/mnist_test_lmdb'), 'lmdb')
    try:
        records = list(reader)
    finally:
        reader.close()
    assert len(records) == 200
    datum = caffe_pb2.Datum.FromString(records[3][1])
    assert (datum.channels, datum.height, datum.width) == (1, 28, 28)
    assert datum.label == 3  # the test list is not shuffled: labels cycle 0-9


def test_caffe_train_snapshots_and_its_log_parses(lenet):
    run, log = lenet
    folder = run / 'examples' / 'mnist'
    assert (folder / ('lenet_iter_%d.caffemodel' % ITERS)).is_file()
    assert (folder / ('lenet_iter_%d.solverstate' % ITERS)).is_file()
    assert 'Optimization Done.' in log
    train, test = parse_log.parse_log(str(folder / 'lenet.log'))
    assert [r['NumIters'] for r in train] == list(range(0, ITERS, 10))
    assert [r['NumIters'] for r in test] == [0, ITERS]
    assert train[-1]['loss'] < train[0]['loss']
    assert test[0]['accuracy'] < 0.25 < 0.3 < test[-1]['accuracy']  # chance is 0.1


def test_the_learning_curve_is_a_png(lenet):
    run, _ = lenet
    png = run / 'examples' / 'mnist' / 'lenet_curve.png'
    with Image.open(png) as im:
        assert im.format == 'PNG' and im.size[0] > 300
        im.verify()


def test_caffe_test_scores_the_snapshot_above_chance(lenet):
    run, _ = lenet
    log = run_caffe(['test', '--model=examples/mnist/lenet_train_test.prototxt',
                     '--weights=examples/mnist/lenet_iter_%d.caffemodel' % ITERS,
                     '--iterations=2'], str(run))
    batches = [float(v) for v in re.findall(r'\] Batch \d+, accuracy = ([\d.e-]+)', log)]
    assert len(batches) == 2
    mean = float(re.search(r'\] accuracy = ([\d.e-]+)\n', log).group(1))
    assert mean == pytest.approx(sum(batches) / 2, abs=1e-5)
    assert mean > 0.3
    loss = re.search(r'\] loss = ([\d.e-]+) \(\* 1 = ([\d.e-]+) loss\)', log)
    assert loss and loss.group(1) == loss.group(2)
