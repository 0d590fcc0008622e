"""Caffe's ComputeUpdateValue of each solver, as pure functions on float32 tensors.

Each function takes the regularized diffs of a group of params that share one local
rate (``rate * lr_mult``), updates their history in place, and leaves in the diffs
the value that ``Net::Update`` then subtracts from the data. The operations come in
the order of Caffe's CPU code, each rounded to float32 as Caffe rounds it
(src/caffe/solvers/{sgd,nesterov,adagrad,rmsprop,adadelta,adam}_solver.cpp):
``caffe_cpu_axpby(a, x, b, y)`` scales ``y`` by ``b`` and then adds ``a * x``;
``caffe_powx(x, 2)`` and ``caffe_powx(x, 0.5)`` are taken as ``x * x`` and
``sqrt(x)`` (the correctly rounded values; a libm ``powf`` may differ from them in
the last bit in rare cases). Caffe's GPU kernels group the same arithmetic
differently (e.g. AdaGrad's ``rate * g / (sqrt(h) + delta)``); the CPU order is
the one followed everywhere here.

Scalars are Python floats holding float32 values (``float(np.float32(x))``).
"""
import math

import numpy as np
import torch

__all__ = ['sgd', 'nesterov', 'adagrad', 'rmsprop', 'adadelta', 'adam', 'adam_correction',
           'one_minus']


def one_minus(x):
    """``Dtype(1) - x`` in float32, as Caffe computes ``1 - momentum`` and the like.

    >>> one_minus(0.9) == float(np.float32(1) - np.float32(0.9))
    True
    """
    return float(np.float32(1) - np.float32(x))


def sgd(diffs, history, rate, momentum):
    """SGD with momentum (sgd_solver.cpp): ``h = momentum * h + rate * g; g = h``."""
    torch._foreach_mul_(history, momentum)
    torch._foreach_add_(history, diffs, alpha=rate)
    torch._foreach_copy_(diffs, history)


def nesterov(diffs, history, rate, momentum):
    """Nesterov's accelerated gradient (nesterov_solver.cpp).

    ``prev = h; h = momentum * h + rate * g; g = (1 + momentum) * h - momentum * prev``:
    Caffe copies the history into its ``update_`` blob, scales that copy by
    ``-momentum`` and adds ``(1 + momentum) * h`` to it.
    """
    back = torch._foreach_mul(history, -momentum)  # the copy, scaled by -momentum
    torch._foreach_mul_(history, momentum)
    torch._foreach_add_(history, diffs, alpha=rate)
    torch._foreach_copy_(diffs, back)
    torch._foreach_add_(diffs, history, alpha=float(np.float32(1) + np.float32(momentum)))


def _scaled_by_rms(diffs, history, rate, delta):
    """``g = rate * (g / (sqrt(h) + delta))``: AdaGrad's and RMSProp's last steps."""
    root = torch._foreach_sqrt(history)
    torch._foreach_add_(root, delta)
    torch._foreach_div_(diffs, root)
    torch._foreach_mul_(diffs, rate)


def adagrad(diffs, history, rate, delta):
    """AdaGrad (adagrad_solver.cpp): ``h += g * g; g = rate * g / (sqrt(h) + delta)``."""
    torch._foreach_add_(history, torch._foreach_mul(diffs, diffs))
    _scaled_by_rms(diffs, history, rate, delta)


def rmsprop(diffs, history, rate, rms_decay, delta):
    """RMSProp (rmsprop_solver.cpp): ``h = rms_decay * h + (1 - rms_decay) * g * g;
    g = rate * g / (sqrt(h) + delta)``."""
    square = torch._foreach_mul(diffs, diffs)
    torch._foreach_mul_(history, rms_decay)
    torch._foreach_add_(history, square, alpha=one_minus(rms_decay))
    _scaled_by_rms(diffs, history, rate, delta)


def adadelta(diffs, history, update_history, rate, momentum, delta):
    """AdaDelta (adadelta_solver.cpp), with ``momentum`` as the decay.

    ``h = m * h + (1 - m) * g * g; g = g * sqrt((u + delta) / (h + delta));
    u = m * u + (1 - m) * g * g; g = rate * g``. ``history`` holds the squared
    gradients (Caffe's first N history blobs), ``update_history`` the squared
    updates (the second N). Caffe applies the learning rate last, so ``u`` holds
    updates before it.
    """
    decay = one_minus(momentum)
    square = torch._foreach_mul(diffs, diffs)
    torch._foreach_mul_(history, momentum)
    torch._foreach_add_(history, square, alpha=decay)
    numerator = torch._foreach_add(update_history, delta)
    denominator = torch._foreach_add(history, delta)
    torch._foreach_div_(numerator, denominator)
    torch._foreach_sqrt_(numerator)
    torch._foreach_mul_(diffs, numerator)
    square = torch._foreach_mul(diffs, diffs)
    torch._foreach_mul_(update_history, momentum)
    torch._foreach_add_(update_history, square, alpha=decay)
    torch._foreach_mul_(diffs, rate)


def adam_correction(beta1, beta2, t):
    """Adam's bias correction ``sqrt(1 - beta2^t) / (1 - beta1^t)`` as Caffe computes it.

    adam_solver.cpp calls ``pow(Dtype, int)``, which C++ evaluates in double; the
    quotient is then stored in a float. ``beta1``, ``beta2`` are the float32 solver
    fields, ``t`` is the iteration plus one.

    >>> b1, b2 = np.float64(np.float32(0.9)), np.float64(np.float32(0.999))
    >>> bool(adam_correction(0.9, 0.999, 1) == np.float32(math.sqrt(1 - b2) / (1 - b1)))
    True
    """
    b1, b2 = np.float64(np.float32(beta1)), np.float64(np.float32(beta2))
    return np.float32(math.sqrt(1.0 - b2 ** t) / (1.0 - b1 ** t))


def adam(diffs, m, v, rate, beta1, beta2, delta, t):
    """Adam (adam_solver.cpp): ``m = b1 * m + (1 - b1) * g; v = b2 * v + (1 - b2) * g * g;
    g = (rate * correction) * (m / (sqrt(v) + delta))`` with ``correction`` from
    :func:`adam_correction` at ``t = iter + 1``. ``m`` is Caffe's first N history
    blobs, ``v`` the second N."""
    torch._foreach_mul_(m, beta1)
    torch._foreach_add_(m, diffs, alpha=one_minus(beta1))
    square = torch._foreach_mul(diffs, diffs)
    torch._foreach_mul_(v, beta2)
    torch._foreach_add_(v, square, alpha=one_minus(beta2))
    root = torch._foreach_sqrt(v)
    torch._foreach_add_(root, delta)
    step = torch._foreach_div(m, root)
    scale = float(np.float32(rate) * adam_correction(beta1, beta2, t))
    torch._foreach_mul_(step, scale)
    torch._foreach_copy_(diffs, step)
