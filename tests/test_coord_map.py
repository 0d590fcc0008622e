"""Coordinate maps: per-layer arithmetic, graph walks, and FCN's crop offsets."""
import numpy as np
import pytest

from torchcaffe.coord_map import (AxisMismatchError, UndefinedMapError, compose,
                                  conv_map, conv_params, coord_map,
                                  coord_map_from_to, crop, crop_offset,
                                  crop_params, deconv_map, inverse, layer)
from torchcaffe.errors import CoordMapError
from torchcaffe.net_spec import NetSpec, layers as L, params as P


def coord_net(ks=3, stride=1, pad=0, pool=2, dstride=2, dpad=0):
    """data -> conv -> pool -> deconv, the deconv kernel twice its stride."""
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[2, 1, 100, 100]))
    n.aux = L.Input(shape=dict(dim=[2, 1, 20, 20]))
    n.conv = L.Convolution(n.data, num_output=10, kernel_size=ks, stride=stride,
                           pad=pad)
    n.pool = L.Pooling(n.conv, pool=P.Pooling.MAX, kernel_size=pool, stride=pool)
    deconv_ks = [2 * s for s in dstride] if isinstance(dstride, list) else 2 * dstride
    n.deconv = L.Deconvolution(n.pool, num_output=10, kernel_size=deconv_ks,
                               stride=dstride, pad=dpad)
    return n


def scale_shift(top_from, top_to):
    axis, a, b = coord_map_from_to(top_from, top_to)
    return axis, np.ravel(a).tolist(), np.ravel(b).tolist()


# --- per-layer arithmetic --------------------------------------------------

def test_conv_map_is_scale_one_over_stride_and_centre_shift():
    axis, a, b = conv_map(1, kernel=7, stride=2, pad=3)
    assert axis == 1
    assert a.tolist() == [0.5] and b.tolist() == [0.0]
    # (pad - (k - 1) / 2) / stride = (0 - 2) / 4
    assert conv_map(1, 5, stride=4)[2].tolist() == [-0.5]


def test_deconv_map_inverts_conv_map():
    for kernel, stride, pad in [(4, 2, 0), (64, 32, 0), (3, 1, 1), (16, 8, 3)]:
        conv = conv_map(1, kernel, stride, pad)
        identity = compose(deconv_map(1, kernel, stride, pad), conv)
        assert identity[1].tolist() == [1.0] and identity[2].tolist() == [0.0]
    assert deconv_map(1, 64, 32)[1:] == (32.0, 31.5)


def test_compose_multiplies_scales_and_scales_the_inner_shift():
    assert compose((1, 2.0, 3.0), (1, 0.5, -1.0)) == (1, 1.0, 1.0)
    assert compose((None, 1, 0), (1, 4, 2)) == (1, 4, 2)
    assert compose((1, 4, 2), (None, 1, 0)) == (1, 4, 2)
    with pytest.raises(AxisMismatchError, match='axis 1 and axis 2'):
        compose((1, 1, 0), (2, 1, 0))


def test_inverse_undoes_a_map():
    assert inverse((1, 4.0, 2.0)) == (1, 0.25, -0.5)
    assert compose((1, 4.0, 2.0), inverse((1, 4.0, 2.0))) == (1, 1.0, 0.0)


def test_layer_maps_of_pass_through_and_crop_layers():
    n = coord_net()
    for relu in [L.ReLU(n.conv), L.Dropout(n.conv, in_place=True),
                 L.Eltwise(n.conv, n.conv), L.Scale(n.conv), L.BatchNorm(n.conv)]:
        assert layer(relu.fn) == (None, 1, 0)
    axis, a, b = layer(L.Crop(n.deconv, n.data, axis=2, offset=[3, 4]).fn)
    assert (axis, a, b.tolist()) == (1, 1, [-3.0, -4.0])
    assert crop_params(L.Crop(n.deconv, n.data).fn)[0] == 2  # Caffe's default axis
    assert coord_map is layer


def test_conv_params_read_per_axis_fields_and_dilation():
    n = coord_net()
    hw = L.Convolution(n.data, kernel_h=3, kernel_w=5, stride_h=1, stride_w=2,
                       pad_h=0, pad_w=10)
    repeated = L.Convolution(n.data, kernel_size=[3, 5], stride=[1, 2], pad=[0, 10])
    for top in (hw, repeated):
        axis, stride, extent, pad = conv_params(top.fn)
        assert (axis, stride.tolist(), extent.tolist(), pad.tolist()) == (
            1, [1, 2], [3, 5], [0, 10])
    dilated = L.Convolution(n.data, kernel_size=3, dilation=2)
    assert conv_params(dilated.fn)[2].tolist() == [5]
    assert layer(dilated.fn)[2].tolist() == [-2.0]


