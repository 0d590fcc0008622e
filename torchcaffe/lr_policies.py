"""Caffe's learning rate policies (SGDSolver::GetLearningRate) as a pure function.

Caffe computes the rate as ``Dtype rate`` (float32) from expressions whose types
decide the rounding: ``pow(float, int)`` is done in double (C++11) (step, exp, multistep),
the others in float (inv, poly, sigmoid). :func:`learning_rate` does the same, so
that its rates are Caffe's to the bit wherever libm agrees.
"""
import numpy as np

from .errors import CaffeError
from .proto import caffe_pb2

__all__ = ['LR_POLICIES', 'learning_rate']

LR_POLICIES = ('fixed', 'step', 'exp', 'inv', 'multistep', 'poly', 'sigmoid')


def _require(ok, param, what):
    if not ok:
        raise CaffeError('lr_policy "%s" needs %s' % (param.lr_policy, what))


def learning_rate(param, iteration, current_step=0):
    """The learning rate of ``param.lr_policy`` at ``iteration`` (SGDSolver::GetLearningRate).

    Parameters
    ----------
    param : caffe_pb2.SolverParameter
    iteration : int
    current_step : int
        The solver's step counter: "multistep" advances it by at most one per
        call, "step" sets it to ``iteration // stepsize``.

    Returns
    -------
    (numpy.float32, int)
        The rate, as Caffe's ``Dtype rate``, and the new ``current_step``. Integer
        powers (step, exp, multistep) are computed in double as C++'s ``pow(float,
        int)``; the other policies in float, as Caffe's expressions are.

    >>> p = caffe_pb2.SolverParameter(lr_policy='step', base_lr=0.1, gamma=0.5, stepsize=10)
    >>> learning_rate(p, 25)
    (np.float32(0.025), 2)
    """
    f = np.float32
    policy = param.lr_policy
    base_lr, gamma = np.float64(param.base_lr), np.float64(param.gamma)
    with np.errstate(all='ignore'):
        if policy == 'fixed':
            rate = base_lr
        elif policy == 'step':
            _require(param.stepsize > 0, param, 'stepsize > 0')
            _require(param.gamma >= 0, param, 'gamma >= 0')
            current_step = iteration // param.stepsize
            rate = base_lr * np.power(gamma, np.float64(current_step))
        elif policy == 'exp':
            _require(param.gamma >= 0, param, 'gamma >= 0')
            rate = base_lr * np.power(gamma, np.float64(iteration))
        elif policy == 'inv':
            _require(param.gamma >= 0, param, 'gamma >= 0')
            rate = f(base_lr) * np.power(f(1) + f(gamma) * f(iteration), -f(param.power))
        elif policy == 'multistep':
            _require(param.gamma >= 0, param, 'gamma >= 0')
            values = param.stepvalue
            if current_step < len(values) and iteration >= values[current_step]:
                current_step += 1
            rate = base_lr * np.power(gamma, np.float64(current_step))
        elif policy == 'poly':
            rate = f(base_lr) * np.power(f(1) - f(iteration) / f(param.max_iter),
                                         f(param.power))
        elif policy == 'sigmoid':
            _require(param.gamma >= 0, param, 'gamma >= 0')
            _require(param.stepsize > 0, param, 'stepsize > 0')
            rate = f(base_lr) * (f(1) / (f(1) + np.exp(-f(gamma) * (f(iteration)
                                                                   - f(param.stepsize)))))
        else:
            raise CaffeError('Unknown learning rate policy: "%s" (known: %s)'
                             % (policy, ', '.join(LR_POLICIES)))
        return f(rate), current_step


