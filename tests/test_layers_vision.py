"""Convolution, Deconvolution, Pooling, Crop and LRN against hand-computed values,
explicit loops written from Caffe's formulas, and finite-difference gradients."""
import itertools

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from torchcaffe import caffe_pb2
from torchcaffe.errors import ShapeError, CaffeError
from torchcaffe.layer_types import create_layer


def make_layer(text, phase=caffe_pb2.TEST):
    param = caffe_pb2.LayerParameter()
    text_format.Merge(text, param)
    if not param.name:
        param.name = 'lyr'
    if not param.top:
        param.top.append('out')
    return create_layer(param, phase)


def rand(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64)


# ---- Convolution -----------------------------------------------------------------

def conv_loops(x, w, b, stride, pad, dilation, group):
    """Direct convolution, one output value at a time, zero padding."""
    n, c, h, wd = x.shape
    m, cg, kh, kw = w.shape
    oh = (h + 2 * pad[0] - (dilation[0] * (kh - 1) + 1)) // stride[0] + 1
    ow = (wd + 2 * pad[1] - (dilation[1] * (kw - 1) + 1)) // stride[1] + 1
    out = np.zeros((n, m, oh, ow))
    per_group = m // group
    for i, o, y, xx in itertools.product(range(n), range(m), range(oh), range(ow)):
        g = o // per_group
        total = 0.0 if b is None else b[o]
        for ci, ky, kx in itertools.product(range(cg), range(kh), range(kw)):
            r = y * stride[0] - pad[0] + ky * dilation[0]
            s = xx * stride[1] - pad[1] + kx * dilation[1]
            if 0 <= r < h and 0 <= s < wd:
                total += x[i, g * cg + ci, r, s] * w[o, ci, ky, kx]
        out[i, o, y, xx] = total
    return out


def test_conv_2x2_kernel_by_hand():
    conv = make_layer('type: "Convolution" convolution_param { num_output: 1 kernel_size: 2 }')
    x = torch.arange(9, dtype=torch.float64).reshape(1, 1, 3, 3)
    w = torch.tensor([[[[1., 2.], [3., 4.]]]], dtype=torch.float64)
    b = torch.tensor([0.5], dtype=torch.float64)
    (y,) = conv.forward([x], [w, b])
    # top-left window [[0,1],[3,4]] -> 0*1 + 1*2 + 3*3 + 4*4 + 0.5 = 27.5
    expected = [[[[27.5, 37.5], [57.5, 67.5]]]]
    assert y.tolist() == expected


@pytest.mark.parametrize('text, stride, pad, dilation, group', [
    ('kernel_size: 3 pad: 1', (1, 1), (1, 1), (1, 1), 1),
    ('kernel_size: 3 stride: 2 pad: 2 dilation: 2 group: 2', (2, 2), (2, 2), (2, 2), 2),
    ('kernel_h: 2 kernel_w: 3 stride_h: 2 stride_w: 1 pad_h: 0 pad_w: 1', (2, 1), (0, 1), (1, 1), 1),
    ('kernel_size: 2 kernel_size: 3 stride: 1 stride: 2 pad: 1 pad: 0', (1, 2), (1, 0), (1, 1), 1),
])
def test_conv_matches_explicit_loops(text, stride, pad, dilation, group):
    conv = make_layer('type: "Convolution" convolution_param { num_output: 4 %s }' % text)
    x = rand(2, 4, 6, 7)
    (wshape, bshape) = conv.param_shapes([tuple(x.shape)])
    w, b = rand(*wshape, seed=1), rand(*bshape, seed=2)
    (y,) = conv.forward([x], [w, b])
    expected = conv_loops(x.numpy(), w.numpy(), b.numpy(), stride, pad, dilation, group)
    assert tuple(y.shape) == expected.shape == conv.top_shapes([tuple(x.shape)])[0]
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-12, atol=1e-12)


