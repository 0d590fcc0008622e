"""pycaffe's solvers and ``caffe.get_solver``: Caffe's six solvers, step for step.

The solvers follow Caffe's ``Solver`` / ``SGDSolver`` (src/caffe/solver.cpp,
src/caffe/solvers/sgd_solver.cpp); ``NesterovSolver``, ``AdaGradSolver``,
``RMSPropSolver``, ``AdaDeltaSolver`` and ``AdamSolver`` change only the update value
(step 4's history formula; see ``torchcaffe.solver_updates``). Each iteration of
:meth:`SGDSolver.step`:

1. clears the param diffs, and runs the test nets when ``test_interval`` divides
   the iteration (at 0 only with ``test_initialization``);
2. runs forward/backward ``iter_size`` times (diffs accumulate), averages the loss
   and folds it into the loss smoothed over the last ``average_loss`` iterations;
3. on ``display`` iterations logs ``Iteration N (x iter/s, ys/D iters), loss = L``,
   every element of every output, then ``Iteration N, lr = R``;
4. updates: the rate of ``lr_policy``; gradient clipping to the global L2 norm
   ``clip_gradients`` (when it is >= 0, Caffe's test); then per learnable param
   diff /= iter_size, diff += weight_decay * decay_mult * data (L2; L1 adds the
   sign), history = momentum * history + rate * lr_mult * diff, diff = history,
   data -= diff. Everything is float32 in that order, as Caffe's CPU code; the
   history saved in a solverstate therefore includes the rate;
5. counts the iteration, snapshots every ``snapshot`` iterations.

Where this differs from Caffe, on purpose:

* A NaN or infinite loss raises :class:`DivergedError` naming the first such
  iteration (Caffe trains on). On the CPU the loss is checked at every iteration,
  before the update; on a GPU it stays on the device and is checked when it is
  read anyway (display iterations, snapshots, the end of ``step``, and every
  1000 iterations), so no iteration waits for the GPU only to check it.
* Signals: while ``step``/``solve`` run, SIGINT and SIGHUP set flags checked once
  per iteration, as the ``caffe`` tool's defaults (``sigint_effect`` "stop",
  ``sighup_effect`` "snapshot"). A stop snapshots first (Caffe's ``Solve`` does on
  its way out). ``step`` then raises :class:`TrainingStopped` (a
  ``KeyboardInterrupt``, so a script looping over ``step`` ends as a Ctrl-C would
  end it); ``solve`` logs "Optimization stopped early." and returns. A second
  SIGINT before the first is handled raises ``KeyboardInterrupt`` at once.
* Data-parallel training (``torchcaffe.distributed``, under torchrun) combines the
  ranks' diffs through ``add_callback`` as Caffe's multi-GPU solvers do; signals
  reaching any rank are agreed on at every iteration, so all ranks stop or
  snapshot together (Caffe heeds the root's only). Only rank 0 tests, logs and
  writes snapshots; the others write only their random streams beside them.
* ``solver_mode`` / ``device_id`` are ignored, as pycaffe ignores them: nets run
  where ``caffe.set_mode_gpu()`` / ``set_mode_cpu()`` say.
* A snapshot directory that is missing or not writable fails at construction
  (Caffe's ``CheckSnapshotWritePermissions``); an unknown ``lr_policy`` or
  ``regularization_type`` too (Caffe fails at the first update).
* Restoring checks the history's count and shapes against the net's params.
* History is allocated at a param's first update; a param whose rate is 0 and
  whose history is still zero is left alone (Caffe computes 0 * diff for it).
* ``debug_info`` is ignored.
* ``AdamSolver`` needs 0 <= momentum < 1 and 0 <= momentum2 < 1 (Caffe does not
  check: its update becomes infinite or zero).

The rates come from ``torchcaffe.lr_policies``, the signal flags from
``torchcaffe.signal_handler``; logs go to the ``torchcaffe`` logger in glog's
format (``torchcaffe.glog``), shown on stderr unless the application configures
logging itself.
"""
import contextlib
import logging
import os
import time

import numpy as np
import torch

from . import distributed
from . import io
from . import mode
from . import resume_state
from . import solver_updates as updates
from .errors import CaffeError, NetMismatchError, SnapshotError
from .glog import install_default_handler
from .lr_policies import learning_rate
from .net import Net
from .python_layer import net_folder
from .proto import caffe_pb2
from .signal_handler import NONE, SNAPSHOT, STOP, SignalRequests
from .upgrade import upgrade_solver_param

__all__ = ['SGDSolver', 'NesterovSolver', 'AdaGradSolver', 'RMSPropSolver', 'AdaDeltaSolver',
           'AdamSolver', 'get_solver', 'DivergedError', 'TrainingStopped', 'SOLVERS']

log = logging.getLogger(__name__)
install_default_handler()

_HDF5 = caffe_pb2.SolverParameter.HDF5
# On a GPU, losses wait on the device at most this many iterations before being read.
_FLUSH_EVERY = 1000


class DivergedError(CaffeError):
    """The training loss became NaN or infinite; ``iteration`` and ``loss`` say where."""

    def __init__(self, iteration, loss):
        self.iteration = iteration
        self.loss = float(loss)
        super().__init__(
            'Iteration %d: the loss is %g; training diverged (lower base_lr, or clip '
            'gradients with clip_gradients)' % (iteration, self.loss))


