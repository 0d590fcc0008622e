"""Segmentation scoring, as the FCN reference's score.py.

    # a snapshot on its val net's split (the data layer's list, in order)
    python score.py voc-fcn32s/val.prototxt snapshot/train_iter_100000.caffemodel \\
        --classes data/pascal/classes.txt --json fcn32s.json [--save-dir preds] [--gpu 0]
    # first N images only, or a split list for nets whose data layer has none
    python score.py NET.prototxt WEIGHTS --count 50 [--precision bf16]
    # one head of a two-headed net; means over the classes present in the ground truth
    python score.py siftflow-fcn16s/test.prototxt W --layer score_sem --gt sem --present-only
    # a folder of predicted label PNGs against a folder of ground truth PNGs
    python score.py --pred-dir preds --gt-dir data/pascal/VOC2011/SegmentationClass \\
        --split-file data/pascal/seg11valid.txt --classes 21

With ``--json OUT`` (or ``--progress FILE``) the partial results are saved as
scoring goes (``OUT.progress``, written atomically); if the run is interrupted,
the same command again skips the images already scored and ends with the same
numbers as an uninterrupted run (see :class:`ScoreProgress`).

The net runs from its prototxt's folder, since the FCN val prototxts name their
data as ``../data/...``; other paths are taken relative to where the command runs.

In training scripts, as the reference's solve.py::

    score.seg_tests(solver, False, val, layer='score')

scores ``len(val)`` images with the solver's test net (sharing the train net's
weights) and prints the reference's lines: loss, overall accuracy, mean accuracy,
mean IU, fwavacc, then the IU of each class.

Metrics (the FCN paper's) come from a confusion matrix ``hist`` whose row ``i``,
column ``j`` counts pixels of ground-truth class ``i`` predicted as ``j``; pixels
labelled outside ``[0, n)`` (the 255 void label) are not counted.

Nets with several outputs (SIFT Flow's semantic and geometric heads) are scored
in one pass over the images, one :class:`Head` each::

    score.do_head_tests(net, it, False, ids, [score.Head('score_sem', 'sem', 'loss'),
                                              score.Head('score_geo', 'geo', 'loss_geo')])
"""
import argparse
import collections
import contextlib
import hashlib
import json
import math
import os
import sys
import time
import warnings
from datetime import datetime

import numpy as np
from PIL import Image

import torchcaffe as caffe
from torchcaffe.errors import CaffeError
from torchcaffe.ort_backend import BACKENDS, PartlyOnnxNet
from torchcaffe.progress import progress

import vis

__all__ = ['fast_hist', 'seg_metrics', 'ConfusionMatrix', 'Head', 'ScoreProgress', 'run_key',
           'compute_hist', 'compute_hists', 'seg_tests', 'do_seg_tests', 'do_head_tests',
           'read_class_names', 'read_label_png', 'score_net', 'score_folders', 'main']


# ------------------------------------------------------------------------ metrics

def fast_hist(a, b, n):
    """Confusion matrix of labels ``a`` (ground truth) against predictions ``b``.

    Pixels whose label is outside ``[0, n)`` (e.g. the 255 void label) are not counted.
    Row ``i``, column ``j`` counts pixels of class ``i`` predicted as ``j``.

    >>> fast_hist(np.array([0, 1, 1, 255]), np.array([0, 1, 0, 1]), 2)
    array([[1, 0],
           [1, 1]])
    """
    a = np.asarray(a).ravel()
    b = np.asarray(b).ravel()
    k = (a >= 0) & (a < n)
    return np.bincount(n * a[k].astype(np.int64) + b[k].astype(np.int64),
                       minlength=n * n).reshape(n, n)


