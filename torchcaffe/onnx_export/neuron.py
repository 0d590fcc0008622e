"""Converters of the element-wise layers (torchcaffe/layer_types/neuron.py).

Where the engine computes a layer as a sequence of float32 steps (Exp's
``outer * exp(inner * x)``, BNLL's two-branch softplus), the graph spells out the
same steps with the same float32 constants, so only the transcendental functions'
last bits can differ.
"""
from .core import TensorProto, converts, identity

# Dropout is the identity at TEST (Caffe's inverted dropout scales at TRAIN only).
converts('Dropout')(identity)


def _unary(op_type):
    def convert(b, layer, bottoms, tops, params, shapes):
        b.op(op_type, bottoms[:1], layer.name, top=tops[0])
    return convert


converts('Sigmoid')(_unary('Sigmoid'))
converts('TanH')(_unary('Tanh'))
converts('AbsVal')(_unary('Abs'))


@converts('ReLU')
def _relu(b, layer, bottoms, tops, params, shapes):
    slope = layer.layer_param.relu_param.negative_slope
    if slope == 0:
        b.op('Relu', bottoms, layer.name, top=tops[0])
    else:
        b.op('LeakyRelu', bottoms, layer.name, top=tops[0], alpha=float(slope))


def _steps(b, name, x, top, steps):
    """Apply ``[(op, float constant)]`` in order; skip the steps whose constant is
    neutral (None); the last step (or an Identity) writes ``top``."""
    steps = [(op, v) for op, v in steps if v is not None]
    if not steps:
        return b.op('Identity', [x], name, top=top)
    for i, (op, value) in enumerate(steps):
        x = b.op(op, [x, b.fconst(value)], '%s/%s' % (name, op.lower()),
                 top=top if i == len(steps) - 1 else None)
    return x


def _unless(value, neutral):
    return None if value == neutral else value


@converts('Power')
def _power(b, layer, bottoms, tops, params, shapes):
    p = layer.layer_param.power_param
    _steps(b, layer.name, bottoms[0], tops[0],
           [('Mul', _unless(p.scale, 1.0)), ('Add', _unless(p.shift, 0.0)),
            ('Pow', _unless(p.power, 1.0))])


@converts('ELU')
def _elu(b, layer, bottoms, tops, params, shapes):
    # ONNX's Elu is Caffe's: x for x > 0 (x == 0 gives 0 either way), else
    # alpha (exp(x) - 1).
    b.op('Elu', bottoms, layer.name, top=tops[0], alpha=float(layer.layer_param.elu_param.alpha))


@converts('PReLU')
def _prelu(b, layer, bottoms, tops, params, shapes):
    ndim = len(shapes[0])
    # ONNX's PRelu broadcasts the slope from the right: channels then 1s.
    view = (1,) if layer.shared else (shapes[0][1],) + (1,) * (ndim - 2)
    b.op('PRelu', [bottoms[0], b.weight(params[0], layer.name + '/slope', view)], layer.name,
         top=tops[0])


@converts('BNLL')
def _bnll(b, layer, bottoms, tops, params, shapes):
    """bnll_layer.cpp: ``x + log(1 + exp(-x))`` for x > 0, else ``log(1 + exp(x))``."""
    x, name = bottoms[0], layer.name
    one, zero = b.fconst(1.0), b.fconst(0.0)
    pos_arg = b.op('Neg', [b.op('Max', [x, zero], name + '/clamp_pos')], name + '/neg')
    pos = b.op('Add', [x, b.op('Log', [b.op('Add', [one, b.op('Exp', [pos_arg], name + '/exp_p')],
                                            name + '/one_p')], name + '/log_p')],
               name + '/pos')
    neg_arg = b.op('Min', [x, zero], name + '/clamp_neg')
    neg = b.op('Log', [b.op('Add', [one, b.op('Exp', [neg_arg], name + '/exp_n')],
                            name + '/one_n')], name + '/neg_branch')
    b.op('Where', [b.op('Greater', [x, zero], name + '/positive'), pos, neg], name,
         top=tops[0])


@converts('Exp')
def _exp(b, layer, bottoms, tops, params, shapes):
    # outer * exp(inner * x), the constants as exp_layer.cpp computes them
    name = layer.name
    x = bottoms[0]
    if layer.inner != 1:
        x = b.op('Mul', [x, b.fconst(layer.inner)], name + '/inner')
    y = b.op('Exp', [x], name + '/exp', top=tops[0] if layer.outer == 1 else None)
    if layer.outer != 1:
        b.op('Mul', [y, b.fconst(layer.outer)], name, top=tops[0])


@converts('Log')
def _log(b, layer, bottoms, tops, params, shapes):
    # ln(scale x + shift) / ln(base), as log_layer.cpp (the division a float32 factor)
    name = layer.name
    x = _steps(b, name, bottoms[0], None, [('Mul', _unless(layer.scale, 1.0)),
                                           ('Add', _unless(layer.shift, 0.0))])
    y = b.op('Log', [x], name + '/log', top=tops[0] if layer.base_scale == 1 else None)
    if layer.base_scale != 1:
        b.op('Mul', [y, b.fconst(layer.base_scale)], name, top=tops[0])


@converts('Threshold')
def _threshold(b, layer, bottoms, tops, params, shapes):
    # 1 where x > threshold, else 0 (NaN gives 0, as Caffe's comparison)
    above = b.op('Greater', [bottoms[0], b.fconst(layer.layer_param.threshold_param.threshold)],
                 layer.name + '/above')
    b.op('Cast', [above], layer.name, top=tops[0], to=TensorProto.FLOAT)


@converts('Clip')
def _clip(b, layer, bottoms, tops, params, shapes):
    b.op('Clip', [bottoms[0], b.fconst(layer.low), b.fconst(layer.high)], layer.name,
         top=tops[0])


@converts('Swish')
def _swish(b, layer, bottoms, tops, params, shapes):
    # x * sigmoid(beta x)
    x, name = bottoms[0], layer.name
    beta = layer.layer_param.swish_param.beta
    arg = x if beta == 1 else b.op('Mul', [x, b.fconst(beta)], name + '/beta')
    b.op('Mul', [x, b.op('Sigmoid', [arg], name + '/sigmoid')], name, top=tops[0])
