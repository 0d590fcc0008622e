"""The ``caffe`` command-line tool: Caffe's tools/caffe.cpp on torchcaffe.

    caffe train --solver=examples/mnist/lenet_solver.prototxt
    caffe train -solver solver.prototxt -weights a.caffemodel,b.caffemodel -gpu 0
    caffe train --solver solver.prototxt --snapshot lenet_iter_500.solverstate
    caffe train --solver solver.prototxt --gpu 0,1     # one process per GPU (torchrun)
    caffe train --solver solver.prototxt --plot        # also <prefix>.log, <prefix>_curve.png
    caffe test --model lenet_train_test.prototxt --weights lenet_iter_1000.caffemodel
    caffe time --model voc-fcn8s/deploy.prototxt --iterations 3
    caffe device_query --gpu 0

Flags are gflags': one dash or two, the value after ``=`` or as the next argument.
Logs are glog lines on stderr (``torchcaffe.glog``), with Caffe's wording, so that
Caffe's log tools (and ``parse_log``) read them. Paths in prototxts are relative to
the current directory, as Caffe reads them.

Training on more than one GPU (``--gpu 0,1`` or ``--gpu all``) starts itself again
under torchrun, one process per GPU (``torchcaffe.distributed``): the effective
batch is the number of GPUs times the net's, as with Caffe's P2PSync.
Bad flags and missing files end with one line ``error: ...`` and exit status 2.
"""
import contextlib
import logging
import os
import platform
import subprocess
import sys

import numpy as np
import torch

from .. import distributed, io, kernels, mode
from ..errors import CaffeError
from ..glog import LOGGER_NAME, install_default_handler
from ..net import Net
from ..proto import caffe_pb2
from ..signal_handler import NONE, SNAPSHOT, STOP
from ..solver import DivergedError, get_solver
from . import flags as gflags
from .net_time import time_net
from .plot_training_log import curve_log

__all__ = ['main', 'FLAGS', 'parse_gpus', 'torchrun_command']

log = logging.getLogger(LOGGER_NAME + '.caffe')

# Caffe's flags (tools/caffe.cpp), with --plot added.
FLAGS = {
    'gpu': (str, ''), 'solver': (str, ''), 'model': (str, ''), 'phase': (str, ''),
    'level': (int, 0), 'stage': (str, ''), 'snapshot': (str, ''), 'weights': (str, ''),
    'iterations': (int, 50), 'sigint_effect': (str, STOP),
    'sighup_effect': (str, SNAPSHOT), 'plot': (bool, False),
}
HELP = {
    'gpu': "Optional; run in GPU mode on given device IDs separated by ','. Use '-gpu all' "
           "to run on all available GPUs. The effective training batch size is "
           "multiplied by the number of devices.",
    'solver': 'The solver definition protocol buffer text file.',
    'model': 'The model definition protocol buffer text file.',
    'phase': "Optional; network phase (TRAIN or TEST). Only used for 'time'.",
    'level': 'Optional; network level.',
    'stage': "Optional; network stages (not to be confused with phase), separated by ','.",
    'snapshot': 'Optional; the snapshot solver state to resume training.',
    'weights': "Optional; the pretrained weights to initialize finetuning, separated by ','. "
               "Cannot be set simultaneously with snapshot.",
    'iterations': 'The number of iterations to run.',
    'sigint_effect': 'Optional; action to take when a SIGINT signal is received: snapshot, '
                     'stop or none.',
    'sighup_effect': 'Optional; action to take when a SIGHUP signal is received: snapshot, '
                     'stop or none.',
    'plot': 'Optional (train); write the log beside the snapshots and plot its learning '
            'curve (<snapshot_prefix>.log, <snapshot_prefix>_curve.png).',
}
USAGE = """command line brew
usage: caffe <command> <args>

commands:
  train           train or finetune a model
  test            score a model
  device_query    show GPU diagnostic information
  time            benchmark model execution time"""


class UsageError(gflags.FlagError):
    """A command line Caffe refuses (its CHECKs on the flags), or a missing file."""


# ------------------------------------------------------------------ devices