def seg_metrics(hist, present_only=False):
    """The FCN paper's metrics from a confusion matrix.

    Returns a dict with ``overall_acc`` (pixel accuracy), ``mean_acc``, ``mean_iu``,
    ``fwavacc`` (frequency-weighted IU), ``iu`` and ``acc`` (per class). Classes that
    never occur in the ground truth and are never predicted have an undefined IU (NaN)
    and are left out of the means, as numpy's nanmean in the reference does.

    A class absent from the ground truth but predicted somewhere gets IU 0 there,
    which pulls the mean IU down (its accuracy, 0 / 0, is NaN and left out).
    ``present_only=True`` gives such classes an undefined IU as well, so both means
    run over the classes with ground-truth pixels only: the FCN paper's SIFT Flow
    evaluation (three of its classes never occur in the test split), where the
    reference's score.py counted them at 0. The wrong predictions still count
    against the true class's IU and in the pixel accuracy.

    Examples
    --------
    >>> hist = [[3, 1], [0, 0]]      # class 1: never in the ground truth, predicted once
    >>> float(seg_metrics(hist)['mean_iu']), float(seg_metrics(hist, True)['mean_iu'])
    (0.375, 0.75)
    """
    hist = np.asarray(hist, dtype=np.float64)
    gt = hist.sum(1)
    pred = hist.sum(0)
    tp = np.diag(hist)
    with np.errstate(divide='ignore', invalid='ignore'):
        acc = tp / gt
        iu = tp / (gt + pred - tp)
        if present_only:
            iu = np.where(gt > 0, iu, np.nan)
        overall = tp.sum() / hist.sum()
        freq = gt / hist.sum()
    with warnings.catch_warnings():
        # nanmean of nothing but NaN (an empty matrix) warns; NaN is the answer.
        warnings.simplefilter('ignore', RuntimeWarning)
        mean_acc, mean_iu = np.nanmean(acc), np.nanmean(iu)
    return {
        'overall_acc': overall,
        'mean_acc': mean_acc,
        'mean_iu': mean_iu,
        'fwavacc': (freq[freq > 0] * iu[freq > 0]).sum(),
        'iu': iu,
        'acc': acc,
    }


class ConfusionMatrix:
    """A confusion matrix that accumulates images: ``update``, ``compute``, ``str()``.

    Parameters
    ----------
    num_classes : int
    names : list of str, optional
        Class names for the table; ``class 0``, ``class 1``, ... by default.
    present_only : bool
        Average over the classes present in the ground truth (see :func:`seg_metrics`).

    Examples
    --------
    >>> cm = ConfusionMatrix(2, ['bg', 'fg'])
    >>> cm.update(np.array([[0, 1], [1, 255]]), np.array([[0, 1], [0, 1]])).hist
    array([[1, 0],
           [1, 1]])
    >>> float(cm.compute()['mean_iu'])
    0.5
    """

    def __init__(self, num_classes, names=None, present_only=False):
        self.num_classes = int(num_classes)
        self.names = class_names(names, self.num_classes)
        self.present_only = bool(present_only)
        self.hist = np.zeros((self.num_classes, self.num_classes), np.int64)

    def update(self, gt, pred):
        """Add one image (or any arrays of equal size) of labels and predictions."""
        self.hist += fast_hist(gt, pred, self.num_classes)
        return self

    def compute(self):
        """The metrics of :func:`seg_metrics`."""
        return seg_metrics(self.hist, self.present_only)

    def report(self, loss=None):
        """The metrics (with ``loss`` first, when given), then a per-class table."""
        m = self.compute()
        return '\n'.join(metric_lines(m, loss) + ['per-class IU:']
                         + iu_table(m, self.names, self.hist))

    def __str__(self):
        return self.report()


def class_names(names, n):
    """``names`` checked against ``n`` classes, or ``class 0`` ... when None."""
    if names is None:
        return ['class %d' % i for i in range(n)]
    names = list(names)
    if len(names) != n:
        raise ValueError('%d class names for %d classes' % (len(names), n))
    return names


def metric_lines(m, loss=None):
    """The four metrics (and the loss, when given) as ``name value`` lines."""
    lines = [] if loss is None else ['loss %s' % _num(loss)]
    return lines + ['overall accuracy %s' % _num(m['overall_acc']),
                    'mean accuracy %s' % _num(m['mean_acc']),
                    'mean IU %s' % _num(m['mean_iu']),
                    'fwavacc %s' % _num(m['fwavacc'])]


