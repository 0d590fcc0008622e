"""`import caffe`: pycaffe's name for the torchcaffe engine (placeholder; filled in by issue 11)."""
from torchcaffe import *  # noqa: F401,F403