def test_conv_param_shapes_follow_caffe_layout():
    conv = make_layer('type: "Convolution" convolution_param '
                      '{ num_output: 6 kernel_h: 3 kernel_w: 5 group: 3 }')
    assert conv.param_shapes([(1, 9, 10, 10)]) == [(6, 3, 3, 5), (6,)]
    no_bias = make_layer('type: "Convolution" convolution_param '
                         '{ num_output: 6 kernel_size: 1 bias_term: false }')
    assert no_bias.param_shapes([(1, 9, 10, 10)]) == [(6, 9, 1, 1)]
    (y,) = no_bias.forward([rand(1, 9, 2, 2)], [rand(6, 9, 1, 1)])
    assert tuple(y.shape) == (1, 6, 2, 2)


def test_conv_fcn_geometry():
    conv = make_layer('type: "Convolution" convolution_param { num_output: 64 kernel_size: 3 pad: 100 }')
    assert conv.top_shapes([(1, 3, 500, 500)]) == [(1, 64, 698, 698)]
    fc6 = make_layer('type: "Convolution" convolution_param { num_output: 4096 kernel_size: 7 }')
    assert fc6.top_shapes([(1, 512, 22, 22)]) == [(1, 4096, 16, 16)]


def test_conv_errors_name_the_layer():
    both = make_layer('name: "c1" type: "Convolution" convolution_param '
                      '{ num_output: 2 kernel_size: 3 kernel_h: 3 kernel_w: 3 }')
    with pytest.raises(CaffeError, match="c1.*not both"):
        both.top_shapes([(1, 1, 5, 5)])
    big = make_layer('name: "c2" type: "Convolution" convolution_param { num_output: 2 kernel_size: 7 }')
    with pytest.raises(ShapeError, match=r"c2.*\(1, 1, 5, 5\)"):
        big.top_shapes([(1, 1, 5, 5)])
    grouped = make_layer('name: "c3" type: "Convolution" convolution_param '
                         '{ num_output: 2 kernel_size: 1 group: 2 }')
    with pytest.raises(ShapeError, match="c3.*divisible by group"):
        grouped.param_shapes([(1, 3, 5, 5)])


def test_conv_gradient_matches_finite_differences():
    conv = make_layer('type: "Convolution" convolution_param '
                      '{ num_output: 2 kernel_size: 3 stride: 2 pad: 1 group: 2 }')
    x = rand(1, 2, 5, 5).requires_grad_()
    w = rand(2, 1, 3, 3, seed=1).requires_grad_()
    b = rand(2, seed=2).requires_grad_()
    assert torch.autograd.gradcheck(lambda *a: conv.forward([a[0]], list(a[1:]))[0], (x, w, b))


# ---- Deconvolution ---------------------------------------------------------------

def test_deconv_shapes_and_layout():
    up = make_layer('type: "Deconvolution" convolution_param '
                    '{ num_output: 21 kernel_size: 4 stride: 2 bias_term: false }')
    assert up.top_shapes([(1, 21, 16, 16)]) == [(1, 21, 34, 34)]
    assert up.param_shapes([(1, 21, 16, 16)]) == [(21, 21, 4, 4)]
    grouped = make_layer('type: "Deconvolution" convolution_param '
                         '{ num_output: 6 kernel_size: 64 stride: 32 group: 3 }')
    assert grouped.param_shapes([(1, 9, 16, 16)]) == [(9, 2, 64, 64), (6,)]
    assert grouped.top_shapes([(1, 9, 16, 16)]) == [(1, 6, 544, 544)]


@pytest.mark.parametrize('geometry, x_shape', [
    ('kernel_size: 3 stride: 2 pad: 1', (2, 2, 9, 7)),
    ('kernel_size: 4 stride: 2 group: 2', (2, 2, 8, 10)),
    ('kernel_h: 3 kernel_w: 2 stride: 3 dilation: 2', (1, 2, 8, 9))])
def test_deconv_is_the_adjoint_of_conv(geometry, x_shape):
    # Sizes are chosen so that the convolution's floor drops nothing.
    # <conv(x), y> == <x, deconv(y)> when both use the same (out, in/g, kh, kw) weights.
    conv = make_layer('type: "Convolution" convolution_param '
                      '{ num_output: 4 bias_term: false %s }' % geometry)
    deconv = make_layer('type: "Deconvolution" convolution_param '
                        '{ num_output: 2 bias_term: false %s }' % geometry)
    (w_shape,) = conv.param_shapes([x_shape])
    w = rand(*w_shape, seed=3)
    (y_shape,) = conv.top_shapes([x_shape])
    assert deconv.param_shapes([y_shape]) == [w_shape]
    x, y = rand(*x_shape, seed=4), rand(*y_shape, seed=5)
    (cx,) = conv.forward([x], [w])
    (dy,) = deconv.forward([y], [w])
    assert tuple(dy.shape) == x_shape
    assert torch.allclose((cx * y).sum(), (x * dy).sum(), rtol=1e-12)


