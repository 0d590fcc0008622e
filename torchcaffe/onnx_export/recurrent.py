"""Converters of the recurrent layers (torchcaffe/layer_types/recurrent.py).

Caffe's RNN and LSTM multiply the previous hidden state by ``cont_t`` before each
step (and LSTMUnit its forget gate), so a 0 in ``cont`` starts a new sequence in
mid-batch. ONNX's RNN and LSTM operators have no such input, so the steps are
spelled out in a ``Scan`` whose body is one of Caffe's unrolled time steps, with
``x`` and ``cont`` scanned along the time axis.

What the graph cannot hold: without ``expose_hidden`` the engine, as Caffe, starts
each forward from the final state of the previous one; an ONNX graph keeps no
state between runs, so the exported net starts every run from zeros, as Caffe's
first forward does. Expose the hidden state to carry it between runs yourself.
"""
from .core import TensorProto, converts, helper


def _transposed(b, param, name):
    """A (rows, k) Caffe weight as the (k, rows) right operand of MatMul."""
    arr = param.array.reshape(param.array.shape[-2:])
    return b.weight(param._replace(key=(param.key, 'T'), array=arr.T), name)


def _gate_slices(b, gates, hidden, axis, name):
    """i, f, o, g (Caffe's order) of the stacked pre-activations, activated."""
    acts = []
    for k, (gate, op) in enumerate(zip('ifog', ('Sigmoid',) * 3 + ('Tanh',))):
        part = b.op('Slice', [gates, b.const([k * hidden]), b.const([(k + 1) * hidden]),
                              b.const([axis])], '%s/%s_pre' % (name, gate))
        acts.append(b.op(op, [part], '%s/%s' % (name, gate)))
    return acts


def _lstm_cell(b, c_prev, gates, cont, hidden, axis, name, c_top=None, h_top=None):
    """lstm_unit_layer.cpp: ``f = cont sigmoid(f')``, ``c = f c_prev + i g``,
    ``h = o tanh(c)``; ``cont`` broadcasts over the hidden units. Returns (c, h)."""
    i, f, o, g = _gate_slices(b, gates, hidden, axis, name)
    f = b.op('Mul', [f, cont], name + '/f_cont')
    c = b.op('Add', [b.op('Mul', [f, c_prev], name + '/fc'), b.op('Mul', [i, g], name + '/ig')],
             name + '/c', top=c_top)
    h = b.op('Mul', [o, b.op('Tanh', [c], name + '/tanh_c')], name + '/h', top=h_top)
    return c, h


@converts('LSTMUnit')
def _lstm_unit(b, layer, bottoms, tops, params, shapes):
    c_prev, gates, cont = bottoms
    hidden = shapes[0][2]
    cont = b.unsqueeze(cont, [2], layer.name + '/cont')   # 1 x N -> 1 x N x 1
    _lstm_cell(b, c_prev, gates, cont, hidden, 2, layer.name, tops[0], tops[1])


def _info(name, *dims):
    """A float body value of the streams' count (symbolic) by ``dims``; onnxruntime
    needs the body's output shapes under Scan-11 (opsets 13 to 15)."""
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, ['streams'] + list(dims))


@converts('RNN', 'LSTM')
def _recurrent(b, layer, bottoms, tops, params, shapes):
    name, hidden = layer.name, layer.hidden
    x, cont = bottoms[0], bottoms[1]
    static = layer._has_static(len(bottoms))
    # W x_t + b for every step at once: (T, N, rows)
    flat = b.reshape_to(name + '/x', x, None, len(shapes[0]), 2, len(shapes[0]), [-1])
    inputs = b.op('Add', [b.op('MatMul', [flat, _transposed(b, params[0], name + '/W_x')],
                               name + '/Wx'),
                          b.weight(params[1], name + '/b', (params[1].array.size,))],
                  name + '/inputs')
    static_term = None
    if static:
        s = b.op('Flatten', [bottoms[2]], name + '/x_static', axis=1)
        static_term = b.op('MatMul', [s, _transposed(b, params[2], name + '/W_static')],
                           name + '/static_term')
    recurrent = params[2 + static:]
    num_states = layer.num_states
    if layer.expose:
        initial = [b.squeeze(h0, [0], '%s/h0_%d' % (name, k))
                   for k, h0 in enumerate(bottoms[2 + static:])]
    else:
        # a fresh net's first forward: zero states (see the module's docstring)
        zero_shape = b.op('Concat', [b.dims(x, 1, 2, name + '/streams'), b.const([hidden])],
                          name + '/state_shape', axis=0)
        zeros = b.op('ConstantOfShape', [zero_shape], name + '/zeros',
                     value=helper.make_tensor('zero', TensorProto.FLOAT, [1], [0.0]))
        initial = [zeros] * num_states

    body = b.subgraph()
    states_in = [body.fresh('%s/step/%s_prev' % (name, s)) for s in ('h', 'c')[:num_states]]
    in_t, cont_t = body.fresh(name + '/step/input'), body.fresh(name + '/step/cont')
    cont_col = body.unsqueeze(cont_t, [1], name + '/step/cont_col')
    h_prev = states_in[0]
    # W_hh (cont_t h_{t-1}) + W x_t + b [+ W_static x_static], the engine's order
    pre = body.op('Add', [body.op('MatMul', [body.op('Mul', [h_prev, cont_col],
                                                     name + '/step/h_conted'),
                                             _transposed(b, recurrent[0], name + '/W_h')],
                                  name + '/step/Wh'), in_t], name + '/step/pre')
    if static_term is not None:
        pre = body.op('Add', [pre, static_term], name + '/step/pre_static')
    if layer.type == 'RNN':
        h = body.op('Tanh', [pre], name + '/step/h')
        w_ho, b_o = recurrent[1], recurrent[2]
        o = body.op('Tanh', [body.op('Add', [body.op('MatMul', [h, _transposed(
            b, w_ho, name + '/W_o')], name + '/step/Wo'), b.weight(
            b_o, name + '/b_o', (hidden,))], name + '/step/o_pre')], name + '/step/o')
        # body outputs: the new states, then the scanned output (o)
        outputs = [h, o]
    else:
        c, h = _lstm_cell(body, states_in[1], pre, cont_col, hidden, 1, name + '/step')
        # the new states h and c, then the scanned output h (a value of its own)
        outputs = [h, c, body.op('Identity', [h], name + '/step/top')]
    rows = layer.gate_factor * hidden
    graph = helper.make_graph(body.nodes, name + '_step',
                              [_info(v, hidden) for v in states_in]
                              + [_info(in_t, rows), _info(cont_t)],
                              [_info(v, hidden) for v in outputs])
    # Scan's outputs: the final states, then the outputs of every step (the top)
    results = b.ops('Scan', initial + [inputs, cont], name, num_states + 1,
                    [None] * num_states + [tops[0]], body=graph, num_scan_inputs=2)
    if layer.expose:
        # the final states, 1 x N x H, in Caffe's order (h, then c)
        for k, top in enumerate(tops[1:]):
            b.unsqueeze(results[k], [0], '%s/state%d' % (name, k), top=top)
