"""torchcaffe: Caffe's semantics and file formats on PyTorch, behind pycaffe's surface.

Scripts say ``import torchcaffe as caffe`` and otherwise read like pycaffe scripts.
"""
from .proto import caffe_pb2
from .errors import (CaffeError, FormatError, PrototxtError, NetSpecError,
                     CoordMapError, ShapeError)
from .net_spec import layers, params, NetSpec, to_proto
from . import io, coord_map, shapes
from .blob import Blob
from .mode import (set_mode_cpu, set_mode_gpu, set_device, set_random_seed,
                   set_precision, precision, PRECISIONS)
from .net import Net
from .python_layer import Layer, allow_python_layers_from
from .solver import SGDSolver, get_solver, DivergedError, TrainingStopped

# Caffe's Phase enum values, as pycaffe exposes them.
TRAIN = caffe_pb2.TRAIN
TEST = caffe_pb2.TEST

__version__ = '0.1.0'