def test_deconv_bilinear_upsamples_a_ramp_linearly():
    up = make_layer('type: "Deconvolution" convolution_param { num_output: 1 kernel_size: 4 '
                    'stride: 2 pad: 1 bias_term: false weight_filler { type: "bilinear" } }')
    (w_shape,) = up.param_shapes([(1, 1, 4, 4)])
    w = torch.zeros(w_shape, dtype=torch.float64)
    up.fill_params([w], [(1, 1, 4, 4)])
    ramp = torch.arange(4, dtype=torch.float64).repeat(4, 1).reshape(1, 1, 4, 4)
    (y,) = up.forward([ramp], [w])
    # Interior columns of the 2x upsampled ramp step by 0.5 (pixel centres at half steps).
    np.testing.assert_allclose(y[0, 0, 2, 1:7].numpy(), [0.25, 0.75, 1.25, 1.75, 2.25, 2.75])


def test_deconv_gradient_matches_finite_differences():
    deconv = make_layer('type: "Deconvolution" convolution_param '
                        '{ num_output: 2 kernel_size: 3 stride: 2 pad: 1 }')
    x = rand(1, 2, 3, 3).requires_grad_()
    w = rand(2, 2, 3, 3, seed=1).requires_grad_()
    b = rand(2, seed=2).requires_grad_()
    assert torch.autograd.gradcheck(lambda *a: deconv.forward([a[0]], list(a[1:]))[0], (x, w, b))


# ---- Pooling ---------------------------------------------------------------------

def caffe_pool_loops(x, kernel, stride, pad, method):
    """Caffe's pooling_layer.cpp arithmetic, written out: output size, window bounds,
    strict '>' max scan (mask = first max), AVE divisor clipped to size + pad."""
    n, c, h, w = x.shape

    def out_size(size, k, s, p):
        o = int(np.ceil((size + 2 * p - k) / s)) + 1
        if p > 0 and (o - 1) * s >= size + p:
            o -= 1
        return o
    oh, ow = out_size(h, kernel[0], stride[0], pad[0]), out_size(w, kernel[1], stride[1], pad[1])
    top = np.zeros((n, c, oh, ow))
    mask = np.full((n, c, oh, ow), -1)
    for i, ch, ph, pw in itertools.product(range(n), range(c), range(oh), range(ow)):
        hs, ws = ph * stride[0] - pad[0], pw * stride[1] - pad[1]
        if method == 'MAX':
            he, we = min(hs + kernel[0], h), min(ws + kernel[1], w)
            hs, ws = max(hs, 0), max(ws, 0)
            best = -np.finfo(np.float32).max
            for r, s in itertools.product(range(hs, he), range(ws, we)):
                if x[i, ch, r, s] > best:
                    best, mask[i, ch, ph, pw] = x[i, ch, r, s], r * w + s
            top[i, ch, ph, pw] = best
        else:
            he, we = min(hs + kernel[0], h + pad[0]), min(ws + kernel[1], w + pad[1])
            size = (he - hs) * (we - ws)
            hs, ws, he, we = max(hs, 0), max(ws, 0), min(he, h), min(we, w)
            top[i, ch, ph, pw] = x[i, ch, hs:he, ws:we].sum() / size
    return top, mask


def pooling(method, kernel, stride, pad, extra=''):
    return make_layer('type: "Pooling" top: "t" %s pooling_param { pool: %s kernel_h: %d '
                      'kernel_w: %d stride_h: %d stride_w: %d pad_h: %d pad_w: %d }'
                      % (extra, method, kernel[0], kernel[1], stride[0], stride[1], pad[0], pad[1]))


