"""Embed, Tile, Reduction, Filter, BatchReindex, Parameter, SPP and Im2col against
hand-computed arrays and loops written from Caffe's source, with float64
finite-difference gradients; ONNX export refuses them by name."""
import itertools

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from test_layers_common import make_layer, rand
from torchcaffe import caffe_pb2
from torchcaffe.errors import CaffeError, ShapeError, UnknownLayerError
from torchcaffe.layer_types.vision import spp_level_geometry
from torchcaffe.net import Net


def gradcheck(fn, *inputs):
    return torch.autograd.gradcheck(fn, tuple(t.detach().requires_grad_() for t in inputs))


def net_from(text, phase=caffe_pb2.TRAIN):
    param = caffe_pb2.NetParameter()
    text_format.Merge(text, param)
    return Net(param, phase=phase)


# ---- Embed ---------------------------------------------------------------------------

def test_embed_picks_weight_rows_and_adds_the_bias():
    layer = make_layer('type: "Embed" embed_param { input_dim: 3 num_output: 2 }')
    assert layer.param_shapes([(2, 2)]) == [(3, 2), (2,)]
    assert layer.top_shapes([(2, 2)]) == [(2, 2, 2)]
    weight = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], dtype=torch.float64)
    bias = torch.tensor([0.5, -0.5], dtype=torch.float64)
    index = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    (top,) = layer.forward([index], [weight, bias])
    assert top.tolist() == [[[5.5, 5.5], [1.5, 1.5]], [[1.5, 1.5], [3.5, 3.5]]]


def test_embed_backward_accumulates_into_repeated_rows():
    layer = make_layer('type: "Embed" embed_param { input_dim: 3 num_output: 2 }')
    weight, bias = rand(3, 2).requires_grad_(), rand(2, seed=1).requires_grad_()
    index = torch.tensor([0.0, 2.0, 0.0, 0.0])
    (top,) = layer.forward([index], [weight, bias])
    top_diff = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]], dtype=torch.float64)
    top.backward(top_diff)
    # rows 0 gets items 0, 2 and 3; row 1 nothing; row 2 item 1 (Caffe's axpy per item)
    assert weight.grad.tolist() == [[13.0, 16.0], [0.0, 0.0], [3.0, 4.0]]
    assert bias.grad.tolist() == [16.0, 20.0]
    assert gradcheck(lambda w, b: layer.forward([index], [w, b])[0], weight, bias)


def test_embed_without_bias_and_its_fillers():
    layer = make_layer('type: "Embed" embed_param { input_dim: 4 num_output: 3 bias_term: false '
                       'weight_filler { type: "constant" value: 2 } }')
    assert layer.param_shapes([(5,)]) == [(4, 3)]
    w = torch.zeros(4, 3)
    layer.fill_params([w], [(5,)])
    assert torch.all(w == 2)
    (top,) = layer.forward([torch.tensor([3.0, 1.0])], [rand(4, 3)])
    assert top.shape == (2, 3)


def test_embed_index_errors_name_the_layer():
    layer = make_layer('name: "words" type: "Embed" embed_param { input_dim: 3 num_output: 2 }')
    w, b = rand(3, 2), rand(2)
    with pytest.raises(CaffeError, match="'words'.*index 1.5 .*not an integer"):
        layer.forward([torch.tensor([0.0, 1.5])], [w, b])
    with pytest.raises(CaffeError, match="'words'.*index 3.0 at position 1"):
        layer.forward([torch.tensor([0.0, 3.0])], [w, b])
    with pytest.raises(CaffeError, match="'words'.*index -1.0"):
        layer.forward([torch.tensor([-1.0])], [w, b])
    with pytest.raises(CaffeError, match='input_dim must be positive'):
        make_layer('type: "Embed" embed_param { num_output: 2 }')


# ---- Tile ----------------------------------------------------------------------------

