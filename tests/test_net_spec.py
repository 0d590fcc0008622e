"""Net spec: pycaffe's naming, keyword routing and prototxt output."""
import pytest
from google.protobuf import text_format

from torchcaffe.errors import NetSpecError
from torchcaffe.net_spec import (NetSpec, Function, Top, assign_proto,
                                 layers as L, param_name_dict, params as P,
                                 to_proto)
from torchcaffe.proto import caffe_pb2


def conv_relu(bottom, nout, ks=3, stride=1, pad=1):
    conv = L.Convolution(bottom, kernel_size=ks, stride=stride, num_output=nout,
                         pad=pad, param=[dict(lr_mult=1, decay_mult=1),
                                         dict(lr_mult=2, decay_mult=0)])
    return conv, L.ReLU(conv, in_place=True)


def data_net():
    n = NetSpec()
    n.data, n.label = L.Python(module='voc_layers', layer='VOCSegDataLayer',
                               ntop=2, param_str="{'split': 'val'}")
    return n


def by_name(net):
    return {layer.name: layer for layer in net.layer}


# --- naming ---------------------------------------------------------------

def test_multi_top_layer_is_named_after_its_first_top():
    net = data_net().to_proto()
    assert len(net.layer) == 1
    data = net.layer[0]
    assert (data.name, data.type) == ('data', 'Python')
    assert list(data.top) == ['data', 'label']
    assert list(data.bottom) == []


def test_in_place_layer_takes_its_own_name_and_its_bottoms_top():
    n = data_net()
    n.conv1_1, n.relu1_1 = conv_relu(n.data, 64, pad=100)
    n.conv1_2, n.relu1_2 = conv_relu(n.relu1_1, 64)
    layers = by_name(n.to_proto())
    assert [l.name for l in n.to_proto().layer] == [
        'data', 'conv1_1', 'relu1_1', 'conv1_2', 'relu1_2']
    assert list(layers['relu1_1'].bottom) == ['conv1_1']
    assert list(layers['relu1_1'].top) == ['conv1_1']
    # the next layer reads the in-place blob by the name it has in the net
    assert list(layers['conv1_2'].bottom) == ['conv1_1']
    assert list(layers['relu1_2'].top) == ['conv1_2']


def test_unnamed_tops_get_type_and_per_type_counter_bottoms_first():
    n = data_net()
    inner = L.Convolution(n.data, num_output=1, kernel_size=1)
    outer = L.Convolution(inner, num_output=1, kernel_size=1)
    n.out = L.Eltwise(outer, L.ReLU(inner))
    net = n.to_proto()
    assert [(l.name, l.type) for l in net.layer] == [
        ('data', 'Python'), ('Convolution1', 'Convolution'),
        ('Convolution2', 'Convolution'), ('ReLU1', 'ReLU'), ('out', 'Eltwise')]
    assert list(net.layer[4].bottom) == ['Convolution2', 'ReLU1']


def test_unnamed_in_place_layer_gets_an_automatic_layer_name():
    n = data_net()
    n.conv = L.Convolution(n.data, num_output=1, kernel_size=1)
    n.out = L.Sigmoid(L.ReLU(n.conv, in_place=True))
    relu = by_name(n.to_proto())['ReLU1']
    assert list(relu.top) == ['conv']
    assert list(by_name(n.to_proto())['out'].bottom) == ['conv']


def test_to_proto_without_netspec_names_everything_automatically():
    data = L.Input(shape=dict(dim=[1, 3, 8, 8]))
    net = to_proto(L.ReLU(L.Convolution(data, num_output=2, kernel_size=3)))
    assert [(l.name, list(l.bottom), list(l.top)) for l in net.layer] == [
        ('Input1', [], ['Input1']),
        ('Convolution1', ['Input1'], ['Convolution1']),
        ('ReLU1', ['Convolution1'], ['ReLU1'])]
    assert data.to_proto().layer[0].name == 'Input1'


def test_layers_come_out_in_dependency_order_whatever_the_assignment_order():
    n = NetSpec()
    data = L.Input(shape=dict(dim=[1, 1, 4, 4]))
    n.relu = L.ReLU(data)
    n.data = data
    net = n.to_proto()
    assert [l.name for l in net.layer] == ['data', 'relu']
    assert list(net.layer[1].bottom) == ['data']