POOL_CASES = [((5, 5), (3, 3), (2, 2), (0, 0)),   # ceil: 2x2 exactly
              ((6, 7), (3, 3), (2, 2), (0, 0)),   # ceil adds a partial last window
              ((3, 3), (2, 2), (2, 2), (1, 1)),   # ceil gives 3, last window dropped -> 2
              ((4, 5), (3, 3), (2, 2), (1, 1)),   # AVE divisor clipped to size + pad
              ((5, 6), (3, 2), (1, 2), (2, 1)),   # pad > kernel / 2: not PyTorch's own rule
              ((7, 7), (3, 3), (3, 3), (2, 2)),
              ((6, 6), (2, 2), (2, 2), (0, 0)),
              ((5, 4), (1, 1), (3, 3), (0, 0))]   # stride > kernel: an empty last window


@pytest.mark.parametrize('method', ['MAX', 'AVE'])
@pytest.mark.parametrize('size, kernel, stride, pad', POOL_CASES)
def test_pooling_matches_caffe_loops(method, size, kernel, stride, pad):
    x = rand(2, 2, *size)
    layer = pooling(method, kernel, stride, pad)
    (y,) = layer.forward([x], [])
    expected, _ = caffe_pool_loops(x.numpy(), kernel, stride, pad, method)
    assert layer.top_shapes([tuple(x.shape)]) == [expected.shape]
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-12, atol=1e-12)


def test_pooling_sizes_by_hand():
    assert pooling('MAX', (3, 3), (2, 2), (0, 0)).top_shapes([(1, 1, 5, 5)]) == [(1, 1, 2, 2)]
    assert pooling('MAX', (3, 3), (2, 2), (0, 0)).top_shapes([(1, 1, 6, 6)]) == [(1, 1, 3, 3)]
    assert pooling('MAX', (2, 2), (2, 2), (1, 1)).top_shapes([(1, 1, 3, 3)]) == [(1, 1, 2, 2)]
    assert pooling('MAX', (2, 2), (2, 2), (0, 0)).top_shapes([(1, 64, 349, 349)]) == [(1, 64, 175, 175)]


def test_ave_pooling_divides_by_window_clipped_to_size_plus_pad():
    ones = torch.ones(1, 1, 3, 3, dtype=torch.float64)
    (y,) = pooling('AVE', (2, 2), (2, 2), (1, 1)).forward([ones], [])
    # Each window spans 2 x 2 of the padded image: 1, 2 or 4 ones over a divisor of 4.
    assert y[0, 0].tolist() == [[0.25, 0.5], [0.5, 1.0]]
    (y,) = pooling('AVE', (3, 3), (2, 2), (1, 1)).forward([torch.ones(1, 1, 4, 4)], [])
    # Rows/cols: windows [-1, 2), [1, 4), [3, 5): divisors 3, 3, 2 (clipped at 4 + 1).
    assert y[0, 0, 0, 0].item() == pytest.approx(4 / 9)
    assert y[0, 0, 2, 2].item() == pytest.approx(1 / 4)
    assert y[0, 0, 1, 2].item() == pytest.approx(3 / 6)


def test_max_pooling_ignores_padding():
    x = -torch.ones(1, 1, 3, 3) - torch.arange(9.).reshape(1, 1, 3, 3)
    (y,) = pooling('MAX', (2, 2), (2, 2), (1, 1)).forward([x], [])
    assert y[0, 0].tolist() == [[-1.0, -2.0], [-4.0, -5.0]]


@pytest.mark.parametrize('kernel, stride, pad', [((2, 2), (1, 1), (0, 0)),
                                                 ((3, 3), (1, 1), (2, 2))])
def test_max_pooling_ties_route_gradient_to_first_max(kernel, stride, pad):
    x = torch.zeros(1, 1, 3, 3, dtype=torch.float64, requires_grad=True)
    layer = pooling('MAX', kernel, stride, pad, extra='top: "mask"')
    y, mask = layer.forward([x], [])
    y.backward(torch.ones_like(y))
    _, expected_mask = caffe_pool_loops(x.detach().numpy(), kernel, stride, pad, 'MAX')
    assert mask.long().numpy().tolist() == expected_mask.tolist()
    expected_grad = np.bincount(expected_mask.ravel(), minlength=9).reshape(3, 3)
    assert x.grad[0, 0].numpy().tolist() == expected_grad.tolist()
    if kernel == (2, 2):  # every window's first element is its top-left corner
        assert x.grad[0, 0].tolist() == [[1, 1, 0], [1, 1, 0], [0, 0, 0]]