def test_tile_repeats_the_trailing_block_along_axis():
    layer = make_layer('type: "Tile" tile_param { axis: 1 tiles: 3 }')
    x = torch.tensor([[[1.0, 2.0]], [[3.0, 4.0]]], dtype=torch.float64)     # (2, 1, 2)
    assert layer.top_shapes([(2, 1, 2)]) == [(2, 3, 2)]
    (top,) = layer.forward([x], [])
    assert top.tolist() == [[[1, 2]] * 3, [[3, 4]] * 3]
    y = rand(2, 2, 3)
    (top,) = make_layer('type: "Tile" tile_param { axis: -2 tiles: 2 }').forward([y], [])
    # Caffe copies the whole (C, W) block per tile: channel c' = c mod C
    np.testing.assert_array_equal(top.numpy(), np.concatenate([y.numpy(), y.numpy()], axis=1))


def test_tile_gradient_sums_the_copies_and_tiles_must_be_positive():
    layer = make_layer('type: "Tile" tile_param { axis: 0 tiles: 2 }')
    x = rand(2, 3).requires_grad_()
    (top,) = layer.forward([x], [])
    top.backward(torch.arange(12, dtype=torch.float64).reshape(4, 3))
    assert x.grad.tolist() == [[6, 8, 10], [12, 14, 16]]
    assert gradcheck(lambda t: layer.forward([t], [])[0], x)
    with pytest.raises(CaffeError, match='tiles must be positive'):
        make_layer('type: "Tile" tile_param { tiles: 0 }')


# ---- Reduction -----------------------------------------------------------------------

X = torch.tensor([[1.0, -2.0, 0.0], [3.0, 4.0, -0.5]], dtype=torch.float64)


@pytest.mark.parametrize('op, coeff, expected, grad', [
    ('SUM', 1, [-1.0, 6.5], [[1, 1, 1], [1, 1, 1]]),
    ('ASUM', 1, [3.0, 7.5], [[1, -1, 0], [1, 1, -1]]),                # sign, 0 at 0
    ('SUMSQ', 1, [5.0, 25.25], [[2, -4, 0], [6, 8, -1]]),             # 2x
    ('MEAN', 1, [-1 / 3, 6.5 / 3], [[1 / 3] * 3] * 2),
    ('SUM', -2, [2.0, -13.0], [[-2, -2, -2], [-2, -2, -2]]),
    ('MEAN', 3, [-1.0, 6.5], [[1, 1, 1], [1, 1, 1]]),                 # coeff / count
])
def test_reduction_ops_along_axis(op, coeff, expected, grad):
    layer = make_layer('type: "Reduction" reduction_param { operation: %s axis: 1 coeff: %g }'
                       % (op, coeff))
    assert layer.top_shapes([(2, 3)]) == [(2,)]
    x = X.clone().requires_grad_()
    (top,) = layer.forward([x], [])
    np.testing.assert_allclose(top.detach().numpy(), expected, rtol=1e-15)
    top.backward(torch.ones(2, dtype=torch.float64))
    np.testing.assert_allclose(x.grad.numpy(), grad, rtol=1e-15)


@pytest.mark.parametrize('op', ['SUM', 'ASUM', 'SUMSQ', 'MEAN'])
def test_reduction_default_axis_0_gives_a_scalar_and_finite_differences(op):
    layer = make_layer('type: "Reduction" reduction_param { operation: %s coeff: 0.5 }' % op)
    x = rand(2, 3, 2)
    assert layer.top_shapes([(2, 3, 2)]) == [()]
    assert layer.forward([x], [])[0].shape == ()
    assert gradcheck(lambda t: layer.forward([t], [])[0], x)
    tail = make_layer('type: "Reduction" reduction_param { operation: %s axis: -2 }' % op)
    assert tail.top_shapes([(2, 3, 2)]) == [(2,)]
    assert gradcheck(lambda t: tail.forward([t], [])[0], x)


# ---- Filter --------------------------------------------------------------------------

