"""Caffe's files round-trip bit for bit, bad files fail loudly, old formats upgrade."""
import os
import struct

import h5py
import numpy as np
import pytest

from torchcaffe import io
from torchcaffe.errors import FormatError, PrototxtError
from torchcaffe.proto import caffe_pb2
from torchcaffe.upgrade import upgrade_v1_layer

NET_TEXT = '''name: "tiny"
layer {
  name: "data"
  type: "Input"
  top: "data"
  input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } }
}
layer {
  name: "conv"
  type: "Convolution"
  bottom: "data"
  top: "conv"
  param { lr_mult: 1 decay_mult: 1 }
  param { lr_mult: 2 decay_mult: 0 }
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 }
}
layer {
  name: "pool"
  type: "Pooling"
  bottom: "conv"
  top: "pool"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 }
}
'''

SOLVER_TEXT = '''train_net: "train.prototxt"
test_iter: 736
test_interval: 999999999
base_lr: 1e-10
lr_policy: "fixed"
momentum: 0.99
weight_decay: 0.0005
max_iter: 100000
snapshot: 4000
snapshot_prefix: "snapshot/train"
test_initialization: false
'''


def odd_floats(n, seed):
    """float32 values with NaN payloads, -0.0, denormals and infinities mixed in."""
    rng = np.random.RandomState(seed)
    bits = rng.randint(0, 2 ** 32, size=n, dtype=np.uint64).astype(np.uint32)
    specials = np.array([0x7FC00001, 0x80000000, 0x00000001, 0x7F800000, 0xFF800000],
                        dtype=np.uint32)
    bits[:min(n, 5)] = specials[:min(n, 5)]
    return bits.view(np.float32)


