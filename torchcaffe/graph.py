"""The structure of a net before it runs: phase filtering and shape propagation.

``filter_layers`` applies Caffe's include/exclude rules (``Net::FilterNet``);
``infer_shapes`` walks the kept layers in order, checking that every bottom is produced
before use and computing every blob's shape from the layers' pure shape arithmetic.
"""
from collections import OrderedDict

from .errors import CaffeError, ShapeError
from .proto import caffe_pb2


def state_meets_rule(state, rule):
    """Whether a ``NetState`` satisfies a ``NetStateRule`` (Caffe's ``StateMeetsRule``).

    Every condition the rule sets must hold: its phase, level bounds, required stages
    and forbidden stages.
    """
    if rule.HasField('phase') and rule.phase != state.phase:
        return False
    if rule.HasField('min_level') and state.level < rule.min_level:
        return False
    if rule.HasField('max_level') and state.level > rule.max_level:
        return False
    stages = set(state.stage)
    if any(s not in stages for s in rule.stage):
        return False
    if any(s in stages for s in rule.not_stage):
        return False
    return True


def make_state(phase, level=0, stages=()):
    """A ``caffe_pb2.NetState`` for ``phase`` (TRAIN/TEST), ``level`` and ``stages``."""
    state = caffe_pb2.NetState(phase=phase, level=level)
    state.stage.extend(stages)
    return state


def filter_layers(net_param, state):
    """The layers of ``net_param`` that ``state`` keeps, in order.

    A layer with ``include`` rules is kept when any of them is met; otherwise it is kept
    unless one of its ``exclude`` rules is met. Giving both kinds is an error, as in Caffe.
    """
    kept = []
    for layer in net_param.layer:
        if layer.include and layer.exclude:
            raise CaffeError('layer %r specifies both include and exclude rules' % layer.name)
        if layer.include:
            keep = any(state_meets_rule(state, r) for r in layer.include)
        else:
            keep = not any(state_meets_rule(state, r) for r in layer.exclude)
        if keep:
            kept.append(layer)
    return kept


def infer_shapes(layers, input_shapes=None, phase=caffe_pb2.TEST, registry=None):
    """Propagate blob shapes through ``layers`` without running them.

    Parameters
    ----------
    layers : list of caffe_pb2.LayerParameter
        As returned by :func:`filter_layers`.
    input_shapes : dict, optional
        Shapes of tops that no shape rule can know: the tops of Python layers (data
        layers), by top name. Input layers take theirs from the prototxt.
    phase : int
    registry : callable, optional
        ``create_layer(layer_param, phase)``; defaults to torchcaffe.layer_types' registry.

    Returns
    -------
    OrderedDict
        Blob name -> shape tuple, in the order blobs are first produced.

    Raises
    ------
    CaffeError
        A bottom that no earlier layer produces, or a Python top without a given shape.
    ShapeError
        A layer whose bottoms do not fit it (the message names the layer).
    """
    if registry is None:
        from .layer_types import create_layer as registry
    input_shapes = dict(input_shapes or {})
    shapes = OrderedDict()
    for lp in layers:
        missing = [b for b in lp.bottom if b not in shapes]
        if missing:
            raise CaffeError('layer %r (%s): bottom blob %r is not produced by any earlier layer'
                             % (lp.name, lp.type, missing[0]))
        bottom_shapes = [shapes[b] for b in lp.bottom]
        if lp.type == 'Python':
            tops = _given_shapes(lp, input_shapes)
        else:
            layer = registry(lp, phase)
            layer.check_blob_counts(len(lp.bottom), len(lp.top))
            try:
                tops = layer.top_shapes(bottom_shapes)
            except ShapeError as err:
                if lp.name in str(err):
                    raise
                raise ShapeError('layer %r (%s): %s' % (lp.name, lp.type, err)) from err
        for name, shape in zip(lp.top, tops):
            shapes[name] = tuple(int(d) for d in shape)
    return shapes


def _given_shapes(lp, input_shapes):
    try:
        return [input_shapes[t] for t in lp.top]
    except KeyError as err:
        raise CaffeError('layer %r (Python) produces %r; give its shape in input_shapes'
                         % (lp.name, err.args[0])) from None
