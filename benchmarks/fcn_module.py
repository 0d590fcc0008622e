"""FCN and VGG16 written directly as torch ``nn.Module`` s, as PyTorch ports write them.

An independent second implementation of the nets that ``nets/`` describes as
prototxt, used to cross-check the engine (``tests/test_whole_nets.py``) and as
the baseline of ``benchmarks/bench_engine.py``. Nothing here reads prototxt or
uses torchcaffe: the crop offsets (FCN-32s 19; FCN-16s 5, 27; FCN-8s 5, 9, 31)
and layer sizes are written out by hand, as the common ports do.

Submodules carry Caffe's layer names, so :func:`load_from_net` copies weights
from a ``torchcaffe.Net`` by name::

    net = caffe.Net('voc-fcn8s/deploy.prototxt', 'fcn8s.caffemodel', caffe.TEST)
    model = FCN('fcn8s', classes=21).eval()
    for line in load_from_net(model, net):
        print(line)
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ['scaled', 'FCN', 'VGG16', 'STAGES', 'caffe_params', 'load_from_net', 'load_arrays',
           'bilinear_weight', 'freeze_fixed', 'caffe_sgd', 'softmax_loss', 'count_macs']

# VGG16's five blocks as (convolutions, num_output), and its fully connected width.
BLOCKS = ((2, 64), (2, 128), (3, 256), (3, 512), (3, 512))
FC_OUTPUT = 4096

# Crop offsets of each skip and of the final score, as the reference nets have them.
OFFSETS = {
    'fcn32s': {'score': 19},
    'fcn16s': {'pool4': 5, 'score': 27},
    'fcn8s': {'pool4': 5, 'pool3': 9, 'score': 31},
    'fcn8s-atonce': {'pool4': 5, 'pool3': 9, 'score': 31},
}
STAGES = tuple(OFFSETS)

# FCN-8s at-once scales its skips before scoring them (a fixed per-channel Scale).
ATONCE_SCALES = {'pool4': 0.01, 'pool3': 0.0001}

IGNORE_LABEL = 255


def scaled(num_output, width):
    """``num_output`` times ``width``, rounded, at least 1 (as ``nets.vgg.scaled``).

    >>> scaled(512, 1.0), scaled(512, 1 / 16), scaled(4096, 1 / 16), scaled(64, 0.001)
    (512, 32, 256, 1)
    """
    return max(1, int(round(num_output * width)))


def _recorder(blobs):
    """A function storing a tensor in ``blobs`` under a name (if given) and returning it."""
    def record(name, tensor):
        if blobs is not None:
            blobs[name] = tensor
        return tensor
    return record


def crop(x, offset, like):
    """``x`` cut to ``like``'s height and width, starting ``offset`` in on both axes."""
    h, w = like.shape[2:]
    if offset + h > x.shape[2] or offset + w > x.shape[3]:
        raise ValueError('cannot crop %s at offset %d to %d x %d' % (tuple(x.shape), offset, h, w))
    return x[:, :, offset:offset + h, offset:offset + w]


def upsampler(classes, factor):
    """A bias-free transposed convolution upsampling by ``factor`` (kernel 2f - f % 2),
    initialised to bilinear interpolation of each channel (see :func:`bilinear_weight`)."""
    up = nn.ConvTranspose2d(classes, classes, 2 * factor - factor % 2, stride=factor,
                            bias=False)
    with torch.no_grad():
        up.weight.copy_(bilinear_weight(classes, up.kernel_size[0]))
    return up


def bilinear_weight(channels, size):
    """A ``channels x channels x size x size`` upsampling weight: bilinear on the diagonal.

    Channel ``i`` is interpolated from channel ``i`` alone (the FCN reference's
    ``surgery.interp``); the kernel is the outer product of the 1-D tent
    ``1 - |x - c| / f`` with ``f = ceil(size / 2)`` and ``c`` the kernel's centre
    (half a pixel off for even sizes).

    >>> bilinear_weight(1, 4)[0, 0, 0]
    tensor([0.0625, 0.1875, 0.1875, 0.0625])
    """
    factor = (size + 1) // 2
    centre = factor - 1 if size % 2 == 1 else factor - 0.5
    tent = 1 - (torch.arange(size, dtype=torch.float64) - centre).abs() / factor
    weight = torch.zeros(channels, channels, size, size, dtype=torch.float64)
    weight[range(channels), range(channels)] = torch.outer(tent, tent)
    return weight.float()