def same_bits(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


def weights_net():
    """A 3-layer net with weights; fc shares its bias by name with nothing."""
    net = caffe_pb2.NetParameter(name='w')
    conv = net.layer.add(name='conv1', type='Convolution', bottom=['data'], top=['conv1'])
    conv.blobs.extend([io.array_to_blobproto(odd_floats(4 * 3 * 3 * 3, 0).reshape(4, 3, 3, 3)),
                       io.array_to_blobproto(odd_floats(4, 1))])
    net.layer.add(name='relu1', type='ReLU', bottom=['conv1'], top=['conv1'])
    fc = net.layer.add(name='fc', type='InnerProduct', bottom=['conv1'], top=['fc'])
    fc.blobs.extend([io.array_to_blobproto(odd_floats(5 * 7, 2).reshape(5, 7)),
                     io.array_to_blobproto(odd_floats(5, 3))])
    return net


def arrays(net):
    return {l.name: [io.blobproto_to_array(b) for b in l.blobs] for l in net.layer}


# ---------------------------------------------------------------- prototxt

def test_net_prototxt_round_trips(tmp_path):
    net = io.parse_prototxt(NET_TEXT, caffe_pb2.NetParameter)
    io.write_prototxt(net, tmp_path / 'net.prototxt')
    again = io.read_net_prototxt(tmp_path / 'net.prototxt')
    assert again == net
    assert [l.type for l in again.layer] == ['Input', 'Convolution', 'Pooling']
    assert again.layer[1].param[1].lr_mult == 2
    assert (tmp_path / 'net.prototxt').read_text() == io.message_to_text(net)


def test_solver_prototxt_round_trips(tmp_path):
    solver = io.parse_prototxt(SOLVER_TEXT, caffe_pb2.SolverParameter)
    io.write_prototxt(solver, tmp_path / 'solver.prototxt')
    again = io.read_solver_prototxt(tmp_path / 'solver.prototxt')
    assert again == solver
    assert again.base_lr == np.float32(1e-10) and again.test_iter == [736]
    assert again.test_initialization is False


def test_prototxt_syntax_error_names_file_line_and_column(tmp_path):
    path = tmp_path / 'val.prototxt'
    path.write_text('name: "x"\nlayer {\n  name "a"\n}\n')
    with pytest.raises(PrototxtError) as info:
        io.read_net_prototxt(path)
    assert (info.value.line, info.value.column) == (3, 8)
    assert str(info.value) == '%s:3:8: Expected ":".' % path


def test_prototxt_unclosed_brace_is_reported_at_the_last_token(tmp_path):
    path = tmp_path / 'val.prototxt'
    path.write_text('name: "x"\nlayer {\n  name: "a"\n  top: "a"\n')
    with pytest.raises(PrototxtError, match='Expected "}"') as info:
        io.read_net_prototxt(path)
    assert (info.value.line, info.value.column) == (4, 8)


def test_prototxt_unknown_field_points_at_the_field(tmp_path):
    path = tmp_path / 'val.prototxt'
    lines = NET_TEXT.splitlines()
    lines[11] = '    bottm: "data"'
    path.write_text('\n'.join(lines))
    with pytest.raises(PrototxtError) as info:
        io.read_net_prototxt(path)
    assert str(info.value) == ('%s:12:5: Message type "caffe.LayerParameter" has no field '
                               'named "bottm".' % path)
    assert (info.value.line, info.value.column, info.value.path) == (12, 5, str(path))


def test_prototxt_unknown_enum_value_points_at_the_value(tmp_path):
    path = tmp_path / 'net.prototxt'
    path.write_text(NET_TEXT.replace('pool: MAX', 'pool: MIN'))
    with pytest.raises(PrototxtError) as info:
        io.read_net_prototxt(path)
    assert (info.value.line, info.value.column) == (22, 25)
    assert 'has no value named MIN' in str(info.value)
    assert str(info.value).startswith('%s:22:25: Enum type' % path)


def test_prototxt_wrong_value_type_and_tab_column():
    with pytest.raises(PrototxtError) as info:
        io.parse_prototxt('layer {\n\tname: 3 }', caffe_pb2.NetParameter, 'n.prototxt')
    assert str(info.value).startswith('n.prototxt:2:8: ')


def test_prototxt_missing_required_field_is_an_error():
    with pytest.raises(FormatError, match='clip_param.max'):
        io.parse_prototxt('layer { clip_param { min: 0 } }', caffe_pb2.NetParameter)


# ---------------------------------------------------------------- binary formats

def test_caffemodel_round_trips_bit_identically(tmp_path):
    net = weights_net()
    io.write_caffemodel(net, tmp_path / 'w.caffemodel')
    again = io.read_caffemodel(tmp_path / 'w.caffemodel')
    assert again == net
    for name, blobs in arrays(net).items():
        for a, b in zip(blobs, arrays(again)[name], strict=True):
            assert same_bits(a, b)


def test_caffemodel_file_is_the_serialized_net_parameter(tmp_path):
    net = weights_net()
    io.write_caffemodel(net, tmp_path / 'w.caffemodel')
    assert (tmp_path / 'w.caffemodel').read_bytes() == net.SerializeToString()


def test_solverstate_round_trips(tmp_path):
    state = caffe_pb2.SolverState(iter=4000, learned_net='snap_iter_4000.caffemodel',
                                  current_step=0)
    state.history.extend([io.array_to_blobproto(odd_floats(12, 5).reshape(3, 4)),
                          io.array_to_blobproto(odd_floats(3, 6))])
    io.write_solverstate(state, tmp_path / 's.solverstate')
    again = io.read_solverstate(tmp_path / 's.solverstate')
    assert again == state and again.HasField('current_step')
    assert same_bits(io.blobproto_to_array(again.history[0]), odd_floats(12, 5).reshape(3, 4))


def test_truncated_caffemodel_is_rejected(tmp_path):
    data = weights_net().SerializeToString()
    path = tmp_path / 'cut.caffemodel'
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(FormatError, match='truncated or corrupt') as info:
        io.read_caffemodel(path)
    assert str(path) in str(info.value)


def test_empty_caffemodel_is_rejected(tmp_path):
    path = tmp_path / 'empty.caffemodel'
    path.write_bytes(b'')
    with pytest.raises(FormatError, match='empty file') as info:
        io.read_caffemodel(path)
    assert info.value.path == str(path)


@pytest.mark.parametrize('seed', range(20))
def test_random_bytes_are_not_a_caffemodel(tmp_path, seed):
    path = tmp_path / 'noise.caffemodel'
    path.write_bytes(np.random.RandomState(seed).bytes(64 + 37 * seed))
    with pytest.raises(FormatError) as info:
        io.read_caffemodel(path)
    assert str(path) in str(info.value)


def test_solverstate_passed_as_caffemodel_is_rejected_with_a_hint(tmp_path):
    state = caffe_pb2.SolverState(iter=10, learned_net='a.caffemodel', current_step=0)
    state.history.add().CopyFrom(io.array_to_blobproto(np.ones(3)))
    io.write_solverstate(state, tmp_path / 'a.solverstate')
    with pytest.raises(FormatError, match='reads as a solverstate'):
        io.read_caffemodel(tmp_path / 'a.solverstate')


def test_caffemodel_passed_as_solverstate_is_rejected(tmp_path):
    io.write_caffemodel(weights_net(), tmp_path / 'w.caffemodel')
    with pytest.raises(FormatError, match='reads as a caffemodel'):
        io.read_solverstate(tmp_path / 'w.caffemodel')


def test_caffemodel_with_a_nameless_layer_or_no_layers_is_rejected(tmp_path):
    net = weights_net()
    net.layer[2].ClearField('name')
    io.write_caffemodel(net, tmp_path / 'a.caffemodel')
    with pytest.raises(FormatError, match='layer #2 has no name'):
        io.read_caffemodel(tmp_path / 'a.caffemodel')
    io.write_caffemodel(caffe_pb2.NetParameter(name='only a name'), tmp_path / 'b.caffemodel')
    with pytest.raises(FormatError, match='no layers'):
        io.read_caffemodel(tmp_path / 'b.caffemodel')


def test_blob_whose_values_do_not_fill_its_shape_is_rejected(tmp_path):
    net = weights_net()
    net.layer[0].blobs[1].shape.dim[0] = 5
    io.write_caffemodel(net, tmp_path / 'a.caffemodel')
    with pytest.raises(FormatError, match=r"layer 'conv1' blob 1: 4 data values for shape \(5,\)"):
        io.read_caffemodel(tmp_path / 'a.caffemodel')


def test_solverstate_without_iter_is_rejected(tmp_path):
    (tmp_path / 'x.solverstate').write_bytes(
        caffe_pb2.SolverState(learned_net='x').SerializeToString())
    with pytest.raises(FormatError, match='no "iter"'):
        io.read_solverstate(tmp_path / 'x.solverstate')


# ---------------------------------------------------------------- HDF5

def test_caffemodel_h5_round_trips_in_caffes_layout(tmp_path):
    net = weights_net()
    path = tmp_path / 'w.caffemodel.h5'
    io.write_caffemodel(net, path)
    with h5py.File(path, 'r') as f:
        assert sorted(f) == ['data']
        assert sorted(f['data']) == ['conv1', 'fc', 'relu1']  # every layer has a group
        assert sorted(f['data/conv1']) == ['0', '1'] and len(f['data/relu1']) == 0
        assert f['data/conv1/0'].shape == (4, 3, 3, 3) and f['data/conv1/0'].dtype == np.float32
    again = io.read_caffemodel(path)
    assert [l.name for l in again.layer] == ['conv1', 'fc', 'relu1']
    want = arrays(net)
    for name, blobs in arrays(again).items():
        assert len(blobs) == len(want[name])
        for a, b in zip(blobs, want[name]):
            assert same_bits(a, b)


def test_caffemodel_h5_stores_a_shared_param_once(tmp_path):
    net = weights_net()
    fc2 = net.layer.add(name='fc2', type='InnerProduct', bottom=['conv1'], top=['fc2'])
    fc2.blobs.extend(net.layer[2].blobs)
    net.layer[2].param.add(name='shared_w')
    fc2.param.add(name='shared_w')
    io.write_caffemodel_h5(net, tmp_path / 's.caffemodel.h5', write_diff=False)
    with h5py.File(tmp_path / 's.caffemodel.h5', 'r') as f:
        assert sorted(f['data/fc']) == ['0', '1'] and sorted(f['data/fc2']) == ['1']
    again = io.read_caffemodel(tmp_path / 's.caffemodel.h5')
    fc2_blobs = [l for l in again.layer if l.name == 'fc2'][0].blobs
    assert io.is_placeholder_blob(fc2_blobs[0]) and not io.is_placeholder_blob(fc2_blobs[1])
    io.write_caffemodel_h5(again, tmp_path / 't.caffemodel.h5')  # placeholders stay out
    with h5py.File(tmp_path / 't.caffemodel.h5', 'r') as f:
        assert sorted(f['data/fc2']) == ['1']


def test_caffemodel_h5_writes_diffs_on_request(tmp_path):
    net = caffe_pb2.NetParameter()
    net.layer.add(name='s', type='Scale').blobs.add().CopyFrom(
        io.array_to_blobproto(np.arange(3.0), diff=np.array([7.0, 8.0, 9.0])))
    io.write_caffemodel_h5(net, tmp_path / 'd.caffemodel.h5', write_diff=True)
    with h5py.File(tmp_path / 'd.caffemodel.h5', 'r') as f:
        assert f['diff/s/0'][()].tolist() == [7.0, 8.0, 9.0]
        assert f['data/s/0'][()].tolist() == [0.0, 1.0, 2.0]


def test_caffemodel_h5_diff_of_a_blob_without_diff_is_zero(tmp_path):
    io.write_caffemodel_h5(weights_net(), tmp_path / 'z.caffemodel.h5', write_diff=True)
    with h5py.File(tmp_path / 'z.caffemodel.h5', 'r') as f:
        assert f['diff/fc/0'].shape == (5, 7) and not f['diff/fc/0'][()].any()


def test_solverstate_h5_round_trips_in_caffes_layout(tmp_path):
    state = caffe_pb2.SolverState(iter=8000, learned_net='train_iter_8000.caffemodel.h5',
                                  current_step=3)
    state.history.extend([io.array_to_blobproto(odd_floats(6, 7).reshape(2, 3)),
                          io.array_to_blobproto(odd_floats(2, 8))])
    path = tmp_path / 'train_iter_8000.solverstate.h5'
    io.write_solverstate(state, path)
    with h5py.File(path, 'r') as f:
        assert f['iter'].dtype == np.int32 and f['iter'][()].tolist() == [8000]
        assert f['current_step'][()].tolist() == [3]
        string_type = f['learned_net'].id.get_type()
        assert string_type.get_strpad() == h5py.h5t.STR_NULLTERM
        assert string_type.get_size() == len('train_iter_8000.caffemodel.h5') + 1
        assert sorted(f['history']) == ['0', '1']
    again = io.read_solverstate(path)
    assert again == state
    assert same_bits(io.blobproto_to_array(again.history[1]), odd_floats(2, 8))


def test_solverstate_h5_reads_variable_length_strings_and_scalar_ints(tmp_path):
    path = tmp_path / 'other.solverstate.h5'
    with h5py.File(path, 'w') as f:
        f['iter'] = np.int64(12)
        f['current_step'] = np.int32(1)
        f['learned_net'] = 'x.caffemodel.h5'
        f.create_group('history')['0'] = np.float64([1.5, 2.5])
    state = io.read_solverstate(path)
    assert (state.iter, state.current_step, state.learned_net) == (12, 1, 'x.caffemodel.h5')
    assert list(state.history[0].double_data) == [1.5, 2.5]


def test_h5_missing_group_names_file_and_group(tmp_path):
    path = tmp_path / 'bad.caffemodel.h5'
    with h5py.File(path, 'w') as f:
        f.create_group('weights')
    with pytest.raises(FormatError) as info:
        io.read_caffemodel(path)
    assert str(info.value) == '%s: missing HDF5 group "/data"' % path
    state = tmp_path / 'bad.solverstate.h5'
    with h5py.File(state, 'w') as f:
        f['iter'] = np.int32([1])
        f['current_step'] = np.int32([0])
    with pytest.raises(FormatError, match='missing HDF5 group "/history"'):
        io.read_solverstate(state)


def test_h5_history_with_a_gap_is_rejected(tmp_path):
    path = tmp_path / 'gap.solverstate.h5'
    with h5py.File(path, 'w') as f:
        f['iter'] = np.int32([1])
        f['current_step'] = np.int32([0])
        f.create_group('history')['1'] = np.float32([1])
    with pytest.raises(FormatError, match='missing HDF5 dataset "/history/0"'):
        io.read_solverstate(path)


def test_a_caffemodel_is_read_by_its_content_not_its_suffix(tmp_path):
    # Caffe's CopyTrainedLayersFrom asks H5Fis_hdf5 of the file, not of its name.
    binary = tmp_path / 'w.caffemodel.h5'
    binary.write_bytes(weights_net().SerializeToString())
    assert not io.is_hdf5_file(binary)
    got = arrays(io.read_caffemodel(binary))
    want = arrays(weights_net())
    assert set(got) == set(want)
    for name in want:
        assert len(got[name]) == len(want[name])
        for a, b in zip(got[name], want[name]):
            np.testing.assert_array_equal(a, b)
    hdf5 = tmp_path / 'weights_tmp'  # no suffix, as tempfile names go
    io.write_caffemodel_h5(weights_net(), hdf5)
    assert io.is_hdf5_file(hdf5) and not io.is_hdf5_file(tmp_path / 'missing')
    got = arrays(io.read_caffemodel(hdf5))
    assert set(got) == set(want) and not got['relu1']
    np.testing.assert_array_equal(got['fc'][0], want['fc'][0])
    garbage = tmp_path / 'junk.caffemodel.h5'
    garbage.write_bytes(b'\x89HDF nonsense')
    with pytest.raises(FormatError):
        io.read_caffemodel(garbage)


# ---------------------------------------------------------------- atomic writes

def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    path = tmp_path / 'w.caffemodel'
    io.write_caffemodel(weights_net(), path)
    before = path.read_bytes()

    def broken_fsync(p):
        raise OSError('disk full')
    monkeypatch.setattr(io, '_fsync', broken_fsync)
    other = weights_net()
    other.layer[0].name = 'changed'
    with pytest.raises(OSError, match='disk full'):
        io.write_caffemodel(other, path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ['w.caffemodel']


def test_failed_serialization_leaves_the_old_file(tmp_path):
    path = tmp_path / 'net.caffemodel'
    io.write_caffemodel(weights_net(), path)
    before = path.read_bytes()
    bad = caffe_pb2.NetParameter()
    bad.layer.add(name='clip', type='Clip').clip_param.min = 0  # required max unset
    with pytest.raises(FormatError, match='clip_param.max'):
        io.write_caffemodel(bad, path)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ['net.caffemodel']


def test_failed_h5_write_midway_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / 'w.caffemodel.h5'
    io.write_caffemodel_h5(weights_net(), path)
    before = path.read_bytes()
    calls = []

    def failing_dataset(group, name, blob, diff):
        calls.append(name)
        if len(calls) == 3:
            raise RuntimeError('boom')
        group.create_dataset(name, data=np.zeros(1))
    monkeypatch.setattr(io, '_h5_dataset', failing_dataset)
    with pytest.raises(RuntimeError, match='boom'):
        io.write_caffemodel_h5(weights_net(), path)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ['w.caffemodel.h5']


def test_written_files_get_normal_permissions(tmp_path):
    io.write_prototxt(caffe_pb2.NetParameter(name='n'), tmp_path / 'n.prototxt')
    mask = os.umask(0)
    os.umask(mask)
    assert os.stat(tmp_path / 'n.prototxt').st_mode & 0o777 == 0o666 & ~mask


# ---------------------------------------------------------------- V1 upgrade

VGG_V1_TEXT = '''name: "VGG_ILSVRC_16_layers"
input: "data"
input_dim: 10
input_dim: 3
input_dim: 224
input_dim: 224
layers {
  bottom: "data"
  top: "conv1_1"
  name: "conv1_1"
  type: CONVOLUTION
  blobs_lr: 1
  blobs_lr: 2
  weight_decay: 1
  weight_decay: 0
  convolution_param { num_output: 64 pad: 1 kernel_size: 3 }
}
layers { bottom: "conv1_1" top: "conv1_1" name: "relu1_1" type: RELU }
layers {
  bottom: "conv1_1" top: "pool1" name: "pool1" type: POOLING
  pooling_param { pool: MAX kernel_size: 2 stride: 2 }
}
layers {
  bottom: "pool1" top: "fc6" name: "fc6" type: INNER_PRODUCT
  blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0
  inner_product_param { num_output: 4096 }
}
layers { bottom: "fc6" top: "fc6" name: "relu6" type: RELU }
layers {
  bottom: "fc6" top: "fc6" name: "drop6" type: DROPOUT
  dropout_param { dropout_ratio: 0.5 }
  include { phase: TRAIN }
}
layers { bottom: "fc6" top: "prob" name: "prob" type: SOFTMAX }
'''


def test_vgg_style_v1_prototxt_upgrades_like_caffe(tmp_path):
    path = tmp_path / 'VGG_ILSVRC_16_layers_deploy.prototxt'
    path.write_text(VGG_V1_TEXT)
    assert io.needs_upgrade(io.read_net_prototxt(path, upgrade=False))
    net = io.read_net_prototxt(path)
    assert not io.needs_upgrade(net)
    assert len(net.layers) == 0 and len(net.input) == 0 and len(net.input_dim) == 0
    assert [(l.name, l.type) for l in net.layer] == [
        ('input', 'Input'), ('conv1_1', 'Convolution'), ('relu1_1', 'ReLU'),
        ('pool1', 'Pooling'), ('fc6', 'InnerProduct'), ('relu6', 'ReLU'),
        ('drop6', 'Dropout'), ('prob', 'Softmax')]
    data = net.layer[0]
    assert list(data.top) == ['data'] and list(data.input_param.shape[0].dim) == [10, 3, 224, 224]
    conv = net.layer[1]
    assert [(p.lr_mult, p.decay_mult) for p in conv.param] == [(1, 1), (2, 0)]
    assert conv.convolution_param.num_output == 64 and list(conv.convolution_param.pad) == [1]
    assert list(conv.bottom) == ['data'] and list(conv.top) == ['conv1_1']
    assert net.layer[3].pooling_param.stride == 2
    assert net.layer[6].include[0].phase == caffe_pb2.TRAIN
    assert net.layer[6].dropout_param.dropout_ratio == 0.5
    assert len(net.layer[2].param) == 0


def test_v1_param_names_share_modes_and_loss_weight_carry_over():
    v1 = caffe_pb2.V1LayerParameter(name='ip', type=caffe_pb2.V1LayerParameter.INNER_PRODUCT,
                                    param=['w', 'b'], blobs_lr=[3], loss_weight=[0.5],
                                    blob_share_mode=[caffe_pb2.V1LayerParameter.PERMISSIVE])
    layer = upgrade_v1_layer(v1)
    assert [p.name for p in layer.param] == ['w', 'b']
    assert layer.param[0].share_mode == caffe_pb2.ParamSpec.PERMISSIVE
    assert not layer.param[1].HasField('share_mode')
    assert layer.param[0].lr_mult == 3 and not layer.param[1].HasField('lr_mult')
    assert list(layer.loss_weight) == [0.5]


# Finite values: building a blob value by value goes through Python floats.
FC6_VALUES = np.random.RandomState(9).standard_normal(8 * 18).astype(np.float32)


def v1_weights_net():
    """A V1 caffemodel as VGG's is stored: legacy 4-D dims, weights as (1, 1, out, in)."""
    net = caffe_pb2.NetParameter(name='VGG_small', input=['data'])
    conv = net.layers.add(name='conv1_1', type=caffe_pb2.V1LayerParameter.CONVOLUTION,
                          bottom=['data'], top=['conv1_1'], blobs_lr=[1, 2],
                          weight_decay=[1, 0])
    w = conv.blobs.add(num=4, channels=3, height=3, width=3)
    w.data.extend(np.arange(108, dtype=np.float32) / 7)
    b = conv.blobs.add(num=1, channels=1, height=1, width=4)
    b.data.extend([0.5, -0.5, 1.5, -1.5])
    net.layers.add(name='relu1_1', type=caffe_pb2.V1LayerParameter.RELU,
                   bottom=['conv1_1'], top=['conv1_1'])
    fc = net.layers.add(name='fc6', type=caffe_pb2.V1LayerParameter.INNER_PRODUCT,
                        bottom=['conv1_1'], top=['fc6'])
    fw = fc.blobs.add(num=1, channels=1, height=8, width=18)
    fw.data.extend(FC6_VALUES)
    fb = fc.blobs.add(num=1, channels=1, height=1, width=8)
    fb.data.extend(np.linspace(-1, 1, 8, dtype=np.float32))
    return net


def test_v1_caffemodel_with_legacy_dims_loads_and_upgrades(tmp_path):
    path = tmp_path / 'VGG_small.caffemodel'
    path.write_bytes(v1_weights_net().SerializeToString())
    net = io.read_caffemodel(path)
    assert [(l.name, l.type) for l in net.layer] == [
        ('conv1_1', 'Convolution'), ('relu1_1', 'ReLU'), ('fc6', 'InnerProduct')]
    assert len(net.input) == 0  # an input without dims is just dropped
    conv, fc = net.layer[0], net.layer[2]
    assert [(p.lr_mult, p.decay_mult) for p in conv.param] == [(1, 1), (2, 0)]
    assert io.blob_shape(fc.blobs[0]) == (1, 1, 8, 18)
    fc_w = io.blobproto_to_array(fc.blobs[0])
    assert fc_w.shape == (1, 1, 8, 18) and same_bits(fc_w.ravel(), FC6_VALUES)
    assert io.legacy_shape_equals(fc.blobs[0], (8, 18))
    assert io.legacy_shape_equals(fc.blobs[1], (8,))
    assert io.blobproto_to_array(conv.blobs[1]).ravel().tolist() == [0.5, -0.5, 1.5, -1.5]
    assert io.legacy_shape_equals(conv.blobs[0], (4, 3, 3, 3))
    assert np.array_equal(io.blobproto_to_array(conv.blobs[0]).ravel(),
                          np.arange(108, dtype=np.float32) / 7)


def test_v1_caffemodel_can_be_read_without_upgrade(tmp_path):
    path = tmp_path / 'v1.caffemodel'
    path.write_bytes(v1_weights_net().SerializeToString())
    raw = io.read_caffemodel(path, upgrade=False)
    assert len(raw.layers) == 3 and raw.layers[2].type == caffe_pb2.V1LayerParameter.INNER_PRODUCT


def test_mixing_v1_layers_and_layer_is_an_error_naming_the_file(tmp_path):
    path = tmp_path / 'mixed.prototxt'
    path.write_text('layers { name: "a" type: RELU }\nlayer { name: "b" type: "ReLU" }\n')
    with pytest.raises(FormatError, match='mixes V1 "layers"') as info:
        io.read_net_prototxt(path)
    assert info.value.path == str(path)


def test_unknown_v1_type_number_in_a_caffemodel_is_an_error(tmp_path):
    name = b'odd'
    layer = b'\x22' + bytes([len(name)]) + name + b'\x28\x63'  # name, type = 99
    path = tmp_path / 'odd.caffemodel'
    path.write_bytes(b'\x12' + bytes([len(layer)]) + layer)
    with pytest.raises(FormatError, match="V1 layer 'odd' .* unknown type enum 99"):
        io.read_caffemodel(path)


def test_v0_layers_are_upgraded_through_v1():
    net = caffe_pb2.NetParameter(input=['data'], input_dim=[1, 1, 4, 4])
    conn = net.layers.add(bottom=['data'], top=['conv1'])
    conn.layer.name, conn.layer.type, conn.layer.num_output = 'conv1', 'conv', 2
    up = io.upgrade_net_param(net, 'old.prototxt')
    assert [(l.name, l.type) for l in up.layer] == [('input', 'Input'),
                                                     ('conv1', 'Convolution')]
    assert up.layer[1].convolution_param.num_output == 2
    conn.layer.type = 'warp'
    with pytest.raises(FormatError, match="old.prototxt: V0 layer 'conv1' .* unknown type 'warp'"):
        io.upgrade_net_param(net, 'old.prototxt')


def test_input_shape_becomes_an_input_layer_in_front():
    net = io.parse_prototxt('input: "a" input_shape { dim: 1 dim: 2 } input: "b" '
                            'input_shape { dim: 3 } layer { name: "x" type: "ReLU" }',
                            caffe_pb2.NetParameter)
    up = io.upgrade_net_param(net)
    assert [l.name for l in up.layer] == ['input', 'x']
    assert list(up.layer[0].top) == ['a', 'b']
    assert [list(s.dim) for s in up.layer[0].input_param.shape] == [[1, 2], [3]]
    assert len(net.input) == 2  # the argument is left as it was


def test_input_dim_count_must_match_inputs():
    net = io.parse_prototxt('input: "a" input_dim: 1 input_dim: 3', caffe_pb2.NetParameter)
    with pytest.raises(FormatError, match='need 4 input_dim values, got 2'):
        io.upgrade_net_param(net, 'deploy.prototxt')


def test_v1_data_layer_transform_fields_move_to_transform_param():
    net = io.parse_prototxt('layers { name: "d" type: DATA top: "data" data_param { '
                            'source: "db" scale: 0.5 mirror: true batch_size: 2 } }',
                            caffe_pb2.NetParameter)
    layer = io.upgrade_net_param(net).layer[0]
    assert layer.type == 'Data' and layer.data_param.source == 'db'
    assert not layer.data_param.HasField('scale') and not layer.data_param.HasField('mirror')
    assert layer.transform_param.scale == 0.5 and layer.transform_param.mirror


def test_three_param_batch_norm_gets_zero_learning_rates():
    net = io.parse_prototxt('layer { name: "bn" type: "BatchNorm" param { lr_mult: 1 } '
                            'param { lr_mult: 1 } param { lr_mult: 1 name: "m" } }',
                            caffe_pb2.NetParameter)
    assert io.needs_upgrade(net)
    params = io.upgrade_net_param(net).layer[0].param
    assert [(p.lr_mult, p.decay_mult, p.name) for p in params] == [
        (0, 0, ''), (0, 0, ''), (0, 0, 'm')]


def test_solver_type_enum_upgrades_to_the_type_string(tmp_path):
    path = tmp_path / 'solver.prototxt'
    path.write_text(SOLVER_TEXT + 'solver_type: NESTEROV\n')
    solver = io.read_solver_prototxt(path)
    assert solver.type == 'Nesterov' and not solver.HasField('solver_type')
    path.write_text(SOLVER_TEXT + 'solver_type: ADAM\ntype: "Adam"\n')
    with pytest.raises(FormatError, match='both'):
        io.read_solver_prototxt(path)


def test_snapshot_prefix_defaults_to_the_solver_file_name(tmp_path):
    path = tmp_path / 'solver.prototxt'
    path.write_text('base_lr: 0.1\n')
    assert io.read_solver_prototxt(path).snapshot_prefix == str(tmp_path / 'solver')
    (tmp_path / 'snaps').mkdir()
    path.write_text('base_lr: 0.1\nsnapshot_prefix: "%s"\n' % (tmp_path / 'snaps'))
    assert io.read_solver_prototxt(path).snapshot_prefix == str(tmp_path / 'snaps' / 'solver')
    assert not io.read_solver_prototxt(path, upgrade=False).snapshot_prefix.endswith('solver')


# ---------------------------------------------------------------- blob helpers

def test_legacy_shape_equals_compares_from_the_last_axis():
    legacy = caffe_pb2.BlobProto(num=1, channels=1, height=8, width=18)
    assert io.legacy_shape_equals(legacy, (8, 18))
    assert io.legacy_shape_equals(legacy, (1, 8, 18))
    assert io.legacy_shape_equals(legacy, (1, 1, 8, 18))
    assert not io.legacy_shape_equals(legacy, (18, 8))
    assert not io.legacy_shape_equals(legacy, (1, 1, 1, 8, 18))
    assert not io.legacy_shape_equals(caffe_pb2.BlobProto(num=2, channels=1, height=8,
                                                          width=18), (8, 18))
    modern = caffe_pb2.BlobProto(shape=caffe_pb2.BlobShape(dim=[1, 8, 18]))
    assert io.legacy_shape_equals(modern, (1, 8, 18))
    assert not io.legacy_shape_equals(modern, (8, 18))


def test_legacy_dims_win_over_shape_and_give_four_axes():
    blob = caffe_pb2.BlobProto(num=1, channels=2, height=1, width=3,
                               shape=caffe_pb2.BlobShape(dim=[6]))
    blob.data.extend(range(6))
    assert io.blob_shape(blob) == (1, 2, 1, 3)
    assert io.blobproto_to_array(blob).shape == (1, 2, 1, 3)


def test_double_data_takes_precedence_and_stays_float64():
    blob = caffe_pb2.BlobProto(shape=caffe_pb2.BlobShape(dim=[2]))
    blob.data.extend([1.0, 2.0])
    blob.double_data.extend([0.1, 0.2])
    array = io.blobproto_to_array(blob)
    assert array.dtype == np.float64 and array.tolist() == [0.1, 0.2]


def test_array_to_blobproto_writes_shape_and_packed_float32():
    arr = np.array([[1.0, -2.0], [0.25, 3.0]])
    blob = io.array_to_blobproto(arr, diff=np.full(4, 0.5))
    assert list(blob.shape.dim) == [2, 2] and not blob.HasField('num')
    # Fields in number order, as Caffe's C++ writes them: data 5, diff 6, shape 7.
    assert blob.SerializeToString() == (
        b'\x2a\x10' + struct.pack('<4f', 1.0, -2.0, 0.25, 3.0)
        + b'\x32\x10' + struct.pack('<4f', 0.5, 0.5, 0.5, 0.5)
        + b'\x3a\x04' + b'\x0a\x02\x02\x02')
    assert io.blobproto_to_array(blob, return_diff=True).tolist() == [[0.5, 0.5], [0.5, 0.5]]
    scalar = io.array_to_blobproto(np.float32(2.5))
    assert scalar.HasField('shape') and io.blobproto_to_array(scalar).shape == ()


def test_blob_count_mismatch_raises():
    blob = caffe_pb2.BlobProto(shape=caffe_pb2.BlobShape(dim=[3]))
    blob.data.extend([1.0, 2.0])
    with pytest.raises(FormatError, match=r'shape \(3,\) needs 3 data values, has 2'):
        io.blobproto_to_array(blob)


def test_datum_round_trips_uint8_and_float():
    img = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    datum = io.array_to_datum(img, label=7)
    assert datum.label == 7 and datum.data == img.tobytes()
    assert np.array_equal(io.datum_to_array(datum), img)
    flt = io.datum_to_array(io.array_to_datum(img.astype(np.float32) / 2))
    assert flt.dtype == np.float32 and np.array_equal(flt, img / np.float32(2))


def test_blobproto_file_round_trips_and_a_truncated_one_names_the_file(tmp_path):
    mean = np.arange(24, dtype=np.float32).reshape(1, 2, 3, 4) / 7
    path = str(tmp_path / 'mean.binaryproto')
    io.write_blobproto(io.array_to_blobproto(mean), path)
    np.testing.assert_array_equal(io.read_blobproto(path), mean)
    with open(path, 'r+b') as f:
        f.truncate(os.path.getsize(path) - 5)
    with pytest.raises(FormatError, match='mean.binaryproto: not a valid BlobProto'):
        io.read_blobproto(path)
