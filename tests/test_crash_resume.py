"""Crashes lose nothing: a training process killed with SIGKILL at random points.

A real training run (the FCN-32s train net at 1/16 width on generated scenes,
a snapshot every 2 iterations) is started as a subprocess and killed, again and
again, at seeded random moments; snapshot writes are slowed down (an env var
makes every atomic write pause between its temporary file and its rename) so
that some kills land in the middle of one. After every kill each snapshot file
present must load, every solverstate must have its caffemodel and sidecar, and
``--resume latest`` must pick the newest; after a last uninterrupted run the
weights and momentum must equal those of a run that was never killed.

The loop has 4 kills by default; a longer one::

    TORCHCAFFE_CRASH_KILLS=50 pytest -q -s tests/test_crash_resume.py -k kill
"""
import contextlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import training
from torchcaffe import io, resume_state

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'data'))

import make_demo_data  # noqa: E402
from voc_tree import make_voc_tree  # noqa: E402
from nets import voc, write  # noqa: E402

MAX_ITER = 12
TEST_EVERY = 6
KILLS = int(os.environ.get('TORCHCAFFE_CRASH_KILLS', '4'))
PAUSE = '0.1'   # seconds between a snapshot file's fsync and its rename

SOLVER = '''train_net: "train.prototxt"
test_net: "val.prototxt"
test_iter: 2
test_interval: 999999999
display: 1
average_loss: 2
lr_policy: "fixed"
base_lr: 1e-6
momentum: 0.9
weight_decay: 0.0005
max_iter: %d
snapshot: 2
snapshot_prefix: "snapshot/train"
test_initialization: false
random_seed: 5
''' % MAX_ITER

# What each training process runs: resume from the newest complete snapshot if
# there is one, else start from the initial weights.
RUN = """
import os, sys
import torch
torch.set_num_threads(1)
sys.path.insert(0, %r)
import training


def run(model, init):
    args = ['--test-every', '%d', '--max-iter', '%d']
    if training.latest_solverstate(os.path.join(model, 'snapshot')):
        args += ['--resume', 'latest']
    return training.main(model, init, args)
""" % (ROOT, TEST_EVERY, MAX_ITER)

# A fresh interpreter that imports once, then forks one training process per
# 'run' line it reads (so that each run does not pay torch's import again).
ZYGOTE = RUN + """
import traceback
model, init = sys.argv[1:3]
for command in sys.stdin:
    pid = os.fork()
    if pid == 0:
        rc = 1
        try:
            rc = run(model, init)
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(rc)
    print('ZYGOTE PID %d' % pid)
    print('ZYGOTE EXIT %d %d' % os.waitpid(pid, 0))
"""


def make_model(folder, name):
    model = folder / name
    nets = voc.stage_nets('fcn32s', classes=len(make_demo_data.CLASSES), width=1 / 16)
    write.write_nets({k: v for k, v in nets.items() if k != 'deploy'}, str(model))
    (model / 'solver.prototxt').write_text(SOLVER)
    return model


@pytest.fixture
def tree(tmp_path):
    """Generated scenes in the VOC/SBD layout, two model folders and initial weights."""
    make_voc_tree(tmp_path, num_train=3, num_val=2, seed=1, min_size=48, max_size=64)
    killed, straight = make_model(tmp_path, 'killed'), make_model(tmp_path, 'straight')
    import torchcaffe as caffe
    with training.working_dir(str(killed)):
        net = caffe.Net('train.prototxt', caffe.TRAIN)
    rng = np.random.default_rng(0)
    for blobs in net.params.values():
        for b in blobs:
            b.data[...] = rng.normal(0, 0.05, b.shape)
    init = str(tmp_path / 'init.caffemodel')
    net.save(init)
    return killed, straight, init


# ------------------------------------------------------------------ checks

def iteration_of(path):
    return int(re.search(r'_iter_(\d+)\.', os.path.basename(path)).group(1))


