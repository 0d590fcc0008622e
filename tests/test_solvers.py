"""Caffe's six solvers: updates step by step, history in solverstates, exact resume.

The net is tiny and inline: Input (data 4 x 3, label 4) -> InnerProduct ip1 (lr_mult
1 / 2, decay_mult 1 / 0) -> InnerProduct ip2 (weights lr_mult 0.5 decay_mult 2; bias
lr_mult 0 decay_mult 1: never learned, but regularized) -> SoftmaxWithLoss. Each
iteration gets its own seeded batch. The expected values come from numpy float32
re-implementations of Caffe's formulas (src/caffe/solvers/*_solver.cpp), fed with
the diffs the net computed (read in the solver's ``on_gradients_ready`` callback), or
with gradients of the net worked out by hand in float64.
"""
import math
import re

import h5py
import numpy as np
import pytest
import torch
from google.protobuf import text_format

import torchcaffe as caffe
from torchcaffe import caffe_pb2, io
from torchcaffe.errors import CaffeError, NetMismatchError
from torchcaffe.solver_updates import adam_correction

f = np.float32

NET = '''
name: "tiny"
layer { name: "input" type: "Input" top: "data" top: "label"
  input_param { shape { dim: 4 dim: 3 } shape { dim: 4 } } }
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"
  param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
  inner_product_param { num_output: 5
    weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "gaussian" std: 0.1 } } }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
  param { lr_mult: 0.5 decay_mult: 2 } param { lr_mult: 0 decay_mult: 1 }
  inner_product_param { num_output: 3
    weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "gaussian" std: 0.1 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }
'''
LR_MULTS, DECAY_MULTS = (1, 2, 0.5, 0), (1, 0, 2, 1)

BASE = 'lr_policy: "step" gamma: 0.5 stepsize: 2 max_iter: 100 random_seed: 5 '

# Each solver's own fields; the rates keep every update well inside float32.
SOLVER_FIELDS = {
    'SGD': 'base_lr: 0.1 momentum: 0.9',
    'Nesterov': 'base_lr: 0.1 momentum: 0.9',
    'AdaGrad': 'base_lr: 0.1 delta: 1e-6',
    'RMSProp': 'base_lr: 0.05 rms_decay: 0.9 delta: 1e-6',
    'AdaDelta': 'base_lr: 0.5 momentum: 0.95 delta: 1e-6',
    'Adam': 'base_lr: 0.01 momentum: 0.9 momentum2: 0.99 delta: 1e-6',
}
TYPES = list(SOLVER_FIELDS)
TWO_SETS = ('AdaDelta', 'Adam')


@pytest.fixture(autouse=True)
def cpu_mode():
    caffe.set_mode_cpu()
    yield
    caffe.set_mode_cpu()


def solver_param(kind, extra=''):
    param = caffe_pb2.SolverParameter()
    text_format.Merge('type: "%s" %s %s %s' % (kind, BASE, SOLVER_FIELDS[kind], extra), param)
    text_format.Merge(NET, param.net_param)
    return param


def make_solver(kind, extra=''):
    return caffe.get_solver(solver_param(kind, extra))


def batch(index):
    rng = np.random.default_rng([11, index])
    return (rng.normal(size=(4, 3)).astype(np.float32),
            rng.integers(0, 3, 4).astype(np.float32))


def step(solver, index=None):
    """One iteration on batch ``index`` (default: the solver's iteration)."""
    data, label = batch(solver.iter if index is None else index)
    solver.net.blobs['data'].data[...] = data
    solver.net.blobs['label'].data[...] = label
    solver.step(1)


def weights(solver):
    return [p.data.copy() for p in solver.net.learnable_params]


class Recorder:
    """Keeps the accumulated diffs of each iteration, read just before its update."""

    def __init__(self, solver):
        self.diffs = []
        solver.add_callback(lambda: None, self.on_gradients_ready)
        self.solver = solver

    def on_gradients_ready(self):
        self.diffs.append([p.diff.copy() for p in self.solver.net.learnable_params])


# -- numpy references: Caffe's formulas in float32 ----------------------------------------

def rule_sgd(d, hs, r, p, t):
    h = f(p.momentum) * hs[0] + r * d
    return h, [h]


def rule_nesterov(d, hs, r, p, t):
    m = f(p.momentum)
    h = m * hs[0] + r * d
    return (f(1) + m) * h - m * hs[0], [h]


def rule_adagrad(d, hs, r, p, t):
    h = hs[0] + d * d
    return r * (d / (np.sqrt(h) + f(p.delta))), [h]


