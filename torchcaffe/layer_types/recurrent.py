"""Recurrent layers: RNN, LSTM and LSTMUnit.

Caffe runs RNN and LSTM by building an unrolled net with one set of layers per time
step (recurrent_layer.cpp, rnn_layer.cpp, lstm_layer.cpp); here the same arithmetic
runs as a loop over time, in the same order of operations. What carries over:

* bottoms ``x`` (T x N x ...), ``cont`` (T x N: 0 starts a new sequence), an optional
  static ``x_static`` (N x ...), then with ``expose_hidden`` the initial states
  (RNN: ``h_0``; LSTM: ``h_0``, ``c_0``; each 1 x N x num_output);
* tops: the outputs (T x N x num_output), then with ``expose_hidden`` the final
  states in the same order;
* the learnable blobs in the order the unrolled net owns them, with Caffe's shapes,
  so that a caffemodel trained in Caffe loads:
  RNN ``W_xh, b_h, [W_xh_static], W_hh, W_ho, b_o``;
  LSTM ``W_xc, b_c, [W_xc_static], W_hc`` (gates stacked i, f, o, g);
* ``cont_t`` scales the previous hidden state (Caffe's Scale layer ``h_conted``)
  and, in the LSTM unit, the forget gate;
* no gradient crosses a batch boundary: ``cont``, the exposed initial states and
  the exposed final states' diffs are ignored (Caffe shares only their data);
* without ``expose_hidden`` the final states of one forward are the initial states
  of the next (Caffe copies h_T into h_0 before each forward), starting from zeros
  and starting over when the batch size changes.

Differences: ``debug_info`` is accepted and ignored (there is no unrolled net to
log), and the number of time steps may change between forwards, where Caffe's
Reshape fails.
"""
import contextlib

import torch

from .base import Layer, register, count

__all__ = ['RNN', 'LSTM', 'LSTMUnit']


# ------------------------------------------------------------------------- LSTMUnit

def lstm_gates(gates, hidden):
    """Split (N, 4H) pre-activations into i, f, o, g (Caffe's order) and activate them."""
    i = torch.sigmoid(gates[:, :hidden])
    f = torch.sigmoid(gates[:, hidden:2 * hidden])
    o = torch.sigmoid(gates[:, 2 * hidden:3 * hidden])
    g = torch.tanh(gates[:, 3 * hidden:])
    return i, f, o, g


class _LSTMUnitFunction(torch.autograd.Function):
    """lstm_unit_layer.cpp: ``f = cont * sigmoid(f')``, ``c = f c_prev + i g``,
    ``h = o tanh(c)``, and Caffe's backward, which writes the forget gate's
    derivative as ``f (1 - f)`` with the cont-scaled f (the exact derivative when
    cont is 0 or 1). ``cont`` gets no gradient."""

    @staticmethod
    def forward(ctx, c_prev, gates, cont):
        hidden = c_prev.shape[1]
        i, f, o, g = lstm_gates(gates, hidden)
        f = torch.where(cont[:, None] == 0, torch.zeros_like(f), cont[:, None] * f)
        c = f * c_prev + i * g
        tanh_c = torch.tanh(c)
        ctx.save_for_backward(c_prev, i, f, o, g, tanh_c)
        return c, o * tanh_c

    @staticmethod
    def backward(ctx, c_diff, h_diff):
        c_prev, i, f, o, g, tanh_c = ctx.saved_tensors
        c_term = c_diff + h_diff * o * (1 - tanh_c * tanh_c)
        gates_diff = torch.cat([c_term * g * i * (1 - i),
                                c_term * c_prev * f * (1 - f),
                                h_diff * tanh_c * o * (1 - o),
                                c_term * i * (1 - g * g)], dim=1)
        return c_term * f, gates_diff, None


def lstm_unit(c_prev, gates, cont):
    """One LSTM step on (N, H) ``c_prev``, (N, 4H) ``gates``, (N,) ``cont``: (c, h)."""
    return _LSTMUnitFunction.apply(c_prev, gates, cont.detach().to(gates.dtype))