def test_global_pooling():
    x = rand(2, 3, 4, 5)
    ave = make_layer('type: "Pooling" pooling_param { pool: AVE global_pooling: true }')
    mx = make_layer('type: "Pooling" pooling_param { pool: MAX global_pooling: true }')
    assert ave.top_shapes([(2, 3, 4, 5)]) == [(2, 3, 1, 1)]
    assert torch.allclose(ave.forward([x], [])[0], x.mean(dim=(2, 3), keepdim=True))
    assert torch.equal(mx.forward([x], [])[0], x.amax(dim=(2, 3), keepdim=True))


def test_floor_round_mode():
    layer = make_layer('type: "Pooling" pooling_param { kernel_size: 3 stride: 2 round_mode: FLOOR }')
    assert layer.top_shapes([(1, 1, 6, 6)]) == [(1, 1, 2, 2)]


@pytest.mark.parametrize('method', ['MAX', 'AVE'])
def test_pooling_gradient_matches_finite_differences(method):
    x = rand(1, 2, 5, 6).requires_grad_()  # distinct values: MAX is differentiable
    for geometry in [((3, 3), (2, 2), (1, 1)), ((2, 3), (2, 1), (0, 2))]:
        layer = pooling(method, *geometry)
        assert torch.autograd.gradcheck(lambda t: layer.forward([t], [])[0], (x,))


def test_pooling_errors_name_the_layer():
    layer = make_layer('name: "pool9" type: "Pooling" pooling_param { kernel_size: 2 pad: 2 }')
    with pytest.raises(ShapeError, match="pool9.*pad"):
        layer.top_shapes([(1, 1, 4, 4)])
    with pytest.raises(ShapeError, match="pool9.*4-axis"):
        layer.top_shapes([(1, 4, 4)])


# ---- Crop ------------------------------------------------------------------------

def crop(text=''):
    return make_layer('type: "Crop" bottom: "a" bottom: "b" crop_param { %s }' % text)


def test_crop_single_offset_applies_to_every_cropped_axis():
    x = torch.arange(2 * 3 * 6 * 7, dtype=torch.float64).reshape(2, 3, 6, 7)
    ref = torch.zeros(1, 1, 3, 4)
    (y,) = crop('axis: 2 offset: 2').forward([x, ref], [])
    assert torch.equal(y, x[:, :, 2:5, 2:6])
    assert crop('offset: 2').top_shapes([(2, 3, 6, 7), (1, 1, 3, 4)]) == [(2, 3, 3, 4)]


def test_crop_offsets_per_axis_and_default():
    x = rand(2, 3, 6, 7)
    ref = torch.zeros(1, 2, 3, 4)
    (y,) = crop('axis: 1 offset: 1 offset: 0 offset: 3').forward([x, ref], [])
    assert torch.equal(y, x[:, 1:3, 0:3, 3:7])
    (y,) = crop('').forward([x, ref], [])           # axis 2, offset 0
    assert torch.equal(y, x[:, :, 0:3, 0:4])
    (y,) = crop('axis: -1 offset: 2').forward([x, ref], [])
    assert torch.equal(y, x[:, :, :, 2:6])


def test_crop_fcn_offsets():
    assert crop('axis: 2 offset: 19').top_shapes([(1, 21, 544, 544), (1, 3, 500, 500)]) == \
        [(1, 21, 500, 500)]


def test_crop_that_does_not_fit_names_layer_and_shapes():
    layer = make_layer('name: "score" type: "Crop" crop_param { axis: 2 offset: 5 }')
    with pytest.raises(ShapeError, match=r"score.*offset 5.*\(1, 2, 8, 8\).*\(1, 2, 4, 4\)"):
        layer.top_shapes([(1, 2, 8, 8), (1, 2, 4, 4)])
    wrong_count = crop('axis: 1 offset: 0 offset: 1')
    with pytest.raises(ShapeError, match="2 offsets given for 3 cropped axes"):
        wrong_count.top_shapes([(1, 2, 8, 8), (1, 2, 4, 4)])


