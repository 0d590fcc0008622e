"""Per-layer forward and backward times of a net: what ``caffe time`` measures.

Caffe's ``time()`` (tools/caffe.cpp) runs one forward/backward to allocate
memory, then, for each iteration, every layer's Forward in order and every
layer's Backward in reverse order, each timed alone. Here a layer's forward is
the net's forward over that one layer (``Net._forward(i, i)``); its backward is
the autograd backward of that layer alone: the gradients of its tops (seeded with
ones) with respect to its bottoms and params, with nothing below or above it.
Layers with nothing to differentiate (data and input layers, layers no gradient
flows through) take no backward time, as Caffe's backward of a layer that
propagates nothing down does next to nothing. On a GPU every timing waits for the
device (``torch.cuda.synchronize``), as Caffe's CUDA event timers do.
"""
import time

import torch

__all__ = ['LayerTimes', 'time_net']


class LayerTimes:
    """Accumulated times in seconds: per layer forward and backward, and totals.

    Attributes
    ----------
    names : list of str
    forward, backward : list of float
        Per layer, summed over the iterations.
    forward_total, backward_total, total : float
        Summed over the iterations (``total`` includes everything of each iteration).
    iterations : int
    per_iteration : list of float
        Each iteration's forward-backward time.
    kernels : dict
        Layer name -> {'forward' / 'input' / 'weight': kernel name} for the layers
        that choose a kernel per shape (:mod:`torchcaffe.kernels`), as last run.
    """

    def __init__(self, names):
        self.names = list(names)
        self.forward = [0.0] * len(names)
        self.backward = [0.0] * len(names)
        self.forward_total = self.backward_total = self.total = 0.0
        self.iterations = 0
        self.per_iteration = []
        self.kernels = {}  # layer name -> {pass: kernel} (torchcaffe.kernels' choices)

    def mean_ms(self, seconds):
        """``seconds`` summed over the iterations, as milliseconds per iteration."""
        return 1000.0 * seconds / max(self.iterations, 1)


def _synchronizer(device):
    if device.type == 'cuda':
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def _differentiable(tensors):
    return [t for t in tensors if t is not None and t.requires_grad]


def _forward_layers(net, times, sync, clock):
    """Run every layer alone, timed; return each layer's (outputs, inputs) for backward."""
    graph = []
    for i, step in enumerate(net._steps):
        inputs = _differentiable(step.bottom_tensors() + step.param_tensors())
        sync()
        start = clock()
        net._forward(i, i)
        sync()
        times.forward[i] += clock() - start
        outputs = [t for t in (b._data.tensor for b in step.tops)
                   if t is not None and t.grad_fn is not None]
        graph.append((outputs, inputs))
    return graph


def _backward_layers(graph, times, sync, clock):
    for i in reversed(range(len(graph))):
        outputs, inputs = graph[i]
        if not outputs or not inputs:
            continue
        seeds = [torch.ones_like(t) for t in outputs]
        sync()
        start = clock()
        torch.autograd.grad(outputs, inputs, seeds, retain_graph=True, allow_unused=True)
        sync()
        times.backward[i] += clock() - start


def time_net(net, iterations, on_iteration=None, clock=time.perf_counter):
    """Time ``iterations`` forward/backward passes of ``net``, layer by layer.

    Call it after one untimed ``net.forward()`` / ``net.backward()`` (Caffe's
    warm-up). Inputs are what the input blobs hold (zeros unless set), as in Caffe.

    Parameters
    ----------
    net : torchcaffe.Net
    iterations : int
    on_iteration : callable, optional
        ``on_iteration(j, seconds)`` after each iteration (1-based ``j``).
    clock : callable, optional
        Seconds from an arbitrary start (default ``time.perf_counter``); tests pass
        a fake one.

    Returns
    -------
    LayerTimes
    """
    times = LayerTimes([step.name for step in net._steps])
    sync = _synchronizer(net.device)
    autograd, net.autograd = net.autograd, True
    try:
        for j in range(iterations):
            start = clock()
            graph = _forward_layers(net, times, sync, clock)
            mid = clock()
            _backward_layers(graph, times, sync, clock)
            end = clock()
            del graph
            times.forward_total += mid - start
            times.backward_total += end - mid
            times.total += end - start
            times.iterations += 1
            times.per_iteration.append(end - start)
            if on_iteration is not None:
                on_iteration(j + 1, end - start)
    finally:
        net.autograd = autograd
    for step in net._steps:
        chosen = getattr(step.layer, 'kernels', None)
        if chosen:
            times.kernels[step.name] = dict(chosen)
    return times