def parse_gpus(text, device_count=None):
    """Caffe's get_gpus: the device ids of ``--gpu`` ('' none, 'all', or '0,1').

    >>> parse_gpus(''), parse_gpus('0,2', device_count=3), parse_gpus('all', device_count=3)
    ([], [0, 2], [0, 1, 2])
    """
    if not text:
        return []
    count = torch.cuda.device_count() if device_count is None else device_count
    if text == 'all':
        ids = list(range(count))
        if not ids:
            raise UsageError('--gpu all: no CUDA device is available (torch %s sees none); '
                             'leave out --gpu to run on the CPU' % torch.__version__)
        return ids
    try:
        ids = [int(s) for s in text.split(',')]
    except ValueError:
        raise UsageError("--gpu %s: give device ids separated by ',' or 'all'" % text) from None
    if any(i < 0 for i in ids):
        raise UsageError('--gpu %s: device ids are non-negative' % text)
    if not count:
        raise UsageError('--gpu %s: no CUDA device is available (torch %s sees none); leave '
                         'out --gpu to run on the CPU' % (text, torch.__version__))
    missing = [i for i in ids if i >= count]
    if missing:
        raise UsageError('--gpu %s: there is no GPU %d (%d present)' % (text, missing[0], count))
    return ids


def _use(gpus):
    """Set the mode and device as Caffe does: CPU when no GPU, else the first one."""
    if not gpus:
        log.info('Use CPU.')
        mode.set_mode_cpu()
        return
    log.info('Use GPU with device ID %d', gpus[0])
    log.info('GPU device name: %s', torch.cuda.get_device_name(gpus[0]))
    mode.set_device(gpus[0])
    mode.set_mode_gpu()


def _one_gpu(gpus):
    while len(gpus) > 1:
        log.info('Not using GPU #%d for single-GPU function', gpus.pop())
    return gpus


def torchrun_command(argv, n):
    """The command that reruns ``caffe argv`` under torchrun with ``n`` processes.

    >>> ' '.join(torchrun_command(['train', '--gpu', '0,1'], 2)[1:5])
    '-m torch.distributed.run --standalone --nproc_per_node=2'
    """
    return [sys.executable, '-m', 'torch.distributed.run', '--standalone',
            '--nproc_per_node=%d' % n, '-m', 'torchcaffe.tools.caffe_cli'] + list(argv)


# ------------------------------------------------------------------ helpers

def _need_file(path, what):
    if not os.path.isfile(path):
        raise UsageError('%s %s not found (paths are relative to the current directory, %s)'
                         % (what, path, os.getcwd()))


def _stages(f):
    return [s for s in f['stage'].split(',') if s]


def _effect(name, value):
    if value not in (STOP, SNAPSHOT, NONE):
        raise UsageError('Invalid signal effect "%s" was specified (--%s: snapshot, stop or '
                         'none)' % (value, name))
    return value


def _weights_list(text):
    return [w for w in text.split(',') if w]


def copy_layers(solver, model_list):
    """Caffe's CopyLayers: each caffemodel of the list into the train and test nets."""
    for path in _weights_list(model_list):
        log.info('Finetuning from %s', path)
        solver.net.copy_from(path)
        for net in solver.test_nets:
            net.copy_from(path)


# ------------------------------------------------------------------ train

def _solver_source(f):
    """The solver file, or its SolverParameter when --level / --stage change its train_state."""
    path = f['solver']
    param = io.read_solver_prototxt(path)
    level = param.train_state.level
    # Caffe sets the train state's level to --level (0 by default) and adds the stages.
    param.train_state.level = f['level']
    param.train_state.stage.extend(_stages(f))
    changed = f['level'] != level or bool(_stages(f))
    return param, (param if changed else path)


def _train_gpus(f, param):
    if not f['gpu'] and param.solver_mode == param.GPU:
        # Without --gpu, the solver's solver_mode / device_id choose (Caffe's rule);
        # without CUDA that would fail, so fall back to the CPU, saying so.
        if torch.cuda.is_available():
            return [param.device_id if param.HasField('device_id') else 0]
        log.info('solver_mode is GPU but no CUDA device is available: using the CPU')
        return []
    return parse_gpus(f['gpu'])


def cmd_train(f, argv):
    """``caffe train``: Caffe's train(); returns the exit status."""
    if not f['solver']:
        raise UsageError('Need a solver definition to train (--solver).')
    if f['snapshot'] and f['weights']:
        raise UsageError('Give a snapshot to resume training or weights to finetune but not '
                         'both.')
    _need_file(f['solver'], 'solver')
    if f['snapshot']:
        _need_file(f['snapshot'], 'snapshot')
    for w in _weights_list(f['weights']):
        _need_file(w, 'weights')
    sigint, sighup = (_effect('sigint_effect', f['sigint_effect']),
                      _effect('sighup_effect', f['sighup_effect']))
    param, source = _solver_source(f)
    gpus = _train_gpus(f, param)
    parallel = distributed.from_torchrun()
    if len(gpus) > 1 and not parallel:
        log.info('Using GPUs %s: one process each, under torchrun',
                 ', '.join(str(g) for g in gpus))
        return subprocess.call(torchrun_command(argv, len(gpus)))
    if parallel and gpus:
        gpus = [gpus[distributed.local_rank() % len(gpus)]]
    _use(gpus)
    if parallel:
        distributed.init()
    plotting = (curve_log(param.snapshot_prefix, append=bool(f['snapshot']))
                if f['plot'] and distributed.is_main() else contextlib.nullcontext())
    with plotting:
        _solve(source, f, sigint, sighup)
    return 0


