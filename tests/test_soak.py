"""Long runs: memory, file handles and threads stay flat over many iterations.

Trains a narrow FCN-32s (1/32 width) on generated scenes with the shared loop of
every solve.py, in rounds of ``solver.step`` + seg tests on the val split +
snapshot, and samples the process after each round: resident memory (VmRSS of
/proc/self/status, after ``gc.collect()`` and glibc's ``malloc_trim`` so that
freed memory is not counted), open file descriptors (/proc/self/fd) and Python
threads. After a warm-up round none of them may grow; once the solver is gone,
the data layers' prefetch threads are joined and the descriptors closed.

The length comes from ``TORCHCAFFE_SOAK_ITERS`` (240 by default, well under a
minute); the long version::

    TORCHCAFFE_SOAK_ITERS=20000 pytest -q -s -m soak tests/test_soak.py

``-s`` shows one line per round (iteration, RSS, descriptors, threads).
"""
import ctypes
import ctypes.util
import gc
import logging
import os
import sys
import threading
import time

import numpy as np
import pytest

import training

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'data'))

import make_demo_data  # noqa: E402
from voc_tree import make_voc_tree  # noqa: E402
from nets import voc, write  # noqa: E402

pytestmark = [pytest.mark.soak,
              pytest.mark.skipif(not os.path.isdir('/proc/self/fd'), reason='needs /proc')]

ITERS = int(os.environ.get('TORCHCAFFE_SOAK_ITERS', '240'))
ROUNDS = 6
# RSS may grow by this much after the warm-up round (allocator noise, lazily
# created torch kernels), and no more.
RSS_SLACK_MB = 8.0

SOLVER = '''train_net: "train.prototxt"
test_net: "val.prototxt"
test_iter: 2
test_interval: 999999999
display: 0
lr_policy: "fixed"
base_lr: 1e-8
momentum: 0.9
weight_decay: 0.0005
max_iter: %d
snapshot: %d
snapshot_prefix: "snapshot/train"
test_initialization: false
random_seed: 3
'''


def rss_mb():
    """Resident memory of this process in MB, after returning freed memory to the OS."""
    gc.collect()
    libc = ctypes.util.find_library('c')
    if libc:
        trim = getattr(ctypes.CDLL(libc), 'malloc_trim', None)
        if trim is not None:
            trim(0)
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith('VmRSS:'):
                return int(line.split()[1]) / 1024
    raise AssertionError('no VmRSS in /proc/self/status')


def open_fds():
    return len(os.listdir('/proc/self/fd'))


@pytest.fixture
def model_dir(tmp_path):
    make_voc_tree(tmp_path, num_train=4, num_val=2, seed=7, min_size=32, max_size=48)
    model = tmp_path / 'model'
    nets = voc.stage_nets('fcn32s', classes=len(make_demo_data.CLASSES), width=1 / 32)
    write.write_nets({k: v for k, v in nets.items() if k != 'deploy'}, str(model))
    per_round = max(ITERS // ROUNDS, 1)
    (model / 'solver.prototxt').write_text(SOLVER % (per_round * ROUNDS, per_round))
    return model, per_round


@pytest.fixture
def quiet(capsys):
    """Few log records (pytest keeps them in memory): warnings only."""
    logger = logging.getLogger('torchcaffe')
    level = logger.level
    logger.setLevel(logging.WARNING)
    yield
    logger.setLevel(level)


def test_training_for_many_iterations_keeps_memory_fds_and_threads_flat(model_dir, quiet,
                                                                        capsys):
    model, per_round = model_dir
    fds_before, threads_before = open_fds(), threading.active_count()
    samples = []
    t0 = time.monotonic()
    with training.working_dir(str(model)):
        solver = training.prepare_solver()
        val = training.val_ids(solver)
        for _ in range(ROUNDS):
            results = training.train(solver, solver.iter + per_round, per_round, val)
            capsys.readouterr()  # the seg tests' lines, not kept
            assert np.isfinite(results[-1][1]['overall_acc'])
            samples.append((solver.iter, rss_mb(), open_fds(), threading.active_count()))
        snapshots = len(os.listdir('snapshot'))
        del solver, results
    gc.collect()
    seconds = time.monotonic() - t0
    fds_after, threads_after = open_fds(), threading.active_count()

    with capsys.disabled():
        print('\nsoak: %d iterations in %.1f s (%.1f ms/iter), %d snapshot files'
              % (samples[-1][0], seconds, 1000 * seconds / samples[-1][0], snapshots))
        for it, rss, fds, threads in samples:
            print('  iter %6d  RSS %7.1f MB  fds %3d  threads %d' % (it, rss, fds, threads))
        print('  after: fds %d (before %d), threads %d (before %d)'
              % (fds_after, fds_before, threads_after, threads_before))

    assert samples[-1][0] == per_round * ROUNDS
    assert snapshots == 3 * ROUNDS  # caffemodel, solverstate, sidecar per round
    warm = samples[0]
    growth = max(rss for _, rss, _, _ in samples[1:]) - warm[1]
    assert growth < RSS_SLACK_MB, 'RSS grew %.1f MB after warm-up: %s' % (growth, samples)
    assert all(fds == warm[2] for _, _, fds, _ in samples), samples
    assert all(threads == warm[3] for _, _, _, threads in samples), samples
    # Two data layers (train and val nets), one prefetch thread each, joined when closed.
    assert warm[3] == threads_before + 2
    assert (fds_after, threads_after) == (fds_before, threads_before)
