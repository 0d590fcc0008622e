"""Element-wise layers: ReLU, Sigmoid, TanH, Dropout, Power.

Each maps one bottom to one top of the same shape and may run in place in the net.
"""
import torch

from ..proto import caffe_pb2
from .base import Layer, register

__all__ = ['ReLU', 'Sigmoid', 'TanH', 'Dropout', 'Power']


class _Neuron(Layer):
    def top_shapes(self, bottom_shapes):
        return [tuple(bottom_shapes[0])]


@register
class ReLU(_Neuron):
    """``max(x, 0) + negative_slope * min(x, 0)``.

    Caffe's gradient is ``negative_slope`` at x == 0 (its test is ``x > 0``), which is
    what torch's relu (slope 0) and leaky_relu give.
    """
    type = 'ReLU'

    def forward(self, bottoms, params):
        x = bottoms[0]
        slope = self.layer_param.relu_param.negative_slope
        if slope == 0:
            return [torch.relu(x)]
        return [torch.nn.functional.leaky_relu(x, slope)]


@register
class Sigmoid(_Neuron):
    """``1 / (1 + exp(-x))``."""
    type = 'Sigmoid'

    def forward(self, bottoms, params):
        return [torch.sigmoid(bottoms[0])]


@register
class TanH(_Neuron):
    """``tanh(x)``."""
    type = 'TanH'

    def forward(self, bottoms, params):
        return [torch.tanh(bottoms[0])]


@register
class Power(_Neuron):
    """``(shift + scale * x) ^ power``."""
    type = 'Power'

    def forward(self, bottoms, params):
        p = self.layer_param.power_param
        y = bottoms[0]
        if p.scale != 1:
            y = y * p.scale
        if p.shift != 0:
            y = y + p.shift
        if p.power != 1:
            y = y.pow(p.power)
        elif p.scale == 1 and p.shift == 0:
            y = y.clone()
        return [y]


@register
class Dropout(_Neuron):
    """Caffe's (inverted) dropout.

    TRAIN keeps each unit with probability ``1 - dropout_ratio`` and scales kept units
    by ``1 / (1 - dropout_ratio)``; the gradient goes through the same mask and scale.
    TEST is the identity.

    Attributes
    ----------
    generator : torch.Generator or None
        Source of the masks (on any device); the global RNG of the bottom's device
        if None. The net sets it for reproducible training.
    """
    type = 'Dropout'

    def __init__(self, layer_param, phase):
        super().__init__(layer_param, phase)
        self.ratio = layer_param.dropout_param.dropout_ratio
        if not 0 <= self.ratio < 1:
            raise self.error('dropout_ratio must be in [0, 1), got %g' % self.ratio)
        self.generator = None

    def forward(self, bottoms, params):
        x = bottoms[0]
        if self.phase != caffe_pb2.TRAIN:
            return [x.clone()]
        keep = 1.0 - self.ratio
        # Drawn in float32 under bf16 autocast, so that every precision drops the same units.
        dtype = torch.float32 if x.dtype == torch.bfloat16 else x.dtype
        if self.generator is None:
            uniform = torch.rand(x.shape, dtype=dtype, device=x.device)
        else:
            uniform = torch.rand(x.shape, dtype=dtype, device=self.generator.device,
                                 generator=self.generator).to(x.device)
        # Caffe keeps a unit when its random integer exceeds ratio * UINT_MAX.
        mask = (uniform >= self.ratio).to(x.dtype)
        return [x * (mask * (1.0 / keep))]
