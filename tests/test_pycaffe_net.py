"""caffe.Net as pycaffe has it (python/caffe/pycaffe.py, _caffe.cpp): constructor forms,
the Split blobs Caffe inserts, the views of the net, forward/backward with their
return values, batched runs, weights I/O. Tiny nets inline; values by hand in numpy.
"""
import numpy as np
import pytest

import caffe

RNG = np.random.RandomState(11)
W = RNG.randn(4, 3).astype(np.float32)
B = RNG.randn(4).astype(np.float32)
X = RNG.randn(2, 3).astype(np.float32)

# x feeds two layers, so Caffe inserts a Split after it; z is a plain output.
TWO_HEADS = '''
name: "heads"
force_backward: true
layer { name: "input" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "z"
        inner_product_param { num_output: 4 } }
layer { name: "sq" type: "Power" bottom: "x" top: "p" power_param { power: 2 } }
'''

LOSS_NET = '''
name: "lossy"
layer { name: "input" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "z"
        inner_product_param { num_output: 4 } }
layer { name: "relu" type: "ReLU" bottom: "z" top: "z" }
layer { name: "loss" type: "Power" bottom: "z" top: "loss" loss_weight: 0.5 }
'''


def write(tmp_path, text, name='net.prototxt'):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def heads(tmp_path, **kwargs):
    net = caffe.Net(write(tmp_path, TWO_HEADS), caffe.TEST, **kwargs)
    net.params['ip'][0].data[...] = W
    net.params['ip'][1].data[...] = B
    return net


# ---------------------------------------------------------------- Split layers

def test_a_blob_with_two_readers_gets_caffes_split_layer_and_blobs(tmp_path):
    net = heads(tmp_path)
    assert list(net.blobs) == ['x', 'x_input_0_split_0', 'x_input_0_split_1', 'z', 'p']
    assert net._layer_names == ['input', 'x_input_0_split', 'ip', 'sq']
    assert net.layer_dict['x_input_0_split'].type == 'Split'
    assert net.bottom_names['ip'] == ['x_input_0_split_0']
    assert net.bottom_names['sq'] == ['x_input_0_split_1']
    assert net.top_names['x_input_0_split'] == ['x_input_0_split_0', 'x_input_0_split_1']


def test_each_split_top_has_its_readers_diff_and_the_blob_their_sum(tmp_path):
    net = heads(tmp_path)
    net.forward(x=X)
    gz = RNG.randn(2, 4).astype(np.float32)
    gp = RNG.randn(2, 3).astype(np.float32)
    diffs = net.backward(z=gz, p=gp)
    np.testing.assert_allclose(net.blobs['x_input_0_split_0'].diff, gz @ W, rtol=1e-5)
    np.testing.assert_allclose(net.blobs['x_input_0_split_1'].diff, 2 * X * gp, rtol=1e-5)
    np.testing.assert_allclose(diffs['x'], gz @ W + 2 * X * gp, rtol=1e-5, atol=1e-6)
    # the split tops share the bottom's data, as Caffe's Split shares it
    np.testing.assert_array_equal(net.blobs['x_input_0_split_1'].data, X)


def test_a_loss_top_read_by_another_layer_moves_its_weight_to_the_split():
    text = '''
    layer { name: "input" type: "Input" top: "x" input_param { shape { dim: 3 } } }
    layer { name: "l" type: "Power" bottom: "x" top: "y" loss_weight: 2 }
    layer { name: "after" type: "Power" bottom: "y" top: "q" }
    '''
    param = caffe.io.parse_prototxt(text, caffe.proto.caffe_pb2.NetParameter)
    net = caffe.Net(param, caffe.TEST)
    weights = net.blob_loss_weights
    assert weights['y'] == 0 and weights['y_l_0_split_0'] == 2
    assert weights['y_l_0_split_1'] == 0


# ---------------------------------------------------------------- the bug: output diffs