def filter_layer(bottoms=3):
    names = ''.join('bottom: "b%d" ' % i for i in range(bottoms))
    tops = ''.join('top: "t%d" ' % i for i in range(bottoms - 1))
    return make_layer('name: "filt" type: "Filter" %s %s' % (names, tops))


def test_filter_forwards_the_selected_items_of_every_bottom():
    layer = filter_layer()
    a, b = rand(4, 2, 3), rand(4, 5, seed=1)
    selector = torch.tensor([[0.0], [1.0], [0.0], [-2.5]])      # any nonzero selects
    # before the first forward Caffe shapes the tops with all N items
    assert layer.top_shapes([(4, 2, 3), (4, 5), (4, 1)]) == [(4, 2, 3), (4, 5)]
    ta, tb = layer.forward([a, b, selector], [])
    assert torch.equal(ta, a[[1, 3]]) and torch.equal(tb, b[[1, 3]])


def test_filter_gradient_is_zero_for_unselected_items_and_none_to_the_selector():
    layer = filter_layer(2)
    a = rand(4, 3).requires_grad_()
    selector = torch.tensor([1.0, 0.0, 1.0, 0.0]).requires_grad_()
    (top,) = layer.forward([a, selector], [])
    top.backward(torch.ones(2, 3, dtype=torch.float64))
    assert a.grad.tolist() == [[1] * 3, [0] * 3, [1] * 3, [0] * 3]
    assert selector.grad is None
    assert gradcheck(lambda t: layer.forward([t, selector.detach()], [])[0], a)


def test_filter_with_nothing_selected_gives_empty_tops_and_zero_gradient():
    layer = filter_layer(2)
    a = rand(3, 2).requires_grad_()
    (top,) = layer.forward([a, torch.zeros(3, 1, 1)], [])
    assert top.shape == (0, 2)
    top.sum().backward()
    assert torch.all(a.grad == 0)


def test_filter_in_a_net_resizes_its_top_per_forward():
    net = net_from('''
        input: "x" input_shape { dim: 4 dim: 3 }
        input: "s" input_shape { dim: 4 dim: 1 }
        force_backward: true
        layer { name: "f" type: "Filter" bottom: "x" bottom: "s" top: "y" }
        layer { name: "r" type: "Reduction" bottom: "y" top: "loss" loss_weight: 1
                reduction_param { operation: SUMSQ } }
    ''')
    assert net.blobs['y'].shape == (4, 3)
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    out = net.forward(x=x, s=np.array([[1], [0], [0], [1]], np.float32))
    assert net.blobs['y'].shape == (2, 3) and out['loss'] == (x[[0, 3]] ** 2).sum()
    net.backward()
    np.testing.assert_array_equal(net.blobs['x'].diff, 2 * x * [[1], [0], [0], [1]])
    assert not net.blobs['s'].diff.any()
    out = net.forward(x=x, s=np.zeros((4, 1), np.float32))
    assert net.blobs['y'].shape == (0, 3) and out['loss'] == 0


def test_filter_shape_checks_name_the_layer():
    layer = filter_layer()
    with pytest.raises(ShapeError, match="'filt'.*singletons"):
        layer.top_shapes([(4, 2), (4, 2), (4, 2)])
    with pytest.raises(ShapeError, match="'filt'.*0th dimension"):
        layer.top_shapes([(4, 2), (3, 2), (4, 1)])
    with pytest.raises(CaffeError, match="'filt'.*one top per filtered bottom"):
        make_layer('name: "filt" type: "Filter" bottom: "a" bottom: "s" top: "x" top: "y"')


# ---- BatchReindex --------------------------------------------------------------------

