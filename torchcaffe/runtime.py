"""pycaffe's module-level utilities that are not about nets: the layer registry's
type list, Caffe's multi-solver settings, logging set-up, ``Timer`` and ``NCCL``.

These are the names ``python/caffe/_caffe.cpp`` exports besides Net and the
solvers (``layer_type_list``, ``solver_count`` / ``set_solver_count``,
``solver_rank`` / ``set_solver_rank``, ``set_multiprocess``, ``init_log``,
``log``, ``Timer``, ``NCCL``, ``has_nccl``), with the signatures it gives them.

Multi-solver training here is one process per solver, joined by
``torch.distributed`` (see :mod:`torchcaffe.distributed`). The solver count and
rank therefore come from the process group when there is one; a value set with
``set_solver_count`` / ``set_solver_rank`` (as Caffe's ``python/train.py`` sets
them) wins over it, as Caffe's global setting does.
"""
import logging
import time
import uuid

import torch

from . import distributed, mode
from .glog import LOGGER_NAME, install_default_handler

__all__ = ['layer_type_list', 'solver_count', 'set_solver_count', 'solver_rank',
           'set_solver_rank', 'multiprocess', 'set_multiprocess', 'init_log', 'log',
           'Timer', 'NCCL', 'has_nccl']

_state = {'solver_count': None, 'solver_rank': None, 'multiprocess': False}

# glog's minloglevel values (0 INFO, 1 WARNING, 2 ERROR, 3 FATAL).
_GLOG_LEVELS = {0: logging.INFO, 1: logging.WARNING, 2: logging.ERROR, 3: logging.CRITICAL}


def layer_type_list():
    """The layer types nets can use, sorted (Caffe's ``LayerRegistry::LayerTypeList``).

    Caffe's registry is a ``std::map`` keyed by the type name, so the list comes out
    in byte order, which is Python's order for these ASCII names. ``Python`` is in
    it, as in every pycaffe build (``WITH_PYTHON_LAYER``).

    Returns
    -------
    list of str
    """
    from .layer_types import known_types
    return sorted(set(known_types()) | {'Python'})


# ------------------------------------------------------------------ solver count / rank

def solver_count():
    """How many solvers train together (Caffe's ``Caffe::solver_count``, 1 by default):
    the value given to :func:`set_solver_count`, else the process group's size."""
    given = _state['solver_count']
    return distributed.world_size() if given is None else given


def set_solver_count(count):
    """Set the solver count (Caffe's ``Caffe::set_solver_count``)."""
    _state['solver_count'] = int(count)


def solver_rank():
    """This solver's rank (Caffe's ``Caffe::solver_rank``, 0 by default): the value
    given to :func:`set_solver_rank`, else the process group's rank."""
    given = _state['solver_rank']
    return distributed.rank() if given is None else given


def set_solver_rank(rank):
    """Set this solver's rank (Caffe's ``Caffe::set_solver_rank``)."""
    _state['solver_rank'] = int(rank)


def multiprocess():
    """Whether :func:`set_multiprocess` said the solvers are separate processes."""
    return _state['multiprocess']


def set_multiprocess(value):
    """Record that the solvers run as separate processes (Caffe's
    ``Caffe::set_multiprocess``). Here every solver is its own process anyway, so
    this only records the flag for :func:`multiprocess`."""
    _state['multiprocess'] = bool(value)


# ------------------------------------------------------------------ logging

def init_log(level=0):
    """Start logging to stderr at glog level ``level`` (pycaffe's ``init_log``).

    Parameters
    ----------
    level : int
        glog's ``minloglevel``: 0 INFO (``init_log()``), 1 WARNING, 2 ERROR, 3 FATAL.
    """
    if level not in _GLOG_LEVELS:
        raise ValueError('init_log: level must be 0 (INFO), 1 (WARNING), 2 (ERROR) or '
                         '3 (FATAL), got %r' % (level,))
    logger = install_default_handler()
    logger.setLevel(_GLOG_LEVELS[level])


def log(message):
    """Log ``message`` at INFO, as pycaffe's ``log`` (``LOG(INFO) << s``)."""
    logging.getLogger(LOGGER_NAME).info('%s', message)


# ------------------------------------------------------------------ Timer