def iu_table(m, names, hist=None):
    """One line per class: name, IU, accuracy and (with ``hist``) labelled pixels."""
    width = max(len(name) for name in names)
    lines = []
    for i, name in enumerate(names):
        line = '  %-*s  IU %s  acc %s' % (width, name, _fixed(m['iu'][i]), _fixed(m['acc'][i]))
        if hist is not None:
            line += '  pixels %d' % int(hist[i].sum())
        lines.append(line)
    return lines


def _num(x):
    return '%.6g' % x if x is not None and np.isfinite(x) else 'nan'


def _fixed(x):
    return '%.4f' % x if np.isfinite(x) else '   nan'


# ------------------------------------------------------------------------ scoring a net

def save_label_png(labels, path):
    """Write H x W class indices (< 256) as a palette PNG whose pixel values are them."""
    if labels.size and labels.max() > 255:
        raise ValueError('%s: class %d does not fit a PNG of 8-bit indices'
                         % (path, labels.max()))
    vis.label_image(labels).save(path)


class Head(collections.namedtuple('Head', 'layer gt loss names present_only')):
    """One output of a net to score: blob names and how to report it.

    ``layer`` (scores), ``gt`` (labels) and ``loss`` (None: no loss) are blob names;
    ``names`` the class names (None: ``class 0`` ...); ``present_only`` averages over
    the classes in the ground truth only (:func:`seg_metrics`).

    >>> Head('score_geo', 'geo', 'loss_geo')
    Head(layer='score_geo', gt='geo', loss='loss_geo', names=None, present_only=False)
    """
    __slots__ = ()


Head.__new__.__defaults__ = ('score', 'label', 'loss', None, False)


def compute_hist(net, save_dir, dataset, layer='score', gt='label', loss='loss',
                 checkpoint=None):
    """Forward the net once per item of ``dataset``; accumulate the confusion matrix.

    Each forward's data layer gives the next image: the prediction is the argmax
    over channels of blob ``layer`` of the first item, the truth blob ``gt``.
    Gradients are not recorded (``net.autograd`` is False while scoring).

    Parameters
    ----------
    net : torchcaffe.Net
    save_dir : str or None
        When given, each prediction is written there as ``<id>.png`` (a palette PNG
        of class indices); the folder is created if needed.
    dataset : sequence of str
        Image ids, in the order the data layer reads them.
    layer, gt, loss : str
        Blob names of the scores, the labels and the loss. Without a ``loss`` blob
        (None, or not in the net) the loss is NaN.
    checkpoint : ScoreProgress, optional
        Saves the partial results as it goes, and resumes from them.

    Returns
    -------
    hist : (n, n) int64 array
    loss : float
        The mean over images of the loss blob.
    """
    return compute_hists(net, save_dir, dataset, [Head(layer, gt, loss)], checkpoint)[0]


def compute_hists(net, save_dir, dataset, heads, checkpoint=None):
    """:func:`compute_hist` for several heads at once: one forward per image.

    With more than one head, predictions are saved in ``<save_dir>/<layer>/``.
    With a ``checkpoint`` whose file holds the first k images' results, scoring
    starts at image k (the data layer is moved there).

    Returns
    -------
    list of (hist, loss) : one per head, in order.
    """
    heads = [Head(*h) for h in heads]
    sizes = [net.blobs[h.layer].channels for h in heads]
    hists = [np.zeros((n, n), np.int64) for n in sizes]
    totals = [0.0 if h.loss and h.loss in net.blobs else math.nan for h in heads]
    dirs = [None] * len(heads)
    if save_dir:
        dirs = [save_dir if len(heads) == 1 else os.path.join(save_dir, h.layer)
                for h in heads]
        for folder in dirs:
            os.makedirs(folder, exist_ok=True)
    start = 0
    saved = checkpoint.load(dataset, sizes) if checkpoint is not None else None
    if saved is not None and _seek_data_layer(net, saved[0]):
        start, hists, totals = saved
    recording = net.autograd
    net.autograd = False
    try:
        for done, idx in enumerate(progress(dataset[start:], total=len(dataset) - start,
                                            desc='scoring'), start + 1):
            net.forward()
            for k, head in enumerate(heads):
                pred = net.blobs[head.layer].data[0].argmax(0)
                hists[k] += fast_hist(net.blobs[head.gt].data[0, 0], pred, sizes[k])
                if dirs[k]:
                    save_label_png(pred, os.path.join(dirs[k], str(idx) + '.png'))
                if not math.isnan(totals[k]):
                    totals[k] += float(net.blobs[head.loss].data.flat[0])
            if checkpoint is not None:
                checkpoint.save(done, hists, totals, final=done == len(dataset))
    finally:
        net.autograd = recording
    count = max(len(dataset), 1)
    return [(hist, total / count) for hist, total in zip(hists, totals)]


