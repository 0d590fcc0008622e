"""Segmentation scoring, as the FCN reference's score.py.

So far: the confusion matrix and the four FCN metrics computed from it. Scoring a net on
a split (``seg_tests``, ``do_seg_tests``) needs ``torchcaffe.Net`` and comes with it.
"""
import numpy as np


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


def seg_metrics(hist):
    """The FCN paper's metrics from a confusion matrix.

    Returns a dict with ``overall_acc`` (pixel accuracy), ``mean_acc``, ``mean_iu``,
    ``fwavacc`` (frequency-weighted IU) and ``iu`` (per class). Classes that never occur in
    the ground truth and are never predicted have an undefined IU (NaN) and are left out of
    the means, as numpy's nanmean in the reference does.
    """
    hist = np.asarray(hist, dtype=np.float64)
    gt = hist.sum(1)
    pred = hist.sum(0)
    tp = np.diag(hist)
    with np.errstate(divide='ignore', invalid='ignore'):
        acc = tp / gt
        iu = tp / (gt + pred - tp)
    freq = gt / hist.sum()
    return {
        'overall_acc': tp.sum() / hist.sum(),
        'mean_acc': np.nanmean(acc),
        'mean_iu': np.nanmean(iu),
        'fwavacc': (freq[freq > 0] * iu[freq > 0]).sum(),
        'iu': iu,
    }
