"""ONNX export (torchcaffe/onnx_export/, export.py), checked by running the exports.

Every exported model runs in onnxruntime and must give what torchcaffe.Net gives
on the same input, at sizes other than the prototxt's: odd heights and widths, a
second batch size, so the dynamic axes are exercised. Nets are the repository's
deploy nets at 1/16 width with random weights, and tiny inline nets for the layer
settings the FCNs do not use (padded pooling, within-channel LRN, Eltwise
variants, two-bottom Scale, Slice, Reshape ...).
"""

import numpy as np
import onnx
import pytest

import export as export_cli
import torchcaffe as caffe
from onnx_check import assert_matches_engine, deploy_net, image, inline_net, run_onnx
from torchcaffe import caffe_pb2, io, onnx_export
from torchcaffe.errors import CaffeError, FormatError, UnknownLayerError
from nets import alexnet, voc

CLASSES = 5
WIDTH = 1 / 16
FCN_SIZES = [(1, 37, 45), (2, 64, 51)]   # (batch, height, width)


# ------------------------------------------------------------------------ FCN deploy nets

@pytest.mark.parametrize('stage', ['fcn32s', 'fcn16s', 'fcn8s', 'fcn8s-atonce'])
def test_fcn_deploy_net_matches_engine_at_other_sizes(stage):
    net = deploy_net(voc.stage_nets(stage, classes=CLASSES, width=WIDTH)['deploy'])
    model = onnx_export.to_onnx(net)
    onnx_export.validate(model, full_check=True)
    for n, h, w in FCN_SIZES:
        got = assert_matches_engine(model, net, {'data': image((n, 3, h, w))})
        # the crop brings the scores back to the input's size at every size
        assert got['score'].shape == (n, CLASSES, h, w)
        assert np.abs(got['score']).max() > 1   # the random weights reach the scores


def test_inputs_and_outputs_declare_dynamic_batch_height_width():
    net = deploy_net(voc.stage_nets('fcn8s', classes=CLASSES, width=WIDTH)['deploy'])
    model = onnx_export.to_onnx(net)

    def dims(value):
        return [d.dim_param or d.dim_value or None for d in value.type.tensor_type.shape.dim]
    assert [i.name for i in model.graph.input] == ['data']
    assert dims(model.graph.input[0]) == ['batch', 3, 'height', 'width']
    assert [o.name for o in model.graph.output] == ['score']
    assert dims(model.graph.output[0]) == ['batch', CLASSES, None, None]


def test_crop_ends_are_computed_from_the_reference_shape():
    net = deploy_net(voc.stage_nets('fcn8s', classes=CLASSES, width=WIDTH)['deploy'])
    model = onnx_export.to_onnx(net)
    consts = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    # Caffe's FCN-8s offsets (score_pool4c 5, score_pool3c 9, score 31), for H and W
    slices = {n.name: n for n in model.graph.node if n.op_type == 'Slice'}
    for name, offset in (('score_pool4c', 5), ('score_pool3c', 9), ('score', 31)):
        node = slices[name]
        assert list(consts[node.input[1]]) == [offset, offset]
        assert node.input[2] not in consts   # ends: offset + Shape(reference)


def test_in_place_blobs_export_their_final_value():
    """``fc7`` is rewritten by relu7 in place: the output is the rectified value."""
    net = deploy_net(voc.stage_nets('fcn32s', classes=CLASSES, width=WIDTH)['deploy'])
    model = onnx_export.to_onnx(net, outputs=['fc7', 'pool5', 'score'])
    assert [o.name for o in model.graph.output] == ['fc7', 'pool5', 'score']
    assert any(n.op_type == 'Conv' and n.output[0] == 'fc7@fc7' for n in model.graph.node)
    got = assert_matches_engine(model, net, {'data': image((1, 3, 41, 39))})
    assert got['fc7'].min() == 0 and got['fc7'].max() > 0


@pytest.mark.parametrize('opset', [onnx_export.MIN_OPSET, 21])
def test_other_opsets_check_and_run(opset):
    net = deploy_net(voc.stage_nets('fcn16s', classes=CLASSES, width=WIDTH)['deploy'])
    model = onnx_export.to_onnx(net, opset=opset)
    assert model.opset_import[0].version == opset
    onnx_export.validate(model, full_check=True)
    assert_matches_engine(model, net, {'data': image((1, 3, 33, 47))})


