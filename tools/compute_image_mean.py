"""Caffe's ``compute_image_mean``: the mean image of a database, as a .binaryproto.

    python tools/compute_image_mean.py [--backend lmdb|leveldb] INPUT_DB [OUTPUT_FILE]

The same as the installed ``compute_image_mean`` command (torchcaffe.tools.compute_image_mean).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from torchcaffe.tools.compute_image_mean import main  # noqa: E402

if __name__ == '__main__':
    sys.exit(main())