def test_shared_bottom_is_emitted_once():
    n = data_net()
    n.a = L.ReLU(n.data)
    n.b = L.Eltwise(n.a, n.a, n.data)
    net = n.to_proto()
    assert [l.name for l in net.layer] == ['data', 'a', 'b']
    assert list(net.layer[2].bottom) == ['a', 'a', 'data']


def test_ntop_zero_gives_a_function_named_by_its_assignment():
    n = data_net()
    silence = L.Silence(n.label, ntop=0)
    assert isinstance(silence, Function)
    n.silence = silence
    n.other = L.ReLU(n.data)
    layers = by_name(n.to_proto())
    assert list(layers['silence'].top) == []
    assert list(layers['silence'].bottom) == ['label']
    assert to_proto(L.Silence(n.data, ntop=0)).layer[-1].name == 'Silence1'


def test_name_keyword_overrides_the_layer_name_but_not_the_top():
    n = data_net()
    n.conv = L.Convolution(n.data, num_output=1, kernel_size=1, name='renamed')
    layer = n.to_proto().layer[1]
    assert (layer.name, list(layer.top)) == ('renamed', ['conv'])


def test_deep_chain_does_not_hit_the_recursion_limit():
    top = L.Input(shape=dict(dim=[1]))
    for _ in range(3000):
        top = L.ReLU(top)
    net = to_proto(top)
    assert len(net.layer) == 3001
    assert net.layer[-1].name == 'ReLU3000'
    assert list(net.layer[-1].bottom) == ['ReLU2999']


# --- NetSpec container ------------------------------------------------------

def test_netspec_keeps_tops_in_order_with_attribute_and_item_access():
    n = data_net()
    n['conv'] = L.Convolution(n.data, num_output=1, kernel_size=1)
    assert list(n.tops) == ['data', 'label', 'conv'] == n.keys()
    assert n['conv'] is n.conv and isinstance(n.conv, Top)
    assert 'conv' in n and 'nope' not in n
    assert not hasattr(n, 'nope')
    with pytest.raises(KeyError):
        n['nope']


def test_netspec_rejects_an_unpacked_multi_top_assignment():
    n = NetSpec()
    with pytest.raises(NetSpecError, match='unpack'):
        n.pair = L.Python(module='m', layer='l', ntop=2)


def test_bottom_must_be_a_top():
    pair = L.Python(module='m', layer='l', ntop=2)
    with pytest.raises(NetSpecError, match=r'^Concat input 0 is not a Top \(type is '):
        L.Concat(pair)
    with pytest.raises(NetSpecError, match='in_place'):
        L.ReLU(in_place=True)


# --- keyword routing -----------------------------------------------------------

def test_convolution_keywords_go_to_convolution_param():
    n = data_net()
    n.conv1_1, n.relu1_1 = conv_relu(n.data, 64, pad=100)
    conv = by_name(n.to_proto())['conv1_1']
    p = conv.convolution_param
    assert (p.num_output, list(p.pad), list(p.kernel_size), list(p.stride)) == (
        64, [100], [3], [1])
    assert [(s.lr_mult, s.decay_mult) for s in conv.param] == [(1, 1), (2, 0)]


def test_repeated_fields_take_lists_and_tuples():
    top = L.Convolution(L.Input(), num_output=4, kernel_size=[3, 5],
                        stride=(1, 2), dilation=2)
    p = to_proto(top).layer[1].convolution_param
    assert (list(p.kernel_size), list(p.stride), list(p.dilation)) == (
        [3, 5], [1, 2], [2])


def test_nested_dict_fills_a_submessage():
    top = L.InnerProduct(L.Input(), num_output=10,
                         weight_filler=dict(type='gaussian', std=0.01),
                         bias_filler=dict(type='constant', value=0.1))
    p = to_proto(top).layer[1].inner_product_param
    assert p.weight_filler.type == 'gaussian'
    assert p.weight_filler.std == pytest.approx(0.01)
    assert p.bias_filler.value == pytest.approx(0.1)


def test_relu_negative_slope_goes_to_relu_param():
    layer = to_proto(L.ReLU(L.Input(), negative_slope=0.1)).layer[1]
    assert layer.relu_param.negative_slope == pytest.approx(0.1)