def check_snapshots(model):
    """Every snapshot file present is complete; returns what the folder holds.

    Returns
    -------
    dict : ``states`` (iterations with a solverstate), ``models`` (with a
        caffemodel), ``temp`` (temporary files of interrupted writes).
    """
    folder = model / 'snapshot'
    names = sorted(os.listdir(folder)) if folder.exists() else []
    states, models, temp = [], [], []
    for name in names:
        path = str(folder / name)
        if name.startswith('.') and name.endswith('.tmp'):
            temp.append(name)
        elif name.endswith('.caffemodel'):
            weights = io.read_caffemodel(path)
            assert [l.name for l in weights.layer if l.blobs], name
            models.append(iteration_of(name))
        elif name.endswith('.solverstate'):
            it = iteration_of(name)
            state = io.read_solverstate(path)
            assert state.iter == it and len(state.history) > 0, name
            # The state is the commit point: its model and sidecar were written first.
            assert (model / state.learned_net).is_file(), name
            assert resume_state.is_current(resume_state.read(path), it), name
            assert training.snapshot_problem(path, it) is None
            states.append(it)
        elif name.endswith('.resume.json'):
            with open(path, encoding='utf-8') as f:
                assert json.load(f)['iter'] == iteration_of(name)
        else:
            raise AssertionError('unexpected file %s' % name)
    latest = training.latest_solverstate(str(folder))
    if states:
        assert latest == str(folder / ('train_iter_%d.solverstate' % max(states)))
    else:
        assert latest is None
    return dict(states=sorted(states), models=sorted(models), temp=temp)


def assert_same_arrays(got, expected):
    assert got.keys() == expected.keys()
    for key in expected:
        assert np.array_equal(got[key], expected[key]), key


def final_arrays(model):
    """The last snapshot's weights and momentum history, by name."""
    prefix = str(model / 'snapshot' / ('train_iter_%d' % MAX_ITER))
    weights = io.read_caffemodel(prefix + '.caffemodel')
    out = {('w', l.name, j): io.blobproto_to_array(b)
           for l in weights.layer for j, b in enumerate(l.blobs)}
    state = io.read_solverstate(prefix + '.solverstate')
    out.update({('h', i): io.blobproto_to_array(b) for i, b in enumerate(state.history)})
    return out


# ------------------------------------------------------------------ the process

