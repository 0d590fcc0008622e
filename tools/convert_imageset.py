"""Caffe's ``convert_imageset``: listed images into an LMDB or LevelDB of Datums.

    python tools/convert_imageset.py [--gray] [--shuffle] [--backend lmdb|leveldb] \
        [--resize_height H --resize_width W] [--encoded --encode_type png] \
        ROOTFOLDER/ LISTFILE DB_NAME

The same as the installed ``convert_imageset`` command (torchcaffe.tools.convert_imageset).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from torchcaffe.tools.convert_imageset import main  # noqa: E402

if __name__ == '__main__':
    sys.exit(main())
