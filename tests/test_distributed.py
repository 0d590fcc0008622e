"""Data-parallel training (torchcaffe.distributed) against one process with a bigger iter_size.

The two-rank tests start two processes of this file (its ``__main__`` is the worker) with
the environment ``torchrun --nproc_per_node=2`` would give them, on the CPU (gloo); each
rank runs in its own folder, as on two machines without a shared disk, so the files each
rank writes can be told apart.
"""
import json
import logging
import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import torchcaffe as caffe  # noqa: E402
from torchcaffe import distributed  # noqa: E402

# A data layer whose forward number k gives sample k * ranks + rank: one process with
# iter_size 2 reads samples 0, 1 | 2, 3 | ...; rank 0 and rank 1 read 0 | 2 | ... and
# 1 | 3 | .... With 'interrupt' set, rank 1 sends itself SIGINT in that forward.
LAYERS = '''
import ast
import os
import signal

import numpy as np

import torchcaffe as caffe
from torchcaffe import distributed

INTERRUPTED = []  # rank 1 interrupts once per process


class Samples(caffe.Layer):
    def setup(self, bottom, top):
        params = ast.literal_eval(self.param_str)
        rng = np.random.RandomState(3)
        self.data = rng.randn(16, 3, 5, 5).astype(np.float32)
        self.label = rng.randint(0, 3, (16, 1, 5, 5)).astype(np.float32)
        self.interrupt = params.get('interrupt')
        self.k = 0

    def reshape(self, bottom, top):
        top[0].reshape(1, 3, 5, 5)
        top[1].reshape(1, 1, 5, 5)

    def forward(self, bottom, top):
        n = self.k * distributed.world_size() + distributed.rank()
        top[0].data[...] = self.data[n % 16]
        top[1].data[...] = self.label[n % 16]
        if self.k == self.interrupt and distributed.rank() == 1 and not INTERRUPTED:
            INTERRUPTED.append(self.k)
            os.kill(os.getpid(), signal.SIGINT)
        self.k += 1

    def state_dict(self):
        return {'k': self.k, 'rank': distributed.rank()}

    def load_state_dict(self, state):
        assert state['rank'] == distributed.rank(), 'the stream of another rank'
        self.k = state['k']

    def backward(self, top, propagate_down, bottom):
        pass
'''

NET = '''
name: "tiny"
layer { name: "data" type: "Python" top: "data" top: "label"
  python_param { module: "dp_layers" layer: "Samples" param_str: "PARAMS" } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
  convolution_param { num_output: 4 kernel_size: 3 pad: 1
    weight_filler { type: "gaussian" std: 0.3 } bias_filler { type: "gaussian" std: 0.1 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "score" type: "Convolution" bottom: "conv1" top: "score"
  convolution_param { num_output: 3 kernel_size: 1
    weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "score" bottom: "label" top: "loss" }
'''

SOLVER = '''
net: "NET"
base_lr: 0.1
lr_policy: "fixed"
momentum: 0.9
weight_decay: 0.01
iter_size: ITER_SIZE
display: 1
max_iter: 100
snapshot: 2
snapshot_prefix: "snap/train"
random_seed: 5
'''


def write_setup(folder, interrupt=None):
    """The layer module, the net and the solvers (iter_size 1 and 2) in ``folder``."""
    (folder / 'dp_layers.py').write_text(LAYERS)
    params = repr({'interrupt': interrupt}).replace("'", '\\"')
    (folder / 'train.prototxt').write_text(NET.replace('PARAMS', params))
    for iter_size in (1, 2):
        text = SOLVER.replace('NET', str(folder / 'train.prototxt'))
        (folder / ('solver%d.prototxt' % iter_size)).write_text(
            text.replace('ITER_SIZE', str(iter_size)))


def state(solver):
    """Weights then momentum history, as float32 arrays."""
    return [p.data.copy() for p in solver.net.learnable_params] + solver.history


# ------------------------------------------------------------------ the worker

def worker(folder):
    """One rank under torchrun: train 2 iterations, save its state, train on until
    rank 1's SIGINT stops every rank, then resume from iteration 2 up to there again."""
    import torch
    torch.set_num_threads(1)
    sys.path.insert(0, folder)
    r = int(os.environ['RANK'])
    home = os.path.join(folder, 'rank%d' % r)
    os.makedirs(os.path.join(home, 'snap'))
    os.chdir(home)
    logging.getLogger('torchcaffe').addHandler(logging.FileHandler('log.txt'))
    caffe.set_mode_cpu()
    distributed.init()
    solver = caffe.SGDSolver(os.path.join(folder, 'solver1.prototxt'))
    np.savez('before.npz', *state(solver))
    distributed.attach(solver)
    solver.step(2)
    np.savez('after2.npz', *state(solver))
    result = {'rank': r, 'world': distributed.world_size()}
    try:
        solver.step(6)
    except caffe.TrainingStopped as stop:
        result['stopped_at'] = stop.iteration
    result['iter'] = solver.iter
    np.savez('stopped.npz', *state(solver))
    with open('result.json', 'w') as f:
        json.dump(result, f)
    # Resume as on a shared disk: rank 0's snapshot, each rank's own streams beside it.
    shared = os.path.join(folder, 'rank0')
    if r:
        name = 'train_iter_2.solverstate.rank%d.resume.json' % r
        shutil.copy(os.path.join('snap', name), os.path.join(shared, 'snap', name))
    torch.distributed.barrier()
    os.chdir(shared)
    resumed = caffe.SGDSolver(os.path.join(folder, 'solver1.prototxt'))
    resumed.param.snapshot = 0
    resumed.restore('snap/train_iter_2.solverstate')
    distributed.attach(resumed)
    resumed.step(2)
    np.savez(os.path.join(home, 'resumed.npz'), *state(resumed))
    distributed.shutdown()