def test_plain_backward_starts_from_a_diff_written_into_an_output(tmp_path):
    net = heads(tmp_path)
    net.forward(x=X)
    g = RNG.randn(2, 4).astype(np.float32)
    net.blobs['z'].diff[...] = g          # DeepDream / saliency style
    out = net.backward()
    np.testing.assert_allclose(out['x'], g @ W, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(net.params['ip'][0].diff, g.T @ X, rtol=1e-5)
    np.testing.assert_allclose(net.params['ip'][1].diff, g.sum(0), rtol=1e-5)


def test_the_plain_and_the_keyword_backward_agree(tmp_path):
    g = RNG.randn(2, 4).astype(np.float32)
    a, b = heads(tmp_path), heads(tmp_path)
    a.forward(x=X)
    a.blobs['z'].diff[...] = g
    da = a.backward()['x'].copy()
    b.forward(x=X)
    db = b.backward(z=g, p=np.zeros((2, 3), np.float32))['x']
    np.testing.assert_array_equal(da, db)


def test_a_loss_output_still_seeds_with_its_loss_weight(tmp_path):
    net = caffe.Net(write(tmp_path, LOSS_NET), caffe.TRAIN)
    net.params['ip'][0].data[...] = W
    net.params['ip'][1].data[...] = B
    net.blobs['x'].data[...] = X
    net.forward()
    net.backward()
    relu = np.maximum(X @ W.T + B, 0)
    grad_z = 0.5 * (relu > 0)  # d(0.5 * z)/dz through the ReLU
    np.testing.assert_allclose(net.params['ip'][0].diff, grad_z.T @ X, rtol=1e-5)


# ---------------------------------------------------------------- constructor forms

def test_net_takes_pycaffes_constructor_forms(tmp_path):
    proto = write(tmp_path, TWO_HEADS)
    src = heads(tmp_path)
    weights = str(tmp_path / 'w.caffemodel')
    src.save(weights)
    for net in (caffe.Net(proto, caffe.TEST, weights=weights),
                caffe.Net(proto, weights, caffe.TEST),            # legacy positional form
                caffe.Net(proto, caffe.TEST, level=0, stages=[], weights=weights),
                caffe.Net(proto, caffe.TEST, 0, None, weights),
                caffe.Net(network_file=proto, phase=caffe.TEST, weights=weights)):
        np.testing.assert_array_equal(net.params['ip'][0].data, W)
    assert not caffe.Net(proto, caffe.TEST).params['ip'][1].data.any()


def test_level_and_stages_select_layers(tmp_path):
    text = TWO_HEADS.replace('power_param { power: 2 } }',
                             'power_param { power: 2 } include { stage: "sq" min_level: 1 } }')
    proto = write(tmp_path, text)
    assert 'sq' not in caffe.Net(proto, caffe.TEST, stages=['sq']).layer_dict
    assert 'sq' not in caffe.Net(proto, caffe.TEST, level=1).layer_dict
    assert 'sq' in caffe.Net(proto, caffe.TEST, level=1, stages=['sq']).layer_dict
    assert 'sq' in caffe.Net(proto, caffe.TEST, 1, ['sq']).layer_dict   # positional
    with pytest.raises(TypeError, match='level given both'):
        caffe.Net(proto, caffe.TEST, 1, level=1)


# ---------------------------------------------------------------- views of the net

def test_views_of_the_net_are_pycaffes(tmp_path):
    net = heads(tmp_path)
    assert net.inputs == ['x'] and net.outputs == ['p', 'z']   # std::set order
    assert net._blob_names == list(net.blobs)
    assert list(net.params) == ['ip'] and len(net.params['ip']) == 2
    assert [layer.type for layer in net.layers] == ['Input', 'Split', 'InnerProduct', 'Power']
    assert net.layers[2].blobs is net.params['ip']
    assert net.layer_dict['ip'] is net.layers[2]
    assert list(net.top_names) == net._layer_names
    assert net.top_names['ip'] == ['z'] and net.bottom_names['input'] == []
    assert set(net.blob_loss_weights.values()) == {0.0}
    assert list(net.blob_loss_weights) == list(net.blobs)


def test_a_layers_reshape_shapes_its_tops_for_its_bottoms(tmp_path):
    net = heads(tmp_path)
    net.blobs['x'].reshape(5, 3)
    net.layer_dict['ip'].reshape([net.blobs['x']], [net.blobs['z']])
    assert net.blobs['z'].shape == (5, 4)


def test_net_reshape_propagates_a_new_input_shape(tmp_path):
    net = heads(tmp_path)
    net.blobs['x'].reshape(7, 3)
    net.reshape()
    assert net.blobs['z'].shape == (7, 4) and net.blobs['p'].shape == (7, 3)
    x = RNG.randn(7, 3).astype(np.float32)
    np.testing.assert_allclose(net.forward(x=x)['z'], x @ W.T + B, rtol=1e-5)


# ---------------------------------------------------------------- forward / backward

def test_forward_returns_the_outputs_and_asked_blobs(tmp_path):
    net = heads(tmp_path)
    out = net.forward(x=X, blobs=['x_input_0_split_0'])
    assert set(out) == {'z', 'p', 'x_input_0_split_0'}
    np.testing.assert_allclose(out['z'], X @ W.T + B, rtol=1e-5)
    np.testing.assert_allclose(out['p'], X ** 2, rtol=1e-6)


def test_forward_end_returns_the_end_layers_tops_and_stops_there(tmp_path):
    net = heads(tmp_path)
    net.blobs['x'].data[...] = X
    out = net.forward(end='ip')
    assert set(out) == {'z'}
    assert not net.blobs['p'].data.any()        # sq did not run
    out = net.forward(start='sq')
    np.testing.assert_allclose(out['p'], X ** 2, rtol=1e-6)


def test_forward_refuses_inputs_that_are_not_the_nets(tmp_path):
    net = heads(tmp_path)
    with pytest.raises(Exception, match='Input blob arguments do not match'):
        net.forward(y=X)


def test_backward_end_returns_the_end_layers_bottom_diffs(tmp_path):
    net = heads(tmp_path)
    net.forward(x=X)
    g = RNG.randn(2, 4).astype(np.float32)
    out = net.backward(z=g, p=np.zeros((2, 3), np.float32), end='ip')
    assert set(out) == {'x_input_0_split_0'}
    np.testing.assert_allclose(out['x_input_0_split_0'], g @ W, rtol=1e-5)


def test_backward_refuses_diffs_that_are_not_the_outputs(tmp_path):
    net = heads(tmp_path)
    net.forward(x=X)
    with pytest.raises(Exception, match='Top diff arguments do not match'):
        net.backward(z=np.zeros((2, 4)))


def test_forward_all_batches_and_drops_the_padding(tmp_path):
    net = heads(tmp_path)                      # batch of 2
    xs = RNG.randn(5, 3).astype(np.float32)
    out = net.forward_all(x=xs)
    assert out['z'].shape == (5, 4)
    np.testing.assert_allclose(out['z'], xs @ W.T + B, rtol=1e-5)
    np.testing.assert_allclose(out['p'], xs ** 2, rtol=1e-6)


def test_forward_backward_all_gives_data_and_diffs_per_item(tmp_path):
    net = heads(tmp_path)
    xs = RNG.randn(3, 3).astype(np.float32)
    gz = RNG.randn(3, 4).astype(np.float32)
    gp = RNG.randn(3, 3).astype(np.float32)
    outs, diffs = net.forward_backward_all(x=xs, z=gz, p=gp)
    assert outs['z'].shape == (3, 4) and diffs['x'].shape == (3, 3)
    np.testing.assert_allclose(outs['z'], xs @ W.T + B, rtol=1e-5)
    np.testing.assert_allclose(diffs['x'], gz @ W + 2 * xs * gp, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- weights

def test_save_and_copy_from_and_hdf5_round_trip(tmp_path):
    net = heads(tmp_path)
    for save, load, name in ((net.save, 'copy_from', 'w.caffemodel'),
                             (net.save_hdf5, 'load_hdf5', 'w.caffemodel.h5')):
        path = str(tmp_path / name)
        save(path)
        other = caffe.Net(write(tmp_path, TWO_HEADS), caffe.TEST)
        getattr(other, load)(path)
        np.testing.assert_array_equal(other.params['ip'][0].data, W)
        np.testing.assert_array_equal(other.params['ip'][1].data, B)


def test_share_with_shares_the_weights(tmp_path):
    a = heads(tmp_path)
    b = caffe.Net(write(tmp_path, TWO_HEADS), caffe.TEST)
    b.share_with(a)
    np.testing.assert_array_equal(b.params['ip'][0].data, W)
    a.params['ip'][0].data[0, 0] = 42
    assert b.params['ip'][0].data[0, 0] == 42


def test_param_diffs_accumulate_until_cleared(tmp_path):
    net = heads(tmp_path)
    net.forward(x=X)
    g = np.ones((2, 4), np.float32)
    net.backward(z=g, p=np.zeros((2, 3), np.float32))
    net.backward(z=g, p=np.zeros((2, 3), np.float32))
    np.testing.assert_allclose(net.params['ip'][1].diff, [4, 4, 4, 4])
    net.clear_param_diffs()
    assert not net.params['ip'][0].diff.any() and not net.params['ip'][1].diff.any()


def test_in_place_on_a_blob_another_layer_reads_is_refused_as_caffe_refuses_it():
    text = '''
    layer { name: "input" type: "Input" top: "x" input_param { shape { dim: 3 } } }
    layer { name: "a" type: "Power" bottom: "x" top: "a" }
    layer { name: "relu" type: "ReLU" bottom: "x" top: "x" }
    '''
    param = caffe.io.parse_prototxt(text, caffe.proto.caffe_pb2.NetParameter)
    # the Split renames relu's bottom, so its top "x" would have two producers
    with pytest.raises(caffe.CaffeError, match="'x' is produced by multiple sources"):
        caffe.Net(param, caffe.TEST)