def _seek_data_layer(net, position):
    """Make the net's in-order Python data layer read image ``position`` next.

    Returns False (nothing moved) when the net has no such layer: a random one,
    or none, cannot be resumed in the middle.
    """
    if position == 0:
        return True
    for layer in net.layers:
        indices = getattr(layer, 'indices', None)
        if indices is not None and callable(getattr(layer, 'load_state_dict', None)):
            if getattr(layer, 'random', False):
                break
            layer.load_state_dict({'idx': position % len(indices)})
            return True
    print('score.py: the data layer cannot start in the middle of its split; scoring '
          'from the first image again', file=sys.stderr)
    return False


class ScoreProgress:
    """Partial scoring results in a JSON file, so that an interrupted run resumes.

    Scoring a split on the CPU takes hours. The file holds the number of images
    done, the confusion matrices and loss sums so far; it is written atomically
    (at most every ``every`` seconds, and after the last image). A run with the
    same ``key`` and image list continues from it, adding the remaining images in
    the same order, so its results equal an uninterrupted run's exactly. A file
    saved for another key or list (other arguments, other weights) is ignored.

    Parameters
    ----------
    path : str
    key : dict
        JSON-able description of what the results depend on (see :func:`run_key`).
    every : float
        Seconds between saves; 0 saves after every image.
    """

    def __init__(self, path, key, every=10.0):
        self.path = path
        self.key = json.loads(json.dumps(key))
        self.every = every
        self._saved_at = time.monotonic()

    @staticmethod
    def _digest(ids):
        return hashlib.sha256('\n'.join(map(str, ids)).encode('utf-8')).hexdigest()

    def load(self, ids, sizes):
        """(done, hists, totals) saved for this key, these ``ids`` and class counts, or None.

        Call it before :meth:`save`: it also says which image list is scored.
        """
        self._ids_digest = self._digest(ids)
        try:
            with open(self.path, encoding='utf-8') as f:
                saved = json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as err:
            print('score.py: ignoring unreadable %s (%s)' % (self.path, err), file=sys.stderr)
            return None
        try:
            done, totals = int(saved['done']), [float(t) for t in saved['totals']]
            hists = [np.array(h, np.int64) for h in saved['hists']]
            fits = saved['key'] == self.key and saved['ids'] == self._ids_digest \
                and [h.shape for h in hists] == [(n, n) for n in sizes] and 0 < done <= len(ids)
        except (KeyError, TypeError, ValueError):
            fits = False
        if not fits:
            print('score.py: %s was saved for other arguments or weights; starting over'
                  % self.path, file=sys.stderr)
            return None
        print('score.py: resuming after %d of %d images (%s)' % (done, len(ids), self.path),
              file=sys.stderr)
        return done, hists, totals

    def save(self, done, hists, totals, final=False):
        """Save the results of the first ``done`` images (throttled unless ``final``)."""
        if not final and time.monotonic() - self._saved_at < self.every:
            return
        content = dict(key=self.key, ids=self._ids_digest, done=done,
                       hists=[np.asarray(h).tolist() for h in hists],
                       totals=[float(t) for t in totals])
        with caffe.io.atomic_path(self.path) as tmp, open(tmp, 'w', encoding='utf-8') as f:
            json.dump(content, f)
        self._saved_at = time.monotonic()

    def finish(self):
        """Remove the file: the run's results are written elsewhere."""
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.path)


def run_key(args, *paths):
    """What a command's results depend on: its options and the files' sizes and times."""
    key = {k: v for k, v in sorted(vars(args).items()) if k not in ('gpu', 'json', 'progress')}
    files = {}
    for path in paths:
        st = os.stat(path)
        files[os.path.abspath(path)] = [st.st_size, st.st_mtime_ns]
    key['files'] = files
    return key