class TrainingStopped(KeyboardInterrupt):
    """``step`` stopped on a signal (SIGINT) after snapshotting at ``iteration``."""

    def __init__(self, iteration, snapshot):
        self.iteration = iteration
        self.snapshot = snapshot
        super().__init__('training stopped by a signal at iteration %d; snapshot %s'
                         % (iteration, snapshot))


# ------------------------------------------------------------------ the solver

def _forward_backward(net):
    """Net::ForwardBackward, with the loss left on the device (no host sync); the
    backward frees the graph as it goes (the solver never runs it twice)."""
    net._forward(0, len(net._steps) - 1)
    net._backward(retain_graph=False)
    return _loss_of(net)


def _gpu_mode():
    try:
        return mode.device().type != 'cpu'
    except CaffeError:  # GPU mode without a GPU: the nets will say so when they run
        return True


def _loss_of(net):
    loss = net.loss()
    return loss if loss.dtype == torch.float32 else loss.float()


def _f32(x):
    """A solver field as the float32 value Caffe's Dtype holds, as a Python float."""
    return float(np.float32(x))


class SGDSolver:
    """Caffe's SGD solver, as pycaffe's ``caffe.SGDSolver``.

    Parameters
    ----------
    solver_file : str, path or caffe_pb2.SolverParameter
        A solver prototxt (upgraded as Caffe reads one, which also derives an unset
        ``snapshot_prefix`` from the file name), or a SolverParameter. Net files it
        names are read relative to the current directory, as Caffe reads them.

    Attributes
    ----------
    net : Net
        The train net (TRAIN phase, ``train_state``).
    test_nets : list of Net
        The test nets (TEST phase, ``test_state``); they share the train net's
        weights when tested.
    iter : int
        Iterations done (updates applied).
    current_step : int
        The step of the "step" and "multistep" lr policies.
    param : caffe_pb2.SolverParameter
    sigint_effect, sighup_effect : str
        "stop", "snapshot" or "none": what SIGINT and SIGHUP do during ``step`` and
        ``solve`` (defaults "stop" and "snapshot", as the ``caffe`` tool's).
    requested_early_exit : bool
        Whether the last ``step`` / ``solve`` stopped on a signal.
    """

    #: The solver ``type`` this class runs (SolverParameter.type).
    type = 'SGD'
    #: History blobs per learnable param: Caffe's history_ holds this many sets of N.
    HISTORY_SETS = 1
    #: Whether a param at rate 0 with no history yet may be skipped: true when the
    #: update leaves a zero history at zero (SGD, Nesterov), false when the history
    #: accumulates the (regularized) gradient whatever the rate.
    _IDLE_AT_RATE_ZERO = True

    def __init__(self, solver_file):
        if isinstance(solver_file, caffe_pb2.SolverParameter):
            self._source = '<SolverParameter>'
            param = upgrade_solver_param(solver_file)
        else:
            self._source = os.fspath(solver_file)
            param = io.read_solver_prototxt(self._source)
        self.param = param
        log.info('Initializing solver from parameters: \n%s', io.message_to_text(param))
        self._check_param()
        self._check_snapshot_writable()
        if param.random_seed >= 0:
            # Each data-parallel rank offsets the seed by its rank, as Caffe's workers
            # offset it by their device; rank 0 (and a single process) uses it as is.
            mode.set_random_seed(param.random_seed + distributed.rank())
        if param.HasField('solver_mode') and param.solver_mode == param.GPU \
                and not _gpu_mode():
            log.info('solver_mode: GPU is not applied (as in pycaffe): call '
                     'caffe.set_mode_gpu() to train on the GPU')
        self.net = self._init_train_net()
        self.test_nets = self._init_test_nets()
        log.info('Solver scaffolding done.')
        self.iter = 0
        self.current_step = 0
        self.sigint_effect = STOP
        self.sighup_effect = SNAPSHOT
        self.requested_early_exit = False
        self._history = [None] * (self.HISTORY_SETS * len(self.net.learnable_params))
        self._groups = self._param_groups()
        self._signals = None
        self._last_snapshot_iter = None
        self._iterations_last = 0
        self._timer = time.perf_counter()
        self._start_iter = 0
        self._losses = []                    # Caffe's losses_: the smoothing window
        self._smoothed_loss = np.float32(0)
        self._pending = []                   # (iteration, [loss tensor per pass]) not read yet
        self._callbacks = []                 # (on_start, on_gradients_ready) pairs

    # ---- construction ----------------------------------------------------------------

    def _check_param(self):
        param = self.param
        if param.average_loss < 1:
            raise CaffeError('%s: average_loss must be at least 1, got %d'
                             % (self._source, param.average_loss))
        if param.iter_size < 1:
            raise CaffeError('%s: iter_size must be at least 1, got %d'
                             % (self._source, param.iter_size))
        try:
            learning_rate(param, 0)
        except CaffeError as e:
            raise CaffeError('%s: %s' % (self._source, e)) from None
        if param.regularization_type not in ('L1', 'L2') and param.weight_decay:
            raise CaffeError('%s: Unknown regularization type: "%s" (known: L1, L2)'
                             % (self._source, param.regularization_type))
        if param.type != self.type:
            log.warning('%s: solver type "%s": %s runs %s (as pycaffe\'s caffe.%s does); '
                        'use caffe.get_solver to pick by type', self._source, param.type,
                        type(self).__name__, self.type, type(self).__name__)
        self._check_hyperparameters()
        if param.debug_info:
            log.warning('%s: debug_info is not supported; ignored', self._source)

    def _check_hyperparameters(self):
        """The solver type's own checks on its fields (Caffe's constructor_sanity_check)."""

    def _fail(self, message):
        raise CaffeError('%s: %s' % (self._source, message))

    def _check_snapshot_writable(self):
        """Caffe's CheckSnapshotWritePermissions: probe-write ``<prefix>_iter_0.tempfile``."""
        param = self.param
        if not param.snapshot:
            return
        if not param.HasField('snapshot_prefix'):
            raise CaffeError('%s: In solver params, snapshot is specified but snapshot_prefix '
                             'is not' % self._source)
        probe = distributed.rank_path(self._snapshot_filename('.tempfile', 0))
        try:
            with open(probe, 'w'):
                pass
            os.remove(probe)
        except OSError as e:
            directory = os.path.dirname(os.path.abspath(probe))
            raise SnapshotError("%s: Cannot write to snapshot prefix '%s'. Make sure that the "
                                "directory %s exists and is writeable (%s)"
                                % (self._source, param.snapshot_prefix, directory,
                                   e.strerror)) from None

    def _read_net(self, path, field):
        try:
            return io.read_net_prototxt(path)
        except FileNotFoundError:
            raise CaffeError('%s: %s %r not found (net files are read relative to the '
                             'current directory, %s, as Caffe reads them)'
                             % (self._source, field, path, os.getcwd())) from None

    def _init_train_net(self):
        param = self.param
        fields = [f for f in ('net', 'net_param', 'train_net', 'train_net_param')
                  if param.HasField(f)]
        if len(fields) != 1:
            raise CaffeError('%s: SolverParameter must specify exactly one train net using '
                             'one of these fields: net, net_param, train_net, '
                             'train_net_param (it has %s)'
                             % (self._source, ', '.join(fields) or 'none'))
        field = fields[0]
        if field.endswith('_param'):
            log.info('Creating training net specified in %s.', field)
            net_param = caffe_pb2.NetParameter()
            net_param.CopyFrom(getattr(param, field))
        else:
            path = getattr(param, field)
            log.info('Creating training net from %s file: %s', field, path)
            net_param = self._read_net(path, field)
        # Precedence, lowest first: TRAIN, the net's own state, the solver's train_state.
        state = caffe_pb2.NetState(phase=caffe_pb2.TRAIN)
        state.MergeFrom(net_param.state)
        state.MergeFrom(param.train_state)
        net_param.state.CopyFrom(state)
        with net_folder(self._net_folder(None if field.endswith('_param') else path)):
            net = Net(net_param)
        self._load_weights(net)
        return net

    def _net_folder(self, net_file):
        """Where the net's Python layers may also come from: its file's or the solver's folder."""
        if net_file is None:
            net_file = None if self._source == '<SolverParameter>' else self._source
        return None if net_file is None else os.path.dirname(os.path.abspath(net_file))

    def _init_test_nets(self):
        param = self.param
        generic = [f for f in ('net', 'net_param') if param.HasField(f)]
        sources = [('test_net_param', p) for p in param.test_net_param]
        sources += [('test_net file: %s' % f, f) for f in param.test_net]
        n_specific = len(sources)
        n_iters = len(param.test_iter)
        if (n_iters < n_specific) if generic else (n_iters != n_specific):
            raise CaffeError('%s: test_iter must be specified for each test network (%d '
                             'test_iter for %d test nets)' % (self._source, n_iters, n_specific))
        for _ in range(n_iters - n_specific):
            if generic == ['net_param']:
                sources.append(('net_param', param.net_param))
            else:
                sources.append(('net file: %s' % param.net, param.net))
        if len(param.test_state) and len(param.test_state) != len(sources):
            raise CaffeError('%s: test_state must be unspecified or specified once per test '
                             'net (%d test_state for %d test nets)'
                             % (self._source, len(param.test_state), len(sources)))
        if sources and param.test_interval <= 0:
            raise CaffeError('%s: test nets need test_interval > 0' % self._source)
        nets = []
        for i, (what, source) in enumerate(sources):
            if isinstance(source, str):
                net_param = self._read_net(source, what.split(':')[0])
            else:
                net_param = caffe_pb2.NetParameter()
                net_param.CopyFrom(source)
            state = caffe_pb2.NetState(phase=caffe_pb2.TEST)
            state.MergeFrom(net_param.state)
            if len(param.test_state):
                state.MergeFrom(param.test_state[i])
            net_param.state.CopyFrom(state)
            log.info('Creating test net (#%d) specified by %s', i, what)
            with net_folder(self._net_folder(source if isinstance(source, str) else None)):
                net = Net(net_param)
            net.autograd = False  # test nets only run forward
            self._load_weights(net)
            nets.append(net)
        return nets

    def _load_weights(self, net):
        """The solver's ``weights`` field: comma-separated caffemodels, copied in turn."""
        for models in self.param.weights:
            for path in models.split(','):
                path = path.strip()
                log.info('Finetuning from %s', path)
                net.copy_from(path)

    def _param_groups(self):
        """Learnable param indices grouped by (lr_mult, decay_mult), updated together."""
        groups = {}
        for i, (lr, decay) in enumerate(zip(self.net.params_lr, self.net.params_weight_decay)):
            groups.setdefault((np.float32(lr), np.float32(decay)), []).append(i)
        return groups

    # ---- training --------------------------------------------------------------------

    def step(self, iters):
        """Run ``iters`` iterations (Caffe's Solver::Step).

        Raises
        ------
        TrainingStopped
            A SIGINT (with ``sigint_effect`` "stop") arrived; the state was
            snapshotted at the iteration reached.
        DivergedError
            The loss became NaN or infinite.
        """
        self.requested_early_exit = False
        with self._signal_requests():
            self._step(int(iters))
        if self.requested_early_exit:
            raise TrainingStopped(self.iter, self._snapshot_filename(self._state_suffix()))

    def solve(self, resume_file=None):
        """Train to ``max_iter`` (Caffe's Solver::Solve), optionally resuming first.

        Snapshots at the end unless ``snapshot_after_train`` is false or the last
        iteration was just snapshotted; then, on a display iteration, runs the
        train net forward once more to log the loss, and tests on a test iteration.
        """
        log.info('Solving %s', self.net.name)
        log.info('Learning Rate Policy: %s', self.param.lr_policy)
        self.requested_early_exit = False
        if resume_file is not None:
            log.info('Restoring previous solver status from %s', resume_file)
            self.restore(resume_file)
        param = self.param
        with self._signal_requests():
            self._step(param.max_iter - self.iter)
            if param.snapshot_after_train and self._last_snapshot_iter != self.iter \
                    and (not param.snapshot or self.iter % param.snapshot != 0):
                self.snapshot()
            if self.requested_early_exit:
                log.info('Optimization stopped early.')
                return
            if param.display and self.iter % param.display == 0:
                self._final_loss()
            if param.test_interval and self.iter % param.test_interval == 0 \
                    and distributed.is_main():
                self._test_all()
        log.info('Optimization Done.')

    def add_callback(self, on_start, on_gradients_ready=None):
        """Call ``on_start()`` and ``on_gradients_ready()`` in every iteration (pycaffe's
        ``Solver.add_callback``; Caffe's ``Solver::Callback``).

        As in Caffe's ``Step``, ``on_start`` runs after the solver's own tests and
        before the ``iter_size`` forward/backward passes; ``on_gradients_ready`` runs
        once their diffs are accumulated (summed, not yet divided by ``iter_size``)
        and the iteration is logged, before the update (clipping, normalisation,
        regularisation, momentum). This is where data-parallel training combines the
        ranks' diffs (``torchcaffe.distributed.GradientSync``).

        Parameters
        ----------
        on_start : callable, or an object with ``on_start`` and ``on_gradients_ready``
            methods (as pycaffe accepts a ``caffe.NCCL``); then leave out the second.
        on_gradients_ready : callable
        """
        if on_gradients_ready is None:
            on_start, on_gradients_ready = on_start.on_start, on_start.on_gradients_ready
        self._callbacks.append((on_start, on_gradients_ready))

    @contextlib.contextmanager
    def _signal_requests(self):
        with SignalRequests(self.sigint_effect, self.sighup_effect) as signals:
            self._signals = signals
            try:
                yield
            finally:
                self._signals = None

    def _requested_action(self):
        return NONE if self._signals is None else self._signals.requested_action()

    def _step(self, iters):
        param = self.param
        net = self.net
        stop_iter = self.iter + iters
        self._start_iter = self.iter
        self._losses = []
        self._smoothed_loss = np.float32(0)
        self._pending = []
        self._timer = time.perf_counter()
        net.sync_device()
        on_cpu = net.device.type == 'cpu'
        while self.iter < stop_iter:
            net.clear_param_diffs()
            if param.test_interval and self.iter % param.test_interval == 0 \
                    and (self.iter > 0 or param.test_initialization):
                if distributed.is_main():  # Caffe's root solver alone tests
                    self._test_all()
                if distributed.agree(STOP if self.requested_early_exit else NONE) == STOP:
                    self.requested_early_exit = True
                    break
            for on_start, _ in self._callbacks:
                on_start()
            display = bool(param.display) and self.iter % param.display == 0
            losses = [_forward_backward(net) for _ in range(param.iter_size)]
            self._pending.append((self.iter, losses))
            if display or on_cpu or len(self._pending) >= _FLUSH_EVERY:
                self._flush_losses()
            if display:
                self._log_progress()
            for _, on_gradients_ready in self._callbacks:
                on_gradients_ready()
            self._apply_update(display)
            self.iter += 1
            request = distributed.agree(self._requested_action())
            if (param.snapshot and self.iter % param.snapshot == 0) or request == SNAPSHOT:
                self.snapshot()
            if request == STOP:
                self.requested_early_exit = True
                break
        self._flush_losses()
        if self.requested_early_exit and self._last_snapshot_iter != self.iter:
            self.snapshot()

    # ---- the loss ----------------------------------------------------------------------

    def _flush_losses(self):
        """Read the losses waiting on the device; check them; update the smoothed loss."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        values = torch.stack([l for _, losses in pending for l in losses]).cpu().numpy()
        size = np.float32(self.param.iter_size)
        k = 0
        for iteration, losses in pending:
            loss = np.float32(0)
            for _ in losses:
                loss = np.float32(loss + values[k])
                k += 1
            loss = np.float32(loss / size)
            if not np.isfinite(loss):
                raise DivergedError(iteration, loss)
            self._update_smoothed_loss(loss, iteration)

    def _update_smoothed_loss(self, loss, iteration):
        """Caffe's UpdateSmoothedLoss, in float32: a running mean until the window is
        full, then the oldest loss is swapped for the newest."""
        window = self.param.average_loss
        losses = self._losses
        if len(losses) < window:
            losses.append(loss)
            size = len(losses)
            self._smoothed_loss = np.float32(
                (self._smoothed_loss * np.float32(size - 1) + loss) / np.float32(size))
        else:
            idx = (iteration - self._start_iter) % window
            self._smoothed_loss = np.float32(
                self._smoothed_loss + (loss - losses[idx]) / np.float32(window))
            losses[idx] = loss

    @property
    def smoothed_loss(self):
        """The loss smoothed over the last ``average_loss`` iterations of this step()."""
        self._flush_losses()
        return float(self._smoothed_loss)

    def _log_progress(self):
        param = self.param
        now = time.perf_counter()
        lapse = np.float32(now - self._timer)
        per_s = np.float32(np.float32(self.iter - self._iterations_last)
                           / (lapse if lapse else np.float32(1)))
        log.info('Iteration %d (%g iter/s, %gs/%d iters), loss = %g', self.iter, per_s,
                 lapse, param.display, self._smoothed_loss)
        self._timer = now
        self._iterations_last = self.iter
        self._log_outputs(self.net, 'Train', self._output_values(self.net))

    @staticmethod
    def _output_values(net):
        """(name, loss weight, float32 values) of each output blob."""
        weights = net.blob_loss_weights
        out = []
        for name in net.outputs:
            t = net.blobs[name].data_tensor().detach()
            out.append((name, np.float32(weights[name]),
                        t.reshape(-1).to('cpu', torch.float32).numpy()))
        return out

    @staticmethod
    def _log_outputs(net, kind, outputs):
        index = 0
        for name, weight, values in outputs:
            for v in values:
                extra = ' (* %g = %g loss)' % (weight, weight * v) if weight else ''
                log.info('    %s net output #%d: %s = %g%s', kind, index, name, v, extra)
                index += 1

    def _final_loss(self):
        """Solve's last forward, only to log the loss of the final weights."""
        net = self.net
        autograd, net.autograd = net.autograd, False
        try:
            net._forward(0, len(net._steps) - 1)
        finally:
            net.autograd = autograd
        loss = np.float32(_loss_of(net).item())
        if not np.isfinite(loss):
            raise DivergedError(self.iter, loss)
        self._update_smoothed_loss(loss, self.iter)
        log.info('Iteration %d, loss = %g', self.iter, self._smoothed_loss)

    # ---- the update --------------------------------------------------------------------

    def apply_update(self):
        """One update from the current diffs (Caffe's ApplyUpdate), without counting
        the iteration."""
        display = bool(self.param.display) and self.iter % self.param.display == 0
        self._apply_update(display)

    def _apply_update(self, display):
        param = self.param
        rate, step = learning_rate(param, self.iter, self.current_step)
        if param.lr_policy == 'multistep' and step != self.current_step:
            log.info('MultiStep Status: Iteration %d, step = %d', self.iter, step)
        self.current_step = step
        if display:
            log.info('Iteration %d, lr = %g', self.iter, rate)
        params = self.net.learnable_params
        if not params:
            return
        diffs = [p.mutable_diff_tensor() for p in params]
        datas = [p.mutable_data_tensor() for p in params]
        with torch.no_grad():
            self._clip_gradients(diffs, display)
            if param.iter_size != 1:
                torch._foreach_mul_(diffs, float(np.float32(1) / np.float32(param.iter_size)))
            for (lr_mult, decay_mult), indices in self._groups.items():
                local_rate = np.float32(rate * lr_mult)
                local_decay = np.float32(np.float32(param.weight_decay) * decay_mult)
                self._update_group(indices, diffs, datas, local_rate, local_decay)

    def _clip_gradients(self, diffs, display):
        """Scale every diff down so that their global L2 norm is at most clip_gradients."""
        clip = np.float32(self.param.clip_gradients)
        if clip < 0:
            return
        sumsq = sum(torch.dot(d.reshape(-1), d.reshape(-1)).float() for d in diffs)
        norm = torch.sqrt(sumsq)
        if norm.device.type == 'cpu' or display:
            norm = np.float32(norm.item())
            if norm > clip:
                scale = np.float32(clip / norm)
                log.info('Gradient clipping: scaling down gradients (L2 norm %g > %g) by '
                         'scale factor %g', norm, clip, scale)
                torch._foreach_mul_(diffs, float(scale))
        else:  # decide on the device rather than wait for it
            scale = torch.where(norm > float(clip), float(clip) / norm, torch.ones_like(norm))
            torch._foreach_mul_(diffs, scale)

    def _update_group(self, indices, diffs, datas, local_rate, local_decay):
        """Regularize, ComputeUpdateValue and Update for params of one (lr, decay) pair."""
        if local_rate == 0 and self._IDLE_AT_RATE_ZERO:
            idle = [i for i in indices if self._history[i] is None]
            for i in idle:
                diffs[i].zero_()  # Caffe leaves diff = history = 0 * diff
            indices = [i for i in indices if self._history[i] is not None]
            if not indices:
                return
        D = [diffs[i] for i in indices]
        W = [datas[i] for i in indices]
        if local_decay:
            kind = self.param.regularization_type
            if kind == 'L2':
                torch._foreach_add_(D, W, alpha=float(local_decay))
            elif kind == 'L1':
                torch._foreach_add_(D, torch._foreach_sign(W), alpha=float(local_decay))
            else:
                raise CaffeError('Unknown regularization type: %s' % kind)
        self._compute_update_value(indices, D, W, float(local_rate))
        torch._foreach_sub_(W, D)    # Net::Update: the diff holds the update, as Caffe's does

    def _compute_update_value(self, indices, D, W, rate):
        """ComputeUpdateValue for the params ``indices`` (diffs ``D``, datas ``W``) at the
        local rate ``rate``: SGD's momentum update (sgd_solver.cpp)."""
        updates.sgd(D, self._histories(indices, W), rate, _f32(self.param.momentum))

    def _histories(self, indices, W, which=0):
        """History set ``which`` (0 or 1; Caffe's history_[which * N + i]) of params
        ``indices``, allocated on first use beside the datas ``W``."""
        offset = which * len(self.net.learnable_params)
        return [self._history_of(offset + i, w) for i, w in zip(indices, W)]

    def _history_of(self, i, data):
        h = self._history[i]
        if h is None:
            h = self._history[i] = torch.zeros_like(data)
        elif h.device != data.device or h.dtype != data.dtype:
            h = self._history[i] = h.to(data.device, data.dtype)
        return h

    @property
    def history(self):
        """The history blobs, as float32 arrays (copies), in Caffe's order: one per
        learnable param, then (AdaDelta, Adam) a second one per learnable param."""
        params = self.net.learnable_params
        out = []
        for i, h in enumerate(self._history):
            out.append(np.zeros(params[i % len(params)].shape, np.float32) if h is None
                       else h.detach().to('cpu', torch.float32).numpy().copy())
        return out

    # ---- testing -----------------------------------------------------------------------

    def _test_all(self):
        for i in range(len(self.test_nets)):
            if self.requested_early_exit:
                break
            self._test(i)

    def _test(self, i):
        """Caffe's Solver::Test: mean outputs over test_iter forwards, shared weights."""
        param = self.param
        log.info('Iteration %d, Testing net (#%d)', self.iter, i)
        net = self.test_nets[i]
        net.share_with(self.net)
        iters = param.test_iter[i]
        scores, loss, sizes = None, None, []
        for k in range(iters):
            request = self._requested_action()
            while request != NONE:
                if request == SNAPSHOT:
                    self.snapshot()
                elif request == STOP:
                    self.requested_early_exit = True
                request = self._requested_action()
            if self.requested_early_exit:
                break
            net._forward(0, len(net._steps) - 1)
            outputs = [net.blobs[name].data_tensor().detach().reshape(-1).float()
                       for name in net.outputs]
            values = torch.cat(outputs) if outputs else torch.zeros(0, device=net.device)
            if k == 0:  # float32 sums on the device, as Caffe's float sums
                scores, loss = values, _loss_of(net)
                sizes = [t.numel() for t in outputs]
            else:
                scores, loss = scores + values, loss + _loss_of(net)
        if self.requested_early_exit:
            log.info('Test interrupted.')
            return
        n = np.float32(iters)
        if loss is None:
            return  # test_iter 0
        if param.test_compute_loss:
            log.info('Test loss: %g', np.float32(np.float32(loss.item()) / n))
        scores = scores.cpu().numpy()
        weights = net.blob_loss_weights
        outputs, k = [], 0
        for name, count in zip(net.outputs, sizes):
            outputs.append((name, np.float32(weights[name]), scores[k:k + count] / n))
            k += count
        self._log_outputs(net, 'Test', outputs)

    # ---- snapshots ---------------------------------------------------------------------

    def _snapshot_filename(self, extension, iteration=None):
        iteration = self.iter if iteration is None else iteration
        return '%s_iter_%d%s' % (self.param.snapshot_prefix, iteration, extension)

    def _state_suffix(self):
        return '.solverstate.h5' if self.param.snapshot_format == _HDF5 else '.solverstate'

    def snapshot(self):
        """Write ``<prefix>_iter_<N>.caffemodel``, the ``.resume.json`` sidecar, then
        ``.solverstate`` (``.h5`` forms with ``snapshot_format: HDF5``). Each file is
        written atomically and the state comes last: it is the commit point, so a
        state never names a missing model or lacks its sidecar, even when the
        process is killed mid-snapshot.

        Returns
        -------
        (str, str) : the model and state file names.
        """
        self._flush_losses()
        param = self.param
        hdf5 = param.snapshot_format == _HDF5
        model = self._snapshot_filename('.caffemodel.h5' if hdf5 else '.caffemodel')
        path = self._snapshot_filename(self._state_suffix())
        if not distributed.is_main():
            # A data-parallel rank other than 0 writes no snapshot (Caffe's root solver
            # alone does): only its own random streams (data layers, Dropout), in
            # <state>.rank<R>.resume.json beside rank 0's state, for an exact resume.
            resume_state.write(distributed.rank_path(path), self.iter, self.net)
            distributed.barrier()  # rank 0 commits its solverstate after this
            self._last_snapshot_iter = self.iter
            return model, path
        net_param = self.net.to_proto(write_diff=param.snapshot_diff)
        kind = 'HDF5 file' if hdf5 else 'binary proto file'
        log.info('Snapshotting to %s %s', kind, model)
        if hdf5:
            io.write_caffemodel_h5(net_param, model, write_diff=param.snapshot_diff)
        else:
            io.write_caffemodel(net_param, model)
        state = caffe_pb2.SolverState(iter=self.iter, learned_net=model,
                                      current_step=self.current_step)
        for h in self.history:
            state.history.add().CopyFrom(io.array_to_blobproto(h))
        log.info('Snapshotting solver state to %s %s', kind, path)
        # The sidecar before the state: the state is written last, so a run killed
        # at any point leaves either a complete snapshot or no solverstate at all.
        resume_state.write(path, self.iter, self.net)
        distributed.barrier()  # every rank's own streams are on disk before the commit
        io.write_solverstate(state, path)
        self._last_snapshot_iter = self.iter
        return model, path

    def restore(self, state_file):
        """Resume from a ``.solverstate`` (or ``.solverstate.h5``, by suffix).

        Sets ``iter``, ``current_step`` and the history, and copies the weights of the
        state's ``learned_net`` (a path as stored, resolved from the current
        directory, as Caffe resolves it). Nothing changes if the state does not fit.
        The random streams (Dropout, data layers) come back from the state's
        ``.resume.json`` sidecar when there is one (see ``torchcaffe.resume_state``).

        Raises
        ------
        NetMismatchError
            The history does not match the net's learnable params in count or
            shape (a solverstate from a different net).
        CaffeError
            Its learned_net is missing.
        """
        state_file = os.fspath(state_file)
        state = io.read_solverstate(state_file)
        params = self.net.learnable_params
        n = len(params)
        if len(state.history) != len(self._history):
            if self.HISTORY_SETS == 1:
                raise NetMismatchError('%s: %d history blobs but the net has %d learnable '
                                       'params: a solverstate from a different net?'
                                       % (state_file, len(state.history), n))
            raise NetMismatchError('%s: %d history blobs but %s keeps %d (%d per learnable '
                                   'param; the net has %d): a solverstate from a different '
                                   'net or solver type?'
                                   % (state_file, len(state.history), type(self).__name__,
                                      len(self._history), self.HISTORY_SETS, n))
        names = self._param_names()
        for i, proto in enumerate(state.history):
            p = params[i % n]
            if not io.legacy_shape_equals(proto, p.shape):
                raise NetMismatchError('%s: history blob %d has shape %s but learnable param '
                                       '%d (%s) has shape %s: a solverstate from a different '
                                       'net?' % (state_file, i, io.blob_shape(proto), i % n,
                                                 names[i % n], p.shape))
        if state.HasField('learned_net'):
            model = state.learned_net
            if not os.path.exists(model):
                raise CaffeError('%s: its learned_net %r does not exist (resolved from the '
                                 'current directory, %s, as Caffe resolves it)'
                                 % (state_file, model, os.getcwd()))
            self.net.copy_from(model)
        log.info('SGDSolver: restoring history')
        for i, proto in enumerate(state.history):
            p = params[i % n]
            data = p.data_tensor()
            array = io.blobproto_to_array(proto).reshape(p.shape)
            self._history[i] = torch.from_numpy(np.ascontiguousarray(array)).to(
                data.device, data.dtype)
        self.iter = state.iter
        self.current_step = state.current_step
        self._iterations_last = self.iter
        resume_state.load(distributed.rank_path(state_file), self.iter, self.net)

    def _param_names(self):
        """'layer <name> blob <j>' for each learnable param (its owner's)."""
        names = {}
        for layer, blobs in self.net.params.items():
            for j, b in enumerate(blobs):
                names.setdefault(id(b), 'layer %r blob %d' % (layer, j))
        return [names.get(id(p), '?') for p in self.net.learnable_params]


