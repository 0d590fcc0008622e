"""Suite-wide settings.

The nets in the tests are tiny; on a small shared machine torch's intra-op thread pool
costs far more than it saves on them (about 50x on 2 cores), so the suite runs on one
thread. Benchmarks set their own thread counts.

The kernel choices (torchcaffe.kernels) of the suite's processes, the ones it starts
included, go to one file of the session rather than the user's per-machine cache.
"""
import atexit
import os
import shutil
import tempfile

import torch

torch.set_num_threads(1)

if 'TORCHCAFFE_KERNEL_FILE' not in os.environ:
    _KERNELS = tempfile.mkdtemp(prefix='torchcaffe-kernels-')
    os.environ['TORCHCAFFE_KERNEL_FILE'] = os.path.join(_KERNELS, 'kernels.json')
    atexit.register(shutil.rmtree, _KERNELS, True)
