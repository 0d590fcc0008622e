"""The staged FCN training loop that every model folder's ``solve.py`` runs.

The reference's solve.py, as library code: build the SGD solver from the folder's
``solver.prototxt``, start from the previous stage's weights (``copy_from`` by layer
name), set the upsampling layers to bilinear interpolation, then alternate
``solver.step(test_every)`` with segmentation tests on the validation split::

    python voc-fcn32s/solve.py --gpu 0
    python voc-fcn32s/solve.py --gpu 0 --resume snapshot/train_iter_8000.solverstate
    python voc-fcn32s/solve.py --gpu 0 --resume latest   # the newest complete snapshot
    python voc-fcn32s/solve.py --gpu 0 --precision bf16   # mixed precision, not Caffe's
    python voc-fcn32s/solve.py --gpu 0 --plot   # + snapshot/train.log, snapshot/train_curve.png
    python solve.py voc-fcn32s --gpu 0              # the same, from the repository root
    torchrun --nproc_per_node=4 solve.py voc-fcn32s --gpu 0   # data-parallel on 4 GPUs

Everything runs inside the model folder, as the reference's did, so the prototxts'
relative paths (``../data/...``, ``snapshot/train``) resolve. (This module is not named
``solve``: running ``python voc-fcn8s/solve.py`` puts that folder first on sys.path, where
``solve`` is the script itself.)
"""
import argparse
import contextlib
import glob
import logging
import os
import re
import sys

import torchcaffe as caffe
from torchcaffe import distributed, resume_state
from torchcaffe.tools import plot_training_log

import score
import surgery

log = logging.getLogger('torchcaffe')


@contextlib.contextmanager
def working_dir(path):
    """Run the body with ``path`` as the current directory."""
    previous = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def set_device(gpu):
    """CPU when ``gpu`` is None, else GPU ``gpu`` (as the reference's solve.py did)."""
    if gpu is None:
        caffe.set_mode_cpu()
    else:
        caffe.set_device(gpu)
        caffe.set_mode_gpu()


def snapshot_dir(solver_file='solver.prototxt'):
    """Create the folder of the solver's ``snapshot_prefix`` (Caffe does not)."""
    prefix = caffe.io.read_solver_prototxt(solver_file).snapshot_prefix
    folder = os.path.dirname(prefix)
    if folder:
        os.makedirs(folder, exist_ok=True)
    return folder


def snapshot_problem(state_file, iteration):
    """Why the snapshot of ``state_file`` is incomplete, or None when it is complete.

    Complete means its caffemodel (Caffe's name for it: ``X.solverstate`` ->
    ``X.caffemodel``, ``.h5`` alike) and its up-to-date ``.resume.json`` sidecar
    exist. The solver writes the state last, so a run killed mid-snapshot leaves
    no state; a state without its other files comes from elsewhere (an older
    writer, a copy, Caffe itself, which writes no sidecar).
    """
    model = re.sub(r'\.solverstate(\.h5)?$', r'.caffemodel\1', state_file)
    if not os.path.isfile(model) or not os.path.getsize(model):
        return 'no caffemodel %s' % model
    # Under torchrun each rank needs its own streams too (rank 0's for one process).
    own = distributed.rank_path(state_file)
    if not resume_state.is_current(resume_state.read(own), iteration):
        return 'no up-to-date %s' % resume_state.path_for(own)
    return None


def latest_solverstate(folder):
    """The newest complete snapshot's solverstate in ``folder``, or None.

    Incomplete snapshots (see :func:`snapshot_problem`) are skipped with a
    warning; when none is complete, the newest solverstate is returned anyway
    (a Caffe snapshot has no sidecar: it resumes, only not exactly).

    >>> latest_solverstate('/nonexistent') is None
    True
    """
    found = []
    for path in glob.glob(os.path.join(folder, '*_iter_*.solverstate*')):
        m = re.search(r'_iter_(\d+)\.solverstate(\.h5)?$', path)
        if m:
            found.append((int(m.group(1)), path))
    for iteration, path in sorted(found, reverse=True):
        problem = snapshot_problem(path, iteration)
        if problem is None:
            return path
        log.warning('Not resuming from %s: %s', path, problem)
    return max(found)[1] if found else None


def remove_stale_temp_files(prefix):
    """Delete the temporary files a killed run left beside its snapshots.

    Snapshots are written to a temporary file and renamed (``io.atomic_path``); a
    run killed between the two leaves the temporary file (as big as a snapshot).
    """
    folder, name = os.path.split(prefix)
    for path in caffe.io.leftover_temp_files(folder, glob.escape(name) + '_iter_*'):
        log.info('Removing %s, left by an interrupted snapshot', path)
        with contextlib.suppress(OSError):
            os.remove(path)