def test_opset_out_of_range_and_train_nets_are_refused():
    proto = voc.stage_nets('fcn32s', classes=CLASSES, width=WIDTH)['deploy']
    with pytest.raises(CaffeError, match='opset 11 is not supported'):
        onnx_export.to_onnx(caffe.Net(proto, caffe.TEST), opset=11)
    with pytest.raises(CaffeError, match='TRAIN phase'):
        onnx_export.to_onnx(caffe.Net(proto, caffe.TRAIN))


# ------------------------------------------------------------------------ AlexNet family

def test_fcn_alexnet_lrn_and_grouped_convolutions_match_engine():
    net = deploy_net(alexnet.stage_nets(classes=CLASSES, width=WIDTH)['deploy'])
    model = onnx_export.to_onnx(net)
    ops = [(n.op_type, {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute})
           for n in model.graph.node]
    assert sum(op == 'LRN' for op, _ in ops) == 2
    assert sum(op == 'Conv' and attrs['group'] == 2 for op, attrs in ops) == 3
    for n, h, w in [(1, 45, 53), (1, 60, 31)]:
        assert_matches_engine(model, net, {'data': image((n, 3, h, w))})


def test_caffenet_classifier_inner_product_and_softmax():
    proto = alexnet.classifier(shape=(2, 3, 227, 227), classes=10, width=WIDTH)
    net = deploy_net(proto)
    model = onnx_export.to_onnx(net)
    assert [o.name for o in model.graph.output] == ['prob']
    for n in (2, 3):   # the batch stays dynamic; height and width are fixed by fc6
        got = assert_matches_engine(model, net, {'data': image((n, 3, 227, 227))})
        assert got['prob'].shape == (n, 10)
        np.testing.assert_allclose(got['prob'].sum(axis=1), 1, rtol=1e-5)


# ------------------------------------------------------------------------ pooling

def pool_net(method, kernel, stride, pad, extra=''):
    return inline_net('''
        layer { name: "input" type: "Input" top: "data"
                input_param { shape { dim: 1 dim: 2 dim: 9 dim: 9 } } }
        layer { name: "pool" type: "Pooling" bottom: "data" top: "pool"
                pooling_param { pool: %s kernel_size: %d stride: %d pad: %d %s } }
    ''' % (method, kernel, stride, pad, extra))


def caffe_pooling(x, method, kernel, stride, pad):
    """Caffe's PoolingLayer<float>::Forward_cpu (pooling_layer.cpp), CEIL rounding, in
    numpy: windows may hang over the bottom and right edges, a window that would start
    in the padding is dropped, MAX takes the window clipped to the image (-FLT_MAX if
    that is empty), AVE divides by the window clipped to the image plus the padding."""
    def windows(size):
        pooled = int(np.ceil((size + 2 * pad - kernel) / stride)) + 1
        if pad and (pooled - 1) * stride >= size + pad:
            pooled -= 1
        out = []
        for p in range(pooled):
            start = p * stride - pad
            end = min(start + kernel, size + pad)
            out.append((max(start, 0), min(end, size), end - start))
        return out
    rows, cols = windows(x.shape[2]), windows(x.shape[3])
    y = np.zeros(x.shape[:2] + (len(rows), len(cols)), np.float32)
    for i, (h0, h1, h_span) in enumerate(rows):
        for j, (w0, w1, w_span) in enumerate(cols):
            window = x[:, :, h0:h1, w0:w1].astype(np.float64)
            if method == 'MAX':
                y[:, :, i, j] = (window.max(axis=(2, 3)) if window.size
                                 else np.finfo(np.float32).min)
            else:
                with np.errstate(invalid='ignore'):  # 0 / 0 where kernel < stride
                    y[:, :, i, j] = window.sum(axis=(2, 3)) / (h_span * w_span)
    return y


@pytest.mark.parametrize('method', ['MAX', 'AVE'])
@pytest.mark.parametrize('kernel,stride,pad', [
    (2, 2, 0), (3, 2, 0), (3, 2, 1), (2, 2, 1), (3, 3, 2), (3, 1, 1), (1, 2, 0), (2, 3, 1)])
