"""Data-parallel training over processes, as Caffe's multi-GPU training combines them.

Caffe trains on several GPUs (``caffe train -gpu 0,1``; pycaffe's ``python/train.py``
with ``caffe.NCCL``) by running one solver per GPU, each on its own batches: the
root's weights are broadcast once, every solver runs its own forward/backward
(``iter_size`` times), the diffs are summed over the solvers and scaled by
``1 / solver_count`` in the solver callback ``on_gradients_ready`` (src/caffe/
parallel.cpp: "loss functions divide gradients by the batch size, so to
compensate for split batch, the root solver divides by number of solvers"),
then every solver applies the same update (clip, divide by ``iter_size``,
regularize, momentum) and keeps the same weights. The effective batch is the
number of processes times ``iter_size`` times the net's batch.

Here each solver is a process started by ``torchrun``, talking through
``torch.distributed`` (NCCL for GPU mode, gloo for the CPU)::

    torchrun --nproc_per_node=4 solve.py voc-fcn8s --gpu 0

:func:`init` joins the process group that torchrun's environment describes
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``);
:func:`attach` broadcasts rank 0's weights and adds a :class:`GradientSync` to the
solver with ``add_callback``. As with Caffe's root solver, only rank 0 logs
(other ranks log warnings and errors only), runs the solver's own tests and
writes snapshots; every rank restores them. Signals (SIGINT / SIGHUP) reaching
any rank are agreed on by all at each iteration (:func:`agree`), so that every
rank stops, or snapshots, at the same iteration; Caffe acts on the root's signals
only. Without torchrun's environment (or with a world of one) nothing here does
anything, and training is that of one process.
"""
import datetime
import logging
import os

import numpy as np
import torch
import torch.distributed as dist

from . import mode
from .errors import CaffeError
from .glog import LOGGER_NAME
from .signal_handler import NONE, SNAPSHOT, STOP

__all__ = ['rank', 'world_size', 'local_rank', 'is_main', 'is_initialized', 'from_torchrun',
           'init', 'shutdown', 'broadcast_params', 'GradientSync', 'attach', 'agree',
           'rank_path', 'TIMEOUT']

log = logging.getLogger(__name__)

# Ranks other than 0 wait in a collective while rank 0 scores the validation set
# between steps, which can take long on slow devices: give collectives time.
TIMEOUT = datetime.timedelta(hours=2)

_state = {'control': None}

# Caffe's SolverAction, ordered so that the strongest request wins the agreement.
_ACTIONS = (NONE, SNAPSHOT, STOP)


# ------------------------------------------------------------------ who am I

def is_initialized():
    """Whether this process is one of several in a torch.distributed group."""
    return dist.is_available() and dist.is_initialized()


def rank():
    """This process's rank (0 when not distributed; Caffe's ``solver_rank``)."""
    return dist.get_rank() if is_initialized() else 0


def world_size():
    """The number of processes training together (1 when not distributed)."""
    return dist.get_world_size() if is_initialized() else 1


def local_rank():
    """This process's rank on its own machine (torchrun's ``LOCAL_RANK``; 0 by default)."""
    return int(os.environ.get('LOCAL_RANK', 0))


def is_main():
    """Whether this process is rank 0 (Caffe's ``root_solver``): it logs and snapshots."""
    return rank() == 0


def from_torchrun(environ=None):
    """Whether torchrun's environment asks for more than one process.

    >>> from_torchrun({'RANK': '1', 'WORLD_SIZE': '2'})
    True
    >>> from_torchrun({'RANK': '0', 'WORLD_SIZE': '1'}), from_torchrun({})
    (False, False)
    """
    environ = os.environ if environ is None else environ
    return 'RANK' in environ and int(environ.get('WORLD_SIZE', 1)) > 1


# ------------------------------------------------------------------ the group

def init(backend=None, timeout=TIMEOUT):
    """Join the process group described by torchrun's environment.

    Call it after choosing the device (``caffe.set_device(local_rank())`` and
    ``set_mode_gpu()`` for GPU training) and before making the solver, whose data
    layers and seeds depend on the rank.

    Parameters
    ----------
    backend : str, optional
        'nccl' or 'gloo'; by default NCCL in GPU mode and gloo on the CPU.
    timeout : datetime.timedelta
        How long a collective may wait for the other ranks.

    Raises
    ------
    CaffeError
        The environment lacks torchrun's variables.
    """
    if is_initialized():
        return
    missing = [k for k in ('RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT')
               if k not in os.environ]
    if missing:
        raise CaffeError('distributed training needs torchrun\'s environment (%s not set); '
                         'start it with torchrun --nproc_per_node=N ...' % ', '.join(missing))
    gpu = mode.device().type == 'cuda'
    backend = backend or ('nccl' if gpu else 'gloo')
    options = {'backend': backend, 'init_method': 'env://', 'timeout': timeout}
    if backend == 'nccl':
        options['device_id'] = mode.device()
    dist.init_process_group(**options)
    # Signals are agreed on every iteration: on the host, so that it never waits
    # for the GPU.
    _state['control'] = dist.new_group(backend='gloo', timeout=timeout) \
        if backend != 'gloo' else None
    if rank():
        # Caffe offsets each worker's seed by its device (P2PSync); so Dropout
        # masks differ between ranks. Rank 0 keeps the single process's streams.
        mode.set_random_seed(mode._state['seed'] + rank())
        # Caffe logs on the root solver only (LOG_IF(INFO, Caffe::root_solver())).
        logging.getLogger(LOGGER_NAME).setLevel(logging.WARNING)
    log.info('Process group of %d (%s): this is rank %d', world_size(), backend, rank())


