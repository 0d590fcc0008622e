"""RNN, LSTM and LSTMUnit against hand-written numpy loops: sequence starts (cont),
static input, exposed and carried hidden state, Caffe's blob order and shapes, and
float64 finite-difference gradients."""
import numpy as np
import pytest
import torch
from google.protobuf import text_format

import torchcaffe as caffe
from torchcaffe import caffe_pb2
from torchcaffe.errors import CaffeError
from torchcaffe.layer_types import create_layer


def make_layer(text, bottoms, tops, phase=caffe_pb2.TRAIN):
    param = caffe_pb2.LayerParameter()
    text_format.Merge(text, param)
    param.name = param.name or 'lyr'
    param.bottom.extend(bottoms)
    param.top.extend(tops)
    return create_layer(param, phase)


def rand(*shape, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(*shape, generator=g, dtype=torch.float64)


def sigmoid(z):
    return 1 / (1 + np.exp(-z))


def lstm_loop(x, cont, params, x_static=None, h0=None, c0=None):
    """Caffe's LSTM one stream and one step at a time."""
    T, N = x.shape[:2]
    w_xc, b_c = params[:2]
    w_s = params[2] if x_static is not None else None
    w_hc = params[-1]
    H = w_hc.shape[1]
    h = np.zeros((N, H)) if h0 is None else h0.reshape(N, H).copy()
    c = np.zeros((N, H)) if c0 is None else c0.reshape(N, H).copy()
    out = np.zeros((T, N, H))
    for t in range(T):
        for n in range(N):
            gates = w_hc @ (cont[t, n] * h[n]) + w_xc @ x[t, n].ravel() + b_c
            if w_s is not None:
                gates = gates + w_s @ x_static[n].ravel()
            i, f = sigmoid(gates[:H]), cont[t, n] * sigmoid(gates[H:2 * H])
            o, g = sigmoid(gates[2 * H:3 * H]), np.tanh(gates[3 * H:])
            c[n] = f * c[n] + i * g
            h[n] = o * np.tanh(c[n])
            out[t, n] = h[n]
    return out, h, c


def rnn_loop(x, cont, params, x_static=None, h0=None):
    """Caffe's RNN one stream and one step at a time."""
    T, N = x.shape[:2]
    w_xh, b_h = params[:2]
    w_s = params[2] if x_static is not None else None
    w_hh, w_ho, b_o = params[-3:]
    H = w_hh.shape[0]
    h = np.zeros((N, H)) if h0 is None else h0.reshape(N, H).copy()
    out = np.zeros((T, N, H))
    for t in range(T):
        for n in range(N):
            pre = w_hh @ (cont[t, n] * h[n]) + w_xh @ x[t, n].ravel() + b_h
            if w_s is not None:
                pre = pre + w_s @ x_static[n].ravel()
            h[n] = np.tanh(pre)
            out[t, n] = np.tanh(w_ho @ h[n] + b_o)
    return out, h


CONT = np.array([[0, 0, 0], [1, 1, 0], [1, 0, 1], [1, 1, 1]], dtype=np.float64)


def random_params(shapes, seed=1):
    return [rand(*s, seed=seed + k, scale=0.5) for k, s in enumerate(shapes)]


# ---- blobs -----------------------------------------------------------------------

def test_lstm_blobs_in_caffes_order_and_shapes():
    layer = make_layer('type: "LSTM" recurrent_param { num_output: 3 }',
                       ['x', 'cont', 'xs'], ['h'])
    assert layer.param_shapes([(4, 2, 5, 2), (4, 2), (2, 7)]) == [(12, 10), (12,), (12, 7),
                                                                  (12, 3)]
    plain = make_layer('type: "LSTM" recurrent_param { num_output: 3 }', ['x', 'cont'], ['h'])
    assert plain.param_shapes([(4, 2, 6), (4, 2)]) == [(12, 6), (12,), (12, 3)]


def test_rnn_blobs_in_caffes_order_and_shapes():
    layer = make_layer('type: "RNN" recurrent_param { num_output: 3 }',
                       ['x', 'cont', 'xs'], ['o'])
    assert layer.param_shapes([(4, 2, 5), (4, 2), (2, 7)]) == [(3, 5), (3,), (3, 7), (3, 3),
                                                               (3, 3), (3,)]


def test_recurrent_fillers_follow_recurrent_param():
    layer = make_layer('type: "LSTM" recurrent_param { num_output: 2 '
                       'weight_filler { type: "constant" value: 0.5 } '
                       'bias_filler { type: "constant" value: 2 } }', ['x', 'c', 's'], ['h'])
    shapes = layer.param_shapes([(3, 1, 4), (3, 1), (1, 2)])
    tensors = [torch.zeros(s) for s in shapes]
    layer.fill_params(tensors, [(3, 1, 4), (3, 1), (1, 2)])
    assert [float(t.flatten()[0]) for t in tensors] == [0.5, 2.0, 0.5, 0.5]


# ---- values ----------------------------------------------------------------------

def test_lstm_matches_numpy_loop_with_sequence_starts_and_static_input():
    layer = make_layer('type: "LSTM" recurrent_param { num_output: 3 }',
                       ['x', 'cont', 'xs'], ['h'])
    x, xs = rand(4, 3, 2, 2), rand(3, 5, seed=7)
    shapes = layer.param_shapes([x.shape, CONT.shape, xs.shape])
    params = random_params(shapes)
    (h,) = layer.forward([x, torch.tensor(CONT), xs], params)
    expected, _, _ = lstm_loop(x.numpy(), CONT, [p.numpy() for p in params], xs.numpy())
    np.testing.assert_allclose(h.detach().numpy(), expected, rtol=1e-12, atol=1e-14)


def test_rnn_matches_numpy_loop_with_sequence_starts_and_static_input():
    layer = make_layer('type: "RNN" recurrent_param { num_output: 3 }',
                       ['x', 'cont', 'xs'], ['o'])
    x, xs = rand(4, 3, 2), rand(3, 2, 2, seed=7)
    params = random_params(layer.param_shapes([x.shape, CONT.shape, xs.shape]))
    (o,) = layer.forward([x, torch.tensor(CONT), xs], params)
    expected, _ = rnn_loop(x.numpy(), CONT, [p.numpy() for p in params], xs.numpy())
    np.testing.assert_allclose(o.detach().numpy(), expected, rtol=1e-12, atol=1e-14)


def test_lstm_carries_its_state_to_the_next_forward_without_expose_hidden():
    layer = make_layer('type: "LSTM" recurrent_param { num_output: 2 }', ['x', 'c'], ['h'])
    x1, x2 = rand(3, 2, 4), rand(3, 2, 4, seed=5)
    params = random_params(layer.param_shapes([x1.shape, (3, 2)]))
    np_params = [p.numpy() for p in params]
    first_cont = np.array([[0, 0], [1, 1], [1, 1]], float)
    go_on = np.ones((3, 2))                      # the second batch continues the sequences
    layer.forward([x1, torch.tensor(first_cont)], params)
    (h2,) = layer.forward([x2, torch.tensor(go_on)], params)
    _, h_T, c_T = lstm_loop(x1.numpy(), first_cont, np_params)
    expected, _, _ = lstm_loop(x2.numpy(), go_on, np_params, h0=h_T, c0=c_T)
    np.testing.assert_allclose(h2.numpy(), expected, rtol=1e-12)
    layer.reset()
    (fresh,) = layer.forward([x2, torch.tensor(go_on)], params)
    np.testing.assert_allclose(fresh.numpy(), lstm_loop(x2.numpy(), go_on, np_params)[0],
                               rtol=1e-12)


def test_rnn_carried_state_starts_over_when_the_batch_size_changes():
    layer = make_layer('type: "RNN" recurrent_param { num_output: 2 }', ['x', 'c'], ['o'])
    params = random_params(layer.param_shapes([(2, 3, 1), (2, 3)]))
    layer.forward([rand(2, 3, 1), torch.ones(2, 3, dtype=torch.float64)], params)
    x = rand(2, 1, 1, seed=3)
    (o,) = layer.forward([x, torch.ones(2, 1, dtype=torch.float64)], params)
    np.testing.assert_allclose(o.numpy(), rnn_loop(x.numpy(), np.ones((2, 1)),
                                                   [p.numpy() for p in params])[0], rtol=1e-12)


def test_lstm_expose_hidden_takes_initial_and_gives_final_states():
    layer = make_layer('type: "LSTM" recurrent_param { num_output: 3 expose_hidden: true }',
                       ['x', 'cont', 'h0', 'c0'], ['h', 'hT', 'cT'])
    x = rand(4, 3, 2)
    h0, c0 = rand(1, 3, 3, seed=11), rand(1, 3, 3, seed=12)
    assert layer.top_shapes([x.shape, CONT.shape, h0.shape, c0.shape]) == [
        (4, 3, 3), (1, 3, 3), (1, 3, 3)]
    params = random_params(layer.param_shapes([x.shape, CONT.shape, h0.shape, c0.shape]))
    cont = np.ones((4, 3))
    cont[2, 1] = 0
    h, h_T, c_T = layer.forward([x, torch.tensor(cont), h0, c0], params)
    expected, eh, ec = lstm_loop(x.numpy(), cont, [p.numpy() for p in params],
                                 h0=h0.numpy(), c0=c0.numpy())
    np.testing.assert_allclose(h.numpy(), expected, rtol=1e-12)
    np.testing.assert_allclose(h_T.numpy()[0], eh, rtol=1e-12)
    np.testing.assert_allclose(c_T.numpy()[0], ec, rtol=1e-12)
    # A second forward with the same bottoms gives the same: nothing is carried.
    again = layer.forward([x, torch.tensor(cont), h0, c0], params)[0]
    np.testing.assert_array_equal(again.numpy(), h.numpy())


def test_rnn_expose_hidden_with_static_input():
    layer = make_layer('type: "RNN" recurrent_param { num_output: 2 expose_hidden: true }',
                       ['x', 'cont', 'xs', 'h0'], ['o', 'hT'])
    x, xs, h0 = rand(4, 3, 2), rand(3, 3, seed=2), rand(1, 3, 2, seed=3)
    params = random_params(layer.param_shapes([x.shape, CONT.shape, xs.shape, h0.shape]))
    assert len(params) == 6
    o, h_T = layer.forward([x, torch.tensor(CONT), xs, h0], params)
    expected, eh = rnn_loop(x.numpy(), CONT, [p.numpy() for p in params], xs.numpy(),
                            h0=h0.numpy())
    np.testing.assert_allclose(o.numpy(), expected, rtol=1e-12)
    np.testing.assert_allclose(h_T.numpy()[0], eh, rtol=1e-12)


# ---- gradients -------------------------------------------------------------------

@pytest.mark.parametrize('kind', ['LSTM', 'RNN'])
def test_recurrent_gradients_match_finite_differences(kind):
    layer = make_layer('type: "%s" recurrent_param { num_output: 2 }' % kind,
                       ['x', 'cont', 'xs'], ['y'])
    x, xs = rand(4, 3, 2), rand(3, 2, seed=4)
    cont = torch.tensor(CONT)
    params = random_params(layer.param_shapes([x.shape, cont.shape, xs.shape]))

    def run(*tensors):
        layer.reset()   # every call starts from zero state
        return layer.forward([tensors[0], cont, tensors[1]], list(tensors[2:]))[0]

    inputs = [x, xs] + params
    assert torch.autograd.gradcheck(run, tuple(t.requires_grad_() for t in inputs))


def test_no_gradient_reaches_cont_or_the_exposed_states():
    layer = make_layer('type: "LSTM" recurrent_param { num_output: 2 expose_hidden: true }',
                       ['x', 'cont', 'h0', 'c0'], ['h', 'hT', 'cT'])
    x = rand(2, 1, 3).requires_grad_()
    cont = torch.ones(2, 1, dtype=torch.float64, requires_grad=True)
    h0, c0 = rand(1, 1, 2, seed=1).requires_grad_(), rand(1, 1, 2, seed=2).requires_grad_()
    params = random_params(layer.param_shapes([x.shape, cont.shape, h0.shape, c0.shape]))
    h, h_T, c_T = layer.forward([x, cont, h0, c0], params)
    assert not h_T.requires_grad and not c_T.requires_grad   # Caffe ignores their diffs
    h.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert cont.grad is None and h0.grad is None and c0.grad is None


# ---- LSTMUnit --------------------------------------------------------------------

def test_lstm_unit_forward_and_caffes_backward_with_a_fractional_cont():
    layer = make_layer('type: "LSTMUnit"', ['c0', 'x', 'cont'], ['c', 'h'])
    assert layer.top_shapes([(1, 2, 3), (1, 2, 12), (1, 2)]) == [(1, 2, 3)] * 2
    c_prev = rand(1, 2, 3).requires_grad_()
    gates = rand(1, 2, 12, seed=1).requires_grad_()
    cont = torch.tensor([[1.0, 0.5]], dtype=torch.float64)
    c, h = layer.forward([c_prev, gates, cont], [])
    a = gates.detach().numpy()[0]
    i, f = sigmoid(a[:, :3]), cont.numpy()[0][:, None] * sigmoid(a[:, 3:6])
    o, g = sigmoid(a[:, 6:9]), np.tanh(a[:, 9:])
    ce = f * c_prev.detach().numpy()[0] + i * g
    np.testing.assert_allclose(c.detach().numpy()[0], ce, rtol=1e-13)
    np.testing.assert_allclose(h.detach().numpy()[0], o * np.tanh(ce), rtol=1e-13)
    dc, dh = rand(1, 2, 3, seed=5), rand(1, 2, 3, seed=6)
    torch.autograd.backward([c, h], [dc, dh])
    dc, dh = dc.numpy()[0], dh.numpy()[0]
    term = dc + dh * o * (1 - np.tanh(ce) ** 2)
    np.testing.assert_allclose(c_prev.grad.numpy()[0], term * f, rtol=1e-12)
    # lstm_unit_layer.cpp writes the forget gate's derivative as f (1 - f), f scaled by cont.
    f_diff = term * c_prev.detach().numpy()[0] * f * (1 - f)
    np.testing.assert_allclose(gates.grad.numpy()[0][:, 3:6], f_diff, rtol=1e-12)


def test_lstm_unit_gradient_matches_finite_differences_for_binary_cont():
    layer = make_layer('type: "LSTMUnit"', ['c0', 'x', 'cont'], ['c', 'h'])
    cont = torch.tensor([[1.0, 0.0, 1.0]], dtype=torch.float64)
    c_prev, gates = rand(1, 3, 2).requires_grad_(), rand(1, 3, 8, seed=1).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: layer.forward([a, b, cont], []),
                                    (c_prev, gates))