def test_pooling_matches_caffe_rounding_and_divisor(method, kernel, stride, pad):
    net = caffe.Net(pool_net(method, kernel, stride, pad), caffe.TEST)
    model = onnx_export.to_onnx(net)
    for h, w in [(3, 3), (4, 6), (5, 7), (8, 9)]:
        x = image((1, 2, h, w), seed=h * w)
        expected = caffe_pooling(x, method, kernel, stride, pad)
        net.blobs['data'].reshape(*x.shape)
        net.reshape()
        ours = net.forward(data=x)['pool'].copy()
        theirs = run_onnx(model, {'data': x})['pool']
        for name, got in (('engine', ours), ('onnxruntime', theirs)):
            assert got.shape == expected.shape, (name, h, w)
            np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-5,
                                       err_msg='%s at %d x %d' % (name, h, w))


def test_ave_pooling_divides_by_window_clipped_to_image_plus_pad():
    """4 x 4 ones, kernel 3, stride 2, pad 1: windows [-1, 2), [1, 4), [3, 5 clipped
    from 6): image counts 2, 3, 1 over divisors 3, 3, 2 along each axis."""
    net = caffe.Net(pool_net('AVE', 3, 2, 1), caffe.TEST)
    model = onnx_export.to_onnx(net)
    got = run_onnx(model, {'data': np.ones((1, 2, 4, 4), np.float32)})['pool']
    axis = np.array([2 / 3, 1, 1 / 2])
    np.testing.assert_allclose(got[0, 1], np.outer(axis, axis), rtol=1e-6)


def test_padded_pooling_drops_a_window_starting_in_the_pad():
    """3 x 3, kernel 2, stride 2, pad 1: ceil(3 / 2) + 1 = 3 windows, but the third
    would start at 4 = size + pad, so Caffe keeps 2."""
    net = caffe.Net(pool_net('MAX', 2, 2, 1), caffe.TEST)
    model = onnx_export.to_onnx(net)
    x = np.arange(9, dtype=np.float32).reshape(1, 1, 3, 3) * np.ones((1, 2, 1, 1), np.float32)
    got = run_onnx(model, {'data': x})['pool']
    np.testing.assert_array_equal(got[0, 0], [[0, 2], [6, 8]])


@pytest.mark.parametrize('method', ['MAX', 'AVE'])
def test_global_and_floor_pooling(method):
    for extra, kernel in (('global_pooling: true', None), ('round_mode: FLOOR', 3)):
        text = pool_net(method, 3, 2, 1, extra)
        if kernel is None:
            text.layer[1].pooling_param.ClearField('kernel_size')
            text.layer[1].pooling_param.ClearField('stride')
            text.layer[1].pooling_param.ClearField('pad')
        net = caffe.Net(text, caffe.TEST)
        model = onnx_export.to_onnx(net)
        for h, w in [(4, 6), (7, 5)]:
            assert_matches_engine(model, net, {'data': image((1, 2, h, w))})


# ------------------------------------------------------------------------ other layers