def test_pooling_enum_by_value_or_by_name():
    a = to_proto(L.Pooling(L.Input(), pool=P.Pooling.MAX, kernel_size=2, stride=2))
    b = to_proto(L.Pooling(L.Input(), pool='AVE', kernel_size=3))
    assert a.layer[1].pooling_param.pool == caffe_pb2.PoolingParameter.MAX
    assert a.layer[1].pooling_param.kernel_size == 2
    assert b.layer[1].pooling_param.pool == caffe_pb2.PoolingParameter.AVE


def test_python_layer_keywords_go_to_python_param():
    p = data_net().to_proto().layer[0].python_param
    assert (p.module, p.layer, p.param_str) == (
        'voc_layers', 'VOCSegDataLayer', "{'split': 'val'}")


def test_layer_fields_loss_weight_include_and_explicit_params():
    n = data_net()
    n.loss = L.SoftmaxWithLoss(n.data, n.label, loss_weight=2,
                               include=dict(phase=caffe_pb2.TRAIN),
                               loss_param=dict(ignore_label=255, normalize=False))
    loss = by_name(n.to_proto())['loss']
    assert list(loss.loss_weight) == [2.0]
    assert [rule.phase for rule in loss.include] == [caffe_pb2.TRAIN]
    assert loss.loss_param.ignore_label == 255
    assert loss.loss_param.HasField('normalize') and not loss.loss_param.normalize


def test_deconvolution_reads_convolution_param_explicit_or_flat():
    explicit = L.Deconvolution(L.Input(), param=[dict(lr_mult=0)],
                               convolution_param=dict(num_output=21, kernel_size=64,
                                                      stride=32, bias_term=False))
    flat = L.Deconvolution(L.Input(), param=[dict(lr_mult=0)], num_output=21,
                           kernel_size=64, stride=32, bias_term=False)
    assert to_proto(explicit).layer[1] == to_proto(flat).layer[1]
    p = to_proto(flat).layer[1].convolution_param
    assert (p.num_output, list(p.kernel_size), list(p.stride), p.bias_term) == (
        21, [64], [32], False)


def test_lrn_keywords_go_to_lrn_param():
    p = to_proto(L.LRN(L.Input(), local_size=5, alpha=1e-4, beta=0.75)).layer[1].lrn_param
    assert (p.local_size, p.beta) == (5, 0.75)
    assert p.alpha == pytest.approx(1e-4)


# --- errors ----------------------------------------------------------------

def test_unknown_keyword_names_the_layer_type_and_the_keyword():
    with pytest.raises(NetSpecError) as info:
        L.Convolution(L.Input(), num_output=1, kernel_size=1, kernal_size=3)
    message = str(info.value)
    assert 'Convolution' in message and "'kernal_size'" in message
    assert 'convolution_param' in message


def test_keyword_for_a_type_without_its_own_param_message_is_an_error():
    with pytest.raises(NetSpecError, match=r"SoftmaxWithLoss.*'ignore_label'"):
        L.SoftmaxWithLoss(L.Input(), L.Input(), ignore_label=255)
    with pytest.raises(NetSpecError, match=r"MadeUpType.*'foo'"):
        L.MadeUpType(foo=1)


def test_bad_nested_field_and_bad_value_are_named():
    with pytest.raises(NetSpecError, match=r"weight_filler.*FillerParameter has no field 'typ'"):
        L.Convolution(L.Input(), weight_filler=dict(typ='xavier'))
    with pytest.raises(NetSpecError, match=r"'num_output'.*ConvolutionParameter.num_output"):
        L.Convolution(L.Input(), num_output='many')
    with pytest.raises(NetSpecError, match=r"'deconvolution_param'"):
        L.Deconvolution(L.Input(), deconvolution_param=dict(num_output=1))
    with pytest.raises(NetSpecError, match='not repeated'):
        L.Pooling(L.Input(), kernel_size=[2, 2])


def test_any_layer_type_is_accepted_without_keywords():
    layer = to_proto(L.SomeFutureLayer(L.Input())).layer[1]
    assert layer.type == 'SomeFutureLayer'


# --- params and helpers ----------------------------------------------------