# ------------------------------------------------------------------ the other solvers

class NesterovSolver(SGDSolver):
    """Caffe's Nesterov solver (nesterov_solver.cpp), as pycaffe's ``caffe.NesterovSolver``.

    ``h = momentum * h + rate * g``; the update is ``(1 + momentum) * h - momentum *
    h_previous``. One history blob per learnable param, as SGD. See ``SGDSolver``.
    """

    type = 'Nesterov'

    def _compute_update_value(self, indices, D, W, rate):
        updates.nesterov(D, self._histories(indices, W), rate, _f32(self.param.momentum))


class AdaGradSolver(SGDSolver):
    """Caffe's AdaGrad solver (adagrad_solver.cpp), as pycaffe's ``caffe.AdaGradSolver``.

    ``h += g * g``; the update is ``rate * g / (sqrt(h) + delta)``. ``momentum`` must be
    0. One history blob (the sum of squared gradients) per learnable param.
    """

    type = 'AdaGrad'
    _IDLE_AT_RATE_ZERO = False

    def _check_hyperparameters(self):
        # sgd_solvers.hpp, AdaGradSolver::constructor_sanity_check
        if self.param.momentum != 0:
            self._fail('Momentum cannot be used with AdaGrad (momentum is %g; leave it out)'
                       % self.param.momentum)

    def _compute_update_value(self, indices, D, W, rate):
        updates.adagrad(D, self._histories(indices, W), rate, _f32(self.param.delta))