def seg_tests(solver, save_format, dataset, layer='score', gt='label'):
    """Score the solver's first test net, with the train net's weights, on ``dataset``.

    Returns the confusion matrix, as :func:`do_seg_tests`.
    """
    print('>>>', datetime.now(), 'Begin seg tests')
    solver.test_nets[0].share_with(solver.net)
    return do_seg_tests(solver.test_nets[0], solver.iter, save_format, dataset, layer, gt)


def do_seg_tests(net, iter, save_format, dataset, layer='score', gt='label', loss='loss',
                 names=None, present_only=False):
    """Score ``net`` on ``dataset`` and print the reference's lines for iteration ``iter``.

    Parameters
    ----------
    save_format : str or falsy
        A folder name with ``{}`` for the iteration (``'preds-{}'``); predictions are
        saved there. False saves nothing.
    names : list of str, optional
        Class names for the per-class IU lines.
    present_only : bool
        Means over the classes in the ground truth only (:func:`seg_metrics`).

    Returns
    -------
    hist : (n, n) int64 array
        Its metrics: ``seg_metrics(hist, present_only)``.
    """
    head = Head(layer, gt, loss, names, present_only)
    return do_head_tests(net, iter, save_format, dataset, [head])[0]


def do_head_tests(net, iter, save_format, dataset, heads):
    """Score every :class:`Head` of ``net`` in one pass and print each one's lines.

    With several heads, each block of the reference's lines is preceded by one
    naming the head's blobs.

    Returns
    -------
    list of (n, n) int64 arrays : one confusion matrix per head.
    """
    heads = [Head(*h) for h in heads]
    save_dir = save_format.format(iter) if save_format else None
    scored = compute_hists(net, save_dir, dataset, heads)
    for head, (hist, mean_loss) in zip(heads, scored):
        m = seg_metrics(hist, head.present_only)
        if len(heads) > 1:
            print('>>>', datetime.now(), 'Iteration', iter, 'head %s (labels %s%s)'
                  % (head.layer, head.gt, ', means over classes present in the ground truth'
                     if head.present_only else ''))
        for line in metric_lines(m, mean_loss):
            print('>>>', datetime.now(), 'Iteration', iter, line)
        print('>>>', datetime.now(), 'Iteration', iter, 'per-class IU')
        for line in iu_table(m, class_names(head.names, len(hist))):
            print(line)
    return [hist for hist, _ in scored]


# ------------------------------------------------------------------------ files

def read_class_names(path):
    """Class names, one a line, up to the first blank line (notes may follow it)."""
    names = []
    with open(path, encoding='utf-8') as f:
        for line in f:
            if not line.strip():
                break
            names.append(line.strip())
    if not names:
        raise ValueError('%s: no class names (one a line, before any blank line)' % path)
    return names


def read_split_list(path):
    """Image ids, one a line (blank lines skipped)."""
    with open(path, encoding='utf-8') as f:
        ids = [line.strip() for line in f if line.strip()]
    if not ids:
        raise ValueError('%s: the split list is empty' % path)
    return ids


def read_label_png(path):
    """An H x W uint8 array of a palette (P) or 8-bit grayscale (L) label PNG."""
    if not os.path.isfile(path):
        raise FileNotFoundError('label PNG not found: %s' % path)
    with Image.open(path, formats=['PNG']) as im:  # never another decoder
        if im.mode not in ('P', 'L'):
            raise ValueError('%s: labels must be a palette (P) or 8-bit grayscale (L) PNG of '
                             'class indices, got mode %r' % (path, im.mode))
        return np.array(im, dtype=np.uint8)


# ------------------------------------------------------------------------ commands

def _data_layer_ids(net):
    """The ids of the net's Python data layer split, in its order, or None."""
    for layer in net.layers:
        indices = getattr(layer, 'indices', None)
        if indices is not None:
            if getattr(layer, 'random', False):
                print('score.py: warning: the data layer picks images at random (its split '
                      'name contains "train"); ids are positions, not image names',
                      file=sys.stderr)
                return ['%06d' % i for i in range(len(indices))]
            return list(indices)
    return None