def test_lstm_unit_checks_shapes():
    layer = make_layer('name: "unit" type: "LSTMUnit"', ['c0', 'x', 'cont'], ['c', 'h'])
    with pytest.raises(CaffeError, match="'unit'.*1 x N x 4H"):
        layer.top_shapes([(1, 2, 3), (1, 2, 10), (1, 2)])


# ---- errors and nets -------------------------------------------------------------

def test_recurrent_shape_errors_name_the_layer():
    layer = make_layer('name: "lstm1" type: "LSTM" recurrent_param { num_output: 2 }',
                       ['x', 'cont'], ['h'])
    with pytest.raises(CaffeError, match="'lstm1'.*cont must be T x N"):
        layer.top_shapes([(3, 2, 4), (3, 1)])
    with pytest.raises(CaffeError, match="'r'.*num_output"):
        make_layer('name: "r" type: "RNN"', ['x', 'cont'], ['o'])


LSTM_NET = '''
layer { name: "data" type: "Input" top: "x" top: "cont" top: "xs"
        input_param { shape { dim: 3 dim: 2 dim: 4 } shape { dim: 3 dim: 2 }
                      shape { dim: 2 dim: 5 } } }
layer { name: "lstm" type: "LSTM" bottom: "x" bottom: "cont" bottom: "xs" top: "h"
        recurrent_param { num_output: 3 weight_filler { type: "uniform" min: -0.5 max: 0.5 }
                          bias_filler { type: "constant" value: 0.25 } } }
'''