def rule_rmsprop(d, hs, r, p, t):
    decay = f(p.rms_decay)
    h = decay * hs[0] + (f(1) - decay) * d * d
    return r * (d / (np.sqrt(h) + f(p.delta))), [h]


def rule_adadelta(d, hs, r, p, t):
    m, delta = f(p.momentum), f(p.delta)
    grads = m * hs[0] + (f(1) - m) * d * d
    step = d * np.sqrt((hs[1] + delta) / (grads + delta))
    steps = m * hs[1] + (f(1) - m) * step * step
    return r * step, [grads, steps]


def rule_adam(d, hs, r, p, t):
    b1, b2 = f(p.momentum), f(p.momentum2)
    m = b1 * hs[0] + (f(1) - b1) * d
    v = b2 * hs[1] + (f(1) - b2) * d * d
    # pow(Dtype, int) is a double in C++; the quotient is stored in a float
    correction = f(math.sqrt(1 - float(b2) ** t) / (1 - float(b1) ** t))
    return (r * correction) * (m / (np.sqrt(v) + f(p.delta))), [m, v]


RULES = {'SGD': rule_sgd, 'Nesterov': rule_nesterov, 'AdaGrad': rule_adagrad,
         'RMSProp': rule_rmsprop, 'AdaDelta': rule_adadelta, 'Adam': rule_adam}