@register
class LSTMUnit(Layer):
    """Caffe's LSTMUnit: bottoms ``c_prev`` (1 x N x H), gate inputs (1 x N x 4H,
    ordered i, f, o, g), ``cont`` (1 x N); tops ``c`` and ``h`` (1 x N x H)."""
    type = 'LSTMUnit'
    bottom_counts = (3, 3)
    top_counts = (2, 2)

    def allow_force_backward(self, bottom_index):
        return bottom_index != 2  # lstm_layer.hpp: not to the sequence continuation

    def top_shapes(self, bottom_shapes):
        c_prev, gates, cont = (tuple(s) for s in bottom_shapes)
        if len(c_prev) != 3 or len(gates) != 3 or len(cont) != 2 \
                or c_prev[0] != 1 or gates[0] != 1 or cont[0] != 1 \
                or not c_prev[1] == gates[1] == cont[1] or gates[2] != 4 * c_prev[2]:
            raise self.shape_error('needs c_prev 1 x N x H, gate input 1 x N x 4H and '
                                   'cont 1 x N', c_prev, gates, cont)
        return [c_prev, c_prev]

    def forward(self, bottoms, params):
        c_prev, gates, cont = bottoms
        c, h = lstm_unit(c_prev[0], gates[0], cont[0])
        return [c[None], h[None]]


# ------------------------------------------------------------------- RNN and LSTM

def _linear(x, weight, bias=None):
    """Caffe's InnerProduct on (M, K) ``x``: ``x W^T``, then ``+ b``."""
    y = x @ weight.t()
    return y + bias if bias is not None else y


class _Recurrent(Layer):
    """What RNN and LSTM share: blob counts, shape checks, the carried state."""
    num_states = 1      # recurrent state blobs (RNN: h; LSTM: h, c)
    gate_factor = 1     # rows of the input transform per hidden unit

    def allow_force_backward(self, bottom_index):
        return bottom_index != 1  # recurrent_layer.hpp: not to the sequence continuation

    def __init__(self, layer_param, phase):
        super().__init__(layer_param, phase)
        p = layer_param.recurrent_param
        if p.num_output < 1:
            raise self.error('recurrent_param.num_output must be positive')
        self.hidden = p.num_output
        self.expose = p.expose_hidden
        exposed = self.num_states if self.expose else 0
        self.bottom_counts = (2 + exposed, 3 + exposed)
        self.top_counts = (1 + exposed, 1 + exposed)
        self._state = None
        self._state_before = None  # what the last forward started from
        self._static = None

    def reset(self):
        """Zero the carried hidden state (Caffe's RecurrentLayer::Reset)."""
        self._state = None

    @contextlib.contextmanager
    def recompute(self):
        after = self._state
        self._state = self._state_before
        try:
            yield
        finally:
            self._state = after

    def _has_static(self, num_bottoms):
        return num_bottoms > 2 + (self.num_states if self.expose else 0)

    def _check(self, shapes):
        """(T, N, static) after Caffe's checks on the bottom shapes."""
        shapes = [tuple(s) for s in shapes]
        x, cont = shapes[0], shapes[1]
        if len(x) < 2:
            raise self.shape_error('bottom 0 must have at least 2 axes (timesteps, '
                                   'streams, ...)', x)
        if cont != x[:2]:
            raise self.shape_error('cont must be T x N (timesteps x streams) like the '
                                   'first two axes of bottom 0', x, cont)
        static = self._has_static(len(shapes))
        if static and (len(shapes[2]) < 1 or shapes[2][0] != x[1]):
            raise self.shape_error('x_static must be N x ... (N streams)', x, shapes[2])
        state = (1, x[1], self.hidden)
        for s in shapes[2 + static:]:
            if s != state:
                raise self.shape_error('exposed hidden state bottoms must be %s' % (state,),
                                       s)
        return x[0], x[1], static

    def param_shapes(self, bottom_shapes):
        _, _, static = self._check(bottom_shapes)
        self._static = static
        rows, k = self.gate_factor * self.hidden, count(bottom_shapes[0], 2)
        shapes = [(rows, k), (rows,)]
        if static:
            shapes.append((rows, count(bottom_shapes[2], 1)))
        return shapes + self._recurrent_shapes()

    def param_fillers(self):
        # The blobs' count depends on the static input, known from param_shapes.
        p = self.layer_param.recurrent_param
        static = self._static if self._static is not None else \
            self._has_static(len(self.layer_param.bottom))
        specs = [p.weight_filler, p.bias_filler] + ([p.weight_filler] if static else [])
        return specs + self._recurrent_fillers()

    def top_shapes(self, bottom_shapes):
        t, n, _ = self._check(bottom_shapes)
        state = (1, n, self.hidden)
        return [(t, n, self.hidden)] + ([state] * self.num_states if self.expose else [])

    def _initial(self, bottoms, static, n, like):
        """The initial states, each (N, H): exposed bottoms, else the carried ones."""
        if self.expose:
            return [b.detach().reshape(n, self.hidden) for b in bottoms[2 + static:]]
        state = self._state
        if state is None or state[0].shape[0] != n:
            return [like.new_zeros(n, self.hidden) for _ in range(self.num_states)]
        return [s.to(like) for s in state]

    def forward(self, bottoms, params):
        x, cont = bottoms[0], bottoms[1]
        t, n, static = self._check([b.shape for b in bottoms])
        inputs = _linear(x.reshape(t * n, -1), params[0], params[1].reshape(-1))
        inputs = inputs.reshape(t, n, -1)
        static_term = None
        if static:
            static_term = _linear(bottoms[2].reshape(n, -1), params[2])
        cont = cont.detach().to(x.dtype)
        self._state_before = self._state
        states = self._initial(bottoms, static, n, inputs)
        outputs, states = self._unroll(inputs, static_term, cont, states,
                                       params[2 + static:])
        if not self.expose:
            self._state = [s.detach() for s in states]
            return [outputs]
        return [outputs] + [s.detach()[None] for s in states]