def _net(text, phase, weights=None):
    param = caffe_pb2.NetParameter()
    text_format.Merge(text, param)
    return caffe.Net(param, phase) if weights is None else caffe.Net(param, weights, phase)


def test_lstm_in_a_net_saves_and_loads_its_blobs_in_caffes_order(tmp_path):
    net = _net(LSTM_NET, caffe.TRAIN)
    assert [b.data.shape for b in net.params['lstm']] == [(12, 4), (12,), (12, 5), (12, 3)]
    assert net.params['lstm'][1].data.tolist() == [0.25] * 12
    net.blobs['x'].data[...] = np.random.RandomState(0).randn(3, 2, 4)
    net.blobs['cont'].data[...] = [[0, 0], [1, 1], [1, 0]]
    net.blobs['xs'].data[...] = np.random.RandomState(1).randn(2, 5)
    out = net.forward()['h'].copy()
    path = str(tmp_path / 'lstm.caffemodel')
    net.save(path)
    test = _net(LSTM_NET, caffe.TEST, weights=path)
    for name in ['x', 'cont', 'xs']:
        test.blobs[name].data[...] = net.blobs[name].data
    np.testing.assert_array_equal(test.forward()['h'], out)
    expected, _, _ = lstm_loop(net.blobs['x'].data.astype(float), net.blobs['cont'].data,
                               [b.data.astype(float) for b in net.params['lstm']],
                               net.blobs['xs'].data.astype(float))
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


