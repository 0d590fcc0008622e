"""Spatial layers: Convolution, Deconvolution, Pooling, Crop, SPP, Im2col (LRN is in
normalization)."""
import torch
import torch.nn.functional as F

from .. import kernels
from ..errors import ShapeError
from ..proto import caffe_pb2
from ..shapes import conv_output_size, deconv_output_size, pool_output_size
from .base import Layer, register, count

__all__ = ['Convolution', 'Deconvolution', 'Pooling', 'Crop', 'SPP', 'Im2col',
           'is_channel_diagonal', 'spp_level_geometry', 'im2col']

# Caffe seeds a MAX pooling window with -FLT_MAX and keeps a value only if it is
# strictly greater, so no pooled value is ever below -FLT_MAX.
FLT_MAX = 3.4028234663852886e38

_Pool = caffe_pb2.PoolingParameter


# Shape-keyed caches keep at most this many entries (images of many sizes would
# otherwise grow them without bound); past it they start over.
_CACHE_SIZE = 64


def _cached(cache, key, compute):
    """``cache[key]``, computed by ``compute(key)`` when missing."""
    value = cache.get(key)
    if value is None:
        if len(cache) >= _CACHE_SIZE:
            cache.clear()
        value = cache[key] = compute(key)
    return value


def _per_axis(layer, name, repeated, hw, num_spatial, default):
    """One value per spatial axis from Caffe's ``name`` / ``name_h``+``name_w`` fields.

    ``hw`` is the (h, w) pair when either 2-D field is set, else None. A repeated
    field gives one value for every axis or one value per axis; empty gives
    ``default`` (None: required).
    """
    if hw is not None:
        if num_spatial != 2:
            raise layer.error('%s_h/%s_w need 2 spatial axes, the bottom has %d'
                              % (name, name, num_spatial))
        if repeated:
            raise layer.error('give %s or %s_h and %s_w, not both' % (name, name, name))
        return tuple(int(v) for v in hw)
    values = [int(v) for v in repeated]
    if not values:
        if default is None:
            raise layer.error('%s is required' % name)
        return (default,) * num_spatial
    if len(values) == 1:
        return (values[0],) * num_spatial
    if len(values) == num_spatial:
        return tuple(values)
    raise layer.error('%s has %d values; give 1 or one per spatial axis (%d)'
                      % (name, len(values), num_spatial))


def conv_geometry(layer, p, bottom_shape):
    """(channel axis, kernel, stride, pad, dilation) of ``convolution_param`` ``p`` for a
    bottom of ``bottom_shape``, as Caffe's BaseConvolutionLayer::LayerSetUp reads them
    (Convolution, Deconvolution and Im2col share it); errors name ``layer``."""
    axis = layer.canonical_axis(p.axis, len(bottom_shape), bottom_shape)
    num_spatial = len(bottom_shape) - axis - 1
    if num_spatial < 1:
        raise layer.shape_error('needs at least one spatial axis after channel axis %d'
                                % axis, bottom_shape)

    def pair(a, b):
        return (getattr(p, a), getattr(p, b)) if p.HasField(a) or p.HasField(b) else None
    kernel = _per_axis(layer, 'kernel', p.kernel_size, pair('kernel_h', 'kernel_w'),
                       num_spatial, None)
    stride = _per_axis(layer, 'stride', p.stride, pair('stride_h', 'stride_w'),
                       num_spatial, 1)
    pad = _per_axis(layer, 'pad', p.pad, pair('pad_h', 'pad_w'), num_spatial, 0)
    dilation = _per_axis(layer, 'dilation', p.dilation, None, num_spatial, 1)
    if min(kernel) < 1 or min(stride) < 1 or min(dilation) < 1:
        raise layer.error('kernel, stride and dilation must be positive, got %s, %s, %s'
                          % (kernel, stride, dilation))
    return axis, kernel, stride, pad, dilation