def up_layers(net):
    """The layers the reference sets to bilinear: those whose name contains 'up'."""
    return [name for name in net.params if 'up' in name]


def prepare_solver(weights=None, resume=None, solver_file='solver.prototxt', init=None):
    """Build the solver in the current (model) folder and initialise it.

    Parameters
    ----------
    weights : str, optional
        A caffemodel to start from (the previous stage); copied by layer name.
    resume : str, optional
        A solverstate to continue from instead ('latest' picks the newest snapshot).
        Resuming restores weights, momentum history and the iteration exactly.
    init : callable, optional
        ``init(net, weights)`` starts the train net instead of ``copy_from(weights)``
        (net surgery: a transplant with suffixes, a widened first layer); it is
        called even when ``weights`` is None.

    Returns
    -------
    SGDSolver or one of its subclasses
        The solver its ``type`` names (``get_solver``: SGD for the FCN references).
    """
    folder = snapshot_dir(solver_file)
    solver = caffe.get_solver(solver_file)
    if solver.param.snapshot_prefix:
        remove_stale_temp_files(solver.param.snapshot_prefix)
    if resume == 'latest':
        resume = latest_solverstate(folder or '.')
        if resume is None:
            raise FileNotFoundError('--resume latest: no solverstate in %s'
                                    % os.path.abspath(folder or '.'))
    if resume:
        log.info('Resuming from %s', resume)
        solver.restore(resume)
        return solver
    if weights:
        if not os.path.exists(weights):
            raise FileNotFoundError('initial weights %s not found (train the previous stage, '
                                    'or see the README for where to get them)'
                                    % os.path.abspath(weights))
    if init is not None:
        init(solver.net, weights)
    elif weights:
        solver.net.copy_from(weights)
    # The upsampling layers are fixed (lr_mult 0): they must start as bilinear
    # interpolation, whatever the weights file held.
    surgery.interp(solver.net, up_layers(solver.net))
    return solver


def transplant_init(net, weights):
    """An ``init`` for :func:`prepare_solver`: ``surgery.transplant`` from a weights file.

    Unlike ``copy_from`` it leaves alone, instead of failing on, the layers whose
    value counts differ: starting the 40-class NYUDv2 nets from
    ilsvrc-nets/vgg16-fcn.caffemodel (made for 21 classes) keeps their score_fr at
    its zero filler, and upscore is set bilinear anyway.
    """
    surgery.transplant(net, surgery.SavedParams(weights))


def val_ids(solver):
    """Image ids of the first test net's data layer split, in the order it reads them."""
    for layer in solver.test_nets[0].layers:
        indices = getattr(layer, 'indices', None)
        if indices is not None:
            return list(indices)
    raise ValueError('the test net has no Python data layer with a split list')


def train(solver, max_iter, test_every, val, save_format=False, names=None, heads=None,
          resumed=False):
    """Alternate solver steps and segmentation tests up to ``max_iter``, testing at
    every multiple of ``test_every`` (also after a resume from any iteration).

    Parameters
    ----------
    heads : list of score.Head, optional
        The outputs to score, all in one pass over ``val`` (SIFT Flow's semantic and
        geometric heads). By default the one head ``score`` against ``label`` with
        class ``names``.
    resumed : bool
        The solver was restored. A restore at a test iteration tests again first: the
        snapshot of that iteration is written before its test, so a stop during the
        test would otherwise lose it.

    Returns
    -------
    list of (iteration, metrics) : one per test; metrics is ``score.seg_metrics``'s
        dict, or with ``heads`` a dict of them by score blob.
    """
    results = []
    if resumed and solver.iter and not solver.iter % test_every and distributed.is_main():
        log.info('Iteration %d: testing again after the resume (a stop may have come before '
                 'its test finished)', solver.iter)
        results.append(_seg_test(solver, val, save_format, names, heads))
    while solver.iter < max_iter:
        # Up to the next multiple of test_every: a resume from iteration k keeps the
        # schedule (tests at 4000, 8000, ...), not k + 4000.
        solver.step(min(test_every - solver.iter % test_every, max_iter - solver.iter))
        if distributed.is_main():  # rank 0 alone scores; the others wait in the next step
            results.append(_seg_test(solver, val, save_format, names, heads))
    if not solver.param.snapshot or solver.iter % solver.param.snapshot:
        solver.snapshot()
    return results


