"""SGDSolver: Caffe's update, lr policies, loss smoothing, snapshots, signals, logs.

The nets are tiny and written inline: a Python data layer gives the i-th batch of a
fixed seeded sequence at its i-th forward, then InnerProduct ip1 (trained, biases at
lr_mult 2 without decay) -> InnerProduct ip2 (lr_mult 0: fixed) -> SoftmaxWithLoss.
Expected values come from numpy: the gradient of that net by hand, and Caffe's
update formulas re-implemented here in float32.
"""
import importlib
import logging
import math
import os
import re
import signal
import sys
import uuid

import numpy as np
import pytest
import torch
from google.protobuf import text_format

import torchcaffe as caffe
from torchcaffe import caffe_pb2, io
from torchcaffe.errors import CaffeError
from torchcaffe.glog import GlogFormatter
from torchcaffe.lr_policies import learning_rate
from torchcaffe.solver import DivergedError, TrainingStopped

LAYERS = '''
import ast
import os
import signal

import numpy as np
import torchcaffe as caffe


def batch(seed, index, shape, classes):
    """The index-th batch of the sequence: normal data, labels in [0, classes)."""
    rng = np.random.default_rng([seed, index])
    data = rng.normal(size=shape).astype(np.float32)
    label = rng.integers(0, classes, shape[0]).astype(np.float32)
    return data, label


class Seq(caffe.Layer):
    """Tops data, label: batch(seed, i) at the i-th forward. Optionally NaN data at
    forward 'nan_at', and a signal sent to this process at the forwards in 'signals'."""

    def setup(self, bottom, top):
        p = ast.literal_eval(self.param_str)
        self.seed, self.shape, self.classes = p['seed'], tuple(p['shape']), p['classes']
        self.nan_at = p.get('nan_at')
        self.signals = p.get('signals', {})
        self.index = 0

    def reshape(self, bottom, top):
        top[0].reshape(*self.shape)
        top[1].reshape(self.shape[0])

    def forward(self, bottom, top):
        data, label = batch(self.seed, self.index, self.shape, self.classes)
        if self.index == self.nan_at:
            data[0, 0] = np.nan
        top[0].data[...] = data
        top[1].data[...] = label
        name = self.signals.get(self.index)
        self.index += 1
        if name:
            os.kill(os.getpid(), getattr(signal, name))
'''

SEED, CLASSES, SHAPE = 7, 3, (4, 3)

NET = '''
name: "tiny"
layer { name: "data" type: "Python" top: "data" top: "label"
  python_param { module: "MODULE" layer: "Seq" param_str: "PARAMS" } }
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"
  param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
  inner_product_param { num_output: HIDDEN
    weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "gaussian" std: 0.1 } } }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
  param { lr_mult: 0 decay_mult: 1 } param { lr_mult: 0 }
  inner_product_param { num_output: 3
    weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "gaussian" std: 0.1 } } }
layer { name: "acc" type: "Accuracy" bottom: "ip2" bottom: "label" top: "acc"
  include { phase: TEST } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }
'''


@pytest.fixture(autouse=True)
def cpu_mode():
    caffe.set_mode_cpu()
    yield
    caffe.set_mode_cpu()


@pytest.fixture(scope='module')
def layers(tmp_path_factory):
    """The data layer module, importable under a unique name."""
    where = tmp_path_factory.mktemp('layers')
    name = 'solver_layers_%s' % uuid.uuid4().hex[:8]
    (where / (name + '.py')).write_text(LAYERS)
    sys.path.insert(0, str(where))
    module = importlib.import_module(name)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv('TORCHCAFFE_PYTHON_LAYER_PATH', str(where))  # allow its folder
        yield module
    sys.path.remove(str(where))
    sys.modules.pop(name, None)


def net_text(module, shape=SHAPE, hidden=4, **extra):
    params = dict(seed=SEED, shape=shape, classes=CLASSES, **extra)
    return (NET.replace('MODULE', module.__name__).replace('HIDDEN', str(hidden))
            .replace('PARAMS', str(params).replace('"', '\\"')))


def solver_param(module, fields='', **net_kw):
    param = caffe_pb2.SolverParameter()
    text_format.Merge('%s\nnet_param { %s }' % (fields, net_text(module, **net_kw)), param)
    return param


def make_solver(module, fields='', **net_kw):
    defaults = 'lr_policy: "fixed" base_lr: 0.1 max_iter: 100 '
    return caffe.SGDSolver(solver_param(module, defaults + fields, **net_kw))