def test_crop_gradient_is_zero_outside_the_window():
    x = rand(1, 1, 4, 4).requires_grad_()
    (y,) = crop('offset: 1').forward([x, torch.zeros(1, 1, 2, 2)], [])
    y.backward(torch.ones_like(y))
    expected = torch.zeros(4, 4, dtype=torch.float64)
    expected[1:3, 1:3] = 1
    assert torch.equal(x.grad[0, 0], expected)


# ---- LRN -------------------------------------------------------------------------

def test_lrn_across_channels_matches_caffe_formula():
    layer = make_layer('type: "LRN" lrn_param { local_size: 3 alpha: 0.625 beta: 0.75 k: 2 }')
    x = rand(2, 5, 3, 2)
    (y,) = layer.forward([x], [])
    a = x.numpy()
    expected = np.empty_like(a)
    for c in range(5):
        window = a[:, max(0, c - 1):c + 2]
        scale = 2 + 0.625 / 3 * (window ** 2).sum(axis=1)
        expected[:, c] = a[:, c] * scale ** -0.75
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-12)


def test_lrn_alexnet_defaults_by_hand():
    layer = make_layer('type: "LRN" lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 }')
    x = torch.zeros(1, 5, 1, 1, dtype=torch.float64)
    x[0, 2] = 100.0
    (y,) = layer.forward([x], [])
    # Channel 2's window holds only itself: 100 / (1 + 1e-4 / 5 * 1e4) ^ 0.75, with
    # alpha as the float32 the prototxt stores.
    alpha = float(np.float32(1e-4))
    assert y[0, 2, 0, 0].item() == pytest.approx(100 / (1 + alpha / 5 * 1e4) ** 0.75, rel=1e-12)
    assert y[0, 2, 0, 0].item() == pytest.approx(100 / 1.2 ** 0.75, rel=1e-6)
    assert y[0, 0, 0, 0].item() == 0


def test_lrn_within_channel_uses_ave_pooling_of_squares():
    layer = make_layer('type: "LRN" lrn_param { local_size: 3 alpha: 0.875 beta: 0.5 '
                       'norm_region: WITHIN_CHANNEL }')
    x = rand(1, 2, 4, 4)
    (y,) = layer.forward([x], [])
    mean, _ = caffe_pool_loops((x ** 2).numpy(), (3, 3), (1, 1), (1, 1), 'AVE')
    np.testing.assert_allclose(y.numpy(), x.numpy() * (1 + 0.875 * mean) ** -0.5, rtol=1e-12)


@pytest.mark.parametrize('region', ['ACROSS_CHANNELS', 'WITHIN_CHANNEL'])
def test_lrn_gradient_matches_finite_differences(region):
    layer = make_layer('type: "LRN" lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 '
                       'norm_region: %s }' % region)
    x = rand(1, 4, 3, 3).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: layer.forward([t], [])[0], (x,))


def test_lrn_rejects_even_local_size():
    with pytest.raises(CaffeError, match="odd"):
        make_layer('name: "norm1" type: "LRN" lrn_param { local_size: 4 }')


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
@pytest.mark.parametrize('method', ['MAX', 'AVE'])
@pytest.mark.parametrize('size, kernel, stride, pad', POOL_CASES[:5])
def test_pooling_on_cuda_matches_caffe_loops_including_ties(method, size, kernel, stride, pad):
    x = torch.zeros(1, 1, *size, dtype=torch.float64)
    x[..., 1:, 1:] = 1.0                      # many tied maxima
    x = x.cuda().requires_grad_()
    (y,) = pooling(method, kernel, stride, pad).forward([x], [])
    y.backward(torch.ones_like(y))
    expected, mask = caffe_pool_loops(x.detach().cpu().numpy(), kernel, stride, pad, method)
    np.testing.assert_allclose(y.detach().cpu().numpy(), expected, rtol=1e-12)
    if method == 'MAX':
        grad = np.bincount(mask.ravel(), minlength=x.numel()).reshape(size)
        assert x.grad[0, 0].cpu().numpy().tolist() == grad.tolist()
