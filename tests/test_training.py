"""The staged training loop of every solve.py, on a tiny generated VOC/SBD tree."""
import os
import sys

import numpy as np
import pytest

import training
from torchcaffe import io

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'data'))

import make_demo_data  # noqa: E402
from voc_tree import make_voc_tree  # noqa: E402
from nets import voc, write  # noqa: E402

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
max_iter: 4
snapshot: 2
snapshot_prefix: "snapshot/train"
test_initialization: false
random_seed: 5
'''


@pytest.fixture
def model_dir(tmp_path):
    """A model folder laid out as the VOC ones: ../data/sbdd/dataset, ../data/pascal/VOC2011."""
    make_voc_tree(tmp_path, num_train=3, num_val=2, seed=1)
    model = tmp_path / 'model'
    nets = voc.stage_nets('fcn32s', classes=len(make_demo_data.CLASSES), width=1 / 16)
    write.write_nets({k: v for k, v in nets.items() if k != 'deploy'}, str(model))
    (model / 'solver.prototxt').write_text(SOLVER)
    return model


def random_weights(model_dir):
    """A caffemodel of small random weights for the model's train net."""
    import torchcaffe as caffe
    with training.working_dir(str(model_dir)):
        net = caffe.Net('train.prototxt', caffe.TRAIN)
    rng = np.random.default_rng(0)
    for blobs in net.params.values():
        for b in blobs:
            b.data[...] = rng.normal(0, 0.05, b.shape)
    path = str(model_dir / 'init.caffemodel')
    net.save(path)
    return path


def snapshot_weights(model_dir, iteration):
    net = io.read_caffemodel(str(model_dir / 'snapshot' / ('train_iter_%d.caffemodel'
                                                            % iteration)))
    return {(l.name, j): io.blobproto_to_array(b) for l in net.layer
            for j, b in enumerate(l.blobs)}


def test_resuming_continues_exactly_as_an_uninterrupted_run(model_dir, capsys):
    """Weights, momentum, data order (random on 'train') and Dropout masks all carry on."""
    init = random_weights(model_dir)
    assert training.main(str(model_dir), init, ['--test-every', '2', '--max-iter', '2']) == 0
    assert 'Iteration 2 mean IU' in capsys.readouterr().out
    snap = model_dir / 'snapshot'
    assert (snap / 'train_iter_2.solverstate.resume.json').exists()
    assert training.main(str(model_dir), None,
                         ['--test-every', '2', '--max-iter', '4', '--resume', 'latest']) == 0
    assert 'Iteration 4 mean IU' in capsys.readouterr().out
    resumed = snapshot_weights(model_dir, 4)
    for f in snap.iterdir():
        f.unlink()
    assert training.main(str(model_dir), init, ['--test-every', '4', '--max-iter', '4']) == 0
    straight = snapshot_weights(model_dir, 4)
    assert resumed.keys() == straight.keys()
    for key in straight:
        assert np.array_equal(resumed[key], straight[key]), key
    start = io.read_caffemodel(init)
    moved = [l.name for l in start.layer if l.blobs and not np.array_equal(
        io.blobproto_to_array(l.blobs[0]), straight[(l.name, 0)])]
    assert 'conv1_1' in moved and 'fc6' in moved
    # upscore (lr_mult 0) was set bilinear when training started, and stayed so.
    from surgery import upsample_filt
    up = straight[('upscore', 0)]
    assert np.array_equal(up[2, 2], upsample_filt(64)) and not up[2, 1].any()


def test_resuming_without_the_sidecar_still_trains_but_warns(model_dir, caplog):
    assert training.main(str(model_dir), None, ['--test-every', '2', '--max-iter', '2']) == 0
    (model_dir / 'snapshot' / 'train_iter_2.solverstate.resume.json').unlink()
    assert training.main(str(model_dir), None,
                         ['--test-every', '2', '--max-iter', '4', '--resume', 'latest']) == 0
    assert 'restart their random streams' in caplog.text
    assert io.read_solverstate(str(model_dir / 'snapshot' / 'train_iter_4.solverstate')).iter == 4


def test_upsampling_layers_start_bilinear(model_dir):
    with training.working_dir(str(model_dir)):
        solver = training.prepare_solver()
    w = solver.net.params['upscore'][0].data
    from surgery import upsample_filt
    np.testing.assert_array_equal(w[1, 1], upsample_filt(64))
    assert not w[0, 1].any()


def test_missing_initial_weights_is_one_clear_line(model_dir, capsys):
    assert training.main(str(model_dir), 'nowhere.caffemodel', ['--max-iter', '2']) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith('model: error: initial weights') and 'nowhere.caffemodel' in err[-1]


def test_resume_latest_without_snapshots_fails_clearly(model_dir, capsys):
    assert training.main(str(model_dir), None, ['--resume', 'latest']) == 1
    assert 'no solverstate' in capsys.readouterr().err


def test_latest_solverstate_picks_the_highest_iteration(tmp_path):
    for n in (8, 12, 100, 4):
        (tmp_path / ('train_iter_%d.solverstate' % n)).write_bytes(b'')
    (tmp_path / 'train_iter_999.caffemodel').write_bytes(b'')
    assert training.latest_solverstate(str(tmp_path)).endswith('train_iter_100.solverstate')


def test_top_level_solve_names_the_model_folders_it_knows(capsys):
    import solve
    with pytest.raises(SystemExit) as exit_:
        solve.main(['no-such-model'])
    message = str(exit_.value.code)
    assert 'no-such-model has no solve.py' in message
    assert 'voc-fcn32s' in message and 'voc-fcn8s-atonce' in message


def test_every_voc_model_folder_has_a_solve_script_starting_from_the_previous_stage():
    expected = {'voc-fcn32s': '../ilsvrc-nets/vgg16-fcn.caffemodel',
                'voc-fcn16s': '../voc-fcn32s/snapshot/train_iter_100000.caffemodel',
                'voc-fcn8s': '../voc-fcn16s/snapshot/train_iter_100000.caffemodel',
                'voc-fcn8s-atonce': '../ilsvrc-nets/vgg16-fcn.caffemodel'}
    import runpy
    for folder, weights in expected.items():
        script = runpy.run_path(os.path.join(ROOT, folder, 'solve.py'), run_name='not_main')
        assert script['WEIGHTS'] == weights


def test_generator_states_round_trip_through_json():
    import json
    import torch
    from torchcaffe import mode
    gen = mode.generator('cpu')
    saved = json.loads(json.dumps(mode.random_state()))
    first = torch.rand(5, generator=gen)
    torch.rand(7, generator=gen)
    mode.set_random_state(saved)
    assert torch.equal(torch.rand(5, generator=gen), first)


class _CountingSolver:
    """Just enough of a solver for train()'s schedule: step() advances iter."""

    def __init__(self, start):
        self.iter = start
        self.steps = []
        self.param = type('P', (), {'snapshot': 0})()
        self.snapshots = []

    def step(self, n):
        self.steps.append(n)
        self.iter += n

    def snapshot(self):
        self.snapshots.append(self.iter)


def _tested_iterations(monkeypatch, start, resumed, max_iter=20, test_every=6):
    solver = _CountingSolver(start)
    monkeypatch.setattr(training, '_seg_test', lambda s, *a: (s.iter, None))
    results = training.train(solver, max_iter, test_every, val=[], resumed=resumed)
    return [it for it, _ in results], solver


def test_a_resume_between_tests_keeps_the_test_schedule(monkeypatch):
    tested, solver = _tested_iterations(monkeypatch, start=4, resumed=True)
    assert tested == [6, 12, 18, 20]
    assert solver.steps == [2, 6, 6, 2]


def test_a_resume_at_a_test_iteration_tests_it_again_first(monkeypatch):
    tested, _ = _tested_iterations(monkeypatch, start=12, resumed=True)
    assert tested == [12, 18, 20]


def test_a_fresh_run_tests_at_every_multiple_and_the_end(monkeypatch):
    tested, solver = _tested_iterations(monkeypatch, start=0, resumed=False)
    assert tested == [6, 12, 18, 20]
    assert solver.snapshots == [20]  # snapshot 0 in the solver: the final one only


def test_prepare_solver_builds_the_solver_type_the_prototxt_names(model_dir):
    import torchcaffe as caffe
    text = (model_dir / 'solver.prototxt').read_text().replace('momentum: 0.9',
                                                               'momentum: 0.9\ntype: "Adam"')
    (model_dir / 'solver.prototxt').write_text(text)
    with training.working_dir(str(model_dir)):
        solver = training.prepare_solver()
    assert type(solver) is caffe.AdamSolver and solver.param.type == 'Adam'