def weights(solver):
    """[W1, b1, W2, b2] as float32 copies."""
    return [p.data.copy() for p in solver.net.learnable_params]


# -- numpy references --------------------------------------------------------------------

def grads(ws, data, label):
    """Loss and gradients (W1, b1) of the tiny net, by hand in float64.

    The gradients of ip2 (lr_mult 0) are not computed, as Caffe does not compute them.
    """
    W1, b1, W2, b2 = [np.float64(w) for w in ws]
    x = np.float64(data)
    h = x @ W1.T + b1
    s = h @ W2.T + b2
    p = np.exp(s - s.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    n, rows, labels = len(x), np.arange(len(x)), label.astype(int)
    loss = -np.log(p[rows, labels]).mean()
    ds = p.copy()
    ds[rows, labels] -= 1
    ds /= n  # SoftmaxWithLoss normalises by the valid count
    dh = ds @ W2
    return loss, [dh.T @ x, dh.sum(0), np.zeros_like(W2), np.zeros_like(b2)]


LR_MULTS, DECAY_MULTS = (1, 2, 0, 0), (1, 0, 1, 1)


def caffe_update(ws, hs, gs, rate, momentum, weight_decay, iter_size=1):
    """Caffe's SGD on float32 arrays: normalize, regularize, history, data -= history."""
    f = np.float32
    new_ws, new_hs = [], []
    for w, h, g, lr_mult, decay_mult in zip(ws, hs, gs, LR_MULTS, DECAY_MULTS, strict=True):
        d = f(g)
        if iter_size != 1:
            d = d * (f(1) / f(iter_size))
        local_decay = f(weight_decay) * f(decay_mult)
        if local_decay:
            d = d + local_decay * w
        local_rate = f(rate) * f(lr_mult)
        h = f(momentum) * h + local_rate * d
        new_ws.append(w - h)
        new_hs.append(h)
    return new_ws, new_hs


def assert_close(actual, expected, rtol=2e-5, atol=1e-6):
    for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
        np.testing.assert_allclose(a, e, rtol=rtol, atol=atol, err_msg='param %d' % i)


# -- the update ----------------------------------------------------------------------------

def test_one_step_is_the_hand_computed_update(layers):
    solver = make_solver(layers, 'base_lr: 0.1 momentum: 0.9 weight_decay: 0.01')
    before = weights(solver)
    data, label = layers.batch(SEED, 0, SHAPE, CLASSES)
    _, (gW1, gb1, _, _) = grads(before, data, label)
    solver.step(1)
    after = weights(solver)
    W1, b1, W2, b2 = before
    assert_close(after[:2], [W1 - 0.1 * (gW1 + 0.01 * W1),   # weight decay on W1
                             b1 - 0.1 * 2 * gb1])             # lr_mult 2, decay_mult 0
    # lr_mult 0: decay is added to the diff, then multiplied by a rate of 0
    assert np.array_equal(after[2], W2) and np.array_equal(after[3], b2)
    assert_close(solver.history[:2], [W1 - after[0], b1 - after[1]])
    assert solver.iter == 1


def test_momentum_steps_match_caffe_formulas_in_numpy(layers):
    fields = ('lr_policy: "step" base_lr: 0.05 gamma: 0.5 stepsize: 2 momentum: 0.9 '
              'weight_decay: 0.005')
    solver = make_solver(layers, fields)
    ws = weights(solver)
    hs = [np.zeros_like(w) for w in ws]
    for it in range(5):
        data, label = layers.batch(SEED, it, SHAPE, CLASSES)
        _, gs = grads(ws, data, label)
        rate = np.float32(0.05 * 0.5 ** (it // 2))
        ws, hs = caffe_update(ws, hs, gs, rate, 0.9, 0.005)
    solver.step(3)
    solver.step(2)  # a second call carries on with the same history
    assert_close(weights(solver), ws, rtol=1e-4)
    assert_close(solver.history, hs, rtol=1e-4, atol=1e-6)
    assert solver.current_step == 2


def test_iter_size_averages_the_gradients_of_its_passes(layers):
    shape = (1, 3)
    solver = make_solver(layers, 'base_lr: 1 iter_size: 2', shape=shape)
    before = weights(solver)
    g = [grads(before, *layers.batch(SEED, i, shape, CLASSES)) for i in range(2)]
    solver.step(1)
    avg = [(a + b) / 2 for a, b in zip(g[0][1], g[1][1], strict=True)]
    assert_close(weights(solver)[:2], [before[0] - avg[0], before[1] - 2 * avg[1]])
    assert solver.smoothed_loss == pytest.approx((g[0][0] + g[1][0]) / 2, rel=1e-5)
    # the same through the reference formulas, with Caffe's 1/iter_size scaling
    ws, _ = caffe_update(before, [np.zeros_like(w) for w in before],
                         [a + b for a, b in zip(g[0][1], g[1][1], strict=True)], 1, 0, 0,
                         iter_size=2)
    assert_close(weights(solver), ws)


def test_clip_gradients_scales_by_the_global_norm(layers, caplog):
    solver = make_solver(layers, 'base_lr: 1 clip_gradients: 0.05')
    before = weights(solver)
    _, gs = grads(before, *layers.batch(SEED, 0, SHAPE, CLASSES))
    norm = math.sqrt(sum(float((g ** 2).sum()) for g in gs))
    assert norm > 0.05
    scale = 0.05 / norm
    solver.step(1)
    assert_close(weights(solver)[:2], [before[0] - scale * gs[0], before[1] - 2 * scale * gs[1]])
    line = [r.getMessage() for r in caplog.records if 'Gradient clipping' in r.getMessage()]
    assert len(line) == 1
    m = re.fullmatch(r'Gradient clipping: scaling down gradients \(L2 norm (\S+) > 0.05\) '
                     r'by scale factor (\S+)', line[0])
    assert float(m.group(1)) == pytest.approx(norm, rel=1e-4)
    assert float(m.group(2)) == pytest.approx(scale, rel=1e-4)


def test_clip_gradients_leaves_small_gradients_alone(layers, caplog):
    solver = make_solver(layers, 'base_lr: 1 clip_gradients: 1000')
    before = weights(solver)
    _, gs = grads(before, *layers.batch(SEED, 0, SHAPE, CLASSES))
    solver.step(1)
    assert_close(weights(solver)[:2], [before[0] - gs[0], before[1] - 2 * gs[1]])
    assert not any('Gradient clipping' in r.getMessage() for r in caplog.records)


def test_l1_regularization_adds_the_sign_of_the_weights(layers):
    solver = make_solver(layers, 'base_lr: 0.1 weight_decay: 0.01 regularization_type: "L1"')
    before = weights(solver)
    _, gs = grads(before, *layers.batch(SEED, 0, SHAPE, CLASSES))
    solver.step(1)
    assert_close(weights(solver)[:1], [before[0] - 0.1 * (gs[0] + 0.01 * np.sign(before[0]))])


def test_unknown_regularization_type_fails_at_construction(layers):
    with pytest.raises(CaffeError, match='Unknown regularization type: "L3"'):
        make_solver(layers, 'weight_decay: 0.01 regularization_type: "L3"')


# -- learning rate policies ----------------------------------------------------------------

def policy(text):
    param = caffe_pb2.SolverParameter()
    text_format.Merge('base_lr: 0.01 max_iter: 200 ' + text, param)
    return param


@pytest.mark.parametrize('text, formula', [
    ('lr_policy: "fixed"', lambda it: 0.01),
    ('lr_policy: "step" gamma: 0.1 stepsize: 30', lambda it: 0.01 * 0.1 ** (it // 30)),
    ('lr_policy: "exp" gamma: 0.99', lambda it: 0.01 * 0.99 ** it),
    ('lr_policy: "inv" gamma: 0.0001 power: 0.75',
     lambda it: 0.01 * (1 + 0.0001 * it) ** -0.75),
    ('lr_policy: "poly" power: 0.9', lambda it: 0.01 * (1 - it / 200) ** 0.9),
    ('lr_policy: "sigmoid" gamma: -0.05 stepsize: 100', None),
    ('lr_policy: "sigmoid" gamma: 0.05 stepsize: 100',
     lambda it: 0.01 / (1 + math.exp(-0.05 * (it - 100)))),
])
def test_lr_policies_follow_their_formulas(text, formula):
    param = policy(text)
    if formula is None:
        with pytest.raises(CaffeError, match='needs gamma >= 0'):
            learning_rate(param, 0)
        return
    for it in (0, 1, 29, 30, 95, 150, 199):
        rate, _ = learning_rate(param, it)
        assert isinstance(rate, np.float32)
        assert rate == pytest.approx(formula(it), rel=2e-6), (text, it)


def test_multistep_advances_one_step_per_stepvalue_reached():
    param = policy('lr_policy: "multistep" gamma: 0.5 stepvalue: 3 stepvalue: 5 '
                   'stepvalue: 9')
    step, seen = 0, []
    for it in range(12):
        rate, step = learning_rate(param, it, step)
        seen.append(step)
        assert rate == np.float32(0.01 * 0.5 ** step)
    assert seen == [0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 3, 3]


def test_multistep_logs_its_status_through_the_solver(layers, caplog):
    solver = make_solver(layers, 'lr_policy: "multistep" gamma: 0.5 stepvalue: 2 '
                                 'stepvalue: 3 base_lr: 0.01')
    solver.step(4)
    lines = [r.getMessage() for r in caplog.records if 'MultiStep' in r.getMessage()]
    assert lines == ['MultiStep Status: Iteration 2, step = 1',
                     'MultiStep Status: Iteration 3, step = 2']
    assert solver.current_step == 2


def test_step_policy_sets_current_step_from_the_iteration():
    param = policy('lr_policy: "step" gamma: 0.1 stepsize: 30')
    assert learning_rate(param, 65, current_step=0)[1] == 2


@pytest.mark.parametrize('text, message', [
    ('lr_policy: "cosine"', 'Unknown learning rate policy: "cosine"'),
    ('', 'Unknown learning rate policy: ""'),
    ('lr_policy: "step" gamma: 0.1', 'needs stepsize > 0'),
])
def test_bad_lr_policies_fail_at_construction(layers, text, message):
    param = solver_param(layers, 'base_lr: 0.1 ' + text)
    with pytest.raises(CaffeError, match=re.escape(message)):
        caffe.SGDSolver(param)


# -- the smoothed loss -----------------------------------------------------------------------

def clone(solver):
    """A separate train net of the solver's definition with the solver net's weights."""
    net = caffe.Net(solver.net.to_proto(), caffe.TRAIN)
    for p, w in zip(net.learnable_params, weights(solver), strict=True):
        p.data[...] = w
    return net


def per_iteration_losses(solver, start, count):
    """The losses the solver's fixed weights give batches start.. (a separate net)."""
    net = clone(solver)
    net.layers[0].index = start
    return [np.float32(net.forward()['loss']) for _ in range(count)]


def caffe_smoothing(losses, window):
    """Caffe's UpdateSmoothedLoss, incrementally in float32; every intermediate value."""
    f = np.float32
    kept, smoothed, out = [], f(0), []
    for i, loss in enumerate(losses):
        if len(kept) < window:
            kept.append(loss)
            smoothed = f((smoothed * f(len(kept) - 1) + loss) / f(len(kept)))
        else:
            smoothed = f(smoothed + (loss - kept[i % window]) / f(window))
            kept[i % window] = loss
        out.append(smoothed)
    return out


def test_smoothed_loss_follows_caffes_incremental_formula(layers, caplog):
    solver = make_solver(layers, 'base_lr: 0 average_loss: 3 display: 1')
    losses = per_iteration_losses(solver, 0, 6)
    solver.step(5)
    expected = caffe_smoothing(losses[:5], 3)
    shown = [float(re.search(r'loss = (\S+)$', r.getMessage()).group(1))
             for r in caplog.records if re.match(r'Iteration \d+ \(', r.getMessage())]
    assert shown == [float('%g' % v) for v in expected]
    assert solver.smoothed_loss == float(expected[-1])
    solver.step(1)  # a new step() restarts the window
    assert solver.smoothed_loss == float(losses[5])


# -- snapshots and restore --------------------------------------------------------------------

@pytest.mark.parametrize('fmt, model_ext, state_ext', [
    ('BINARYPROTO', '.caffemodel', '.solverstate'),
    ('HDF5', '.caffemodel.h5', '.solverstate.h5'),
])
def test_snapshot_names_and_contents(layers, tmp_path, caplog, fmt, model_ext, state_ext):
    prefix = str(tmp_path / 'snap' / 'tiny')
    os.mkdir(tmp_path / 'snap')
    solver = make_solver(layers, 'lr_policy: "step" gamma: 0.5 stepsize: 1 momentum: 0.9 '
                                 'snapshot: 2 snapshot_diff: true snapshot_format: %s '
                                 'snapshot_prefix: "%s"' % (fmt, prefix))
    solver.step(2)
    model, state_file = prefix + '_iter_2' + model_ext, prefix + '_iter_2' + state_ext
    assert sorted(os.listdir(tmp_path / 'snap')) == sorted(
        os.path.basename(p) for p in (model, state_file, state_file + '.resume.json'))
    kind = 'HDF5 file' if fmt == 'HDF5' else 'binary proto file'
    messages = [r.getMessage() for r in caplog.records]
    assert messages.index('Snapshotting to %s %s' % (kind, model)) + 1 == \
        messages.index('Snapshotting solver state to %s %s' % (kind, state_file))
    state = io.read_solverstate(state_file)
    assert (state.iter, state.learned_net, state.current_step) == (2, model, 1)
    history = [io.blobproto_to_array(b) for b in state.history]
    assert len(history) == 4
    for saved, h in zip(history, solver.history, strict=True):
        assert np.array_equal(saved, h)
    net = caffe.Net(solver.net.to_proto(), caffe.TRAIN)
    for p in net.learnable_params:
        p.data[...] = 0
    net.copy_from(model)
    for a, b in zip(net.learnable_params, solver.net.learnable_params, strict=True):
        assert np.array_equal(a.data, b.data)
    if fmt == 'BINARYPROTO':  # snapshot_diff: the diffs hold the last update
        saved = io.read_caffemodel(model)
        ip1 = [l for l in saved.layer if l.name == 'ip1'][0]
        assert np.array_equal(io.blobproto_to_array(ip1.blobs[0], return_diff=True),
                              solver.history[0])


@pytest.mark.parametrize('fmt', ['BINARYPROTO', 'HDF5'])
def test_resuming_from_a_snapshot_equals_training_straight_through(layers, tmp_path, fmt):
    prefix = str(tmp_path / 'r')
    fields = ('lr_policy: "multistep" stepvalue: 2 stepvalue: 4 gamma: 0.5 momentum: 0.9 '
              'weight_decay: 0.001 snapshot: 3 snapshot_format: %s snapshot_prefix: "%s"'
              % (fmt, prefix))
    straight = make_solver(layers, fields)
    straight.step(3)
    straight.step(3)
    resumed = make_solver(layers, fields)
    assert not np.array_equal(weights(resumed)[0], weights(straight)[0])
    resumed.restore(prefix + '_iter_3' + ('.solverstate.h5' if fmt == 'HDF5' else '.solverstate'))
    assert (resumed.iter, resumed.current_step) == (3, 1)
    resumed.net.layers[0].index = 3  # the data layer carries on where it was
    resumed.step(3)
    assert (resumed.iter, resumed.current_step) == (6, 2)
    for a, b in zip(weights(resumed) + resumed.history, weights(straight) + straight.history,
                    strict=True):
        assert np.array_equal(a, b)


def test_restoring_a_state_of_another_net_names_the_param_and_shapes(layers, tmp_path):
    prefix = str(tmp_path / 'a')
    solver = make_solver(layers, 'snapshot_prefix: "%s"' % prefix)
    solver.step(1)
    model, state = solver.snapshot()
    other = make_solver(layers, hidden=5)
    before = weights(other)
    with pytest.raises(CaffeError) as err:
        other.restore(state)
    message = str(err.value)
    for part in (state, 'history blob 0', "layer 'ip1' blob 0", '(4, 3)', '(5, 3)',
                 'different net'):
        assert part in message
    assert other.iter == 0 and all(np.array_equal(a, b)
                                   for a, b in zip(before, weights(other), strict=True))


def test_restoring_a_state_with_another_param_count_fails(layers, tmp_path):
    solver = make_solver(layers, 'snapshot_prefix: "%s"' % (tmp_path / 'a'))
    _, state = solver.snapshot()
    text = solver_param(layers, 'lr_policy: "fixed" base_lr: 0.1')
    del text.net_param.layer[2].param[:]
    text.net_param.layer[2].inner_product_param.bias_term = False
    other = caffe.SGDSolver(text)
    with pytest.raises(CaffeError, match='4 history blobs but the net has 3 learnable params'):
        other.restore(state)


def test_restore_needs_the_learned_net_it_names(layers, tmp_path):
    solver = make_solver(layers, 'snapshot_prefix: "%s"' % (tmp_path / 'a'))
    model, state = solver.snapshot()
    os.remove(model)
    with pytest.raises(CaffeError, match=re.escape("learned_net %r does not exist" % model)):
        make_solver(layers).restore(state)


def test_missing_snapshot_directory_fails_at_construction(layers, tmp_path):
    prefix = tmp_path / 'nowhere' / 'snap'
    with pytest.raises(CaffeError, match=re.escape(str(tmp_path / 'nowhere'))):
        make_solver(layers, 'snapshot: 10 snapshot_prefix: "%s"' % prefix)
    assert not (tmp_path / 'nowhere').exists()


def test_solve_snapshots_at_the_end_and_logs_the_final_loss(layers, tmp_path, caplog):
    prefix = str(tmp_path / 's')
    solver = make_solver(layers, 'max_iter: 5 snapshot: 2 display: 5 snapshot_prefix: "%s"'
                         % prefix)
    solver.solve()
    assert solver.iter == 5
    assert sorted(os.listdir(tmp_path)) == ['s_iter_%d.%s' % (i, ext) for i in (2, 4, 5)
                                            for ext in ('caffemodel', 'solverstate',
                                                        'solverstate.resume.json')]
    messages = [r.getMessage() for r in caplog.records]
    assert messages[-1] == 'Optimization Done.'
    assert re.fullmatch(r'Iteration 5, loss = [0-9.e+-]+', messages[-2])


def test_solve_resumes_from_a_state_file(layers, tmp_path):
    prefix = str(tmp_path / 's')
    fields = 'max_iter: 4 snapshot: 2 momentum: 0.9 snapshot_prefix: "%s"' % prefix
    straight = make_solver(layers, fields)
    straight.solve()
    resumed = make_solver(layers, fields)
    resumed.net.layers[0].index = 2
    resumed.solve(prefix + '_iter_2.solverstate')
    assert resumed.iter == 4
    for a, b in zip(weights(resumed), weights(straight), strict=True):
        assert np.array_equal(a, b)


# -- divergence and signals ---------------------------------------------------------------------

def test_nan_loss_stops_training_naming_the_iteration(layers):
    solver = make_solver(layers, nan_at=2)
    with pytest.raises(DivergedError, match='Iteration 2: the loss is nan') as err:
        solver.step(5)
    assert err.value.iteration == 2 and solver.iter == 2
    assert all(np.isfinite(w).all() for w in weights(solver))  # no NaN update applied


def test_sigint_snapshots_and_stops_step(layers, tmp_path):
    prefix = str(tmp_path / 's')
    param = solver_param(layers, 'lr_policy: "fixed" base_lr: 0.1 snapshot_prefix: "%s"'
                         % prefix, signals={2: 'SIGINT'})
    solver = caffe.SGDSolver(param)
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(TrainingStopped) as err:
        solver.step(6)
    assert isinstance(err.value, KeyboardInterrupt)
    assert solver.iter == 3 and err.value.iteration == 3 and solver.requested_early_exit
    assert sorted(os.listdir(tmp_path)) == ['s_iter_3.caffemodel', 's_iter_3.solverstate',
                                            's_iter_3.solverstate.resume.json']
    assert signal.getsignal(signal.SIGINT) is handler


def test_sigint_during_solve_stops_early_with_one_snapshot(layers, tmp_path, caplog):
    prefix = str(tmp_path / 's')
    param = solver_param(layers, 'lr_policy: "fixed" base_lr: 0.1 max_iter: 10 '
                         'snapshot_prefix: "%s"' % prefix, signals={1: 'SIGINT'})
    solver = caffe.SGDSolver(param)
    solver.solve()
    messages = [r.getMessage() for r in caplog.records]
    assert messages[-1] == 'Optimization stopped early.'
    assert solver.iter == 2
    assert sum(m.startswith('Snapshotting to') for m in messages) == 1


def test_sighup_snapshots_and_training_goes_on(layers, tmp_path):
    prefix = str(tmp_path / 's')
    param = solver_param(layers, 'lr_policy: "fixed" base_lr: 0.1 snapshot_prefix: "%s"'
                         % prefix, signals={1: 'SIGHUP'})
    solver = caffe.SGDSolver(param)
    handler = signal.getsignal(signal.SIGHUP)
    solver.step(4)
    assert solver.iter == 4 and not solver.requested_early_exit
    assert sorted(os.listdir(tmp_path)) == ['s_iter_2.caffemodel', 's_iter_2.solverstate',
                                            's_iter_2.solverstate.resume.json']
    assert signal.getsignal(signal.SIGHUP) is handler


# -- logs -----------------------------------------------------------------------------------

def test_display_lines_have_caffes_format(layers, caplog):
    solver = make_solver(layers, 'display: 2 base_lr: 0.25')
    solver.step(3)
    messages = [r.getMessage() for r in caplog.records]
    number = r'[0-9.e+-]+'
    progress = [m for m in messages if m.startswith('Iteration ')]
    assert re.fullmatch(r'Iteration 0 \(%s iter/s, %ss/2 iters\), loss = %s' % ((number,) * 3),
                        progress[0])
    assert progress[1] == 'Iteration 0, lr = 0.25'
    assert re.fullmatch(r'Iteration 2 \(%s iter/s, %ss/2 iters\), loss = %s' % ((number,) * 3),
                        progress[2])
    assert progress[3] == 'Iteration 2, lr = 0.25'
    out = [m for m in messages if 'Train net output' in m]
    m = re.fullmatch(r'    Train net output #0: loss = (%s) \(\* 1 = (%s) loss\)' % (number, number),
                     out[0])
    assert m and m.group(1) == m.group(2)
    record = [r for r in caplog.records if r.getMessage() == 'Iteration 2, lr = 0.25'][0]
    line = GlogFormatter().format(record)
    assert re.fullmatch(r'I\d{4} \d\d:\d\d:\d\d\.\d{6} +\d+ solver\.py:\d+\] Iteration 2, '
                        r'lr = 0\.25', line), line


def test_logs_reach_stderr_in_glog_format_without_logging_setup(layers, capsys, monkeypatch):
    monkeypatch.setattr(logging.getLogger(), 'handlers', [])
    solver = make_solver(layers, 'display: 1')
    solver.step(1)
    err = capsys.readouterr().err
    assert re.search(r'^I\d{4} [0-9:.]+ +\d+ solver\.py:\d+\] Iteration 0, lr = 0\.1$', err,
                     re.MULTILINE), err


# -- test nets -------------------------------------------------------------------------------

def test_test_nets_share_weights_and_log_mean_outputs(layers, caplog):
    solver = make_solver(layers, 'test_iter: 2 test_interval: 2 test_compute_loss: true '
                                 'momentum: 0.5')
    assert len(solver.test_nets) == 1 and 'acc' in solver.test_nets[0].outputs
    solver.step(2)
    current = weights(solver)
    caplog.clear()
    solver.step(1)  # tests at iteration 2 with the weights of two updates
    test_net = solver.test_nets[0]
    for a, b in zip(test_net.params['ip1'], solver.net.params['ip1'], strict=True):
        assert np.array_equal(a.data, b.data)
    reference = caffe.Net(test_net.to_proto(), caffe.TEST)
    for p, w in zip(reference.learnable_params, current, strict=True):
        p.data[...] = w
    reference.layers[0].index = 2  # the test net used batches 0, 1 at iteration 0
    outs = [reference.forward() for _ in range(2)]
    acc = np.float32(np.float32(outs[0]['acc']) + np.float32(outs[1]['acc'])) / np.float32(2)
    loss = np.float32(np.float32(outs[0]['loss']) + np.float32(outs[1]['loss'])) / np.float32(2)
    messages = [r.getMessage() for r in caplog.records]
    start = messages.index('Iteration 2, Testing net (#0)')
    assert messages[start + 1:start + 4] == [
        'Test loss: %g' % loss,
        '    Test net output #0: acc = %g' % acc,
        '    Test net output #1: loss = %g (* 1 = %g loss)' % (loss, loss)]


def test_test_initialization_false_skips_the_test_at_iteration_0(layers, caplog):
    solver = make_solver(layers, 'test_iter: 1 test_interval: 1 test_initialization: false')
    solver.step(2)
    tests = [r.getMessage() for r in caplog.records if 'Testing net' in r.getMessage()]
    assert tests == ['Iteration 1, Testing net (#0)']


# -- construction -----------------------------------------------------------------------------

def test_solver_needs_exactly_one_train_net(layers, tmp_path):
    param = solver_param(layers, 'lr_policy: "fixed" train_net: "x.prototxt"')
    with pytest.raises(CaffeError, match='exactly one train net.*net_param, train_net'):
        caffe.SGDSolver(param)
    param.ClearField('train_net')
    param.ClearField('net_param')
    with pytest.raises(CaffeError, match='it has none'):
        caffe.SGDSolver(param)


def test_net_files_are_read_relative_to_the_working_directory(layers, tmp_path, monkeypatch):
    folder = tmp_path / 'model'
    folder.mkdir()
    (folder / 'train.prototxt').write_text(net_text(layers))
    (folder / 'solver.prototxt').write_text(
        'train_net: "train.prototxt"\ntest_net: "train.prototxt"\ntest_iter: 1\n'
        'test_interval: 10\nlr_policy: "fixed"\nbase_lr: 0.1\n')
    monkeypatch.chdir(folder)
    solver = caffe.get_solver('solver.prototxt')
    assert isinstance(solver, caffe.SGDSolver)
    assert solver.param.snapshot_prefix == 'solver'  # from the file name, as Caffe
    assert solver.net.phase == caffe.TRAIN and solver.test_nets[0].phase == caffe.TEST
    assert 'acc' in solver.test_nets[0].outputs and 'acc' not in solver.net.outputs
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CaffeError, match="train_net 'train.prototxt' not found"):
        caffe.SGDSolver(str(folder / 'solver.prototxt'))


def test_test_iter_must_match_the_test_nets(layers):
    param = solver_param(layers, 'lr_policy: "fixed" test_interval: 5')
    param.test_net_param.add().CopyFrom(param.net_param)
    with pytest.raises(CaffeError, match='test_iter must be specified for each test network'):
        caffe.SGDSolver(param)


def test_get_solver_picks_by_type_and_lists_the_known_ones(layers):
    param = solver_param(layers, 'lr_policy: "fixed" type: "Adam"')
    assert type(caffe.get_solver(param)) is caffe.AdamSolver
    param.type = 'Fancy'
    with pytest.raises(CaffeError, match='Unknown solver type: "Fancy".*SGD, Nesterov'):
        caffe.get_solver(param)


def test_weights_field_finetunes_the_nets(layers, tmp_path):
    source = make_solver(layers)
    source.step(1)
    path = str(tmp_path / 'w.caffemodel')
    source.net.save(path)
    param = solver_param(layers, 'lr_policy: "fixed" base_lr: 0.1 weights: "%s"' % path)
    solver = caffe.SGDSolver(param)
    for a, b in zip(weights(solver), weights(source), strict=True):
        assert np.array_equal(a, b)


# -- a whole FCN ---------------------------------------------------------------------------

FCN_DATA = '''
import numpy as np
import torchcaffe as caffe


class TinySegData(caffe.Layer):
    """A random 37 x 45 image and labels in [0, 4) with some 255s, new at each forward."""

    def setup(self, bottom, top):
        self.rng = np.random.default_rng(3)

    def reshape(self, bottom, top):
        top[0].reshape(1, 3, 37, 45)
        top[1].reshape(1, 1, 37, 45)

    def forward(self, bottom, top):
        top[0].data[...] = self.rng.normal(0, 5, (1, 3, 37, 45))
        label = self.rng.integers(0, 4, (1, 1, 37, 45)).astype(np.float32)
        label[self.rng.random(label.shape) < 0.1] = 255
        top[1].data[...] = label
'''


def test_narrow_fcn32s_trains_two_steps(tmp_path, monkeypatch):
    from nets import voc
    name = 'fcn_data_%s' % uuid.uuid4().hex[:8]
    (tmp_path / (name + '.py')).write_text(FCN_DATA)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv('TORCHCAFFE_PYTHON_LAYER_PATH', str(tmp_path))  # allow its folder
    net = voc.stage_nets('fcn32s', classes=4, width=1 / 16)['train']
    data = net.layer[0]
    assert data.type == 'Python'
    data.python_param.module, data.python_param.layer = name, 'TinySegData'
    data.python_param.param_str = ''
    param = caffe_pb2.SolverParameter(base_lr=1e-6, lr_policy='fixed', momentum=0.99,
                                      weight_decay=0.0005, max_iter=2)
    param.train_net_param.CopyFrom(net)
    solver = caffe.SGDSolver(param)
    rng = np.random.default_rng(0)
    for blobs in solver.net.params.values():  # they start at zero (surgery fills them)
        for b in blobs:
            b.data[...] = rng.normal(0, math.sqrt(2 / max(1, b.count // b.shape[0])), b.shape)
    score_fr = solver.net.params['score_fr'][0].data.copy()
    upscore = solver.net.params['upscore'][0].data.copy()
    assert solver.net.params_lr[-1] == 0  # upscore, fixed
    solver.step(2)
    assert math.isfinite(solver.smoothed_loss)
    assert not np.array_equal(solver.net.params['score_fr'][0].data, score_fr)
    assert np.array_equal(solver.net.params['upscore'][0].data, upscore)


# -- GPU -----------------------------------------------------------------------------------

@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_gpu_training_matches_cpu(layers):
    fields = 'momentum: 0.9 weight_decay: 0.01 display: 2 average_loss: 2'
    cpu = make_solver(layers, fields)
    start = weights(cpu)
    cpu.step(4)
    caffe.set_mode_gpu()
    gpu = make_solver(layers, fields)
    for p, w in zip(gpu.net.learnable_params, start, strict=True):
        p.data[...] = w
    gpu.step(4)
    assert gpu.net.device.type == 'cuda'
    assert_close(weights(gpu), weights(cpu), rtol=1e-4)
    assert gpu.smoothed_loss == pytest.approx(cpu.smoothed_loss, rel=1e-4)