class ChannelScale(nn.Module):
    """Multiply each channel by its own factor (Caffe's Scale with one bottom, no bias)."""

    def __init__(self, channels, value):
        super().__init__()
        self.weight = nn.Parameter(torch.full((channels,), float(value)))

    def forward(self, x):
        return x * self.weight.view(1, -1, 1, 1)


class VGGBlocks(nn.Module):
    """conv1_1 ... conv5_3 (3 x 3, ReLU) and pool1 ... pool5 (2 x 2 max, ceil mode).

    ``first_pad`` is conv1_1's padding: 100 in the FCNs, 1 in the classifier.
    Calling it returns pool3, pool4 and pool5 (the skips' sources).
    """

    def __init__(self, width=1.0, first_pad=1):
        super().__init__()
        self.names = []
        channels = 3
        for b, (convs, nout) in enumerate(BLOCKS, start=1):
            for c in range(1, convs + 1):
                pad = first_pad if (b, c) == (1, 1) else 1
                out = scaled(nout, width)
                name = 'conv%d_%d' % (b, c)
                self.add_module(name, nn.Conv2d(channels, out, 3, padding=pad))
                self.names.append(name)
                channels = out
            self.names.append('pool%d' % b)
        self.out_channels = channels
        # Caffe's pooling rounds its output size up.
        self.pool = nn.MaxPool2d(2, 2, ceil_mode=True)

    def forward(self, x, blobs=None):
        pools = {}
        for name in self.names:
            if name.startswith('pool'):
                x = self.pool(x)
                pools[name] = x
            else:
                x = F.relu(getattr(self, name)(x))
            if blobs is not None:
                blobs[name] = x
        return pools['pool3'], pools['pool4'], pools['pool5']


class FCN(nn.Module):
    """An FCN on the VGG16 trunk: 'fcn32s', 'fcn16s', 'fcn8s' or 'fcn8s-atonce'.

    Parameters
    ----------
    stage : str
        One of :data:`STAGES`.
    classes : int
        Score channels (21 for PASCAL VOC).
    width : float
        Multiplier on the trunk's channels, rounded as :func:`scaled`.

    Calling the module on an N x 3 x H x W batch returns the N x classes x H x W
    score. Pass ``blobs={}`` to also collect intermediate tops under Caffe's
    blob names (for debugging a mismatch layer by layer).
    """

    def __init__(self, stage='fcn8s', classes=21, width=1.0):
        super().__init__()
        if stage not in OFFSETS:
            raise ValueError('unknown FCN stage %r; known: %s' % (stage, ', '.join(STAGES)))
        self.stage = stage
        self.offsets = OFFSETS[stage]
        self.features = VGGBlocks(width, first_pad=100)
        fc = scaled(FC_OUTPUT, width)
        self.fc6 = nn.Conv2d(self.features.out_channels, fc, 7)
        self.fc7 = nn.Conv2d(fc, fc, 1)
        self.drop6 = nn.Dropout(0.5)
        self.drop7 = nn.Dropout(0.5)
        self.score_fr = nn.Conv2d(fc, classes, 1)
        if stage == 'fcn32s':
            self.upscore = upsampler(classes, 32)
            return
        self.upscore2 = upsampler(classes, 2)
        self.score_pool4 = nn.Conv2d(scaled(512, width), classes, 1)
        if stage == 'fcn16s':
            self.upscore16 = upsampler(classes, 16)
            return
        self.upscore_pool4 = upsampler(classes, 2)
        self.score_pool3 = nn.Conv2d(scaled(256, width), classes, 1)
        self.upscore8 = upsampler(classes, 8)
        if stage == 'fcn8s-atonce':
            self.scale_pool4 = ChannelScale(scaled(512, width), ATONCE_SCALES['pool4'])
            self.scale_pool3 = ChannelScale(scaled(256, width), ATONCE_SCALES['pool3'])

    def _skip(self, pool_name, pool, upscored, record):
        """Score ``pool`` (scaled first in the at-once net), crop it, add it to ``upscored``."""
        if hasattr(self, 'scale_' + pool_name):
            pool = record('scale_' + pool_name, getattr(self, 'scale_' + pool_name)(pool))
        scored = record('score_' + pool_name, getattr(self, 'score_' + pool_name)(pool))
        cropped = record('score_%sc' % pool_name,
                         crop(scored, self.offsets[pool_name], upscored))
        return record('fuse_' + pool_name, upscored + cropped)

    def forward(self, x, blobs=None):
        record = _recorder(blobs)
        pool3, pool4, pool5 = self.features(x, blobs)
        # fc6 and fc7 name the blobs their in-place ReLU and Dropout overwrite in Caffe.
        h = record('fc6', self.drop6(F.relu(self.fc6(pool5))))
        h = record('fc7', self.drop7(F.relu(self.fc7(h))))
        h = record('score_fr', self.score_fr(h))
        if self.stage == 'fcn32s':
            h = record('upscore', self.upscore(h))
        else:
            h = record('upscore2', self.upscore2(h))
            h = self._skip('pool4', pool4, h, record)
            if self.stage == 'fcn16s':
                h = record('upscore16', self.upscore16(h))
            else:
                h = record('upscore_pool4', self.upscore_pool4(h))
                h = self._skip('pool3', pool3, h, record)
                h = record('upscore8', self.upscore8(h))
        return record('score', crop(h, self.offsets['score'], x))