def run_ranks(folder, n=2, timeout=120):
    """Start ``n`` workers with the environment torchrun gives its processes (torchrun's
    own agent would cost one more torch import)."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    procs = []
    try:
        for r in range(n):
            env = dict(os.environ, RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(n),
                       LOCAL_WORLD_SIZE=str(n), MASTER_ADDR='127.0.0.1',
                       MASTER_PORT=str(port), OMP_NUM_THREADS='1')
            procs.append(subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), 'worker', str(folder)], env=env,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        outputs = [p.communicate(timeout=timeout)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-3000:]


def load(path):
    with np.load(path) as f:
        return [f['arr_%d' % i] for i in range(len(f.files))]


@pytest.fixture(scope='module')
def two_ranks(tmp_path_factory):
    """The folder of a finished two-rank run (rank 1 interrupts at its 4th forward)."""
    folder = tmp_path_factory.mktemp('dp')
    write_setup(folder, interrupt=3)
    run_ranks(folder)
    return folder


@pytest.fixture
def one_process(two_ranks, monkeypatch):
    """One process with iter_size 2 on the same data, in its own folder."""
    caffe.set_mode_cpu()
    monkeypatch.syspath_prepend(str(two_ranks))
    monkeypatch.chdir(two_ranks)
    os.makedirs('snap', exist_ok=True)
    yield caffe.SGDSolver(str(two_ranks / 'solver2.prototxt'))
    sys.modules.pop('dp_layers', None)


# ------------------------------------------------------------------ two ranks

def test_two_ranks_of_one_sample_update_as_one_process_with_iter_size_2(two_ranks,
                                                                         one_process):
    one_process.step(2)
    expected = state(one_process)
    for r in (0, 1):
        got = load(two_ranks / ('rank%d' % r) / 'after2.npz')
        assert len(got) == len(expected) == 8
        for a, b in zip(got, expected):
            assert a.dtype == np.float32 and np.array_equal(a, b)


def test_rank_0_weights_reach_every_rank_before_training(two_ranks, one_process):
    # Rank 1's seed is offset (as Caffe's workers'), so it filled other weights,
    # which the broadcast replaced; rank 0 filled those of one process.
    initial = state(one_process)[:4]
    rank0 = load(two_ranks / 'rank0' / 'before.npz')[:4]
    rank1 = load(two_ranks / 'rank1' / 'before.npz')[:4]
    assert all(np.array_equal(a, b) for a, b in zip(rank0, initial, strict=True))
    assert not np.array_equal(rank1[0], initial[0])


def test_a_signal_to_one_rank_stops_every_rank_at_the_same_iteration(two_ranks):
    # Rank 1 gets SIGINT during iteration 3 (its 4th forward): all stop after it.
    results = [json.loads((two_ranks / ('rank%d' % r) / 'result.json').read_text())
               for r in (0, 1)]
    assert [(x['world'], x['stopped_at'], x['iter']) for x in results] == [(2, 4, 4)] * 2


def test_every_rank_resumes_exactly_from_rank_0s_snapshot_and_its_own_streams(two_ranks):
    for r in (0, 1):
        home = two_ranks / ('rank%d' % r)
        stopped, resumed = load(home / 'stopped.npz'), load(home / 'resumed.npz')
        assert all(np.array_equal(a, b) for a, b in zip(stopped, resumed, strict=True))


def test_only_rank_0_writes_snapshots_other_ranks_their_random_streams(two_ranks):
    # (Rank 0's folder also holds the copy of rank 1's streams the resume made.)
    rank0 = sorted(f for f in os.listdir(two_ranks / 'rank0' / 'snap') if '.rank1.' not in f)
    rank1 = sorted(os.listdir(two_ranks / 'rank1' / 'snap'))
    assert rank0 == ['train_iter_%d.%s' % (i, ext) for i in (2, 4)
                     for ext in ('caffemodel', 'solverstate', 'solverstate.resume.json')]
    assert rank1 == ['train_iter_%d.solverstate.rank1.resume.json' % i for i in (2, 4)]
    sidecar = json.loads((two_ranks / 'rank1' / 'snap' /
                          'train_iter_4.solverstate.rank1.resume.json').read_text())
    assert sidecar['iter'] == 4


def test_only_rank_0_logs_the_iterations(two_ranks):
    log0 = (two_ranks / 'rank0' / 'log.txt').read_text()
    log1 = (two_ranks / 'rank1' / 'log.txt').read_text()
    assert 'Iteration 0' in log0 and 'Snapshotting' in log0
    assert 'Iteration' not in log1 and 'Snapshotting' not in log1


# ------------------------------------------------------------------ one process

def test_callbacks_run_around_the_accumulated_unnormalised_diffs(two_ranks, one_process):
    seen = []
    net = one_process.net
    one_process.add_callback(
        lambda: seen.append(('start', one_process.iter, float(np.abs(net.params['conv1'][0].diff).sum()))),
        lambda: seen.append(('ready', one_process.iter, net.params['conv1'][0].diff.copy(),
                             net.params['conv1'][0].data.copy())))
    one_process.step(1)
    start, ready = seen
    assert start == ('start', 0, 0.0)  # after ClearParamDiffs, before the passes
    # The diff of the two passes summed, not yet divided by iter_size; data not updated.
    history = one_process.history[0]
    decay = np.float32(0.01) * ready[3]
    expected = np.float32(0.1) * (ready[2] * np.float32(0.5) + decay)
    np.testing.assert_allclose(history, expected, rtol=1e-5, atol=1e-7)


def test_add_callback_takes_an_object_with_both_methods(two_ranks, one_process):
    calls = []

    class Sync:
        def on_start(self):
            calls.append('start')

        def on_gradients_ready(self):
            calls.append('ready')

    one_process.add_callback(Sync())
    one_process.step(2)
    assert calls == ['start', 'ready'] * 2


def test_without_torchrun_there_is_one_rank_and_nothing_to_sync(two_ranks, one_process):
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    assert distributed.attach(one_process) is None
    assert distributed.agree('stop') == 'stop'
    assert distributed.rank_path('x.solverstate') == 'x.solverstate'
    assert not distributed.from_torchrun({'RANK': '0', 'WORLD_SIZE': '1'})


# ------------------------------------------------------------------ data layers

@pytest.fixture
def voc(tmp_path):
    """A VOC tree of 5 tiny samples, listed in 'train' and 'val'."""
    from PIL import Image
    for sub in ('JPEGImages', 'SegmentationClass', 'ImageSets/Segmentation'):
        os.makedirs(tmp_path / sub)
    ids = ['s%d' % i for i in range(5)]
    for i, name in enumerate(ids):
        Image.new('RGB', (4, 3), (i, 0, 0)).save(tmp_path / 'JPEGImages' / (name + '.jpg'))
        Image.new('L', (4, 3), i).save(tmp_path / 'SegmentationClass' / (name + '.png'))
    for split in ('train', 'val'):
        (tmp_path / 'ImageSets' / 'Segmentation' / (split + '.txt')).write_text(
            '\n'.join(ids) + '\n')
    return str(tmp_path)


def read_ids(voc, count, rank=0, ranks=1, phase=caffe.TRAIN, monkeypatch=None, **params):
    """The ids a VOC layer of ``rank`` (of ``ranks``) reads in ``count`` forwards."""
    from voc_layers import VOCSegDataLayer
    monkeypatch.setattr(distributed, 'rank', lambda: rank)
    monkeypatch.setattr(distributed, 'world_size', lambda: ranks)
    layer = VOCSegDataLayer()
    layer.param_str = repr(dict(voc_dir=voc, mean=(0, 0, 0), prefetch=False, **params))
    layer.phase = phase
    top = [caffe.Blob(), caffe.Blob()]
    layer.setup([], top)
    ids = []
    for _ in range(count):
        layer.reshape([], top)
        ids.append(layer.indices[layer.idx])
        layer.forward([], top)
    return ids


@pytest.mark.parametrize('params', [{'split': 'train', 'seed': 1337},
                                    {'split': 'train', 'randomize': False}],
                         ids=['seeded', 'in-order'])
def test_ranks_share_out_the_sample_sequence_of_one_process(voc, monkeypatch, params):
    one = read_ids(voc, 12, monkeypatch=monkeypatch, **params)
    ranks = [read_ids(voc, 4, r, 3, monkeypatch=monkeypatch, **params) for r in range(3)]
    # Forward k of rank r reads sample 3k + r of one process's sequence.
    assert [ranks[n % 3][n // 3] for n in range(12)] == one
    assert len(set(map(tuple, ranks))) == 3


def test_test_nets_read_every_sample_on_every_rank(voc, monkeypatch):
    one = read_ids(voc, 6, monkeypatch=monkeypatch, split='val', phase=caffe.TEST)
    assert one == ['s0', 's1', 's2', 's3', 's4', 's0']
    assert read_ids(voc, 6, 1, 2, caffe.TEST, monkeypatch, split='val') == one


if __name__ == '__main__' and sys.argv[1:2] == ['worker']:
    worker(sys.argv[2])