def _choose_ids(layer_ids, split_ids, count, split_file):
    if split_ids is not None and layer_ids is not None \
            and split_ids != layer_ids[:len(split_ids)]:
        raise ValueError('%s does not list the images of the net\'s data layer in its order '
                         '(it reads %d images starting %s)'
                         % (split_file, len(layer_ids), ', '.join(layer_ids[:3])))
    ids = split_ids if split_ids is not None else layer_ids
    if ids is None:
        if count is None:
            raise ValueError('the net has no Python data layer with a split list: give '
                             '--split-file LIST or --count N')
        return ['%06d' % i for i in range(count)]
    if count is not None:
        if count > len(ids):
            raise ValueError('--count %d, but the split has only %d images'
                             % (count, len(ids)))
        ids = ids[:count]
    return ids


def score_net(prototxt, weights, split_ids=None, count=None, save_dir=None, layer='score',
              gt='label', loss='loss', split_file=None, checkpoint=None, backend='torch',
              gpu=None):
    """Score a snapshot on its TEST net's data; the net runs from the prototxt's folder.

    ``checkpoint`` (a :class:`ScoreProgress`) saves partial results and resumes.
    ``backend='onnxruntime'`` runs the layers from the data to ``layer`` in onnxruntime
    (:class:`torchcaffe.ort_backend.PartlyOnnxNet`); the data layers and the loss stay
    in the engine, so the images, their order and the loss are the same.

    Returns
    -------
    hist, loss, ids
    """
    prototxt, weights = os.path.abspath(prototxt), os.path.abspath(weights)
    save_dir = os.path.abspath(save_dir) if save_dir else None
    for path, what in ((prototxt, 'net prototxt'), (weights, 'weights')):
        if not os.path.isfile(path):
            raise FileNotFoundError('%s not found: %s' % (what, path))
    with contextlib.chdir(os.path.dirname(prototxt)):
        net = caffe.Net(prototxt, weights, caffe.TEST)
        if layer not in net.blobs or gt not in net.blobs:
            raise ValueError('%s has no blob %r' % (prototxt, layer if layer not in net.blobs
                                                    else gt))
        ids = _choose_ids(_data_layer_ids(net), split_ids, count, split_file)
        if backend == 'onnxruntime':
            net = PartlyOnnxNet(net, prototxt, weights, [layer], gpu=gpu)
        hist, mean_loss = compute_hist(net, save_dir, ids, layer, gt, loss, checkpoint)
    return hist, mean_loss, ids


def check_gt_labels(truth, num_classes, ignore_label, path):
    """Refuse ground-truth labels that are neither a class nor the ignore label.

    The data layers and SoftmaxWithLoss refuse such labels; a folder of label PNGs
    gets the same rule rather than having those pixels silently left out.

    >>> check_gt_labels(np.array([[0, 1], [255, 2]]), 3, 255, 'a.png')
    >>> check_gt_labels(np.array([[0, 100], [100, 7]]), 3, 255, 'a.png')
    Traceback (most recent call last):
    ...
    ValueError: a.png: 3 pixels labelled outside the 3 classes [0, 3) and not the ignore label 255: label 7 (1 pixels), label 100 (2 pixels)
    """
    bad = (truth >= num_classes) & (truth != ignore_label)
    if not bad.any():
        return
    values, counts = np.unique(truth[bad], return_counts=True)
    detail = ', '.join('label %d (%d pixels)' % (v, c) for v, c in zip(values, counts))
    raise ValueError('%s: %d pixels labelled outside the %d classes [0, %d) and not the '
                     'ignore label %d: %s' % (path, bad.sum(), num_classes, num_classes,
                                              ignore_label, detail))