def test_pooling_params_come_from_pooling_param():
    n = coord_net()
    square = L.Pooling(n.data, kernel_size=3, stride=2, pad=1)
    rect = L.Pooling(n.data, kernel_h=3, kernel_w=2, stride_h=2, stride_w=1,
                     pad_h=1, pad_w=0)
    assert [v.tolist() for v in conv_params(square.fn)[1:]] == [[2], [3], [1]]
    assert [v.tolist() for v in conv_params(rect.fn)[1:]] == [[2, 1], [3, 2], [1, 0]]
    assert layer(square.fn)[2].tolist() == [0.0]


def test_broken_or_undefined_layer_maps_name_the_layer():
    n = coord_net()
    with pytest.raises(UndefinedMapError, match="'InnerProduct'"):
        layer(L.InnerProduct(n.deconv, num_output=10).fn)
    with pytest.raises(UndefinedMapError, match='global pooling'):
        layer(L.Pooling(n.conv, global_pooling=True).fn)
    with pytest.raises(CoordMapError, match='Convolution.*kernel size'):
        layer(L.Convolution(n.data, num_output=1).fn)
    with pytest.raises(CoordMapError, match='not both'):
        layer(L.Convolution(n.data, kernel_size=3, kernel_h=3, kernel_w=3).fn)
    with pytest.raises(CoordMapError, match='number of spatial axes'):
        layer(L.Convolution(n.data, kernel_size=[3, 3], pad=[1, 1, 1]).fn)


# --- walking the graph -------------------------------------------------------

def test_pool_then_deconv_by_the_same_stride_is_identity_scale():
    n = coord_net()
    assert scale_shift(n.deconv, n.data) == (1, [1.0], [0.0])
    # 4x pool, 4x deconv (kernel 8): one pixel of shift
    n = coord_net(pool=4, dstride=4)
    assert scale_shift(n.deconv, n.data) == (1, [1.0], [-1.0])


def test_stride_scales():
    n = coord_net(stride=2)
    assert scale_shift(n.conv, n.data) == (1, [2.0], [1.0])
    assert scale_shift(n.data, n.conv) == (1, [0.5], [-0.5])
    assert scale_shift(n.pool, n.data)[1] == [4.0]


def test_padding_a_convolution_adds_offset_and_a_deconvolution_subtracts_it():
    n = coord_net()
    _, a, b = scale_shift(n.deconv, n.data)
    for pad in (1, 7):
        n = coord_net(pad=pad)
        assert scale_shift(n.deconv, n.data)[1:] == (a, [b[0] - pad])
        n = coord_net(dpad=pad)
        assert scale_shift(n.deconv, n.data)[1:] == (a, [b[0] + pad])
        n = coord_net(pad=pad, dpad=pad)
        assert scale_shift(n.deconv, n.data)[1:] == (a, b)


def test_pass_through_layers_and_1x1_convolution_keep_the_map():
    n = coord_net(pad=3)
    expected = scale_shift(n.deconv, n.data)
    n.relu = L.ReLU(n.deconv)
    n.conv1x1 = L.Convolution(n.relu, num_output=10, kernel_size=1)
    assert scale_shift(n.relu, n.data) == expected
    assert scale_shift(n.conv1x1, n.data) == expected


def test_anisotropic_map_is_its_isotropic_parts():
    n3 = coord_net(ks=3, stride=1, pad=0)
    n5 = coord_net(ks=5, stride=2, pad=10)
    n35 = coord_net(ks=[3, 5], stride=[1, 2], pad=[0, 10])
    _, a3, b3 = scale_shift(n3.deconv, n3.data)
    _, a5, b5 = scale_shift(n5.deconv, n5.data)
    assert scale_shift(n35.deconv, n35.data) == (1, a3 + a5, b3 + b5)


def test_nd_convolution_maps_every_spatial_axis():
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[2, 3, 20, 20, 20]))
    n.conv = L.Convolution(n.data, num_output=4, kernel_size=[3, 3, 3],
                           stride=[1, 1, 1], pad=[0, 1, 2])
    n.pool = L.Pooling(n.conv, kernel_size=2, stride=2)
    n.deconv = L.Deconvolution(n.pool, num_output=4, kernel_size=4, stride=2)
    assert scale_shift(n.deconv, n.data) == (1, [1.0] * 3, [0.0, -1.0, -2.0])


