"""The schema is Caffe's on the wire: field numbers, enum values, packed encodings."""
import struct

import numpy as np
import pytest
from google.protobuf import text_format

from torchcaffe.proto import caffe_pb2


def number(message, field):
    return message.DESCRIPTOR.fields_by_name[field].number


@pytest.mark.parametrize('field, expected', [
    ('name', 1), ('layers', 2), ('input', 3), ('input_dim', 4), ('force_backward', 5),
    ('state', 6), ('debug_info', 7), ('input_shape', 8), ('layer', 100)])
def test_net_parameter_field_numbers(field, expected):
    assert number(caffe_pb2.NetParameter, field) == expected


@pytest.mark.parametrize('field, expected', [
    ('num', 1), ('channels', 2), ('height', 3), ('width', 4), ('data', 5), ('diff', 6),
    ('shape', 7), ('double_data', 8), ('double_diff', 9)])
def test_blob_proto_field_numbers(field, expected):
    assert number(caffe_pb2.BlobProto, field) == expected


def test_blob_data_and_shape_dims_are_packed():
    fields = caffe_pb2.BlobProto.DESCRIPTOR.fields_by_name
    for name in ('data', 'diff', 'double_data', 'double_diff'):
        assert fields[name].is_packed, name
    assert caffe_pb2.BlobShape.DESCRIPTOR.fields_by_name['dim'].is_packed


@pytest.mark.parametrize('field, expected', [
    ('layer', 1), ('bottom', 2), ('top', 3), ('name', 4), ('type', 5), ('blobs', 6),
    ('blobs_lr', 7), ('weight_decay', 8), ('include', 32), ('exclude', 33),
    ('loss_weight', 35), ('convolution_param', 10), ('inner_product_param', 17),
    ('pooling_param', 19), ('param', 1001), ('blob_share_mode', 1002)])
def test_v1_layer_field_numbers(field, expected):
    assert number(caffe_pb2.V1LayerParameter, field) == expected


@pytest.mark.parametrize('field, expected', [
    ('iter', 1), ('learned_net', 2), ('history', 3), ('current_step', 4)])
def test_solver_state_field_numbers(field, expected):
    assert number(caffe_pb2.SolverState, field) == expected


@pytest.mark.parametrize('field, expected', [
    ('name', 1), ('type', 2), ('bottom', 3), ('top', 4), ('loss_weight', 5), ('param', 6),
    ('blobs', 7), ('include', 8), ('exclude', 9), ('phase', 10), ('propagate_down', 11),
    ('transform_param', 100), ('loss_param', 101), ('convolution_param', 106),
    ('crop_param', 144), ('dropout_param', 108), ('eltwise_param', 110),
    ('inner_product_param', 117), ('input_param', 143), ('pooling_param', 121),
    ('python_param', 130), ('scale_param', 142), ('swish_param', 147), ('clip_param', 148)])
def test_layer_parameter_field_numbers(field, expected):
    assert number(caffe_pb2.LayerParameter, field) == expected


@pytest.mark.parametrize('field, expected', [
    ('train_net', 1), ('test_net', 2), ('test_iter', 3), ('test_interval', 4),
    ('base_lr', 5), ('display', 6), ('max_iter', 7), ('lr_policy', 8), ('gamma', 9),
    ('power', 10), ('momentum', 11), ('weight_decay', 12), ('stepsize', 13),
    ('snapshot', 14), ('snapshot_prefix', 15), ('solver_mode', 17), ('net', 24),
    ('test_initialization', 32), ('average_loss', 33), ('iter_size', 36),
    ('snapshot_format', 37), ('type', 40), ('layer_wise_reduce', 41), ('weights', 42)])
def test_solver_parameter_field_numbers(field, expected):
    assert number(caffe_pb2.SolverParameter, field) == expected


@pytest.mark.parametrize('name, value', [
    ('CONVOLUTION', 4), ('POOLING', 17), ('RELU', 18), ('INNER_PRODUCT', 14),
    ('DROPOUT', 6), ('SOFTMAX', 20), ('SOFTMAX_LOSS', 21), ('DATA', 5), ('LRN', 15),
    ('DECONVOLUTION', 39), ('ELTWISE', 25), ('ACCURACY', 1), ('CONCAT', 3), ('SPLIT', 22),
    ('THRESHOLD', 31), ('ABSVAL', 35)])
def test_v1_layer_type_enum_values(name, value):
    assert caffe_pb2.V1LayerParameter.LayerType.Value(name) == value