def caffe_apply_update(kind, p, it, ws, hist, gs):
    """Normalize, regularize, ComputeUpdateValue and Update, per param (ApplyUpdate).

    ``hist`` is the list of history arrays in Caffe's order (N, or 2N); returns the
    new weights and history."""
    rate = f(p.base_lr)
    if p.lr_policy == 'step':
        rate = f(rate * f(p.gamma) ** (it // p.stepsize))
    n = len(ws)
    new_ws, new_hist = [], list(hist)
    for i, (w, g) in enumerate(zip(ws, gs, strict=True)):
        d = f(g) * (f(1) / f(p.iter_size)) if p.iter_size != 1 else f(g)
        decay = f(p.weight_decay) * f(DECAY_MULTS[i])
        if decay:
            d = d + decay * (w if p.regularization_type == 'L2' else np.sign(w))
        update, hs = RULES[kind](d, hist[i::n], f(rate) * f(LR_MULTS[i]), p, it + 1)
        for k, h in enumerate(hs):
            new_hist[k * n + i] = h
        new_ws.append(w - update)
    return new_ws, new_hist


def assert_close(actual, expected, what):
    assert len(actual) == len(expected), what
    for i, (a, e) in enumerate(zip(actual, expected)):
        np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-7, err_msg='%s %d' % (what, i))


# -- the updates --------------------------------------------------------------------------

@pytest.mark.parametrize('regularization', ['L2', 'L1'])
@pytest.mark.parametrize('kind', TYPES)
def test_each_update_follows_caffes_formulas_step_by_step(kind, regularization):
    solver = make_solver(kind, 'weight_decay: 0.01 regularization_type: "%s"' % regularization)
    assert type(solver).type == kind
    record = Recorder(solver)
    ws = weights(solver)
    hist = [np.zeros_like(w) for w in ws] * (2 if kind in TWO_SETS else 1)
    for it in range(5):  # the rate halves every 2 iterations
        step(solver)
        ws, hist = caffe_apply_update(kind, solver.param, it, ws, hist, record.diffs[it])
        assert_close(weights(solver), ws, '%s iteration %d weight' % (kind, it))
        assert_close(solver.history, hist, '%s iteration %d history' % (kind, it))
    # ip2's bias: lr_mult 0, so never changed, but its weight decay reached the history
    start = make_solver(kind).net.learnable_params[3].data
    assert np.array_equal(solver.net.learnable_params[3].data, start)
    if kind not in ('SGD', 'Nesterov'):
        assert np.abs(solver.history[3]).max() > 0


def test_iter_size_divides_the_accumulated_diffs_before_the_update():
    solver = make_solver('Adam', 'iter_size: 2 weight_decay: 0.001')
    record = Recorder(solver)
    ws = weights(solver)
    hist = [np.zeros_like(w) for w in ws] * 2
    for it in range(3):
        step(solver)
        ws, hist = caffe_apply_update('Adam', solver.param, it, ws, hist, record.diffs[it])
    assert_close(weights(solver), ws, 'weight')
    assert_close(solver.history, hist, 'history')


def hand_gradients(ws, data, label):
    """Gradients of the tiny net by hand in float64; ip2's bias (lr_mult 0) gets none."""
    W1, b1, W2, b2 = [np.float64(w) for w in ws]
    x = np.float64(data)
    h = x @ W1.T + b1
    s = h @ W2.T + b2
    p = np.exp(s - s.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    rows, labels = np.arange(len(x)), label.astype(int)
    ds = p.copy()
    ds[rows, labels] -= 1
    ds /= len(x)
    dh = ds @ W2
    return [dh.T @ x, dh.sum(0), ds.T @ h, np.zeros_like(b2)]


@pytest.mark.parametrize('kind', TYPES)
def test_training_matches_hand_computed_gradients_and_updates(kind):
    solver = make_solver(kind, 'weight_decay: 0.005')
    ws = weights(solver)
    hist = [np.zeros_like(w) for w in ws] * (2 if kind in TWO_SETS else 1)
    for it in range(4):
        gs = hand_gradients(ws, *batch(it))
        ws, hist = caffe_apply_update(kind, solver.param, it, ws, hist, gs)
        step(solver)
    for i, (a, e) in enumerate(zip(weights(solver), ws, strict=True)):
        np.testing.assert_allclose(a, e, rtol=1e-4, atol=1e-6, err_msg='param %d' % i)


def test_adam_first_step_is_the_rate_times_the_gradient_sign():
    # m = (1-b1) g, v = (1-b2) g^2: with t = iter + 1 = 1 the bias correction makes
    # m / sqrt(v) exactly sign(g) (up to delta). With t = 0 it would divide by zero.
    solver = make_solver('Adam', 'delta: 1e-12')
    before = weights(solver)
    record = Recorder(solver)
    step(solver)
    g = record.diffs[0][0]
    assert np.abs(g).min() > 1e-6
    update = solver.net.learnable_params[0].diff
    np.testing.assert_allclose(update, 0.01 * np.sign(g), rtol=1e-5)
    assert np.array_equal(weights(solver)[0], before[0] - update)


def test_adam_correction_is_computed_in_double_and_stored_as_float():
    for t in (1, 2, 10, 1000):
        exact = math.sqrt(1 - float(f(0.999)) ** t) / (1 - float(f(0.9)) ** t)
        value = adam_correction(0.9, 0.999, t)
        assert value.dtype == np.float32 and value == f(exact)


def test_adadelta_applies_the_rate_after_updating_its_step_history():
    # u = g * sqrt(delta / (g^2 (1-m) + delta)) at the first step; the history of
    # steps keeps u before the rate: (1-m) u^2, whatever base_lr is.
    histories = []
    for lr in (0.5, 2.0):
        solver = make_solver('AdaDelta', 'base_lr: %g' % lr)
        before, record = weights(solver), Recorder(solver)
        step(solver)
        assert len(record.diffs) == 1 and len(record.diffs[0]) == 4
        assert len(solver.history) == 2 * 4  # squared gradients, then squared steps
        m, delta = f(solver.param.momentum), f(solver.param.delta)
        for i, g in enumerate(record.diffs[0]):
            u = g * np.sqrt(delta / (g * g * (f(1) - m) + delta))
            what = 'param %d' % i
            np.testing.assert_allclose(solver.history[i], (f(1) - m) * g * g, rtol=1e-6,
                                       err_msg=what)
            np.testing.assert_allclose(solver.history[4 + i], (f(1) - m) * u * u, rtol=1e-5,
                                       err_msg=what)
            np.testing.assert_allclose(before[i] - weights(solver)[i],
                                       f(lr) * f(LR_MULTS[i]) * u, rtol=1e-5, atol=1e-7,
                                       err_msg=what)
        # ip2's bias (lr_mult 0) gets no gradient; the other three moved
        assert all(np.abs(h).max() > 0 for h in solver.history[4:7])
        histories.append(solver.history[4:])
    assert len(histories[0]) == len(histories[1]) == 4
    for a, b in zip(*histories):
        assert np.array_equal(a, b)


def test_nesterov_update_steps_back_then_over():
    # From a zero history: h = r g, update = (1 + m) h, so the weights move (1 + m) r g.
    solver = make_solver('Nesterov', 'momentum: 0.5 base_lr: 0.1')
    before = weights(solver)
    record = Recorder(solver)
    step(solver)
    g = record.diffs[0][0]
    update = solver.net.learnable_params[0].diff  # the update value, as Caffe leaves it
    np.testing.assert_allclose(update, f(1.5) * f(0.1) * g, rtol=1e-6)
    assert np.array_equal(weights(solver)[0], before[0] - update)
    np.testing.assert_allclose(solver.history[0], f(0.1) * g, rtol=1e-6)


# -- solverstates -------------------------------------------------------------------------

def state_ext(fmt):
    return '.solverstate.h5' if fmt == 'HDF5' else '.solverstate'


@pytest.mark.parametrize('fmt', ['BINARYPROTO', 'HDF5'])
@pytest.mark.parametrize('kind', TYPES)
def test_snapshot_restore_and_resume_are_bit_exact(kind, fmt, tmp_path):
    prefix = str(tmp_path / kind)
    extra = ('weight_decay: 0.01 snapshot: 3 snapshot_format: %s snapshot_prefix: "%s"'
             % (fmt, prefix))
    straight = make_solver(kind, extra)
    for _ in range(3):
        step(straight)
    path = prefix + '_iter_3' + state_ext(fmt)
    state = io.read_solverstate(path)
    sets = 2 if kind in TWO_SETS else 1
    assert len(state.history) == 4 * sets
    saved = [io.blobproto_to_array(b) for b in state.history]
    for a, b in zip(saved, straight.history, strict=True):
        assert a.shape == b.shape and np.array_equal(a, b)
    if fmt == 'HDF5':  # Caffe's layout: group history, datasets 0 .. 2N-1
        with h5py.File(path, 'r') as h5:
            assert sorted(h5['history'], key=int) == [str(i) for i in range(4 * sets)]
            assert np.array_equal(h5['history'][str(4 * sets - 1)][()], straight.history[-1])
    resumed = make_solver(kind, extra)
    resumed.restore(path)
    assert resumed.iter == 3 and resumed.current_step == 1
    for a, b in zip(weights(resumed) + resumed.history, weights(straight) + straight.history,
                    strict=True):
        assert np.array_equal(a, b)
    for _ in range(3):
        step(straight)
        step(resumed)
    assert resumed.iter == straight.iter == 6
    for a, b in zip(weights(resumed) + resumed.history, weights(straight) + straight.history,
                    strict=True):
        assert np.array_equal(a, b)


def write_caffe_state(tmp_path, solver, history, iteration, fmt):
    """A solverstate as Caffe writes one: its caffemodel, iter, current_step, history."""
    model = str(tmp_path / ('caffe_iter_%d.caffemodel' % iteration))
    io.write_caffemodel(solver.net.to_proto(), model)
    state = caffe_pb2.SolverState(iter=iteration, learned_net=model, current_step=0)
    for h in history:
        state.history.add().CopyFrom(io.array_to_blobproto(h))
    path = str(tmp_path / ('caffe_iter_%d%s' % (iteration, state_ext(fmt))))
    io.write_solverstate(state, path)
    return path


@pytest.mark.parametrize('fmt', ['BINARYPROTO', 'HDF5'])
def test_a_caffe_adam_state_puts_first_moments_first(tmp_path, fmt):
    solver = make_solver('Adam', 'lr_policy: "fixed"')
    ws = weights(solver)
    rng = np.random.default_rng(2)
    m = [rng.normal(0, 0.1, w.shape).astype(np.float32) for w in ws]
    v = [rng.uniform(0.01, 0.1, w.shape).astype(np.float32) for w in ws]
    path = write_caffe_state(tmp_path, solver, m + v, 7, fmt)
    resumed = make_solver('Adam', 'lr_policy: "fixed"')
    resumed.restore(path)
    assert resumed.iter == 7
    for a, b in zip(resumed.history, m + v, strict=True):
        assert np.array_equal(a, b)
    record = Recorder(resumed)
    step(resumed)
    expected, hist = caffe_apply_update('Adam', resumed.param, 7, ws, m + v, record.diffs[0])
    assert_close(weights(resumed), expected, 'weight')  # t = 8 in the correction
    assert_close(resumed.history, hist, 'history')


def test_a_state_of_another_solver_type_is_refused_naming_both_counts(tmp_path):
    sgd = make_solver('SGD', 'snapshot_prefix: "%s"' % (tmp_path / 's'))
    step(sgd)
    _, path = sgd.snapshot()
    adam = make_solver('Adam')
    before = weights(adam)
    with pytest.raises(NetMismatchError,
                       match=r'4 history blobs but AdamSolver keeps 8 \(2 per learnable param; '
                             r'the net has 4\).*solver type'):
        adam.restore(path)
    assert adam.iter == 0 and all(np.array_equal(a, b)
                                  for a, b in zip(before, weights(adam), strict=True))


def test_a_second_half_of_the_wrong_shape_names_its_param(tmp_path):
    solver = make_solver('AdaDelta')
    hist = [np.zeros_like(w) for w in weights(solver)] * 2
    hist[5] = np.zeros((2, 2), np.float32)  # second set, param 1 (ip1's bias)
    path = write_caffe_state(tmp_path, solver, hist, 1, 'BINARYPROTO')
    with pytest.raises(NetMismatchError, match="history blob 5 has shape.*learnable param 1 "
                                               r"\(layer 'ip1' blob 1\)"):
        make_solver('AdaDelta').restore(path)


# -- get_solver and the old enum ----------------------------------------------------------

@pytest.mark.parametrize('kind', TYPES)
def test_get_solver_picks_the_class_by_type(kind):
    solver = make_solver(kind)
    assert type(solver) is getattr(caffe, kind + 'Solver')
    assert len(solver.history) == (8 if kind in TWO_SETS else 4)


@pytest.mark.parametrize('enum, kind', [('SGD', 'SGD'), ('NESTEROV', 'Nesterov'),
                                        ('ADAGRAD', 'AdaGrad'), ('RMSPROP', 'RMSProp'),
                                        ('ADADELTA', 'AdaDelta'), ('ADAM', 'Adam')])
def test_the_old_solver_type_enum_is_upgraded(tmp_path, enum, kind):
    path = tmp_path / 'solver.prototxt'
    text = 'solver_type: %s %s %s\nnet_param { %s }' % (enum, BASE, SOLVER_FIELDS[kind], NET)
    path.write_text(text)
    solver = caffe.get_solver(str(path))
    assert type(solver) is getattr(caffe, kind + 'Solver')
    assert solver.param.type == kind and not solver.param.HasField('solver_type')


def test_solver_type_and_type_together_are_refused(tmp_path):
    path = tmp_path / 'solver.prototxt'
    path.write_text('solver_type: ADAM type: "Adam" %s\nnet_param { %s }' % (BASE, NET))
    with pytest.raises(CaffeError, match=re.escape(str(path)) + '.*both'):
        caffe.get_solver(str(path))


def test_unknown_type_lists_the_six_known_ones():
    param = solver_param('SGD')
    param.type = 'AdaMax'
    with pytest.raises(CaffeError, match='Unknown solver type: "AdaMax" \\(known types: SGD, '
                                         'Nesterov, AdaGrad, RMSProp, AdaDelta, Adam\\)'):
        caffe.get_solver(param)


def test_a_solver_class_runs_its_own_update_whatever_the_type_field(caplog):
    param = solver_param('AdaGrad')
    param.type = 'SGD'
    solver = caffe.AdaGradSolver(param)
    assert len(solver.history) == 4
    assert any('solver type "SGD": AdaGradSolver runs AdaGrad' in r.getMessage()
               for r in caplog.records)


@pytest.mark.parametrize('kind, fields, message', [
    ('AdaGrad', 'momentum: 0.9', 'Momentum cannot be used with AdaGrad'),
    ('RMSProp', 'momentum: 0.5', 'Momentum cannot be used with RMSProp'),
    ('RMSProp', 'rms_decay: 1', 'rms_decay should lie between 0 and 1'),
    ('RMSProp', 'rms_decay: -0.1', 'rms_decay should lie between 0 and 1'),
    ('Adam', 'momentum: 1', 'Adam needs 0 <= momentum < 1'),
    ('Adam', 'momentum2: 1.5', 'Adam needs 0 <= momentum2 < 1'),
])
def test_bad_hyperparameters_fail_naming_the_solver_file(tmp_path, kind, fields, message):
    path = tmp_path / 'bad_solver.prototxt'
    path.write_text('type: "%s" %s base_lr: 0.1 %s\nnet_param { %s }'
                    % (kind, BASE, fields, NET))
    with pytest.raises(CaffeError, match=re.escape(str(path)) + ': ' + re.escape(message)):
        caffe.get_solver(str(path))


# -- GPU -----------------------------------------------------------------------------------

@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
@pytest.mark.parametrize('kind', TYPES)
def test_gpu_updates_match_cpu(kind):
    cpu = make_solver(kind, 'weight_decay: 0.01')
    start = weights(cpu)
    for _ in range(3):
        step(cpu)
    caffe.set_mode_gpu()
    gpu = make_solver(kind, 'weight_decay: 0.01')
    for p, w in zip(gpu.net.learnable_params, start, strict=True):
        p.data[...] = w
    for _ in range(3):
        step(gpu)
    assert gpu.net.device.type == 'cuda'
    pairs = zip(weights(gpu) + gpu.history, weights(cpu) + cpu.history, strict=True)
    for i, (a, b) in enumerate(pairs):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6, err_msg='blob %d' % i)