ZOO = '''
name: "zoo"
layer { name: "input" type: "Input" top: "data"
        input_param { shape { dim: 1 dim: 4 dim: 10 dim: 12 } } }
layer { name: "conv_a" type: "Convolution" bottom: "data" top: "a"
        convolution_param { num_output: 4 kernel_size: 3 pad: 2 dilation: 2 } }
layer { name: "relu_a" type: "ReLU" bottom: "a" top: "a" relu_param { negative_slope: 0.1 } }
layer { name: "split" type: "Split" bottom: "a" top: "a1" top: "a2" }
layer { name: "sig" type: "Sigmoid" bottom: "a1" top: "s" }
layer { name: "tanh" type: "TanH" bottom: "a2" top: "t" }
layer { name: "sum" type: "Eltwise" bottom: "s" bottom: "t" top: "sum"
        eltwise_param { operation: SUM coeff: 0.5 coeff: -2 } }
layer { name: "prod" type: "Eltwise" bottom: "s" bottom: "t" bottom: "sum" top: "prod"
        eltwise_param { operation: PROD } }
layer { name: "max" type: "Eltwise" bottom: "s" bottom: "t" top: "mx"
        eltwise_param { operation: MAX } }
layer { name: "gp" type: "Pooling" bottom: "s" top: "gp"
        pooling_param { pool: AVE global_pooling: true } }
layer { name: "gp2" type: "Reshape" bottom: "gp" top: "gp2"
        reshape_param { shape { dim: 0 dim: -1 } } }
layer { name: "scale2" type: "Scale" bottom: "prod" bottom: "gp2" top: "scaled2"
        scale_param { axis: 0 } }
layer { name: "scale1" type: "Scale" bottom: "mx" top: "scaled1"
        scale_param { bias_term: true } }
layer { name: "cat" type: "Concat" bottom: "scaled2" bottom: "scaled1" top: "cat" }
layer { name: "slice" type: "Slice" bottom: "cat" top: "sl1" top: "sl2"
        slice_param { slice_point: 3 } }
layer { name: "power" type: "Power" bottom: "sl1" top: "pw"
        power_param { power: 2 scale: 0.5 shift: 1 } }
layer { name: "flat" type: "Flatten" bottom: "pw" top: "flat" }
layer { name: "lrn_w" type: "LRN" bottom: "sl2" top: "lrn_w"
        lrn_param { norm_region: WITHIN_CHANNEL local_size: 3 alpha: 0.5 beta: 0.75 } }
layer { name: "drop" type: "Dropout" bottom: "lrn_w" top: "lrn_w" }
layer { name: "lrn_a" type: "LRN" bottom: "sl2" top: "lrn_a"
        lrn_param { local_size: 5 alpha: 0.3 beta: 0.75 k: 2 } }
layer { name: "up" type: "Deconvolution" bottom: "cat" top: "up"
        convolution_param { num_output: 4 kernel_size: 4 stride: 2 pad: 1 group: 2 } }
layer { name: "crop" type: "Crop" bottom: "up" bottom: "data" top: "crop"
        crop_param { axis: 2 offset: 1 offset: 2 } }
layer { name: "prob" type: "Softmax" bottom: "crop" top: "prob" }
'''


def test_layer_zoo_matches_engine():
    net = deploy_net(inline_net(ZOO), seed=3)
    model = onnx_export.to_onnx(net)
    onnx_export.validate(model, full_check=True)
    assert [o.name for o in model.graph.output] == ['flat', 'lrn_a', 'lrn_w', 'prob']
    for h, w in [(10, 12), (7, 13), (16, 9)]:
        got = assert_matches_engine(model, net, {'data': image((1, 4, h, w), seed=h)})
        assert got['prob'].shape == (1, 4, h, w)
        assert got['flat'].shape == (1, 3 * h * w)


def test_shared_params_are_stored_once():
    text = '''
        layer { name: "input" type: "Input" top: "data"
                input_param { shape { dim: 1 dim: 2 dim: 5 dim: 5 } } }
        layer { name: "c1" type: "Convolution" bottom: "data" top: "c1"
                param { name: "w" } param { name: "b" }
                convolution_param { num_output: 2 kernel_size: 1 } }
        layer { name: "c2" type: "Convolution" bottom: "c1" top: "c2"
                param { name: "w" } param { name: "b" }
                convolution_param { num_output: 2 kernel_size: 1 } }
    '''
    net = deploy_net(inline_net(text))
    model = onnx_export.to_onnx(net)
    convs = [n for n in model.graph.node if n.op_type == 'Conv']
    assert convs[0].input[1:] == convs[1].input[1:]
    assert len(model.graph.initializer) == 2
    assert_matches_engine(model, net, {'data': image((1, 2, 6, 4))})


def test_loss_layer_is_refused_by_name_with_the_deploy_hint():
    text = ZOO + '''
        layer { name: "label" type: "Input" top: "label"
                input_param { shape { dim: 1 dim: 1 dim: 10 dim: 12 } } }
        layer { name: "loss" type: "SoftmaxWithLoss" bottom: "crop" bottom: "label"
                top: "loss" }'''
    net = caffe.Net(inline_net(text), caffe.TEST)
    with pytest.raises(UnknownLayerError,
                       match="layer 'loss' has type 'SoftmaxWithLoss'.*loss layer.*deploy net"):
        onnx_export.to_onnx(net)