def test_every_bottom_of_a_multi_bottom_layer_maps_alike():
    n = coord_net()
    n.conv_data, n.conv_aux = L.Convolution(n.data, n.aux, ntop=2, num_output=10,
                                            kernel_size=5, stride=2)
    assert scale_shift(n.conv_data, n.data) == scale_shift(n.conv_aux, n.aux) == (
        1, [2.0], [2.0])


def test_crop_of_crop_adds_the_offset_and_ignores_the_reference_bottom():
    n = coord_net(pool=4, dstride=4)
    _, _, b = scale_shift(n.deconv, n.data)
    n.crop = L.Crop(n.deconv, n.data, axis=2, offset=3)
    assert scale_shift(n.crop, n.data) == (1, [1.0], [b[0] + 3])


def test_unconnected_tops_name_the_layer_that_stopped_the_walk():
    n = coord_net()
    n.ip = L.InnerProduct(n.deconv, num_output=10)
    with pytest.raises(CoordMapError, match='InnerProduct'):
        coord_map_from_to(n.ip, n.data)
    with pytest.raises(CoordMapError, match='share no ancestor'):
        coord_map_from_to(n.aux, n.data)


# --- crop --------------------------------------------------------------------

def test_crop_makes_a_crop_layer_with_axis_and_whole_offsets():
    n = coord_net(pool=4, dstride=4)
    assert crop_offset(n.deconv, n.data) == (2, [1])
    n.score = crop(n.deconv, n.data)
    layer_param = n.to_proto().layer[-1]
    assert (layer_param.name, layer_param.type) == ('score', 'Crop')
    assert list(layer_param.bottom) == ['deconv', 'data']
    assert layer_param.crop_param.axis == 2
    assert list(layer_param.crop_param.offset) == [1]


def test_crop_offsets_per_axis():
    n = coord_net(ks=[3, 5], pad=[1, 4])
    assert crop_offset(n.deconv, n.data) == (2, [1, 3])
    n = coord_net(ks=[3, 3], pad=[5, 2])
    assert crop_offset(n.deconv, n.data) == (2, [5, 2])


def test_crop_refuses_a_scale_mismatch():
    n = coord_net(pool=3, dstride=2)  # pool 3x but upsample 2x
    with pytest.raises(CoordMapError, match=r'scale mismatch.*\[1\.5\]'):
        crop(n.deconv, n.data)


def test_crop_refuses_a_negative_offset():
    n = coord_net(dpad=10)  # deconv padding makes the output smaller than the input
    with pytest.raises(CoordMapError, match=r'negative offset \[-10\.0\]'):
        crop(n.deconv, n.data)


def test_crop_refuses_a_fractional_offset():
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 1, 10, 10]))
    n.pool = L.Pooling(n.data, kernel_size=2, stride=2)
    n.up = L.Deconvolution(n.pool, num_output=1, kernel_size=3, stride=2)
    assert scale_shift(n.up, n.data) == (1, [1.0], [-0.5])
    with pytest.raises(CoordMapError, match=r'non-integer offset \[0\.5\]'):
        crop(n.up, n.data)


# --- the FCN nets ------------------------------------------------------------

def conv_relu(bottom, ks=3, stride=1, pad=1, group=1):
    conv = L.Convolution(bottom, num_output=8, kernel_size=ks, stride=stride,
                         pad=pad, group=group)
    return conv, L.ReLU(conv, in_place=True)


def max_pool(bottom, ks=2, stride=2):
    return L.Pooling(bottom, pool=P.Pooling.MAX, kernel_size=ks, stride=stride)


def upsample(bottom, factor, ks=None):
    return L.Deconvolution(bottom, param=[dict(lr_mult=0)], convolution_param=dict(
        num_output=21, kernel_size=ks or 2 * factor, stride=factor, bias_term=False))


def score(bottom):
    return L.Convolution(bottom, num_output=21, kernel_size=1, pad=0)