@register
class RNN(_Recurrent):
    """Caffe's RNN (rnn_layer.cpp), for each step t:
    ``h_t = tanh(W_hh (cont_t h_{t-1}) + W_xh x_t + b_h [+ W_xh_static x_static])``,
    ``o_t = tanh(W_ho h_t + b_o)``; top ``o``, exposed state ``h``."""
    type = 'RNN'
    num_states = 1
    gate_factor = 1

    def _recurrent_shapes(self):
        h = self.hidden
        return [(h, h), (h, h), (h,)]

    def _recurrent_fillers(self):
        p = self.layer_param.recurrent_param
        return [p.weight_filler, p.weight_filler, p.bias_filler]

    def _unroll(self, inputs, static_term, cont, states, params):
        w_hh, w_ho, b_o = params
        b_o = b_o.reshape(-1)
        (h,) = states
        outputs = []
        for step in range(inputs.shape[0]):
            pre = _linear(h * cont[step][:, None], w_hh) + inputs[step]
            if static_term is not None:
                pre = pre + static_term
            h = torch.tanh(pre)
            outputs.append(torch.tanh(_linear(h, w_ho, b_o)))
        return torch.stack(outputs), [h]


@register
class LSTM(_Recurrent):
    """Caffe's LSTM (lstm_layer.cpp), for each step t:
    ``gates_t = W_hc (cont_t h_{t-1}) + W_xc x_t + b_c [+ W_xc_static x_static]``,
    then the LSTM unit (:func:`lstm_unit`) gives ``c_t``, ``h_t``; top ``h``,
    exposed states ``h`` then ``c``."""
    type = 'LSTM'
    num_states = 2
    gate_factor = 4

    def _recurrent_shapes(self):
        return [(4 * self.hidden, self.hidden)]

    def _recurrent_fillers(self):
        return [self.layer_param.recurrent_param.weight_filler]

    def _unroll(self, inputs, static_term, cont, states, params):
        (w_hc,) = params
        h, c = states
        outputs = []
        for step in range(inputs.shape[0]):
            gates = _linear(h * cont[step][:, None], w_hc) + inputs[step]
            if static_term is not None:
                gates = gates + static_term
            c, h = lstm_unit(c, gates, cont[step])
            outputs.append(h)
        return torch.stack(outputs), [h, c]