def score_folders(pred_dir, gt_dir, ids, num_classes, checkpoint=None, ignore_label=255):
    """Confusion matrix of ``<pred_dir>/<id>.png`` against ``<gt_dir>/<id>.png``.

    ``checkpoint`` (a :class:`ScoreProgress`) saves partial results and resumes.
    Ground-truth pixels labelled ``ignore_label`` (VOC's 255 void) are not counted.

    Raises
    ------
    FileNotFoundError, ValueError
        A missing or unreadable PNG, sizes that differ, a predicted class outside
        ``[0, num_classes)``, or a ground-truth label that is neither a class nor
        ``ignore_label`` (:func:`check_gt_labels`), naming the file.
    """
    hist = np.zeros((num_classes, num_classes), np.int64)
    start = 0
    saved = checkpoint.load(ids, [num_classes]) if checkpoint is not None else None
    if saved is not None:
        start, (hist,), _ = saved
    for done, idx in enumerate(progress(ids[start:], total=len(ids) - start,
                                        desc='scoring'), start + 1):
        pred_path = os.path.join(pred_dir, idx + '.png')
        gt_path = os.path.join(gt_dir, idx + '.png')
        pred, truth = read_label_png(pred_path), read_label_png(gt_path)
        if pred.shape != truth.shape:
            raise ValueError('%s is %d x %d but its ground truth %s is %d x %d (H x W)'
                             % (pred_path, *pred.shape, gt_path, *truth.shape))
        if pred.size and pred.max() >= num_classes:
            raise ValueError('%s predicts class %d, but there are %d classes'
                             % (pred_path, pred.max(), num_classes))
        check_gt_labels(truth, num_classes, ignore_label, gt_path)
        hist += fast_hist(truth, pred, num_classes)
        if checkpoint is not None:
            checkpoint.save(done, [hist], [], final=done == len(ids))
    return hist


def results(hist, loss=None, names=None, present_only=False, **info):
    """Everything about a scoring run as a JSON-ready dict (NaN becomes null).

    ``info`` (paths, image count) comes first, then the loss, the four metrics (and
    ``present_only``, how the means were taken), the class names with their IU and
    accuracy, and the confusion matrix.
    """
    m = seg_metrics(hist, present_only)

    def num(x):
        return float(x) if x is not None and np.isfinite(x) else None
    out = dict(info)
    out.update(loss=num(loss), overall_acc=num(m['overall_acc']), mean_acc=num(m['mean_acc']),
               mean_iu=num(m['mean_iu']), fwavacc=num(m['fwavacc']),
               present_only=bool(present_only),
               classes=class_names(names, len(hist)),
               iu=[num(x) for x in m['iu']], acc=[num(x) for x in m['acc']],
               hist=np.asarray(hist).tolist())
    return out


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split('\n\n')[1])
    parser.add_argument('prototxt', nargs='?', help='the TEST net (e.g. val.prototxt)')
    parser.add_argument('weights', nargs='?', help='.caffemodel or .caffemodel.h5')
    parser.add_argument('--pred-dir', help='folder of predicted label PNGs (<id>.png)')
    parser.add_argument('--gt-dir', help='folder of ground truth label PNGs (<id>.png)')
    parser.add_argument('--split-file', help='image ids, one a line')
    parser.add_argument('--count', type=int, help='score the first N images')
    parser.add_argument('--classes', help='a class-name file (one a line), or a count')
    parser.add_argument('--gpu', type=int, help='GPU id (CPU by default)')
    parser.add_argument('--precision', choices=list(caffe.PRECISIONS), default='fp32',
                        help="the net's arithmetic: fp32 (Caffe's, default), tf32 (TF32 "
                             "tensor cores on CUDA) or bf16 (bfloat16 autocast)")
    parser.add_argument('--save-dir', help='write predictions as <id>.png here')
    parser.add_argument('--json', help='write every number to this JSON file')
    parser.add_argument('--progress', metavar='FILE',
                        help='save partial results here as scoring goes, and resume from '
                             'them when the same command runs again (default with --json: '
                             '<json>.progress)')
    parser.add_argument('--layer', default='score', help='score blob (default %(default)s)')
    parser.add_argument('--gt', default='label', help='label blob (default %(default)s)')
    parser.add_argument('--loss', default='loss', help='loss blob (default %(default)s)')
    parser.add_argument('--backend', choices=BACKENDS, default='torch',
                        help='run the net in the engine (default) or, from the data to '
                             '--layer, in onnxruntime (exported once, cached beside the '
                             'weights)')
    parser.add_argument('--ignore-label', type=int, default=255,
                        help='with --gt-dir: the ground-truth label not counted (default '
                             '%(default)s, VOC\'s void); any other label >= the class count '
                             'is an error, as in the data layers')
    parser.add_argument('--present-only', action='store_true',
                        help='mean accuracy and mean IU over the classes present in the '
                             'ground truth only (the FCN paper\'s SIFT Flow evaluation)')
    args = parser.parse_args(argv)
    folders = args.pred_dir is not None or args.gt_dir is not None
    if folders:
        if args.pred_dir is None or args.gt_dir is None or args.classes is None:
            parser.error('folder scoring needs --pred-dir, --gt-dir and --classes')
        if args.prototxt is not None or args.count is not None or args.save_dir:
            parser.error('give either NET_PROTOTXT WEIGHTS or --pred-dir/--gt-dir, not both')
    elif args.prototxt is None or args.weights is None:
        parser.error('give NET_PROTOTXT WEIGHTS, or --pred-dir and --gt-dir')
    if args.count is not None and args.count < 1:
        parser.error('--count must be positive')
    return args