def test_batch_reindex_gathers_items_and_accumulates_repeats():
    layer = make_layer('type: "BatchReindex" bottom: "x" bottom: "i"')
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], dtype=torch.float64)
    index = torch.tensor([2.0, 0.0, 2.0, 2.0, 1.0])
    assert layer.top_shapes([(3, 2), (5,)]) == [(5, 2)]
    x.requires_grad_()
    (top,) = layer.forward([x, index], [])
    assert top.tolist() == [[5, 6], [1, 2], [5, 6], [5, 6], [3, 4]]
    top.backward(torch.arange(10, dtype=torch.float64).reshape(5, 2))
    assert x.grad.tolist() == [[2, 3], [8, 9], [0 + 4 + 6, 1 + 5 + 7]]
    assert gradcheck(lambda t: layer.forward([t, index], [])[0], rand(3, 2, 2))


def test_batch_reindex_checks_its_indices():
    layer = make_layer('name: "reidx" type: "BatchReindex" bottom: "x" bottom: "i"')
    with pytest.raises(CaffeError, match="'reidx'.*batch index 3.0"):
        layer.forward([rand(3, 2), torch.tensor([0.0, 3.0])], [])
    with pytest.raises(CaffeError, match="'reidx'.*batch index -1.0"):
        layer.forward([rand(3, 2), torch.tensor([-1.0])], [])
    # Caffe's CHECKs compare the float, then truncate: 1.5 picks item 1
    (top,) = layer.forward([torch.arange(3.0), torch.tensor([1.5])], [])
    assert top.tolist() == [1.0]
    with pytest.raises(ShapeError, match="'reidx'.*one axis"):
        layer.top_shapes([(3, 2), (2, 1)])


# ---- Parameter -----------------------------------------------------------------------

def test_parameter_top_is_its_learnable_blob():
    layer = make_layer('type: "Parameter" parameter_param { shape { dim: 2 dim: 3 } }')
    assert layer.param_shapes([]) == [(2, 3)] and layer.top_shapes([]) == [(2, 3)]
    blob = torch.zeros(2, 3)
    layer.fill_params([blob], [])
    assert torch.all(blob == 0)
    (top,) = layer.forward([], [blob])
    assert top.data_ptr() == blob.data_ptr()


def test_parameter_in_a_net_gets_the_top_diff():
    net = net_from('''
        input: "target" input_shape { dim: 2 dim: 3 }
        layer { name: "p" type: "Parameter" top: "p" parameter_param { shape { dim: 2 dim: 3 } } }
        layer { name: "loss" type: "EuclideanLoss" bottom: "p" bottom: "target" top: "loss" }
    ''')
    assert list(net.params) == ['p'] and net.params['p'][0].data.shape == (2, 3)
    net.params['p'][0].data[...] = np.arange(6).reshape(2, 3)
    target = np.ones((2, 3), np.float32)
    out = net.forward(target=target)
    np.testing.assert_allclose(net.blobs['p'].data, np.arange(6).reshape(2, 3))
    assert out['loss'] == pytest.approx(((np.arange(6) - 1.0) ** 2).sum() / 2 / 2)
    net.backward()
    np.testing.assert_allclose(net.params['p'][0].diff,
                               (np.arange(6).reshape(2, 3) - 1.0) / 2, rtol=1e-6)


# ---- SPP -----------------------------------------------------------------------------

def caffe_pool_loops(x, kernel, stride, pad, out, ave):
    """Caffe's pooling_layer.cpp forward, one window at a time."""
    n, c, h, w = x.shape
    top = np.zeros((n, c) + out)
    for i, j, ph, pw in itertools.product(range(n), range(c), range(out[0]), range(out[1])):
        hs, ws = ph * stride[0] - pad[0], pw * stride[1] - pad[1]
        he, we = min(hs + kernel[0], h + pad[0]), min(ws + kernel[1], w + pad[1])
        size = (he - hs) * (we - ws)
        window = x[i, j, max(hs, 0):min(he, h), max(ws, 0):min(we, w)]
        top[i, j, ph, pw] = window.sum() / size if ave else window.max()
    return top


def test_spp_level_geometry_as_caffe_computes_it():
    assert spp_level_geometry(7, 6, 0) == ((7, 6), (7, 6), (0, 0))
    assert spp_level_geometry(7, 6, 1) == ((4, 3), (4, 3), (1, 0))
    assert spp_level_geometry(7, 6, 2) == ((2, 2), (2, 2), (1, 1))