class _ConvBase(Layer):
    """What Convolution and Deconvolution share: geometry, parameters, fillers."""

    def __init__(self, layer_param, phase):
        super().__init__(layer_param, phase)
        p = layer_param.convolution_param
        self.conv_param = p
        if p.num_output < 1:
            raise self.error('convolution_param.num_output must be positive')
        self.num_output = p.num_output
        self.group = p.group
        if self.group < 1 or self.num_output % self.group:
            raise self.error('num_output %d is not divisible by group %d'
                             % (self.num_output, self.group))
        self.bias_term = p.bias_term
        self._geometries = {}  # number of bottom axes -> _geometry's answer
        # pass -> kernel of the last run, 2-D only (torchcaffe.kernels; caffe time)
        self.kernels = {}

    def _geometry(self, bottom_shape):
        """(channel axis, kernel, stride, pad, dilation) for a bottom of this shape.

        It depends only on the number of axes, so it is worked out once per count.
        """
        ndim = len(bottom_shape)
        geometry = self._geometries.get(ndim)
        if geometry is None:
            geometry = self._geometries[ndim] = self._work_out_geometry(tuple(bottom_shape))
        return geometry

    def _work_out_geometry(self, bottom_shape):
        return conv_geometry(self, self.conv_param, bottom_shape)

    def _channels(self, bottom_shape, axis):
        channels = bottom_shape[axis]
        if channels % self.group:
            raise self.shape_error('%d input channels are not divisible by group %d'
                                   % (channels, self.group), bottom_shape)
        return channels

    def param_fillers(self):
        specs = [self.conv_param.weight_filler]
        if self.bias_term:
            specs.append(self.conv_param.bias_filler)
        return specs

    def _check_bottoms(self, bottom_shapes):
        first = tuple(bottom_shapes[0])
        for shape in bottom_shapes[1:]:
            if tuple(shape) != first:
                raise self.shape_error('all bottoms must have the same shape', *bottom_shapes)

    def _spatial_out(self, bottom_shape, size_fn):
        axis, kernel, stride, pad, dilation = self._geometry(bottom_shape)
        try:
            return tuple(size_fn(n, k, s, p, d) for n, k, s, p, d in
                         zip(bottom_shape[axis + 1:], kernel, stride, pad, dilation))
        except ShapeError as err:
            raise self.shape_error(str(err), bottom_shape) from None

    def top_shapes(self, bottom_shapes):
        self._check_bottoms(bottom_shapes)
        shapes = []
        for shape in bottom_shapes:
            shape = tuple(shape)
            axis = self._geometry(shape)[0]
            self._channels(shape, axis)
            spatial = self._spatial_out(shape, self._output_size)
            shapes.append(shape[:axis] + (self.num_output,) + spatial)
        return shapes

    def forward(self, bottoms, params):
        weight = params[0]
        bias = params[1] if self.bias_term else None
        return [self._apply(x, weight, bias, self.group) for x in bottoms]

    def _apply(self, x, weight, bias, groups):
        shape = tuple(x.shape)
        axis, kernel, stride, pad, dilation = self._geometry(shape)
        num_spatial = len(kernel)
        if num_spatial > 3:
            raise self.shape_error('only 1, 2 or 3 spatial axes are supported', shape)
        if num_spatial == 2 and axis == 1 and x.dim() == 4:
            # the kernel chosen for the shape (torchcaffe.kernels)
            return kernels.convolution(x, weight, bias, stride, pad, dilation, groups,
                                       transposed=self.type == 'Deconvolution',
                                       record=self.kernels)
        op = self._torch_op(num_spatial)
        if axis == 1:  # N x C x spatial: the torch layout already (no view to record)
            return op(x, weight, bias, stride=stride, padding=pad, dilation=dilation,
                      groups=groups)
        # Axes before the channel axis all act as the batch.
        flat = x.reshape((count(shape, 0, axis),) + shape[axis:])
        out = op(flat, weight, bias, stride=stride, padding=pad, dilation=dilation,
                 groups=groups)
        return out.reshape(shape[:axis] + tuple(out.shape[1:]))