def vgg16_fcn():
    """VGG16 through score_fr, as the FCN reference builds it (widths shrunk)."""
    n = NetSpec()
    n.data, n.label = L.Python(module='voc_layers', layer='VOCSegDataLayer', ntop=2)
    bottom = n.data
    for block, depth in enumerate([2, 2, 3, 3, 3], 1):
        for i in range(1, depth + 1):
            conv, relu = conv_relu(bottom, pad=100 if block == i == 1 else 1)
            n['conv%d_%d' % (block, i)], n['relu%d_%d' % (block, i)] = conv, relu
            bottom = relu
        n['pool%d' % block] = bottom = max_pool(bottom)
    n.fc6, n.relu6 = conv_relu(n.pool5, ks=7, pad=0)
    n.drop6 = L.Dropout(n.relu6, dropout_ratio=0.5, in_place=True)
    n.fc7, n.relu7 = conv_relu(n.drop6, ks=1, pad=0)
    n.drop7 = L.Dropout(n.relu7, dropout_ratio=0.5, in_place=True)
    n.score_fr = score(n.drop7)
    return n


def crop_offsets(n):
    return {l.name: (l.crop_param.axis, list(l.crop_param.offset))
            for l in n.to_proto().layer if l.type == 'Crop'}


def test_fcn32s_crops_the_score_by_19():
    n = vgg16_fcn()
    n.upscore = upsample(n.score_fr, 32)
    n.score = crop(n.upscore, n.data)
    assert crop_offsets(n) == {'score': (2, [19])}


def test_fcn16s_crops_by_5_and_27():
    n = vgg16_fcn()
    n.upscore2 = upsample(n.score_fr, 2)
    n.score_pool4 = score(n.pool4)
    n.score_pool4c = crop(n.score_pool4, n.upscore2)
    n.fuse_pool4 = L.Eltwise(n.upscore2, n.score_pool4c, operation=P.Eltwise.SUM)
    n.upscore16 = upsample(n.fuse_pool4, 16)
    n.score = crop(n.upscore16, n.data)
    assert crop_offsets(n) == {'score_pool4c': (2, [5]), 'score': (2, [27])}


def test_fcn8s_crops_by_5_9_and_31():
    n = vgg16_fcn()
    n.upscore2 = upsample(n.score_fr, 2)
    n.score_pool4 = score(n.pool4)
    n.score_pool4c = crop(n.score_pool4, n.upscore2)
    n.fuse_pool4 = L.Eltwise(n.upscore2, n.score_pool4c, operation=P.Eltwise.SUM)
    n.upscore_pool4 = upsample(n.fuse_pool4, 2)
    n.score_pool3 = score(n.pool3)
    n.score_pool3c = crop(n.score_pool3, n.upscore_pool4)
    n.fuse_pool3 = L.Eltwise(n.upscore_pool4, n.score_pool3c, operation=P.Eltwise.SUM)
    n.upscore8 = upsample(n.fuse_pool3, 8)
    n.score = crop(n.upscore8, n.data)
    assert crop_offsets(n) == {'score_pool4c': (2, [5]), 'score_pool3c': (2, [9]),
                               'score': (2, [31])}
    names = [l.name for l in n.to_proto().layer]
    assert names[-11:] == ['score_fr', 'upscore2', 'score_pool4', 'score_pool4c',
                           'fuse_pool4', 'upscore_pool4', 'score_pool3',
                           'score_pool3c', 'fuse_pool3', 'upscore8', 'score']


def test_fcn_alexnet_crops_the_score_by_18():
    n = NetSpec()
    n.data, n.label = L.Python(module='voc_layers', layer='VOCSegDataLayer', ntop=2)
    n.conv1, n.relu1 = conv_relu(n.data, ks=11, stride=4, pad=100)
    n.pool1 = max_pool(n.relu1, 3)
    n.norm1 = L.LRN(n.pool1, local_size=5, alpha=1e-4, beta=0.75)
    n.conv2, n.relu2 = conv_relu(n.norm1, ks=5, pad=2, group=2)
    n.pool2 = max_pool(n.relu2, 3)
    n.norm2 = L.LRN(n.pool2, local_size=5, alpha=1e-4, beta=0.75)
    n.conv3, n.relu3 = conv_relu(n.norm2)
    n.conv4, n.relu4 = conv_relu(n.relu3, group=2)
    n.conv5, n.relu5 = conv_relu(n.relu4, group=2)
    n.pool5 = max_pool(n.relu5, 3)
    n.fc6, n.relu6 = conv_relu(n.pool5, ks=6, pad=0)
    n.fc7, n.relu7 = conv_relu(n.relu6, ks=1, pad=0)
    n.score_fr = score(n.relu7)
    n.upscore = upsample(n.score_fr, 32, ks=63)
    n.score = crop(n.upscore, n.data)
    assert crop_offsets(n) == {'score': (2, [18])}