def test_unknown_layer_type_names_the_layer_and_lists_the_supported():
    lp = caffe_pb2.LayerParameter(name='odd', type='Frobnicate')
    with pytest.raises(UnknownLayerError,
                       match="layer 'odd' has type 'Frobnicate'.*supported types: .*ArgMax"):
        onnx_export.check_supported([lp])


def test_unknown_layer_in_a_file_fails_before_the_weights_and_keeps_old_output(tmp_path):
    proto = tmp_path / 'net.prototxt'
    proto.write_text(ZOO.replace('type: "TanH"', 'type: "Frobnicate"'))
    out = tmp_path / 'net.onnx'
    out.write_bytes(b'old')
    with pytest.raises(UnknownLayerError) as err:
        onnx_export.export(str(proto), str(tmp_path / 'absent.caffemodel'), str(out))
    message = str(err.value)
    assert message.startswith(str(proto)) and "layer 'tanh' has type 'Frobnicate'" in message
    assert out.read_bytes() == b'old'


# ------------------------------------------------------------------------ files and CLI

def write_fcn32s(tmp_path):
    proto = voc.stage_nets('fcn32s', classes=CLASSES, width=WIDTH)['deploy']
    path = tmp_path / 'deploy.prototxt'
    io.write_prototxt(proto, str(path))
    net = deploy_net(proto, seed=5)
    weights = tmp_path / 'w.caffemodel'
    net.save(str(weights))
    return path, weights, net


def test_export_writes_a_file_that_runs_like_the_net(tmp_path):
    proto, weights, net = write_fcn32s(tmp_path)
    out = tmp_path / 'fcn32s.onnx'
    onnx_export.export(str(proto), str(weights), str(out))
    model = onnx.load(str(out))
    onnx.checker.check_model(model, full_check=True)
    assert_matches_engine(model, net, {'data': image((1, 3, 29, 35))})
    assert sorted(p.name for p in tmp_path.iterdir()) == ['deploy.prototxt', 'fcn32s.onnx',
                                                          'w.caffemodel']


def test_cli_round_trip_with_check(tmp_path, capsys):
    proto, weights, net = write_fcn32s(tmp_path)
    out = tmp_path / 'cli.onnx'
    assert export_cli.main([str(proto), str(weights), str(out), '--opset', '15',
                            '--check']) == 0
    printed = capsys.readouterr().out
    assert 'wrote %s (opset 15' % out in printed
    assert 'score: max |onnx - caffe|' in printed and printed.rstrip().endswith('ok')
    model = onnx.load(str(out))
    assert model.opset_import[0].version == 15
    assert_matches_engine(model, net, {'data': image((2, 3, 40, 31))})


def test_cli_outputs_option(tmp_path):
    proto, weights, _ = write_fcn32s(tmp_path)
    out = tmp_path / 'o.onnx'
    assert export_cli.main([str(proto), str(weights), str(out), '--outputs', 'pool5,score']) == 0
    assert [o.name for o in onnx.load(str(out)).graph.output] == ['pool5', 'score']


@pytest.mark.parametrize('case', ['no prototxt', 'no weights', 'bad opset', 'bad output'])
def test_cli_errors_are_one_line_and_exit_nonzero(tmp_path, capsys, case):
    proto, weights, _ = write_fcn32s(tmp_path)
    args = {'no prototxt': [str(tmp_path / 'missing.prototxt'), str(weights)],
            'no weights': [str(proto), str(tmp_path / 'missing.caffemodel')],
            'bad opset': [str(proto), str(weights), '--opset', '7'],
            'bad output': [str(proto), str(weights), '--outputs', 'nope']}[case]
    out = tmp_path / 'x.onnx'
    argv = args[:2] + [str(out)] + args[2:]
    assert export_cli.main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith('error: ') and err.count('\n') == 1
    expected = {'no prototxt': 'missing.prototxt', 'no weights': 'missing.caffemodel',
                'bad opset': 'opset 7', 'bad output': "'nope'"}[case]
    assert expected in err
    assert not out.exists()


def test_verify_reports_small_differences():
    net = deploy_net(voc.stage_nets('fcn32s', classes=CLASSES, width=WIDTH)['deploy'])
    model = onnx_export.to_onnx(net)
    net.blobs['data'].reshape(1, 3, 30, 30)
    (diff, scale), = onnx_export.verify(model, net).values()
    assert scale > 1 and diff <= 1e-5 * scale
