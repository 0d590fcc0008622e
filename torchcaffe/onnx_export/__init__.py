"""Export a deploy net and its weights to ONNX, one Caffe layer at a time.

Each layer becomes a few standard ONNX operators that keep Caffe's semantics at
every input size, so the batch, height and width of the inputs stay dynamic: the
ends of a Crop and the geometry of Caffe's round-up pooling are computed in the
graph from the shapes of the tensors, never frozen at the prototxt's input size
(SPP's pyramid geometry too). The graph is written with ``onnx.helper``
directly (no tracing), so an export is deterministic and the mapping of every
layer type is spelled out in the converter modules, one per family of
:mod:`torchcaffe.layer_types`:

* :mod:`.neuron`: ReLU (leaky), Sigmoid, TanH, AbsVal, BNLL, Exp, Log, Power,
  Threshold, Clip, Swish, ELU, PReLU, Dropout (the identity at TEST);
* :mod:`.vision`: Convolution (grouped and depthwise), Deconvolution, Pooling,
  Crop, SPP, Im2col;
* :mod:`.common`: InnerProduct, Eltwise, Scale and Bias (learned or second
  bottom), Concat, Slice, Flatten, Reshape, Softmax (any axis), ArgMax, Split,
  Silence, Input, Embed, Tile, Reduction, Filter, BatchReindex, Parameter;
* :mod:`.normalization`: BatchNorm (the moving-average scale factor applied;
  use_global_stats either way), MVN, LRN;
* :mod:`.recurrent`: RNN, LSTM (a Scan over Caffe's time steps, ``cont`` kept),
  LSTMUnit.

Data, loss, Accuracy and Python layers are refused by name with the reason
(:mod:`.refusals`).

Usage::

    from torchcaffe import onnx_export
    onnx_export.export('voc-fcn8s/deploy.prototxt', 'voc-fcn8s/fcn8s-heavy-pascal.caffemodel',
                       'fcn8s.onnx')

Value names: the value a blob holds at the end of the net (what ``net.blobs[name]``
holds after a forward) is named after the blob; earlier versions of a blob that
layers rewrite in place are named ``blob@layer``.
"""
from . import common, neuron, normalization, recurrent, refusals, vision  # noqa: F401
from .core import DEFAULT_OPSET, MIN_OPSET, refused_types, supported_types
from .model import (check_supported, default_inputs, export, load_net, to_onnx, validate,
                    verify)

__all__ = ['export', 'to_onnx', 'verify', 'validate', 'load_net', 'supported_types',
           'refused_types', 'check_supported', 'default_inputs', 'DEFAULT_OPSET', 'MIN_OPSET']