def finite_differences(f, arrays, eps=1e-6):
    """Central differences of the scalar ``f(arrays)`` with respect to each array."""
    grads = []
    for a in arrays:
        g = np.zeros_like(a)
        for i in np.ndindex(a.shape):
            keep = a[i]
            a[i] = keep + eps
            up = f(arrays)
            a[i] = keep - eps
            down = f(arrays)
            a[i] = keep
            g[i] = (up - down) / (2 * eps)
        grads.append(g)
    return grads


def test_lstm_in_a_net_learns_from_its_top_diff():
    # The net has no loss: force_backward makes Caffe run the LSTM backward all the
    # same, down to x and the static input (never to cont: AllowForceBackward).
    net = _net('force_backward: true\n' + LSTM_NET, caffe.TRAIN)
    rng = np.random.RandomState(4)
    net.blobs['cont'].data[...] = [[0, 0], [1, 1], [1, 0]]
    net.blobs['x'].data[...] = rng.randn(3, 2, 4)
    net.blobs['xs'].data[...] = rng.randn(2, 5)
    top_diff = rng.randn(3, 2, 3)
    net.forward()
    net.backward(h=top_diff)
    # The gradient of sum(h * top_diff), by float64 finite differences of the numpy
    # loop, at the net's (float32) values.
    cont = net.blobs['cont'].data.astype(float)
    params = [b.data.astype(float) for b in net.params['lstm']]
    x, xs = net.blobs['x'].data.astype(float), net.blobs['xs'].data.astype(float)

    def objective(arrays):
        return (lstm_loop(arrays[0], cont, arrays[2:], arrays[1])[0] * top_diff).sum()
    expected = finite_differences(objective, [x, xs] + params)
    got = [net.blobs['x'].diff, net.blobs['xs'].diff] + [b.diff for b in net.params['lstm']]
    assert len(got) == len(expected) == 6
    names = ['x', 'xs', 'W_xc', 'b_c', 'W_xc_static', 'W_hc']
    for name, g, e in zip(names, got, expected):
        assert g.shape == e.shape, name
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-5, err_msg=name)
    assert not net.blobs['cont'].diff.any()