class VGG16(nn.Module):
    """The ILSVRC VGG16 classifier; calling it returns the fc8 scores (pre-softmax).

    fc6 reads pool5 flattened in Caffe's C order (channel, row, column), which is
    torch's ``flatten`` of an NCHW tensor, so it needs 224 x 224 inputs (7 x 7 pool5).
    """

    def __init__(self, classes=1000, width=1.0):
        super().__init__()
        self.features = VGGBlocks(width, first_pad=1)
        fc = scaled(FC_OUTPUT, width)
        self.fc6 = nn.Linear(self.features.out_channels * 7 * 7, fc)
        self.fc7 = nn.Linear(fc, fc)
        self.fc8 = nn.Linear(fc, classes)
        self.drop6 = nn.Dropout(0.5)
        self.drop7 = nn.Dropout(0.5)

    def forward(self, x, blobs=None):
        record = _recorder(blobs)
        _, _, pool5 = self.features(x, blobs)
        h = record('fc6', self.drop6(F.relu(self.fc6(pool5.flatten(1)))))
        h = record('fc7', self.drop7(F.relu(self.fc7(h))))
        return record('fc8', self.fc8(h))


def caffe_params(module):
    """The module's parameters grouped as Caffe's ``net.params``: layer -> [tensors].

    Convolution and InnerProduct give [weight, bias], Deconvolution (bias-free) and
    Scale give [weight]. Layers come in definition order.
    """
    groups = {}
    for name, param in module.named_parameters():
        layer, kind = name.rsplit('.', 1)
        layer = layer.rsplit('.', 1)[-1]  # drop the 'features.' prefix
        groups.setdefault(layer, {})[kind] = param
    return {layer: [p[k] for k in ('weight', 'bias') if k in p]
            for layer, p in groups.items()}


def load_from_net(module, net):
    """Copy every parameter of ``module`` from ``net.params`` by layer name.

    Caffe's layouts are torch's: Convolution weights (out, in, kh, kw) as Conv2d,
    Deconvolution (in, out / group, kh, kw) as ConvTranspose2d, InnerProduct
    (out, in) as Linear, Scale (channels,). Every shape must match exactly; no
    transposes or reshapes are needed.

    Parameters
    ----------
    module : FCN or VGG16
    net : torchcaffe.Net (or anything with pycaffe's ``params``)

    Returns
    -------
    list of str : one line per copied tensor, "layer[i] shape -> module.parameter".

    Raises
    ------
    KeyError, ValueError
        When the net lacks one of the module's layers, has a different number of
        blobs for it, or a blob of a different shape.
    """
    return load_arrays(module, {layer: [blob.data for blob in blobs]
                                for layer, blobs in net.params.items()})