@pytest.mark.parametrize('pool', ['MAX', 'AVE'])
def test_spp_concatenates_the_flattened_levels(pool):
    layer = make_layer('type: "SPP" spp_param { pyramid_height: 3 pool: %s }' % pool)
    x = rand(2, 3, 7, 6)
    assert layer.top_shapes([(2, 3, 7, 6)]) == [(2, 3 * (1 + 4 + 16))]
    (top,) = layer.forward([x], [])
    parts = []
    for level in range(3):
        kernel, stride, pad = spp_level_geometry(7, 6, level)
        bins = 2 ** level
        pooled = caffe_pool_loops(x.numpy(), kernel, stride, pad, (bins, bins), pool == 'AVE')
        parts.append(pooled.reshape(2, -1))
    np.testing.assert_allclose(top.numpy(), np.concatenate(parts, axis=1), rtol=1e-14)
    assert gradcheck(lambda t: layer.forward([t], [])[0], x)


@pytest.mark.parametrize('pool', ['MAX', 'AVE'])
def test_spp_with_one_level_is_the_unflattened_global_pool(pool):
    layer = make_layer('type: "SPP" spp_param { pyramid_height: 1 pool: %s }' % pool)
    x = rand(2, 3, 5, 4)
    assert layer.top_shapes([(2, 3, 5, 4)]) == [(2, 3, 1, 1)]
    (top,) = layer.forward([x], [])
    expected = x.amax((2, 3), keepdim=True) if pool == 'MAX' else x.mean((2, 3), keepdim=True)
    np.testing.assert_allclose(top.numpy(), expected.numpy(), rtol=1e-14)
    assert gradcheck(lambda t: layer.forward([t], [])[0], x)


def test_spp_errors_name_the_layer():
    layer = make_layer('name: "spp" type: "SPP" spp_param { pyramid_height: 3 }')
    # width 5 in 4 bins: kernel 2, pad 2 reaches the kernel (Caffe's Pooling CHECK)
    with pytest.raises(ShapeError, match="'spp'.*level 2.*pad 2 must be smaller than kernel 2"):
        layer.top_shapes([(1, 1, 8, 5)])
    with pytest.raises(ShapeError, match="'spp'.*4-axis"):
        layer.top_shapes([(1, 8, 8)])
    with pytest.raises(CaffeError, match="'spp'.*STOCHASTIC"):
        make_layer('name: "spp" type: "SPP" spp_param { pyramid_height: 2 pool: STOCHASTIC }')
    with pytest.raises(CaffeError, match='pyramid_height'):
        make_layer('type: "SPP"')


# ---- Im2col --------------------------------------------------------------------------

def im2col_loops(x, kernel, stride, pad, dilation):
    """Caffe's im2col_cpu for one (C, H, W) image."""
    c, h, w = x.shape
    oh = (h + 2 * pad[0] - (dilation[0] * (kernel[0] - 1) + 1)) // stride[0] + 1
    ow = (w + 2 * pad[1] - (dilation[1] * (kernel[1] - 1) + 1)) // stride[1] + 1
    cols = np.zeros((c * kernel[0] * kernel[1], oh, ow))
    for ch, ki, kj in itertools.product(range(c), range(kernel[0]), range(kernel[1])):
        row = (ch * kernel[0] + ki) * kernel[1] + kj
        for y, xx in itertools.product(range(oh), range(ow)):
            iy = y * stride[0] - pad[0] + ki * dilation[0]
            ix = xx * stride[1] - pad[1] + kj * dilation[1]
            if 0 <= iy < h and 0 <= ix < w:
                cols[row, y, xx] = x[ch, iy, ix]
    return cols