def shutdown():
    """Leave the process group (at the end of training)."""
    if is_initialized():
        dist.destroy_process_group()
    _state['control'] = None


# ------------------------------------------------------------------ tensors

def _flat_groups(tensors):
    """``tensors`` grouped by device and dtype, each group to be flattened into one buffer."""
    groups = {}
    for t in tensors:
        groups.setdefault((t.device, t.dtype), []).append(t)
    return list(groups.values())


def _flatten(tensors):
    return torch.cat([t.reshape(-1) for t in tensors])


def _unflatten_into(flat, tensors):
    views = [v.view_as(t) for v, t in zip(flat.split([t.numel() for t in tensors]), tensors)]
    torch._foreach_copy_(tensors, views)


def broadcast_params(net, src=0):
    """Give every rank rank ``src``'s weights (every param blob of ``net``).

    Caffe broadcasts the root's weights once, before the first iteration; the
    ranks then stay equal because they all apply the same update.
    """
    if world_size() == 1:
        return
    blobs = [b.mutable_data_tensor() for b in _param_blobs(net)]
    with torch.no_grad():
        for group in _flat_groups(blobs):
            flat = _flatten(group)
            dist.broadcast(flat, src)
            _unflatten_into(flat, group)


def _param_blobs(net):
    """Every distinct param blob of ``net`` (learnable or not), in a fixed order."""
    seen, out = set(), []
    for blobs in net.params.values():
        for b in blobs:
            if id(b) not in seen:
                seen.add(id(b))
                out.append(b)
    for b in net.learnable_params:
        if id(b) not in seen:
            seen.add(id(b))
            out.append(b)
    return out


class GradientSync:
    """A solver callback that sums the param diffs over the ranks, then scales by 1/N.

    Add it with ``solver.add_callback(sync)``. ``on_gradients_ready`` runs once the
    ``iter_size`` passes have accumulated their diffs and before the update, so the
    update's clipping and ``1 / iter_size`` normalisation see the averaged diffs,
    as in Caffe. The diffs of each dtype travel flattened into one buffer: one
    all-reduce per iteration.

    Parameters
    ----------
    net : Net
        The solver's train net.
    """

    def __init__(self, net):
        self.net = net
        # Params the net does not train (lr_mult 0) never get a diff.
        self.params = [p for p in net.learnable_params if p._requires_grad]
        self.scale = float(np.float32(1.0 / world_size()))

    def on_start(self):
        """Nothing: the weights are equal on every rank (broadcast once, then the same
        update everywhere), as with Caffe's NCCL."""

    def on_gradients_ready(self):
        """Replace every trained param's diff by its mean over the ranks."""
        if world_size() == 1 or not self.params:
            return
        diffs = [p.mutable_diff_tensor() for p in self.params]
        with torch.no_grad():
            for group in _flat_groups(diffs):
                flat = _flatten(group)
                dist.all_reduce(flat, op=dist.ReduceOp.SUM)
                if self.scale != 1:
                    flat.mul_(self.scale)
                _unflatten_into(flat, group)


def attach(solver):
    """Make ``solver`` one of the data-parallel solvers: check that every rank is at
    the same iteration, broadcast rank 0's weights, add a :class:`GradientSync`.

    Call it after initialising the weights (copy_from, surgery) or restoring.

    Returns
    -------
    GradientSync, or None when not distributed.

    Raises
    ------
    CaffeError
        The ranks are at different iterations (they restored different states).
    """
    if world_size() == 1:
        return None
    iters = torch.tensor([solver.iter, -solver.iter], dtype=torch.int64)
    dist.all_reduce(iters, op=dist.ReduceOp.MAX, group=_state['control'])
    if int(iters[0]) != -int(iters[1]):
        raise CaffeError('rank %d is at iteration %d but another rank is at %d: every rank '
                         'must restore the same solverstate'
                         % (rank(), solver.iter, int(iters[0]) if int(iters[0]) != solver.iter
                            else -int(iters[1])))
    solver.net.sync_device()  # NCCL moves tensors on the GPU only
    broadcast_params(solver.net)
    sync = GradientSync(solver.net)
    solver.add_callback(sync)
    log.info('Data-parallel over %d processes: each update averages %d processes x '
             'iter_size %d x the net\'s batch', world_size(), world_size(),
             solver.param.iter_size)
    return sync


# ------------------------------------------------------------------ agreement

def barrier():
    """Wait until every rank gets here (over the CPU control group, so a snapshot
    never waits on the GPU). A no-op in one process."""
    if world_size() > 1:
        dist.barrier(group=_state['control'])


def agree(action):
    """The solver action that every rank takes: the strongest one requested anywhere.

    ``action`` is this rank's request ("none", "snapshot" or "stop", from its signal
    flags); a stop anywhere stops every rank (which snapshots on its way out), else
    a snapshot anywhere snapshots. Every rank must call it at the same point.

    >>> agree('snapshot')  # one process: its own request
    'snapshot'
    """
    if world_size() == 1:
        return action
    code = torch.tensor([_ACTIONS.index(action)], dtype=torch.int64)
    dist.all_reduce(code, op=dist.ReduceOp.MAX, group=_state['control'])
    return _ACTIONS[int(code[0])]


def rank_path(path):
    """``path`` on rank 0; ``path + '.rank<R>'`` on other ranks (for per-rank files
    beside a snapshot, such as the random streams of their data layers).

    >>> rank_path('snapshot/train_iter_4.solverstate')
    'snapshot/train_iter_4.solverstate'
    """
    r = rank()
    return path if r == 0 else '%s.rank%d' % (path, r)