class RMSPropSolver(SGDSolver):
    """Caffe's RMSProp solver (rmsprop_solver.cpp), as pycaffe's ``caffe.RMSPropSolver``.

    ``h = rms_decay * h + (1 - rms_decay) * g * g``; the update is
    ``rate * g / (sqrt(h) + delta)``. ``momentum`` must be 0 and 0 <= rms_decay < 1.
    One history blob (the mean squared gradient) per learnable param.
    """

    type = 'RMSProp'
    _IDLE_AT_RATE_ZERO = False

    def _check_hyperparameters(self):
        # sgd_solvers.hpp, RMSPropSolver::constructor_sanity_check
        param = self.param
        if param.momentum != 0:
            self._fail('Momentum cannot be used with RMSProp (momentum is %g; leave it out)'
                       % param.momentum)
        if not 0 <= param.rms_decay < 1:
            self._fail('rms_decay should lie between 0 and 1 (0 <= rms_decay < 1), got %g'
                       % param.rms_decay)

    def _compute_update_value(self, indices, D, W, rate):
        updates.rmsprop(D, self._histories(indices, W), rate, _f32(self.param.rms_decay),
                        _f32(self.param.delta))


class AdaDeltaSolver(SGDSolver):
    """Caffe's AdaDelta solver (adadelta_solver.cpp), as pycaffe's ``caffe.AdaDeltaSolver``.

    ``momentum`` is the decay of both running averages and ``delta`` the smoothing
    term; Caffe multiplies the AdaDelta step by the learning rate (``base_lr: 1``
    gives the paper's method). Two history blobs per learnable param: the N squared
    gradient averages first, then the N squared update averages.
    """

    type = 'AdaDelta'
    HISTORY_SETS = 2
    _IDLE_AT_RATE_ZERO = False

    def _compute_update_value(self, indices, D, W, rate):
        updates.adadelta(D, self._histories(indices, W, 0), self._histories(indices, W, 1),
                         rate, _f32(self.param.momentum), _f32(self.param.delta))