@pytest.mark.parametrize('param, kernel, stride, pad, dilation', [
    ('kernel_size: 2', (2, 2), (1, 1), (0, 0), (1, 1)),
    ('kernel_size: 3 stride: 2 pad: 1', (3, 3), (2, 2), (1, 1), (1, 1)),
    ('kernel_h: 2 kernel_w: 3 pad_h: 1 stride_h: 1 stride_w: 2 dilation: 2',
     (2, 3), (1, 2), (1, 0), (2, 2)),
])
def test_im2col_matches_caffe_layout(param, kernel, stride, pad, dilation):
    layer = make_layer('type: "Im2col" convolution_param { %s }' % param)
    x = rand(2, 3, 6, 7)
    (top,) = layer.forward([x], [])
    expected = np.stack([im2col_loops(img, kernel, stride, pad, dilation) for img in x.numpy()])
    assert layer.top_shapes([(2, 3, 6, 7)]) == [expected.shape]
    np.testing.assert_array_equal(top.numpy(), expected)
    assert gradcheck(lambda t: layer.forward([t], [])[0], x)


def test_im2col_backward_is_col2im():
    layer = make_layer('type: "Im2col" convolution_param { kernel_size: 2 }')
    x = torch.zeros(1, 1, 3, 3, dtype=torch.float64, requires_grad=True)
    (top,) = layer.forward([x], [])
    top.backward(torch.ones_like(top))
    # each pixel is counted once per 2x2 window that covers it
    assert x.grad[0, 0].tolist() == [[1, 2, 1], [2, 4, 2], [1, 2, 1]]


def test_im2col_one_and_three_spatial_axes_and_channel_axis():
    one = make_layer('type: "Im2col" convolution_param { kernel_size: 3 stride: 2 pad: 1 }')
    x = torch.arange(5.0).reshape(1, 1, 5)
    assert one.forward([x], [])[0].tolist() == [[[0, 1, 3], [0, 2, 4], [1, 3, 0]]]
    three = make_layer('type: "Im2col" convolution_param { kernel_size: 2 }')
    y = rand(1, 2, 3, 3, 3)
    (top,) = three.forward([y], [])
    assert top.shape == (1, 16, 2, 2, 2)
    # row (c, i, j, k) = ((c * 2 + i) * 2 + j) * 2 + k at output (a, b, d)
    assert top[0, ((1 * 2 + 1) * 2 + 0) * 2 + 1, 1, 0, 1] == y[0, 1, 1 + 1, 0 + 0, 1 + 1]
    assert gradcheck(lambda t: three.forward([t], [])[0], y)
    later = make_layer('type: "Im2col" convolution_param { kernel_size: 2 axis: 2 }')
    z = rand(2, 3, 4, 3, 3)      # axes 0 and 1 both act as the batch
    (top,) = later.forward([z], [])
    assert top.shape == (2, 3, 16, 2, 2)
    np.testing.assert_array_equal(top[1, 2].numpy(), im2col_loops(z[1, 2].numpy(), (2, 2),
                                                                  (1, 1), (0, 0), (1, 1)))


def test_im2col_errors_name_the_layer():
    layer = make_layer('name: "cols" type: "Im2col" convolution_param { kernel_size: 5 }')
    with pytest.raises(ShapeError, match="'cols'"):
        layer.top_shapes([(1, 1, 3, 3)])
    with pytest.raises(CaffeError, match="'cols'.*kernel is required"):
        make_layer('name: "cols" type: "Im2col"').top_shapes([(1, 1, 3, 3)])


# ---- registry and ONNX ---------------------------------------------------------------

NEW = ['Embed', 'Tile', 'Reduction', 'Filter', 'BatchReindex', 'Parameter', 'SPP', 'Im2col',
       'EuclideanLoss', 'SigmoidCrossEntropyLoss', 'InfogainLoss', 'HingeLoss',
       'MultinomialLogisticLoss', 'ContrastiveLoss']


def test_the_new_layers_are_registered():
    from torchcaffe import layer_type_list
    assert set(NEW) <= set(layer_type_list())