def test_enums_and_defaults_that_change_behaviour():
    assert (caffe_pb2.TRAIN, caffe_pb2.TEST) == (0, 1)
    assert caffe_pb2.NetState().phase == caffe_pb2.TEST
    assert caffe_pb2.LossParameter().normalization == caffe_pb2.LossParameter.VALID
    assert caffe_pb2.PoolingParameter().pool == caffe_pb2.PoolingParameter.MAX
    assert caffe_pb2.EltwiseParameter().operation == caffe_pb2.EltwiseParameter.SUM
    assert caffe_pb2.FillerParameter().type == 'constant'
    assert caffe_pb2.ConvolutionParameter().bias_term is True
    assert caffe_pb2.CropParameter().axis == 2
    assert caffe_pb2.ParamSpec().lr_mult == 1.0
    solver = caffe_pb2.SolverParameter()
    assert solver.snapshot_format == caffe_pb2.SolverParameter.BINARYPROTO
    assert (solver.type, solver.iter_size, solver.average_loss) == ('SGD', 1, 1)
    assert solver.test_initialization is True and solver.random_seed == -1
    assert solver.clip_gradients == -1


def test_every_layer_param_message_is_routable_by_name():
    # net_spec routes L.Type(...) keywords to <type>_param via the descriptor.
    fields = caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name
    for name in ('accuracy', 'argmax', 'batch_norm', 'bias', 'concat', 'contrastive_loss',
                 'convolution', 'crop', 'data', 'dropout', 'dummy_data', 'eltwise', 'elu',
                 'embed', 'exp', 'flatten', 'hdf5_data', 'hdf5_output', 'hinge_loss',
                 'image_data', 'infogain_loss', 'inner_product', 'input', 'log', 'lrn',
                 'memory_data', 'mvn', 'parameter', 'pooling', 'power', 'prelu', 'python',
                 'recurrent', 'reduction', 'relu', 'reshape', 'scale', 'sigmoid', 'softmax',
                 'spp', 'slice', 'swish', 'tanh', 'threshold', 'tile', 'window_data',
                 'loss', 'transform', 'clip'):
        assert name + '_param' in fields, name


def varint(n):
    out = b''
    while n > 0x7F:
        out += bytes([n & 0x7F | 0x80])
        n >>= 7
    return out + bytes([n])


def test_hand_assembled_blob_proto_decodes():
    # shape {dim: 2 dim: 3} as field 7, packed int64 dims as field 1 inside it;
    # data as packed little-endian floats in field 5; legacy num=1 as varint field 1.
    dims = varint(2) + varint(300)
    shape = bytes([1 << 3 | 2]) + varint(len(dims)) + dims
    values = [0.5, -1.25, 3.0e38]
    floats = struct.pack('<3f', *values)
    wire = (bytes([7 << 3 | 2]) + varint(len(shape)) + shape
            + bytes([5 << 3 | 2]) + varint(len(floats)) + floats
            + bytes([1 << 3 | 0]) + varint(1))
    blob = caffe_pb2.BlobProto.FromString(wire)
    assert list(blob.shape.dim) == [2, 300]
    assert np.array_equal(np.array(blob.data, dtype=np.float32), np.float32(values))
    assert blob.HasField('num') and blob.num == 1 and not blob.HasField('channels')


def test_blob_proto_encodes_data_packed_as_caffe_writes_it():
    blob = caffe_pb2.BlobProto()
    blob.data.extend([1.0, 2.0])
    assert blob.SerializeToString() == b'\x2a\x08' + struct.pack('<2f', 1.0, 2.0)


def test_hand_assembled_v1_layer_decodes_with_enum_type():
    name = b'conv1'
    layer = (bytes([4 << 3 | 2]) + varint(len(name)) + name        # name = 4
             + bytes([5 << 3 | 0]) + varint(4)                     # type = CONVOLUTION
             + bytes([7 << 3 | 5]) + struct.pack('<f', 1.0)        # blobs_lr (unpacked)
             + bytes([7 << 3 | 5]) + struct.pack('<f', 2.0))
    net = caffe_pb2.NetParameter.FromString(bytes([2 << 3 | 2]) + varint(len(layer)) + layer)
    assert net.layers[0].name == 'conv1'
    assert net.layers[0].type == caffe_pb2.V1LayerParameter.CONVOLUTION
    assert list(net.layers[0].blobs_lr) == [1.0, 2.0]


def test_v1_prototxt_with_enum_types_parses():
    net = text_format.Parse('layers { name: "fc6" type: INNER_PRODUCT '
                            'inner_product_param { num_output: 4096 } }',
                            caffe_pb2.NetParameter())
    assert net.layers[0].type == 14
    assert net.layers[0].inner_product_param.num_output == 4096
