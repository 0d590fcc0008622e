"""Random weights for cross-checks against other Caffe readers (OpenCV, ONNX)."""
import math

import numpy as np


def randomize(net, seed=0):
    """Give every param of ``net`` random values, in place, so that every tap and
    channel of every layer shows in the output: He-like weights, N(0, 0.1) biases,
    random (not bilinear) deconvolutions, Scale factors in [0.5, 1.5]."""
    rng = np.random.default_rng(seed)
    for name, blobs in net.params.items():
        kind = net.layer_dict[name].type
        for i, blob in enumerate(blobs):
            shape = blob.data.shape
            if kind == 'Scale':
                blob.data[...] = rng.uniform(0.5, 1.5, shape)
            elif i == 1:
                blob.data[...] = rng.normal(0, 0.1, shape)
            elif kind == 'Deconvolution':
                blob.data[...] = rng.normal(0, 1 / math.sqrt(16 * shape[0]), shape)
            else:
                blob.data[...] = rng.normal(0, math.sqrt(2 / math.prod(shape[1:])), shape)