def test_onnx_export_refuses_a_new_loss_layer_by_name():
    from torchcaffe import onnx_export
    net = net_from('''
        name: "red"
        input: "x" input_shape { dim: 2 dim: 3 }
        input: "t" input_shape { dim: 2 dim: 3 }
        layer { name: "total" type: "Reduction" bottom: "x" top: "s"
                reduction_param { axis: 1 } }
        layer { name: "dist" type: "EuclideanLoss" bottom: "x" bottom: "t" top: "l" }
    ''', phase=caffe_pb2.TEST)
    with pytest.raises(UnknownLayerError, match="'dist'.*'EuclideanLoss'.*no ONNX export.*loss"):
        onnx_export.to_onnx(net)


# ---- CUDA cross-check ------------------------------------------------------------------

def _cases():
    labels3 = torch.tensor([2.0, 0.0, 1.0])
    return [
        ('type: "EuclideanLoss"', [rand(3, 4), rand(3, 4, seed=1)], [], (0, 1)),
        ('type: "SigmoidCrossEntropyLoss" loss_param { ignore_label: 1 normalization: VALID }',
         [rand(3, 4), torch.tensor([[0.0, 1, 0.5, 1]] * 3, dtype=torch.float64)], [], (0,)),
        ('type: "InfogainLoss" bottom: "s" bottom: "l" bottom: "H" loss_param { ignore_label: 0 }',
         [rand(3, 3), labels3, torch.eye(3, dtype=torch.float64) + 0.5], [], (0,)),
        ('type: "HingeLoss" hinge_loss_param { norm: L2 }', [rand(3, 3), labels3], [], (0,)),
        ('type: "MultinomialLogisticLoss"', [torch.softmax(rand(3, 3), 1), labels3], [], (0,)),
        ('type: "ContrastiveLoss" bottom: "a" bottom: "b" bottom: "y"',
         [rand(3, 2) * 0.3, rand(3, 2, seed=1) * 0.3, torch.tensor([1.0, 0.0, 0.0])], [], (0, 1)),
        ('type: "Embed" embed_param { input_dim: 3 num_output: 2 }',
         [torch.tensor([2.0, 0.0, 2.0])], [rand(3, 2), rand(2, seed=1)], ()),
        ('type: "Tile" tile_param { tiles: 2 }', [rand(2, 3)], [], (0,)),
        ('type: "Reduction" reduction_param { operation: ASUM axis: 1 coeff: 2 }',
         [rand(2, 3, 2)], [], (0,)),
        ('type: "Filter" bottom: "x" bottom: "s"', [rand(3, 2), torch.tensor([1.0, 0.0, 1.0])],
         [], (0,)),
        ('type: "BatchReindex" bottom: "x" bottom: "i"', [rand(3, 2), labels3], [], (0,)),
        ('type: "Parameter" parameter_param { shape { dim: 2 } }', [], [rand(2)], ()),
        ('type: "SPP" spp_param { pyramid_height: 2 pool: AVE }', [rand(1, 2, 5, 4)], [], (0,)),
        ('type: "Im2col" convolution_param { kernel_size: 2 dilation: 2 pad: 1 }',
         [rand(1, 2, 4, 5)], [], (0,)),
    ]


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
@pytest.mark.parametrize('text, bottoms, params, wrt', _cases())
def test_new_layers_on_cuda_match_the_cpu(text, bottoms, params, wrt):
    layer = make_layer(text)

    def run(device):
        bs = [b.to(device).requires_grad_(i in wrt) for i, b in enumerate(bottoms)]
        ps = [p.to(device).requires_grad_() for p in params]
        (top,) = layer.forward(bs, ps)[:1]
        top.backward(torch.ones_like(top))
        return [top] + [t.grad for t in bs if t.requires_grad] + [p.grad for p in ps]

    for cpu, gpu in zip(run('cpu'), run('cuda'), strict=True):
        np.testing.assert_allclose(gpu.detach().cpu().numpy(), cpu.detach().numpy(),
                                   rtol=1e-12, atol=1e-14)