def test_params_are_the_enum_values_of_the_parameter_messages():
    assert P.Pooling.MAX == caffe_pb2.PoolingParameter.MAX == 0
    assert P.Pooling.AVE == caffe_pb2.PoolingParameter.AVE == 1
    assert P.Eltwise.SUM == caffe_pb2.EltwiseParameter.SUM
    assert P.Eltwise.PROD == caffe_pb2.EltwiseParameter.PROD
    assert P.Loss.VALID == caffe_pb2.LossParameter.VALID
    with pytest.raises(NetSpecError, match='MAXIMUM'):
        P.Pooling.MAXIMUM
    with pytest.raises(AttributeError):
        P.NoSuchLayer.X


def test_param_name_dict_follows_the_layer_parameter_fields():
    names = param_name_dict()
    assert names['Convolution'] == 'convolution'
    assert names['InnerProduct'] == 'inner_product'
    assert names['ReLU'] == 'relu'
    assert names['LRN'] == 'lrn'
    assert names['Loss'] == 'loss'
    assert names['HDF5Data'] == 'hdf5_data'
    assert names['Transformation'] == 'transform'
    assert 'Deconvolution' not in names and 'SoftmaxWithLoss' not in names


def test_assign_proto_handles_repeated_messages_scalars_and_messages():
    layer = caffe_pb2.LayerParameter()
    assign_proto(layer, 'param', [dict(lr_mult=1, decay_mult=1), dict(lr_mult=2)])
    assign_proto(layer, 'loss_weight', 0.5)
    assign_proto(layer, 'top', ['a', 'b'])
    filler = caffe_pb2.FillerParameter(type='xavier')
    assign_proto(layer.convolution_param, 'weight_filler', filler)
    assert [(p.lr_mult, p.decay_mult) for p in layer.param] == [(1, 1), (2, 1)]
    assert list(layer.loss_weight) == [0.5] and list(layer.top) == ['a', 'b']
    assert layer.convolution_param.weight_filler.type == 'xavier'
    with pytest.raises(NetSpecError, match="no field 'nope'"):
        assign_proto(layer, 'nope', 1)


# --- prototxt output -----------------------------------------------------------

def small_fcn():
    n = data_net()
    n.conv1_1, n.relu1_1 = conv_relu(n.data, 64, pad=100)
    n.pool1 = L.Pooling(n.relu1_1, pool=P.Pooling.MAX, kernel_size=2, stride=2)
    n.drop = L.Dropout(n.pool1, dropout_ratio=0.5, in_place=True)
    n.upscore = L.Deconvolution(n.drop, param=[dict(lr_mult=0)],
                                convolution_param=dict(num_output=21, kernel_size=4,
                                                       stride=2, bias_term=False))
    n.loss = L.SoftmaxWithLoss(n.upscore, n.label,
                               loss_param=dict(normalize=False, ignore_label=255))
    return n


def test_str_prints_prototxt():
    text = str(small_fcn().to_proto())
    expected = '''layer {
  name: "relu1_1"
  type: "ReLU"
  bottom: "conv1_1"
  top: "conv1_1"
}
layer {
  name: "pool1"
  type: "Pooling"
  bottom: "conv1_1"
  top: "pool1"
  pooling_param {
    pool: MAX
    kernel_size: 2
    stride: 2
  }
}
layer {
  name: "drop"
  type: "Dropout"
  bottom: "pool1"
  top: "pool1"
  dropout_param {
    dropout_ratio: 0.5
  }
}
layer {
  name: "upscore"
  type: "Deconvolution"
  bottom: "pool1"
  top: "upscore"
  param {
    lr_mult: 0
  }
  convolution_param {
    num_output: 21
    bias_term: false
    kernel_size: 4
    stride: 2
  }
}
'''
    assert expected in text
    assert '  convolution_param {\n    num_output: 64\n    pad: 100\n' in text
    assert '  loss_param {\n    ignore_label: 255\n    normalize: false\n  }\n' in text


def test_prototxt_round_trips_through_text_format():
    net = small_fcn().to_proto()
    parsed = text_format.Parse(str(net), caffe_pb2.NetParameter())
    assert parsed == net
    assert len(parsed.layer) == 7
    assert parsed.layer[1].param[1].lr_mult == 2