# The clock Timer reads, in seconds (a module attribute so that tests can drive it).
_clock = time.perf_counter


def _sync_gpu():
    # Caffe's GPU-mode Timer records CUDA events, so it measures the queued work.
    if mode._state['gpu'] and torch.cuda.is_available():
        torch.cuda.synchronize()


class Timer:
    """Caffe's ``Timer`` (``include/caffe/util/benchmark.hpp``), as pycaffe exposes it:
    ``start()``, ``stop()`` and the ``ms`` property; Caffe's C++ names
    (``Start``, ``Stop``, ``MilliSeconds``, ``MicroSeconds``, ``Seconds``) work too.

    Reading the time of a running timer stops it first, as Caffe's does; reading a
    timer that never ran gives 0.
    """

    def __init__(self):
        self._running = False
        self._has_run = False
        self._start = self._stop = 0.0

    def start(self):
        """Start (or restart) the timer; a running timer keeps its start."""
        if not self._running:
            _sync_gpu()
            self._start = _clock()
            self._running = True
            self._has_run = True

    def stop(self):
        """Stop the timer; a stopped timer stays as it is."""
        if self._running:
            _sync_gpu()
            self._stop = _clock()
            self._running = False

    @property
    def running(self):
        """Whether the timer is running."""
        return self._running

    @property
    def has_run_at_least_once(self):
        """Whether ``start`` was ever called."""
        return self._has_run

    def _elapsed(self):
        if not self._has_run:
            logging.getLogger(LOGGER_NAME).warning(
                'Timer has never been run before reading time.')
            return 0.0
        if self._running:
            self.stop()
        return self._stop - self._start

    @property
    def ms(self):
        """Milliseconds between the last start and stop."""
        return self._elapsed() * 1e3

    def MilliSeconds(self):  # noqa: N802 (Caffe's name)
        """Caffe's ``Timer::MilliSeconds``."""
        return self.ms

    def MicroSeconds(self):  # noqa: N802
        """Caffe's ``Timer::MicroSeconds``."""
        return self._elapsed() * 1e6

    def Seconds(self):  # noqa: N802
        """Caffe's ``Timer::Seconds``."""
        return self._elapsed()

    Start = start
    Stop = stop


# ------------------------------------------------------------------ NCCL

def has_nccl():
    """Whether NCCL is there to combine solvers on GPUs (pycaffe's ``has_nccl``: Caffe
    built with ``USE_NCCL``); here, whether torch has its NCCL backend.

    :class:`NCCL` works without it too: on the CPU the ranks talk through gloo.
    """
    dist = torch.distributed
    return bool(dist.is_available() and dist.is_nccl_available())


class NCCL:
    """pycaffe's ``caffe.NCCL(solver, uid)``: what joins one solver to the others.

    Caffe's ``python/train.py`` makes one per solver process, calls ``bcast()`` to
    give every solver the root's weights, and ``solver.add_callback(nccl)`` so that
    each iteration's diffs are summed over the solvers (and divided by their count)
    before the update. Here those two steps are
    :func:`torchcaffe.distributed.broadcast_params` and
    :class:`torchcaffe.distributed.GradientSync` over the ``torch.distributed``
    process group that ``torchrun`` describes (call
    ``torchcaffe.distributed.init()`` first). In a single process, with no group,
    both do nothing: the one solver trains alone, as Caffe with one GPU.

    Parameters
    ----------
    solver : SGDSolver
    uid : str
        From :meth:`new_uid`. Caffe's ranks meet through it; here they meet through
        torchrun's environment, and the uid is only kept (``self.uid``).
    """

    def __init__(self, solver, uid=''):
        self.solver = solver
        self.uid = uid
        self._sync = distributed.GradientSync(solver.net)

    @staticmethod
    def new_uid():
        """A new identifier to hand to every rank's ``NCCL`` (Caffe's ``new_uid``)."""
        return uuid.uuid4().hex

    def bcast(self):
        """Give every solver rank 0's weights (Caffe's ``NCCL::Broadcast``)."""
        distributed.broadcast_params(self.solver.net)

    def on_start(self):
        """Solver callback: nothing (the weights stay equal on every rank)."""

    def on_gradients_ready(self):
        """Solver callback: replace each trained param's diff by its mean over ranks."""
        self._sync.on_gradients_ready()