def load_arrays(module, arrays):
    """Copy every parameter of ``module`` from ``arrays``: layer name -> [array, ...].

    As :func:`load_from_net`, from plain arrays in Caffe's blob order (e.g. read
    from a caffemodel), so a module can be loaded without building a Net.
    """
    names = {id(p): n for n, p in module.named_parameters()}
    lines = []
    for layer, tensors in caffe_params(module).items():
        if layer not in arrays:
            raise KeyError('net has no params for layer %r' % layer)
        blobs = arrays[layer]
        if len(blobs) != len(tensors):
            raise ValueError('layer %r: net has %d blobs, module %d'
                             % (layer, len(blobs), len(tensors)))
        for i, (data, tensor) in enumerate(zip(blobs, tensors)):
            if tuple(data.shape) != tuple(tensor.shape):
                raise ValueError('layer %r blob %d: net shape %s, module %s (%s)'
                                 % (layer, i, tuple(data.shape), tuple(tensor.shape),
                                    names[id(tensor)]))
            with torch.no_grad():
                tensor.copy_(torch.as_tensor(data.copy()))
            lines.append('%s[%d] %s -> %s' % (layer, i, tuple(data.shape), names[id(tensor)]))
    return lines


def freeze_fixed(module):
    """Stop gradients to the upsamplers and at-once Scales (``lr_mult: 0`` in the
    prototxts, so Caffe computes no diff for them). Returns the frozen tensors."""
    frozen = [p for m in module.modules() if isinstance(m, (nn.ConvTranspose2d, ChannelScale))
              for p in m.parameters(recurse=False)]
    for param in frozen:
        param.requires_grad_(False)
    return frozen


def caffe_sgd(module, base_lr, momentum, weight_decay):
    """torch SGD with the FCN prototxts' multipliers, as ports set it up.

    Weights learn at ``base_lr`` with ``weight_decay``, biases at twice the rate
    without decay (``lr_mult: 2 decay_mult: 0``), and the upsamplers and at-once
    Scales (``lr_mult: 0``) are frozen. With a fixed rate torch's momentum update
    (v = m v + g; w -= lr v) takes the same steps as Caffe's (v = m v + lr g; w -= v).
    """
    freeze_fixed(module)
    weights, biases = [], []
    for layer in module.modules():
        for kind, param in layer.named_parameters(recurse=False):
            if param.requires_grad:
                (biases if kind == 'bias' else weights).append(param)
    return torch.optim.SGD([dict(params=weights, weight_decay=weight_decay),
                            dict(params=biases, lr=2 * base_lr, weight_decay=0.0)],
                           lr=base_lr, momentum=momentum)


def softmax_loss(score, label):
    """Caffe's SoftmaxWithLoss with ``normalize: false`` and ``ignore_label: 255``.

    Sum of -log p(label) over the pixels not labelled 255, divided by the batch
    size N (not by the pixel count).

    Parameters
    ----------
    score : tensor, N x C x H x W
    label : tensor, N x 1 x H x W or N x H x W (any dtype holding whole numbers)
    """
    if label.dim() == score.dim():
        label = label.squeeze(1)
    total = F.cross_entropy(score, label.long(), reduction='sum', ignore_index=IGNORE_LABEL)
    return total / score.shape[0]


def count_macs(module, x):
    """Multiply-accumulates of one forward pass, per Conv2d / ConvTranspose2d / Linear.

    Returns
    -------
    list of (name, macs) : in execution order; a convolution costs
    out elements x in channels / groups x kernel area, a transposed convolution
    in elements x out channels / groups x kernel area, a Linear in x out per row.
    """
    counts = []

    def hook(name):
        def record(mod, inputs, output):
            inp = inputs[0]
            if isinstance(mod, nn.ConvTranspose2d):
                k = math.prod(mod.kernel_size)
                macs = inp.numel() * (mod.out_channels // mod.groups) * k
            elif isinstance(mod, nn.Conv2d):
                k = math.prod(mod.kernel_size)
                macs = output.numel() * (mod.in_channels // mod.groups) * k
            else:
                macs = output.numel() * mod.in_features
            counts.append((name, macs))
        return record

    handles = [m.register_forward_hook(hook(n.rsplit('.', 1)[-1]))
               for n, m in module.named_modules()
               if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))]
    try:
        with torch.no_grad():
            module(x)
    finally:
        for h in handles:
            h.remove()
    return counts