class AdamSolver(SGDSolver):
    """Caffe's Adam solver (adam_solver.cpp), as pycaffe's ``caffe.AdamSolver``.

    beta1 is ``momentum``, beta2 ``momentum2`` and epsilon ``delta``; the bias
    correction ``sqrt(1 - beta2^t) / (1 - beta1^t)`` uses ``t = iter + 1`` and
    multiplies the rate. Two history blobs per learnable param: the N first moments
    first, then the N second moments.
    """

    type = 'Adam'
    HISTORY_SETS = 2
    _IDLE_AT_RATE_ZERO = False

    def _check_hyperparameters(self):
        # Caffe checks nothing; beta1 = 1 would divide by zero, beta2 = 1 zero every step.
        param = self.param
        for field in ('momentum', 'momentum2'):
            value = getattr(param, field)
            if not 0 <= value < 1:
                self._fail('Adam needs 0 <= %s < 1, got %g' % (field, value))

    def _compute_update_value(self, indices, D, W, rate):
        param = self.param
        updates.adam(D, self._histories(indices, W, 0), self._histories(indices, W, 1),
                     rate, _f32(param.momentum), _f32(param.momentum2), _f32(param.delta),
                     self.iter + 1)


# ------------------------------------------------------------------ registry

SOLVERS = {cls.type: cls for cls in (SGDSolver, NesterovSolver, AdaGradSolver, RMSPropSolver,
                                     AdaDeltaSolver, AdamSolver)}


def get_solver(solver_file):
    """The solver that ``solver_file``'s ``type`` names (pycaffe's ``caffe.get_solver``).

    The deprecated ``solver_type`` enum (``solver_type: ADAM``) is upgraded to ``type``
    first, as Caffe's UpgradeSolverType does; an unset type is "SGD".

    Raises
    ------
    CaffeError
        An unknown type, listing the known ones.
    """
    if isinstance(solver_file, caffe_pb2.SolverParameter):
        param, where = upgrade_solver_param(solver_file), '<SolverParameter>'
    else:
        where = os.fspath(solver_file)
        param = io.read_solver_prototxt(where)
    cls = SOLVERS.get(param.type)
    if cls is None:
        raise CaffeError('%s: Unknown solver type: "%s" (known types: %s)'
                         % (where, param.type, ', '.join(SOLVERS)))
    return cls(solver_file)
