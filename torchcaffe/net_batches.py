"""pycaffe's batch loops of :class:`torchcaffe.Net`: ``forward_all`` and
``forward_backward_all`` run the net over arrays longer than its batch, padding the
last batch with zeros and dropping that padding from the results.
"""
import itertools

import numpy as np

__all__ = ['forward_all', 'forward_backward_all']


def forward_all(net, blobs, kwargs):
    """:meth:`torchcaffe.Net.forward_all`."""
    all_outs = {out: [] for out in set(net.outputs + list(blobs or []))}
    for batch in _batch(net, kwargs):
        outs = net.forward(blobs=blobs, **batch)
        for out, data in outs.items():
            all_outs[out].extend(data.copy())
    return _gathered(all_outs, len(next(iter(kwargs.values()))))


def forward_backward_all(net, blobs, diffs, kwargs):
    """:meth:`torchcaffe.Net.forward_backward_all`."""
    all_outs = {out: [] for out in set(net.outputs + list(blobs or []))}
    all_diffs = {diff: [] for diff in set(net.inputs + list(diffs or []))}
    forward_batches = _batch(net, {k: kwargs[k] for k in net.inputs if k in kwargs})
    backward_batches = _batch(net, {k: kwargs[k] for k in net.outputs if k in kwargs})
    for fb, bb in itertools.zip_longest(forward_batches, backward_batches, fillvalue={}):
        for out, data in net.forward(blobs=blobs, **fb).items():
            all_outs[out].extend(data.copy())
        for diff, data in net.backward(diffs=diffs, **bb).items():
            all_diffs[diff].extend(data.copy())
    num = len(next(iter(kwargs.values()))) if kwargs else None
    return _gathered(all_outs, num), _gathered(all_diffs, num)


def _batch(net, arrays):
    """Batches of the net's batch size (the first blob's num), the last padded with
    zeros; nothing for no arrays."""
    if not arrays:
        return
    num = len(next(iter(arrays.values())))
    batch_size = next(iter(net._blobs.values())).num
    for i in range(0, num - num % batch_size, batch_size):
        yield {name: np.asarray(a[i:i + batch_size]) for name, a in arrays.items()}
    remainder = num % batch_size
    if remainder:
        batch = {}
        for name, a in arrays.items():
            a = np.asarray(a)
            pad = np.zeros((batch_size - remainder,) + a.shape[1:], a.dtype)
            batch[name] = np.concatenate([a[-remainder:], pad])
        yield batch


def _gathered(lists, num):
    """Lists of per-item arrays as arrays of the first ``num`` items (None: all), which
    drops the zero padding of the last batch."""
    return {k: np.asarray(v)[:num] for k, v in lists.items()}