_CONVOLUTIONS = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def _transposed(op):
    def run(x, weight, bias, stride, padding, dilation, groups):
        return op(x, weight, bias, stride=stride, padding=padding, output_padding=0,
                  groups=groups, dilation=dilation)
    return run


_TRANSPOSED = {n: _transposed(op) for n, op in
               ((1, F.conv_transpose1d), (2, F.conv_transpose2d), (3, F.conv_transpose3d))}


@register
class Convolution(_ConvBase):
    """Caffe's Convolution: weights (num_output, C / group, *kernel), bias (num_output,)."""
    type = 'Convolution'
    bottom_counts = (1, None)
    top_counts = (1, None)

    @staticmethod
    def _output_size(n, k, s, p, d):
        return conv_output_size(n, k, s, p, d)

    def param_shapes(self, bottom_shapes):
        shape = tuple(bottom_shapes[0])
        axis, kernel = self._geometry(shape)[:2]
        channels = self._channels(shape, axis)
        shapes = [(self.num_output, channels // self.group) + kernel]
        if self.bias_term:
            shapes.append((self.num_output,))
        return shapes

    @staticmethod
    def _torch_op(num_spatial):
        return _CONVOLUTIONS[num_spatial]


@register
class Deconvolution(_ConvBase):
    """Caffe's Deconvolution, the adjoint of Convolution.

    Weights are (C, num_output / group, *kernel), PyTorch's transposed-convolution
    layout; the output size is ``stride (n - 1) + dilation (kernel - 1) + 1 - 2 pad``.

    Fast path: a weight that gets no gradient (``lr_mult: 0`` without
    ``force_backward``, or no autograd) and is diagonal across channels
    (``weight[i, j] == 0`` for ``i != j``, C in = C out, group 1), as FCN's fixed
    bilinear upsamplers are, runs as a transposed convolution with one group per
    channel and kernel ``weight[i, i]``. Each output sums the same nonzero terms
    without the C - 1 zero ones, so it is C times less work. Tops and bottom diffs
    agree with the dense op's to rounding: the two kernels may add a sum's taps in
    different orders (neither is Caffe's col2im order on oneDNN). Inputs that are
    NaN or infinite are the exception: the dense op spreads them to every channel
    (0 * inf), the grouped one keeps them in their own. The weight is checked again
    only when its data may have changed (:meth:`torchcaffe.blob.Blob.data_token`;
    on an accelerator the check reads one flag from the device); a weight that is
    not diagonal runs densely.

    The fast path is opt-in (``Deconvolution.diagonal_fast_path = True``, on the
    class or on one layer): the reordered sums move results by an ulp, which grows
    over thousands of SGD steps, and NaN propagates differently from Caffe; at FCN's
    real sizes the upsamplers are under 1 % of the work, so the default keeps the
    dense op and the plain path's numbers.
    """
    type = 'Deconvolution'
    bottom_counts = (1, None)
    top_counts = (1, None)
    diagonal_fast_path = False

    def __init__(self, layer_param, phase):
        super().__init__(layer_param, phase)
        self._diagonal = None  # (data token, per-channel weight or None) of the last check

    def forward(self, bottoms, params):
        weight = params[0]
        bias = params[1] if self.bias_term else None
        per_channel = self._per_channel_weight(weight)
        if per_channel is None:
            return [self._apply(x, weight, bias, self.group) for x in bottoms]
        return [self._apply(x, per_channel, bias, per_channel.shape[0]) for x in bottoms]

    def _per_channel_weight(self, weight):
        """The kernels ``weight[i, i]`` as a (C, 1, *kernel) weight when the fast path
        applies, else None."""
        if not self.diagonal_fast_path or self.group != 1:
            return None
        if weight.requires_grad and torch.is_grad_enabled():
            return None  # the dense diff is wanted: lr_mult > 0 or force_backward
        channels = weight.shape[0]
        if channels < 2 or weight.shape[1] != channels:
            return None
        blobs = getattr(self, 'blobs', None)  # the net's, when the layer runs in one
        token = blobs[0].data_token() if blobs else None
        cached = self._diagonal
        if token is not None and cached is not None and _same_token(cached[0], token):
            return cached[1]
        per_channel = None
        if is_channel_diagonal(weight):
            per_channel = torch.diagonal(weight.detach(), 0, 0, 1).movedim(-1, 0) \
                .unsqueeze(1).contiguous()
        self._diagonal = None if token is None else (token, per_channel)
        return per_channel

    @staticmethod
    def _output_size(n, k, s, p, d):
        return deconv_output_size(n, k, s, p, d)

    def param_shapes(self, bottom_shapes):
        shape = tuple(bottom_shapes[0])
        axis, kernel = self._geometry(shape)[:2]
        channels = self._channels(shape, axis)
        shapes = [(channels, self.num_output // self.group) + kernel]
        if self.bias_term:
            shapes.append((self.num_output,))
        return shapes

    @staticmethod
    def _torch_op(num_spatial):
        return _TRANSPOSED[num_spatial]


def is_channel_diagonal(weight):
    """Whether a (C, C, *kernel) weight is zero wherever the two channel indices differ.

    NaN counts as nonzero. On an accelerator this reads one flag from the device.

    >>> w = torch.zeros(3, 3, 2, 2)
    >>> w[0, 0] = w[1, 1] = w[2, 2] = 1
    >>> is_channel_diagonal(w)
    True
    >>> w[2, 1, 0, 1] = 1e-30
    >>> is_channel_diagonal(w)
    False
    """
    c = weight.shape[0]
    # Rows i * C + j of the (C * C, K) view: after the first, every (C + 1)-th row
    # is a diagonal one, so rows 1.. seen as (C - 1, C + 1, K) hold the diagonal in
    # the last column and only off-diagonal kernels before it.
    rows = weight.detach().reshape(c * c, -1)
    off_diagonal = rows[1:].reshape(c - 1, c + 1, -1)[:, :c]
    return not bool(off_diagonal.any())


def _same_token(a, b):
    """Whether two Blob.data_token()s name the same, unchanged data."""
    return a[0] is b[0] and a[1] is b[1] and a[2:] == b[2:]


def _torch_ceil_size(n, k, s, p):
    """PyTorch's ceil-mode pooled size, which differs from Caffe's only when p == 0."""
    out = -(-(n + 2 * p - k) // s) + 1
    if (out - 1) * s >= n + p:
        out -= 1
    return out


def _pad_to_windows(x, kernel, stride, pad, out, value):
    """Pad H, W by ``pad`` before and enough after for ``out`` whole windows."""
    (kh, kw), (sh, sw), (ph, pw), (oh, ow) = kernel, stride, pad, out
    H, W = x.shape[-2:]
    after_h = max(0, (oh - 1) * sh + kh - H - ph)
    after_w = max(0, (ow - 1) * sw + kw - W - pw)
    return F.pad(x, (pw, after_w, ph, after_h), value=value)


def _max_pool(x, kernel, stride, pad, out, with_mask):
    """Caffe's MAX pooling: strict ``>`` scan, so ties go to the first maximum.

    PyTorch's max_pool2d scans each window row-major with the same strict
    comparison, so its indices (and hence its gradient) match Caffe's mask.
    Returns (top, mask or None); the mask holds ``h * W + w`` like Caffe's top[1].
    """
    H, W = x.shape[-2:]
    native = all(p <= k // 2 and _torch_ceil_size(n, k, s, p) == o
                 for n, k, s, p, o in zip((H, W), kernel, stride, pad, out))
    if native:
        result = F.max_pool2d(x, kernel, stride, pad, ceil_mode=True, return_indices=with_mask)
        return result if with_mask else (result, None)
    padded = _pad_to_windows(x, kernel, stride, pad, out, float('-inf'))
    top, idx = F.max_pool2d(padded, kernel, stride, return_indices=True)
    top = top[..., :out[0], :out[1]].clamp_min(-FLT_MAX)
    if not with_mask:
        return top, None
    idx = idx[..., :out[0], :out[1]]
    padded_w = padded.shape[-1]
    mask = (idx // padded_w - pad[0]) * W + (idx % padded_w - pad[1])
    return top, mask


def _ave_divisors(size, kernel, stride, pad, out):
    """Caffe's AVE divisor per window along one axis: the window clipped to size + pad."""
    lengths = []
    for o in range(out):
        start = o * stride - pad
        end = min(start + kernel, size + pad)
        lengths.append(end - start)
    return lengths


def _ave_pool(x, kernel, stride, pad, out):
    """Caffe's AVE pooling: the sum over the in-image part of each window, divided
    by the window's size clipped to the image plus its padding (not to the image)."""
    H, W = x.shape[-2:]
    padded = _pad_to_windows(x, kernel, stride, pad, out, 0.0)
    sums = F.avg_pool2d(padded, kernel, stride, divisor_override=1)[..., :out[0], :out[1]]
    rows = torch.tensor(_ave_divisors(H, kernel[0], stride[0], pad[0], out[0]),
                        dtype=x.dtype, device=x.device)
    cols = torch.tensor(_ave_divisors(W, kernel[1], stride[1], pad[1], out[1]),
                        dtype=x.dtype, device=x.device)
    return sums / (rows[:, None] * cols[None, :])


@register
class Pooling(Layer):
    """Caffe's Pooling (MAX, AVE; global_pooling; CEIL or FLOOR rounding).

    Output size rounds up, and with padding the last window is dropped when it would
    start in the trailing pad (:func:`torchcaffe.shapes.pool_output_size`). MAX may
    have a second top, Caffe's mask of argmax positions ``h * W + w``.
    """
    type = 'Pooling'
    top_counts = (1, 2)

    def __init__(self, layer_param, phase):
        super().__init__(layer_param, phase)
        p = layer_param.pooling_param
        self.pool_param = p
        self.method = p.pool
        if self.method not in (_Pool.MAX, _Pool.AVE):
            raise self.error('pooling method %s is not supported'
                             % _Pool.PoolMethod.Name(self.method))
        if self.num_tops() > 1 and self.method != _Pool.MAX:
            raise self.error('only MAX pooling has a mask top')
        has_kernel = p.HasField('kernel_size') or p.HasField('kernel_h') or p.HasField('kernel_w')
        if p.global_pooling:
            if has_kernel:
                raise self.error('global_pooling takes no kernel size')
        elif p.HasField('kernel_size') == (p.HasField('kernel_h') and p.HasField('kernel_w')):
            raise self.error('give kernel_size, or kernel_h and kernel_w')
        self._geometries = {}  # bottom shape -> geometry's answer

    def _hw(self, single, h, w, default):
        p = self.pool_param
        if p.HasField(h) or p.HasField(w):
            if p.HasField(single):
                raise self.error('give %s or %s and %s, not both' % (single, h, w))
            return getattr(p, h), getattr(p, w)
        value = getattr(p, single) if p.HasField(single) else default
        return value, value

    def geometry(self, bottom_shape):
        """(kernel, stride, pad, out) as (h, w) pairs for a bottom of this shape."""
        return _cached(self._geometries, tuple(bottom_shape), self._work_out_geometry)

    def _work_out_geometry(self, bottom_shape):
        if len(bottom_shape) != 4:
            raise self.shape_error('needs a 4-axis bottom (num, channels, height, width)',
                                   bottom_shape)
        p = self.pool_param
        H, W = bottom_shape[2:]
        stride = self._hw('stride', 'stride_h', 'stride_w', 1)
        pad = self._hw('pad', 'pad_h', 'pad_w', 0)
        if p.global_pooling:
            kernel = (H, W)
            if pad != (0, 0) or stride != (1, 1):
                raise self.error('global_pooling needs pad 0 and stride 1')
        else:
            kernel = self._hw('kernel_size', 'kernel_h', 'kernel_w', None)
        try:
            if p.round_mode == _Pool.FLOOR:
                # Rounding down, every window starts inside image + leading pad, so
                # Caffe's drop-the-last-window rule never fires.
                if pad[0] >= kernel[0] or pad[1] >= kernel[1]:
                    raise ShapeError('pooling pad %s must be smaller than kernel %s'
                                     % (pad, kernel))
                out = tuple(conv_output_size(n, k, s, q)
                            for n, k, s, q in zip((H, W), kernel, stride, pad))
            else:
                out = tuple(pool_output_size(n, k, s, q)
                            for n, k, s, q in zip((H, W), kernel, stride, pad))
        except ShapeError as err:
            raise self.shape_error(str(err), bottom_shape) from None
        return tuple(kernel), tuple(stride), tuple(pad), out

    def top_shapes(self, bottom_shapes):
        shape = tuple(bottom_shapes[0])
        out = self.geometry(shape)[3]
        return [shape[:2] + out] * self.num_tops()

    def forward(self, bottoms, params):
        x = bottoms[0]
        kernel, stride, pad, out = self.geometry(tuple(x.shape))
        if self.method == _Pool.AVE:
            return [_ave_pool(x, kernel, stride, pad, out)]
        with_mask = self.num_tops() > 1
        top, mask = _max_pool(x, kernel, stride, pad, out, with_mask)
        return [top, mask.to(x.dtype)] if with_mask else [top]


@register
class Crop(Layer):
    """Caffe's Crop: bottom 0 cut to bottom 1's shape from ``axis`` on.

    ``offset`` gives one offset for every cropped axis, or one per cropped axis;
    none means offset 0.
    """
    type = 'Crop'
    bottom_counts = (2, 2)

    def __init__(self, layer_param, phase):
        super().__init__(layer_param, phase)
        self._indices = {}  # bottom shapes -> the slices that crop

    def offsets(self, bottom_shapes):
        """Start index of the crop along every axis of bottom 0."""
        data, ref = (tuple(s) for s in bottom_shapes)
        if len(data) != len(ref):
            raise self.shape_error('both bottoms need the same number of axes', data, ref)
        p = self.layer_param.crop_param
        axis = self.canonical_axis(p.axis, len(data), data)
        given = list(p.offset)
        cropped = len(data) - axis
        if len(given) > 1 and len(given) != cropped:
            raise self.shape_error('%d offsets given for %d cropped axes (from axis %d)'
                                   % (len(given), cropped, axis), data, ref)
        offsets = []
        for i in range(len(data)):
            if i < axis:
                offsets.append(0)
                continue
            off = given[0] if len(given) == 1 else (given[i - axis] if given else 0)
            if data[i] - off < ref[i]:
                raise self.shape_error('crop of size %d at offset %d does not fit axis %d of size %d'
                                       % (ref[i], off, i, data[i]), data, ref)
            offsets.append(off)
        return offsets

    def top_shapes(self, bottom_shapes):
        data, ref = (tuple(s) for s in bottom_shapes)
        self.offsets(bottom_shapes)
        axis = self.canonical_axis(self.layer_param.crop_param.axis, len(data), data)
        return [data[:axis] + ref[axis:]]

    def forward(self, bottoms, params):
        data, ref = bottoms
        index = _cached(self._indices, (tuple(data.shape), tuple(ref.shape)), self._index)
        if (data.requires_grad and torch.is_grad_enabled() and type(data) is torch.Tensor
                and not kernels.tracing()):
            return [_CropFunction.apply(data, index)]
        return [data[index]]

    def _index(self, shapes):
        offsets = self.offsets(shapes)
        (out_shape,) = self.top_shapes(shapes)
        return tuple(slice(o, o + n) for o, n in zip(offsets, out_shape))


class _CropFunction(torch.autograd.Function):
    """``data[index]`` whose backward writes the top diff into a zeroed buffer by
    one slice assignment, as Caffe's CropLayer::Backward_cpu (zero the bottom
    diff, copy the rows back); autograd's own is a chain of slice scatters, one
    full-size buffer per sliced axis."""

    @staticmethod
    def forward(ctx, data, index):
        ctx.shape, ctx.index = data.shape, index
        return data[index]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, top_diff):
        diff = top_diff.new_zeros(ctx.shape)
        diff[ctx.index] = top_diff
        return diff, None


# ---- SPP and Im2col --------------------------------------------------------------------

_SPP = caffe_pb2.SPPParameter


def spp_level_geometry(height, width, level):
    """(kernel, stride, pad) as (h, w) pairs of SPP pyramid level ``level``.

    Caffe pools level i into 2^i x 2^i bins: kernel = stride = ceil(size / bins), and
    pad = (kernel * bins - size + 1) // 2 (src/caffe/layers/spp_layer.cpp,
    GetPoolingParam).

    >>> spp_level_geometry(7, 6, 2)
    ((2, 2), (2, 2), (1, 1))
    >>> spp_level_geometry(13, 13, 1)
    ((7, 7), (7, 7), (1, 1))
    """
    bins = 2 ** level
    kernel, pad = [], []
    for size in (height, width):
        k = -(-size // bins)
        kernel.append(k)
        pad.append((k * bins - size + 1) // 2)
    return tuple(kernel), tuple(kernel), tuple(pad)


@register
class SPP(Layer):
    """Caffe's spatial pyramid pooling: level i of ``pyramid_height`` pools the
    (N, C, H, W) bottom into about 2^i x 2^i bins with Caffe's Pooling (MAX or AVE,
    kernel, stride and pad from :func:`spp_level_geometry`); each level is flattened
    to (N, C * bins) and the levels are concatenated in order.

    With ``pyramid_height: 1`` Caffe skips the flatten and concat: the top is the
    pooled (N, C, 1, 1) blob. A level whose pad reaches its kernel (a bottom too
    small for 2^i bins) is an error, as Caffe's Pooling CHECK.
    """
    type = 'SPP'

    def __init__(self, layer_param, phase):
        super().__init__(layer_param, phase)
        p = layer_param.spp_param
        if p.pyramid_height < 1:
            raise self.error('spp_param.pyramid_height must be at least 1')
        if p.pool not in (_SPP.MAX, _SPP.AVE):
            raise self.error('SPP pooling method %s is not supported'
                             % _SPP.PoolMethod.Name(p.pool))
        self.spp_param = p
        self._levels = {}  # bottom shape -> [(kernel, stride, pad, out)] per level

    def levels(self, bottom_shape):
        """(kernel, stride, pad, out) of each pyramid level, as (h, w) pairs."""
        return _cached(self._levels, tuple(bottom_shape), self._work_out_levels)

    def _work_out_levels(self, shape):
        if len(shape) != 4:
            raise self.shape_error('needs a 4-axis bottom (num, channels, height, width)',
                                   shape)
        H, W = shape[2:]
        if H < 1 or W < 1:
            raise self.shape_error('input dimensions cannot be zero', shape)
        levels = []
        for level in range(self.spp_param.pyramid_height):
            kernel, stride, pad = spp_level_geometry(H, W, level)
            try:
                out = tuple(pool_output_size(n, k, s, q)
                            for n, k, s, q in zip((H, W), kernel, stride, pad))
            except ShapeError as err:
                raise self.shape_error('pyramid level %d: %s' % (level, err), shape) from None
            levels.append((kernel, stride, pad, out))
        return levels

    def top_shapes(self, bottom_shapes):
        shape = tuple(bottom_shapes[0])
        levels = self.levels(shape)
        if len(levels) == 1:
            return [shape[:2] + levels[0][3]]
        return [(shape[0], sum(shape[1] * out[0] * out[1] for *_, out in levels))]

    def forward(self, bottoms, params):
        x = bottoms[0]
        pooled = []
        for kernel, stride, pad, out in self.levels(tuple(x.shape)):
            if self.spp_param.pool == _SPP.MAX:
                pooled.append(_max_pool(x, kernel, stride, pad, out, False)[0])
            else:
                pooled.append(_ave_pool(x, kernel, stride, pad, out))
        if len(pooled) == 1:
            return pooled
        return [torch.cat([p.reshape(x.shape[0], -1) for p in pooled], dim=1)]


def im2col(x, kernel, stride, pad, dilation):
    """Caffe's im2col on (B, C, *spatial): (B, C * prod(kernel), *out), row
    ``(c * k_1 + i_1) * k_2 + i_2 ...`` holding the input under kernel tap (i_1, i_2,
    ...) of every output position; zero padding. Its autograd is col2im.

    >>> x = torch.arange(9.).reshape(1, 1, 3, 3)
    >>> im2col(x, (2, 2), (1, 1), (0, 0), (1, 1))[0, :, 0, 0].tolist()
    [0.0, 1.0, 3.0, 4.0]
    """
    n = len(kernel)
    widths = []
    for p in reversed(pad):
        widths += [p, p]
    cols = F.pad(x, widths)
    for i in range(n):
        extent = dilation[i] * (kernel[i] - 1) + 1
        # windows along spatial axis i become a trailing axis of their taps
        cols = cols.unfold(2 + i, extent, stride[i])[..., ::dilation[i]]
    # (B, C, *out, *kernel) -> (B, C, *kernel, *out)
    order = [0, 1] + list(range(2 + n, 2 + 2 * n)) + list(range(2, 2 + n))
    cols = cols.permute(order)
    return cols.reshape((x.shape[0], x.shape[1] * count(kernel)) + tuple(cols.shape[2 + n:]))


@register
class Im2col(Layer):
    """Caffe's Im2col: the patches a Convolution with this ``convolution_param``
    (kernel, stride, pad, dilation, axis) would see, as channels: top
    (..., C * prod(kernel), *out), laid out as Caffe's im2col (see :func:`im2col`).
    The gradient is Caffe's col2im, overlapping patches summed."""
    type = 'Im2col'

    def __init__(self, layer_param, phase):
        super().__init__(layer_param, phase)
        self._geometries = {}

    def geometry(self, bottom_shape):
        """(channel axis, kernel, stride, pad, dilation) for a bottom of this shape."""
        return _cached(self._geometries, len(bottom_shape),
                       lambda ndim: self._work_out_geometry(tuple(bottom_shape)))

    def _work_out_geometry(self, shape):
        return conv_geometry(self, self.layer_param.convolution_param, shape)

    def top_shapes(self, bottom_shapes):
        shape = tuple(bottom_shapes[0])
        axis, kernel, stride, pad, dilation = self.geometry(shape)
        try:
            out = tuple(conv_output_size(n, k, s, q, d) for n, k, s, q, d in
                        zip(shape[axis + 1:], kernel, stride, pad, dilation))
        except ShapeError as err:
            raise self.shape_error(str(err), shape) from None
        return [shape[:axis] + (shape[axis] * count(kernel),) + out]

    def forward(self, bottoms, params):
        x = bottoms[0]
        shape = tuple(x.shape)
        axis, kernel, stride, pad, dilation = self.geometry(shape)
        (top_shape,) = self.top_shapes([shape])
        flat = x.reshape((count(shape, 0, axis),) + shape[axis:])
        return [im2col(flat, kernel, stride, pad, dilation).reshape(top_shape)]