class Output:
    """The lines of a subprocess's merged stdout and stderr, collected as they come."""

    def __init__(self, proc):
        self.proc = proc
        self.lines = []
        self.seen = 0
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line)

    def wait_for(self, pattern, timeout=300):
        """The first match of ``pattern`` in a line not yet consumed, or None at EOF."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            while self.seen < len(self.lines):
                self.seen += 1
                m = regex.search(self.lines[self.seen - 1])
                if m:
                    return m
            if not self._reader.is_alive() and self.seen >= len(self.lines):
                return None
            time.sleep(0.005)
        raise AssertionError('no line matching %r in %d s:\n%s'
                             % (pattern, timeout, self.tail()))

    def tail(self, n=30):
        return ''.join(self.lines[-n:])

    def close(self):
        self._reader.join()
        self.proc.stdout.close()


def spawn(code, *args, env=None, stdin=None):
    proc = subprocess.Popen([sys.executable, '-u', '-c', code, *map(str, args)],
                            stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=env, text=True)
    return Output(proc)


def kill_loop(model, init, kills, reference=None, seed=0):
    """Start, kill at a random moment, check, repeat; returns counts for the report.

    When a run gets to the end before its kill, its final weights and history are
    compared with ``reference`` (:func:`final_arrays` of an uninterrupted run),
    and the snapshots are removed to start again.
    """
    rng = random.Random(seed)
    stats = dict(kills=0, finished_early=0, snapshots_checked=0, mid_write=0,
                 orphan_models=0, completed_exact=0, resumed_from=[])
    env = dict(os.environ, **{io._PAUSE_ENV: PAUSE})
    zygote = spawn(ZYGOTE, model, init, env=env, stdin=subprocess.PIPE)
    try:
        for _ in range(kills):
            begin = max(check_snapshots(model)['states'], default=0)
            if begin == MAX_ITER and reference is not None:
                assert_same_arrays(final_arrays(model), reference)
                stats['completed_exact'] += 1
                shutil.rmtree(model / 'snapshot')
                begin = 0
            stats['resumed_from'].append(begin)
            zygote.proc.stdin.write('run\n')
            zygote.proc.stdin.flush()
            pid = int(zygote.wait_for(r'ZYGOTE PID (\d+)').group(1))
            # Kill a little after a random iteration's log line: odd iterations are
            # followed by a snapshot, so many kills land while one is being written.
            target = rng.randint(begin, max(begin, MAX_ITER - 1))
            exit_line = r'ZYGOTE EXIT %d (\d+)' % pid
            m = zygote.wait_for(r'\] Iteration %d \(|%s' % (target, exit_line))
            if m.group(1) is None:
                time.sleep(rng.uniform(0, 1.0))
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                m = zygote.wait_for(exit_line)
            status = int(m.group(1))
            if os.WIFSIGNALED(status):
                assert os.WTERMSIG(status) == signal.SIGKILL
                stats['kills'] += 1
            else:
                assert os.WEXITSTATUS(status) == 0, zygote.tail()
                stats['finished_early'] += 1
            found = check_snapshots(model)
            stats['snapshots_checked'] += len(found['states'])
            stats['mid_write'] += bool(found['temp'])
            stats['orphan_models'] += bool(set(found['models']) - set(found['states']))
    finally:
        zygote.proc.stdin.close()
        zygote.proc.wait(timeout=60)
        zygote.close()
    return stats


# ------------------------------------------------------------------ tests

def test_training_killed_at_random_points_resumes_to_the_uninterrupted_result(tree):
    killed, straight, init = tree
    # The same training never interrupted (in this process: the same arithmetic).
    assert training.main(str(straight), init, ['--test-every', str(TEST_EVERY),
                                               '--max-iter', str(MAX_ITER)]) == 0
    reference = final_arrays(straight)
    t0 = time.monotonic()
    stats = kill_loop(killed, init, KILLS, reference)
    # The last run: a fresh process, not killed.
    env = {k: v for k, v in os.environ.items() if k != io._PAUSE_ENV}
    last = spawn(RUN + 'sys.exit(run(*sys.argv[1:3]))', killed, init, env=env)
    assert last.proc.wait(timeout=300) == 0, last.tail()
    last.close()
    found = check_snapshots(killed)
    assert not found['temp']  # the last start removed what the kills left
    assert max(found['states']) == MAX_ITER
    print('\nkill loop: %s in %.1f s' % (stats, time.monotonic() - t0))
    assert stats['kills'] + stats['finished_early'] == KILLS and stats['kills'] >= 1
    assert_same_arrays(final_arrays(killed), reference)
    first = io.read_caffemodel(init)
    moved = [l.name for l in first.layer
             if l.blobs and not np.array_equal(io.blobproto_to_array(l.blobs[0]),
                                               reference[('w', l.name, 0)])]
    assert 'conv1_1' in moved and 'fc6' in moved


def test_the_solverstate_is_written_last_each_file_atomically(tree, monkeypatch):
    killed, _, init = tree
    renamed = []
    real_replace = os.replace

    def replace(src, dst):
        assert os.path.basename(src).startswith('.' + os.path.basename(dst) + '.')
        renamed.append(os.path.basename(dst))
        real_replace(src, dst)
    monkeypatch.setattr(io.os, 'replace', replace)
    with training.working_dir(str(killed)):
        solver = training.prepare_solver(weights=init)
        renamed.clear()
        solver.snapshot()
    assert renamed == ['train_iter_0.caffemodel', 'train_iter_0.solverstate.resume.json',
                       'train_iter_0.solverstate']


def write_snapshot(folder, it, model=True, sidecar=True, sidecar_iter=None, state=True):
    prefix = str(folder / ('train_iter_%d' % it))
    if model:
        (folder / ('train_iter_%d.caffemodel' % it)).write_bytes(b'x')
    if sidecar:
        with open(resume_state.path_for(prefix + '.solverstate'), 'w') as f:
            json.dump({'version': resume_state.VERSION,
                       'iter': it if sidecar_iter is None else sidecar_iter}, f)
    if state:
        (folder / ('train_iter_%d.solverstate' % it)).write_bytes(b'')


def test_resume_latest_skips_snapshots_missing_their_model_or_sidecar(tmp_path, caplog):
    write_snapshot(tmp_path, 4)
    write_snapshot(tmp_path, 6, model=False)           # the state names a missing model
    write_snapshot(tmp_path, 8, sidecar=False)         # no sidecar
    write_snapshot(tmp_path, 10, sidecar_iter=2)       # a stale sidecar
    write_snapshot(tmp_path, 12, state=False)          # killed before the commit point
    assert training.latest_solverstate(str(tmp_path)) == str(tmp_path /
                                                             'train_iter_4.solverstate')
    for it, why in ((6, 'no caffemodel'), (8, 'no up-to-date'), (10, 'no up-to-date')):
        assert 'train_iter_%d.solverstate: %s' % (it, why) in caplog.text
    assert 'train_iter_12' not in caplog.text


def test_resume_latest_falls_back_to_the_newest_state_when_none_is_complete(tmp_path):
    # Caffe's own snapshots have no sidecar: they still resume (not exactly).
    write_snapshot(tmp_path, 2, sidecar=False)
    write_snapshot(tmp_path, 4, sidecar=False)
    assert training.latest_solverstate(str(tmp_path)).endswith('train_iter_4.solverstate')


def test_starting_removes_temporary_files_of_interrupted_snapshots(tree):
    killed, _, init = tree
    snap = killed / 'snapshot'
    snap.mkdir()
    stale = [snap / '.train_iter_4.caffemodel.ab12cd.tmp',
             snap / '.train_iter_4.solverstate.resume.json.x9.tmp']
    kept = [snap / '.other_iter_4.caffemodel.zz.tmp', snap / 'notes.tmp']
    for path in stale + kept:
        path.write_bytes(b'partial')
    with training.working_dir(str(killed)):
        training.prepare_solver(weights=init)
    assert not any(p.exists() for p in stale) and all(p.exists() for p in kept)


def test_the_pause_variable_delays_the_rename_of_atomic_writes(tmp_path, monkeypatch):
    monkeypatch.setenv(io._PAUSE_ENV, '0.2')
    t0 = time.monotonic()
    with io.atomic_path(str(tmp_path / 'f')) as tmp:
        with open(tmp, 'w') as f:
            f.write('x')
    assert time.monotonic() - t0 >= 0.2 and (tmp_path / 'f').read_text() == 'x'
    assert [p.name for p in tmp_path.iterdir()] == ['f']


def test_a_copy_of_a_complete_snapshot_folder_resumes(tree):
    """What the kill loop relies on: the check accepts what an unkilled run writes."""
    killed, _, init = tree
    assert training.main(str(killed), init, ['--test-every', '4', '--max-iter', '4']) == 0
    found = check_snapshots(killed)
    assert found == dict(states=[2, 4], models=[2, 4], temp=[])
    copy = killed.parent / 'copy'
    shutil.copytree(killed, copy)
    assert training.latest_solverstate(str(copy / 'snapshot')).endswith('train_iter_4.solverstate')


# ------------------------------------------------------------------ scoring and inference

class Interrupt:
    """Wraps ``fn``; raises KeyboardInterrupt at call number ``after + 1``."""

    def __init__(self, fn, after):
        self.fn, self.after, self.calls = fn, after, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.after is not None and self.calls > self.after:
            raise KeyboardInterrupt('interrupted after %d calls' % self.after)
        return self.fn(*args, **kwargs)


@pytest.fixture(scope='module')
def scoring(tmp_path_factory):
    """A narrow FCN-32s val net over 5 generated VOC images, random weights; a deploy net."""
    import math
    import torchcaffe as caffe
    tmp = tmp_path_factory.mktemp('scoring')
    info = make_demo_data.make_demo_data(str(tmp / 'data'), num_train=1, num_val=5, seed=2,
                                         min_size=24, max_size=40)
    nets = voc.stage_nets('fcn32s', classes=4, width=1 / 16)
    nets['val'].layer[0].python_param.param_str = str(
        dict(voc_dir='../data/VOC', seed=1337, split='val', mean=voc.MEAN))
    (tmp / 'model').mkdir()
    io.write_prototxt(nets['val'], str(tmp / 'model' / 'val.prototxt'))
    io.write_prototxt(nets['deploy'], str(tmp / 'model' / 'deploy.prototxt'))
    deploy = caffe.Net(nets['deploy'], caffe.TEST)
    rng = np.random.default_rng(3)
    for blobs in deploy.params.values():
        for i, b in enumerate(blobs):
            scale = 0.5 if i else math.sqrt(2 / math.prod(b.data.shape[1:]))
            b.data[...] = rng.normal(0, scale, b.data.shape)
    deploy.save(str(tmp / 'model' / 'w.caffemodel'))
    return tmp, info


def test_scoring_a_net_interrupted_and_run_again_ends_as_an_uninterrupted_run(
        scoring, monkeypatch, capsys):
    tmp, info = scoring
    monkeypatch.chdir(tmp)
    import score
    monkeypatch.setattr(score, 'PROGRESS_EVERY', 0)
    argv = ['model/val.prototxt', 'model/w.caffemodel', '--classes', '4']
    straight = score.main(argv + ['--json', 'straight.json', '--save-dir', 'preds-straight'])
    assert not os.path.exists('straight.json.progress')  # removed once the JSON is written

    counting = Interrupt(score.fast_hist, after=2)
    monkeypatch.setattr(score, 'fast_hist', counting)
    with pytest.raises(KeyboardInterrupt):
        score.main(argv + ['--json', 'resumed.json', '--save-dir', 'preds-resumed'])
    saved = json.loads((tmp / 'resumed.json.progress').read_text())
    assert saved['done'] == 2 and not os.path.exists('resumed.json')
    assert saved['hists'][0] != straight['hist']  # a partial matrix

    counting.after, counting.calls = None, 0
    capsys.readouterr()
    resumed = score.main(argv + ['--json', 'resumed.json', '--save-dir', 'preds-resumed'])
    assert 'resuming after 2 of 5 images' in capsys.readouterr().err
    assert counting.calls == 3  # the last three images only
    assert np.array_equal(resumed['hist'], straight['hist'])
    assert resumed['loss'] == straight['loss']  # the same sums in the same order
    assert {k: v for k, v in resumed.items() if k != 'weights'} == \
        {k: v for k, v in straight.items() if k != 'weights'}
    assert sorted(os.listdir('preds-resumed')) == sorted(os.listdir('preds-straight'))
    for name in os.listdir('preds-straight'):
        assert (tmp / 'preds-resumed' / name).read_bytes() == \
            (tmp / 'preds-straight' / name).read_bytes()
    assert not os.path.exists('resumed.json.progress')


def test_scoring_progress_saved_for_other_weights_is_not_resumed(scoring, monkeypatch,
                                                                  capsys):
    tmp, info = scoring
    monkeypatch.chdir(tmp)
    import score
    monkeypatch.setattr(score, 'PROGRESS_EVERY', 0)
    shutil.copy('model/w.caffemodel', 'model/w2.caffemodel')
    argv = ['model/val.prototxt', 'model/w2.caffemodel', '--count', '3',
            '--progress', 'p.json']
    monkeypatch.setattr(score, 'fast_hist', Interrupt(score.fast_hist, after=1))
    with pytest.raises(KeyboardInterrupt):
        score.main(argv)
    os.utime('model/w2.caffemodel', ns=(1, 1))  # "new weights" under the same name
    monkeypatch.setattr(score, 'fast_hist', Interrupt(score.fast_hist.fn, after=None))
    capsys.readouterr()
    result = score.main(argv)
    assert 'saved for other arguments or weights; starting over' in capsys.readouterr().err
    assert score.fast_hist.calls == 3 and result['images'] == 3
    # An explicit --progress file stays, finished: the same command again scores nothing.
    assert json.loads((tmp / 'p.json').read_text())['done'] == 3
    again = score.main(argv)
    assert score.fast_hist.calls == 3 and again == result


def test_folder_scoring_interrupted_and_run_again_ends_as_an_uninterrupted_run(
        scoring, monkeypatch):
    tmp, info = scoring
    import score
    monkeypatch.setattr(score, 'PROGRESS_EVERY', 0)
    gt = os.path.join(info['voc_dir'], 'SegmentationClass')
    pred = str(tmp / 'pred-folder')
    os.makedirs(pred, exist_ok=True)
    rng = np.random.default_rng(5)
    for idx in info['val']:
        shape = score.read_label_png(os.path.join(gt, idx + '.png')).shape
        score.save_label_png(rng.integers(0, 4, shape), os.path.join(pred, idx + '.png'))
    argv = ['--pred-dir', pred, '--gt-dir', gt, '--classes', '4']
    straight = score.main(argv + ['--json', str(tmp / 'f-straight.json')])
    reads = Interrupt(score.read_label_png, after=2 * 3)   # two PNGs an image
    monkeypatch.setattr(score, 'read_label_png', reads)
    with pytest.raises(KeyboardInterrupt):
        score.main(argv + ['--json', str(tmp / 'f-resumed.json')])
    reads.after, reads.calls = None, 0
    resumed = score.main(argv + ['--json', str(tmp / 'f-resumed.json')])
    assert reads.calls == 2 * 2
    assert resumed['hist'] == straight['hist'] and resumed['mean_iu'] == straight['mean_iu']


def test_inference_interrupted_and_run_again_ends_as_an_uninterrupted_run(
        scoring, monkeypatch, capsys):
    tmp, info = scoring
    import infer
    images = os.path.join(info['voc_dir'], 'JPEGImages')
    argv = [str(tmp / 'model' / 'deploy.prototxt'), str(tmp / 'model' / 'w.caffemodel'),
            images, '--classes', os.path.join(str(tmp / 'data'), 'classes.txt')]
    assert infer.main(argv + ['--out', str(tmp / 'i-straight')]) == 0
    straight = capsys.readouterr().out
    reads = Interrupt(infer.read_rgb, after=2)
    monkeypatch.setattr(infer, 'read_rgb', reads)
    with pytest.raises(KeyboardInterrupt):
        infer.main(argv + ['--out', str(tmp / 'i-resumed')])
    assert len(os.listdir(tmp / 'i-resumed')) == 2 * 2
    reads.after, reads.calls = None, 0
    capsys.readouterr()
    assert infer.main(argv + ['--out', str(tmp / 'i-resumed')]) == 0
    resumed = capsys.readouterr().out
    count = len(os.listdir(images))
    assert reads.calls == count - 2
    assert '%d segmented' % (count - 2) in resumed and '2 already done' in resumed
    summary = [line for line in straight.splitlines() if line.startswith('predicted:')]
    assert summary and summary == [line for line in resumed.splitlines()
                                   if line.startswith('predicted:')]
    names = sorted(os.listdir(tmp / 'i-straight'))
    assert names == sorted(os.listdir(tmp / 'i-resumed'))
    for name in names:
        assert (tmp / 'i-resumed' / name).read_bytes() == \
            (tmp / 'i-straight' / name).read_bytes(), name
