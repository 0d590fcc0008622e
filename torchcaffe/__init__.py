"""torchcaffe: Caffe's semantics and file formats on PyTorch, behind pycaffe's surface.

Scripts say ``import torchcaffe as caffe`` (or ``import caffe``, the same modules:
see the ``caffe`` package) and otherwise read like pycaffe scripts.
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
from .solver import (SGDSolver, NesterovSolver, AdaGradSolver, RMSPropSolver, AdaDeltaSolver,
                     AdamSolver, get_solver, DivergedError, TrainingStopped)
from .runtime import (layer_type_list, solver_count, set_solver_count, solver_rank,
                      set_solver_rank, set_multiprocess, init_log, log, Timer, NCCL,
                      has_nccl)
from .classifier import Classifier
from .detector import Detector

# Caffe's Phase enum values, as pycaffe exposes them.
TRAIN = caffe_pb2.TRAIN
TEST = caffe_pb2.TEST

__version__ = '0.1.0'

# What ``import caffe`` got: a real Caffe has no such attribute (see the README).
__engine__ = 'torchcaffe'