def _classes(spec):
    """--classes as (count or None, names or None)."""
    if spec is None:
        return None, None
    if spec.isdigit():
        return int(spec), None
    names = read_class_names(spec)
    return len(names), names


# Seconds between saves of the partial results (--progress).
PROGRESS_EVERY = 10.0


def _checkpoint(args):
    """The command's ScoreProgress, or None without --progress or --json."""
    path = args.progress or (args.json + '.progress' if args.json else None)
    if path is None:
        return None
    files = [] if args.pred_dir is not None else [args.prototxt, args.weights]
    files += [args.split_file] if args.split_file else []
    # Absolute: the net runs from its prototxt's folder.
    return ScoreProgress(os.path.abspath(path), run_key(args, *files), PROGRESS_EVERY)


def main(argv=None):
    args = parse_args(argv)
    try:
        n, names = _classes(args.classes)
        split_ids = read_split_list(args.split_file) if args.split_file else None
        checkpoint = _checkpoint(args)
        if args.pred_dir is not None:
            ids = split_ids if split_ids is not None else sorted(
                f[:-4] for f in os.listdir(args.pred_dir) if f.endswith('.png'))
            if not ids:
                raise ValueError('%s holds no .png predictions' % args.pred_dir)
            hist = score_folders(args.pred_dir, args.gt_dir, ids, n, checkpoint,
                                 args.ignore_label)
            loss = None
            info = dict(pred_dir=args.pred_dir, gt_dir=args.gt_dir)
        else:
            if args.gpu is not None:
                caffe.set_device(args.gpu)
                caffe.set_mode_gpu()
            if args.backend == 'onnxruntime' and args.precision != 'fp32':
                raise ValueError('--precision %s applies to the engine; --backend '
                                 'onnxruntime runs float32' % args.precision)
            caffe.set_precision(args.precision)
            hist, loss, ids = score_net(args.prototxt, args.weights, split_ids, args.count,
                                        args.save_dir, args.layer, args.gt, args.loss,
                                        args.split_file, checkpoint, args.backend, args.gpu)
            if n is not None and n != len(hist):
                raise ValueError('--classes gives %d classes, blob %r has %d channels'
                                 % (n, args.layer, len(hist)))
            info = dict(prototxt=args.prototxt, weights=args.weights)
    except (OSError, ValueError, CaffeError) as err:
        sys.exit('score.py: error: %s' % err)
    out = results(hist, loss, names, args.present_only, images=len(ids), **info)
    cm = ConfusionMatrix(len(hist), names, args.present_only)
    cm.hist = hist
    print('scored %d images' % len(ids))
    print(cm.report(loss))
    if args.json:
        with caffe.io.atomic_path(args.json) as tmp, open(tmp, 'w', encoding='utf-8') as f:
            json.dump(out, f, indent=1)
            f.write('\n')
    if checkpoint is not None and not args.progress:
        checkpoint.finish()  # the JSON holds the results now
    return out


if __name__ == '__main__':
    main()