def _solve(source, f, sigint, sighup):
    """Caffe's train() from the solver on: restore or finetune, then Solve()."""
    try:
        solver = get_solver(source)
        solver.sigint_effect, solver.sighup_effect = sigint, sighup
        if f['snapshot']:
            log.info('Resuming from %s', f['snapshot'])
            solver.restore(f['snapshot'])
        elif f['weights']:
            copy_layers(solver, f['weights'])
        distributed.attach(solver)
        log.info('Starting Optimization')
        solver.solve()
        log.info('Optimization Done.')
    finally:
        distributed.shutdown()


# ------------------------------------------------------------------ test

def cmd_test(f):
    """``caffe test``: Caffe's test(), per-batch and mean outputs."""
    if not f['model']:
        raise UsageError('Need a model definition to score (--model).')
    if not f['weights']:
        raise UsageError('Need model weights to score (--weights).')
    _need_file(f['model'], 'model')
    _need_file(f['weights'], 'weights')
    _use(_one_gpu(parse_gpus(f['gpu'])))
    net = Net(f['model'], caffe_pb2.TEST, level=f['level'], stages=_stages(f))
    net.autograd = False
    net.copy_from(f['weights'])
    iterations = f['iterations']
    log.info('Running for %d iterations.', iterations)
    means, loss = score(net, iterations, _log_batch)
    log.info('Loss: %g', loss)
    weights = net.blob_loss_weights
    for name, value in means:
        w = weights[name]
        extra = ' (* %g = %g loss)' % (w, w * value) if w else ''
        log.info('%s = %g%s', name, value, extra)
    return 0


def _log_batch(i, name, value):
    log.info('Batch %d, %s = %g', i, name, value)


def score(net, iterations, on_value=None):
    """Caffe's test(): ``iterations`` forwards; the mean of every output element.

    Sums are float32, as Caffe's ``float`` sums. Returns ([(name, mean)], mean loss),
    one pair per element of each output blob, in Caffe's order; ``on_value(i, name,
    value)`` sees each batch's values.
    """
    sums, loss = None, np.float32(0)
    for i in range(iterations):
        net._forward(0, len(net._steps) - 1)
        loss = np.float32(loss + np.float32(net.loss().item()))
        values = []
        for name in net.outputs:
            for v in net.blobs[name].data.reshape(-1).astype(np.float32):
                values.append((name, v))
                if on_value is not None:
                    on_value(i, name, v)
        if sums is None:
            sums = [v for _, v in values]
        else:
            sums = [np.float32(s + v) for s, (_, v) in zip(sums, values)]
    if sums is None:
        return [], float('nan')
    n = np.float32(iterations)
    means = [(name, float(np.float32(s / n))) for (name, _), s in zip(values, sums)]
    return means, float(np.float32(loss / n))


# ------------------------------------------------------------------ time

def _phase(text):
    if text == '':
        return caffe_pb2.TRAIN
    if text in ('TRAIN', 'TEST'):
        return getattr(caffe_pb2, text)
    raise UsageError('phase must be "TRAIN" or "TEST", got "%s"' % text)


def cmd_time(f):
    """``caffe time``: Caffe's time(), per-layer forward and backward times."""
    if not f['model']:
        raise UsageError('Need a model definition to time (--model).')
    _need_file(f['model'], 'model')
    phase = _phase(f['phase'])
    _use(_one_gpu(parse_gpus(f['gpu'])))
    net = Net(f['model'], phase, level=f['level'], stages=_stages(f))
    log.info('Performing Forward')
    net._forward(0, len(net._steps) - 1)
    log.info('Initial loss: %g', float(net.loss()))
    log.info('Performing Backward')
    if any(t.requires_grad for s in net._steps for t in s.loss_outputs.values()):
        net._backward(retain_graph=False)
    iterations = f['iterations']
    log.info('*** Benchmark begins ***')
    log.info('Testing for %d iterations.', iterations)
    times = time_net(net, iterations, lambda j, s: log.info(
        'Iteration: %d forward-backward time: %g ms.', j, 1000 * s))
    for lines in time_table(times):
        for line in lines:
            log.info(line)
    log.info('*** Benchmark ends ***')
    return 0


