"""Net surgery helpers, as the FCN reference's surgery.py.

So far: the bilinear upsampling kernel. Transplanting weights between nets
(``transplant``, ``interp``, ``expand_score``) needs ``torchcaffe.Net`` and comes with it.
"""
import numpy as np


def upsample_filt(size):
    """Bilinear interpolation kernel of ``size`` x ``size`` for upsampling by ``(size + 1) // 2``.

    This is the kernel FCN sets in its Deconvolution layers (kernel ``2f - f % 2`` for
    factor ``f``); it equals Caffe's ``bilinear`` filler for that kernel size.

    >>> upsample_filt(4)[0]
    array([0.0625, 0.1875, 0.1875, 0.0625])
    >>> float(upsample_filt(3)[1, 1])
    1.0
    """
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    ramp = 1 - np.abs(np.arange(size) - center) / factor
    return np.outer(ramp, ramp)
