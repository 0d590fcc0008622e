"""A net's learnable blobs as Caffe's Net::AppendParam sets them up: made and filled,
owned or shared by ``ParamSpec.name`` (shapes, or counts under ``share_mode:
PERMISSIVE``, must agree; so must given multipliers), with the solver's lists of
owned params and their ``lr_mult`` / ``decay_mult``.
"""
import torch

from .blob import Blob
from .errors import CaffeError
from .memory import reraise_oom
from .proto import caffe_pb2

__all__ = ['make_params', 'append_params']

_PERMISSIVE = caffe_pb2.ParamSpec.PERMISSIVE


def make_params(layer, bottom_shapes, generator):
    """The layer's learnable blobs, made and filled by its fillers (on the CPU)."""
    shapes = [tuple(int(d) for d in s) for s in layer.param_shapes(bottom_shapes)]
    tensors = []
    for k, s in enumerate(shapes):
        with reraise_oom('layer %r (%s), param %d' % (layer.layer_param.name, layer.type, k),
                         s, device='cpu'):
            tensors.append(torch.zeros(s, dtype=torch.float32))
    layer.fill_params(tensors, bottom_shapes, generator)
    blobs = []
    for t in tensors:
        b = Blob(t.shape)
        b._data.tensor = t
        blobs.append(b)
    return blobs


def append_params(net, step, param_blobs, where):
    """Caffe's AppendParam: ownership, sharing by name, lr / decay multipliers."""
    lp = step.lp
    if len(lp.param) > len(param_blobs):
        raise CaffeError('%s: %d param specs but only %d learnable blobs (too many params '
                         'specified)' % (where, len(lp.param), len(param_blobs)))
    for j in range(len(param_blobs)):
        blob = param_blobs[j]
        spec = lp.param[j] if j < len(lp.param) else caffe_pb2.ParamSpec()
        step.param_shapes.append(blob.shape)
        step.param_down.append(spec.lr_mult != 0)
        shared = bool(spec.name) and spec.name in net._shared
        step.param_owned.append(not shared)
        if shared:
            owner, k = net._shared[spec.name]
            _check_shared(net, where, spec, j, blob, owner, k)
            param_blobs[j] = blob = owner
        else:
            k = len(net.learnable_params)
            if spec.name:
                net._shared[spec.name] = (blob, k)
            net.learnable_params.append(blob)
            net.has_params_lr.append(spec.HasField('lr_mult'))
            net.has_params_decay.append(spec.HasField('decay_mult'))
            net.params_lr.append(spec.lr_mult)
            net.params_weight_decay.append(spec.decay_mult)
        step.params.append(blob)


def _check_shared(net, where, spec, j, blob, owner, k):
    if spec.share_mode == _PERMISSIVE:
        if blob.count != owner.count:
            raise CaffeError('%s: param %d shares %r but has %d values, the owner %d '
                             '(shapes %s and %s)' % (where, j, spec.name, blob.count,
                                                     owner.count, blob.shape, owner.shape))
    elif blob.shape != owner.shape:
        raise CaffeError('%s: param %d shares %r but has shape %s, the owner %s (use '
                         'share_mode: PERMISSIVE to compare counts only)'
                         % (where, j, spec.name, blob.shape, owner.shape))
    for field, has, values in (('lr_mult', net.has_params_lr, net.params_lr),
                               ('decay_mult', net.has_params_decay,
                                net.params_weight_decay)):
        if spec.HasField(field):
            if has[k] and values[k] != getattr(spec, field):
                raise CaffeError('%s: shared param %r has mismatched %s (%g, owner %g)'
                                 % (where, spec.name, field, getattr(spec, field),
                                    values[k]))
            has[k] = True
            values[k] = getattr(spec, field)