def time_table(times):
    """Caffe's time() summary lines, grouped: per-layer lines, then the averages."""
    per_layer = ['Average time per layer: ']
    for name, fwd, bwd in zip(times.names, times.forward, times.backward):
        per_layer.append('%10s\tforward: %g ms.' % (name, times.mean_ms(fwd)))
        per_layer.append('%10s\tbackward: %g ms.' % (name, times.mean_ms(bwd)))
    if times.kernels:  # not Caffe's: the kernel each layer's passes ran (kernels.py)
        per_layer.append('Kernel per layer (torchcaffe.kernels, mode %s):' % kernels.mode())
        for name, chosen in times.kernels.items():
            per_layer.append('%10s\t%s' % (name, ', '.join(
                '%s: %s' % (part, chosen[part]) for part in ('forward', 'input', 'weight')
                if part in chosen)))
    totals = ['Average Forward pass: %g ms.' % times.mean_ms(times.forward_total),
              'Average Backward pass: %g ms.' % times.mean_ms(times.backward_total),
              'Average Forward-Backward: %g ms.' % times.mean_ms(times.total),
              'Total Time: %g ms.' % (1000 * times.total)]
    return per_layer, totals


# ------------------------------------------------------------------ device_query

def _cpu_lines():
    lines = ['CPU: %s' % (platform.processor() or platform.machine()),
             'Logical CPUs: %s' % os.cpu_count(),
             'Torch threads: %d' % torch.get_num_threads()]
    try:
        with open('/proc/meminfo') as f:
            total = next(l for l in f if l.startswith('MemTotal:'))
        lines.append('Total memory: %d MiB' % (int(total.split()[1]) // 1024))
    except (OSError, StopIteration, ValueError, IndexError):
        pass
    return lines


def device_lines(i):
    """Caffe's DeviceQuery lines for CUDA device ``i``, from torch's properties."""
    p = torch.cuda.get_device_properties(i)
    rows = [('Device id', i), ('Major revision number', p.major),
            ('Minor revision number', p.minor), ('Name', p.name),
            ('Total global memory', p.total_memory),
            ('Number of multiprocessors', p.multi_processor_count)]
    for label, attr in (('Warp size', 'warp_size'), ('L2 cache size', 'L2_cache_size'),
                        ('Maximum threads per multiprocessor',
                         'max_threads_per_multi_processor'),
                        ('Total registers per multiprocessor', 'regs_per_multiprocessor'),
                        ('Shared memory per block', 'shared_memory_per_block'),
                        ('Integrated', 'is_integrated')):
        if hasattr(p, attr):
            rows.append((label, getattr(p, attr)))
    return ['%-31s%s' % (label + ':', value) for label, value in rows]


def cmd_device_query(f):
    """``caffe device_query``: the CUDA devices' properties, or the CPU's."""
    log.info('Querying GPUs %s', f['gpu'])
    if not torch.cuda.is_available() and not f['gpu']:
        log.info('No CUDA device is present (torch %s%s); the CPU:', torch.__version__,
                 '' if torch.version.cuda else ', built without CUDA')
        for line in _cpu_lines():
            log.info(line)
        return 0
    gpus = parse_gpus(f['gpu']) if f['gpu'] else list(range(torch.cuda.device_count()))
    for i in gpus:
        for line in device_lines(i):
            log.info(line)
    return 0


# ------------------------------------------------------------------ main

COMMANDS = {'train': None, 'test': cmd_test, 'time': cmd_time,
            'device_query': cmd_device_query}


def main(argv=None):
    """``caffe <command> <args>``; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(a.lstrip('-') in ('help', 'h', 'helpfull') for a in argv) or not argv:
        print(USAGE + '\n\n  Flags from tools/caffe.cpp:\n'
              + '\n'.join(gflags.usage(FLAGS, HELP)), file=sys.stderr)
        return 0 if argv else 1
    install_default_handler()
    try:
        positional, f = gflags.parse(argv, FLAGS)
        if len(positional) != 1 or positional[0] not in COMMANDS:
            raise UsageError('Unknown action: %s (available caffe actions: %s)'
                             % (' '.join(positional) or '(none)', ', '.join(sorted(COMMANDS)))
                             if len(positional) < 2 else 'one command, got %s' % positional)
        command = positional[0]
        if command == 'train':
            return cmd_train(f, argv)
        return COMMANDS[command](f)
    except DivergedError as err:
        print('error: %s' % err, file=sys.stderr)
        return 1
    except (CaffeError, OSError) as err:
        print('error: %s' % str(err).splitlines()[0], file=sys.stderr)
        return 2


if __name__ == '__main__':
    sys.exit(main())