def _seg_test(solver, val, save_format, names, heads):
    """(iteration, metrics) of the first test net, sharing the train net's weights."""
    solver.test_nets[0].share_with(solver.net)
    if heads is None:
        hist = score.do_seg_tests(solver.test_nets[0], solver.iter, save_format, val,
                                  names=names)
        return solver.iter, score.seg_metrics(hist)
    hists = score.do_head_tests(solver.test_nets[0], solver.iter, save_format, val, heads)
    return solver.iter, {h.layer: score.seg_metrics(hist, h.present_only)
                         for h, hist in zip([score.Head(*h) for h in heads], hists)}


def parse_args(argv, description, test_every=4000):
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument('--gpu', type=int, default=None,
                        help='GPU id (default: CPU); under torchrun, GPU mode with each '
                             'process on GPU LOCAL_RANK')
    parser.add_argument('--weights', default=None,
                        help='initial weights (default: the previous stage, as the reference)')
    parser.add_argument('--resume', default=None,
                        help="a .solverstate to continue from, or 'latest'")
    parser.add_argument('--test-every', type=int, default=test_every,
                        help='iterations between seg tests on the validation split')
    parser.add_argument('--max-iter', type=int, default=None,
                        help="stop here (default: the reference's schedule, else the "
                             "solver's max_iter)")
    parser.add_argument('--precision', choices=list(caffe.PRECISIONS), default='fp32',
                        help="arithmetic: fp32 (Caffe's, default), tf32 (TF32 tensor cores "
                             "on CUDA) or bf16 (bfloat16 autocast, float32 weights and "
                             "updates)")
    parser.add_argument('--plot', action='store_true',
                        help='also write the log to <snapshot_prefix>.log and plot its '
                             'learning curve to <snapshot_prefix>_curve.png')
    return parser.parse_args(argv)


@contextlib.contextmanager
def curve_log(solver, enabled, append=False):
    """With ``--plot``: the run's log (the solver's glog lines and the seg-test lines)
    also goes to ``<snapshot_prefix>.log``, and its learning curve is plotted to
    ``<snapshot_prefix>_curve.png`` at the end, also after a stop (rank 0 only)."""
    if not enabled or not distributed.is_main():
        yield
        return
    with plot_training_log.curve_log(solver.param.snapshot_prefix or 'train', append,
                                     also_stdout=True):
        yield


def main(model_dir, default_weights, argv=None, test_every=4000, max_iter=None, heads=None,
         init=None):
    """Command line of a model folder's solve.py: train that stage.

    Parameters
    ----------
    model_dir : str
        The model folder (holds solver.prototxt).
    default_weights : str or None
        Weights to start from, relative to the model folder.
    test_every : int
        Default of ``--test-every``: the reference's ``solver.step`` between
        seg tests (4000 for VOC, 8000 for PASCAL-Context).
    max_iter : int, optional
        Default of ``--max-iter`` (else the solver's max_iter): where the
        reference's loop stopped (SIFT Flow and NYUDv2: 50 x 2000 iterations,
        though their solvers say 300000).
    heads, init :
        As for :func:`train` and :func:`prepare_solver`.
    """
    args = parse_args(argv, 'Train the FCN model in %s.' % os.path.basename(model_dir),
                      test_every)
    try:
        return _run(model_dir, default_weights, args, max_iter, heads, init)
    except (caffe.CaffeError, OSError) as err:
        # One clear line, not a traceback: these are problems with files and data.
        print('%s: error: %s' % (os.path.basename(model_dir), err), file=sys.stderr)
        return 1
    finally:
        distributed.shutdown()  # leave torchrun's process group, if one was joined


def _run(model_dir, default_weights, args, max_iter=None, heads=None, init=None):
    parallel = distributed.from_torchrun()  # torchrun --nproc_per_node=N: data-parallel
    set_device(distributed.local_rank() if parallel and args.gpu is not None else args.gpu)
    caffe.set_precision(args.precision)
    if parallel:
        distributed.init()
    with working_dir(model_dir):
        weights = args.weights if args.weights is not None else default_weights
        solver = prepare_solver(weights=None if args.resume else weights, resume=args.resume,
                                init=init)
        distributed.attach(solver)  # rank 0's weights everywhere; diffs averaged
        max_iter = args.max_iter or max_iter or solver.param.max_iter
        try:
            with curve_log(solver, args.plot, append=bool(args.resume)):
                train(solver, max_iter, args.test_every, val_ids(solver), heads=heads,
                      resumed=bool(args.resume))
        except caffe.TrainingStopped as stop:
            log.info('Stopped at iteration %d; resume with --resume %s',
                     stop.iteration, stop.snapshot)
            return 130
    return 0
