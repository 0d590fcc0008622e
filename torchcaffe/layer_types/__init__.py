"""Caffe's layers on torch, registered by Caffe type name.

``create_layer(layer_param, phase)`` builds the implementation of
``layer_param.type``; ``known_types()`` lists the registered names.
"""
from .base import Layer, register, create_layer, known_types, layer_class
from . import vision, neuron, common, loss, data  # noqa: F401  (registers the layers)
from . import normalization, recurrent  # noqa: F401
from . import window_data  # noqa: F401  (builds on data's batch layer)

__all__ = ['Layer', 'register', 'create_layer', 'known_types', 'layer_class']
