"""Net surgery: transplant, bilinear interp, expand_score and the VGG16 -> FCN command.

The VGG16 conversion runs on nets 1/16 as wide as the real ones, with a V1-format
caffemodel written here with the schema, as the ILSVRC file is (V1 ``layers`` with
type enums, legacy 4-D blob dims: fc6 weights 1 x 1 x OUT x IN).
"""
import os

import numpy as np
import pytest
from google.protobuf import text_format

import surgery
import torchcaffe as caffe
from torchcaffe import caffe_pb2, io
from nets import fcn, vgg

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WIDTH = 1 / 16
V1 = caffe_pb2.V1LayerParameter
V1_TYPES = {'Convolution': V1.CONVOLUTION, 'ReLU': V1.RELU, 'Pooling': V1.POOLING,
            'InnerProduct': V1.INNER_PRODUCT, 'Dropout': V1.DROPOUT, 'Softmax': V1.SOFTMAX}


def net_from_text(text):
    return caffe.Net(text_format.Parse(text, caffe_pb2.NetParameter()), caffe.TEST)


# ------------------------------------------------------------------------ transplant

INPUT = 'layer { name: "input" type: "Input" top: "data" ' \
        'input_param { shape { dim: 1 dim: 2 dim: 3 dim: 3 } } }\n'

SOURCE = INPUT + '''
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 2 kernel_size: 1 } }
layer { name: "fc" type: "InnerProduct" bottom: "conv" top: "fc"
        inner_product_param { num_output: 4 } }
layer { name: "fc2" type: "InnerProduct" bottom: "fc" top: "fc2"
        inner_product_param { num_output: 3 } }
layer { name: "gone" type: "InnerProduct" bottom: "fc2" top: "gone"
        inner_product_param { num_output: 2 } }
'''

# conv loses its bias, fc becomes the equivalent 3 x 3 convolution, fc2 grows to 5
# outputs (20 weights for the source's 12: cannot be coerced), gone is not there.
TARGET = INPUT + '''
layer { name: "conv%(s)s" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 2 kernel_size: 1 bias_term: false } }
layer { name: "fc%(s)s" type: "Convolution" bottom: "conv" top: "fc"
        convolution_param { num_output: 4 kernel_size: 3 } }
layer { name: "fc2%(s)s" type: "Convolution" bottom: "fc" top: "fc2"
        convolution_param { num_output: 5 kernel_size: 1
                            weight_filler { type: "constant" value: 7 }
                            bias_filler { type: "constant" value: 7 } } }
'''


def randomize(net, seed=0):
    rng = np.random.default_rng(seed)
    for blobs in net.params.values():
        for b in blobs:
            b.data[...] = rng.normal(size=b.data.shape)


@pytest.fixture
def source():
    net = net_from_text(SOURCE)
    randomize(net)
    return net


def test_transplant_copies_coerces_drops_and_skips_with_a_line_each(source):
    target = net_from_text(TARGET % dict(s=''))
    lines = []
    actions = surgery.transplant(target, source, report=lines.append)
    assert lines == [
        'copying conv -> conv 0',
        'dropping conv 1',
        'coercing fc 0 from (4, 18) to (4, 2, 3, 3)',
        'copying fc -> fc 1',
        'skipping fc2 0: (3, 4) holds 12 values, (5, 4, 1, 1) needs 20',
        'skipping fc2 1: (3,) holds 3 values, (5,) needs 5',
        'dropping gone',
    ]
    assert [a.kind for a in actions] == ['copying', 'dropping', 'coercing', 'copying',
                                         'skipping', 'skipping', 'dropping']
    np.testing.assert_array_equal(target.params['conv'][0].data,
                                  source.params['conv'][0].data)
    np.testing.assert_array_equal(target.params['fc'][1].data, source.params['fc'][1].data)
    # skipped blobs are untouched, not half-filled
    assert np.all(target.params['fc2'][0].data == 7) and np.all(target.params['fc2'][1].data == 7)


def test_coercion_is_a_c_order_flat_copy(source):
    target = net_from_text(TARGET % dict(s=''))
    surgery.transplant(target, source, report=None)
    ip, conv = source.params['fc'][0].data, target.params['fc'][0].data
    for o, c, y, x in [(0, 0, 0, 0), (1, 1, 2, 0), (3, 0, 1, 2), (2, 1, 2, 2)]:
        assert conv[o, c, y, x] == ip[o, c * 9 + y * 3 + x]


def test_transplant_with_suffix_finds_the_renamed_layers(source, capsys):
    target = net_from_text(TARGET % dict(s='-new'))
    actions = surgery.transplant(target, source, suffix='-new')
    out = capsys.readouterr().out.splitlines()
    assert out[0] == 'copying conv -> conv-new 0'
    assert out[2] == 'coercing fc -> fc-new 0 from (4, 18) to (4, 2, 3, 3)'
    assert [a.new_layer for a in actions if a.kind == 'copying'] == ['conv-new', 'fc-new']
    np.testing.assert_array_equal(target.params['fc-new'][0].data,
                                  source.params['fc'][0].data.reshape(4, 2, 3, 3))


# ------------------------------------------------------------------------ interp

def deconv_net(c_in, c_out, kernel_h, kernel_w, group=1):
    return net_from_text(INPUT.replace('dim: 2', 'dim: %d' % c_in) + '''
layer { name: "up" type: "Deconvolution" bottom: "data" top: "up"
        convolution_param { num_output: %d kernel_h: %d kernel_w: %d stride: 2
                            group: %d bias_term: false } }''' % (c_out, kernel_h, kernel_w,
                                                                 group))


def test_interp_puts_the_bilinear_kernel_on_the_channel_diagonal_and_zeros_elsewhere():
    net = deconv_net(3, 3, 4, 4)
    randomize(net)
    surgery.interp(net, ['up'])
    w = net.params['up'][0].data
    kernel = surgery.upsample_filt(4)
    for i in range(3):
        for j in range(3):
            np.testing.assert_array_equal(w[i, j], kernel if i == j else 0)
    # an odd kernel peaks at its centre pixel with 1
    net = deconv_net(2, 2, 3, 3)
    surgery.interp(net, ['up'])
    assert net.params['up'][0].data[1, 1, 1, 1] == 1.0


def test_interp_with_one_output_per_group_fills_every_input_channel():
    net = deconv_net(3, 3, 4, 4, group=3)  # weights 3 x 1 x 4 x 4
    surgery.interp(net, ['up'])
    w = net.params['up'][0].data
    assert w.shape == (3, 1, 4, 4)
    for i in range(3):
        np.testing.assert_array_equal(w[i, 0], surgery.upsample_filt(4))


def test_interp_refuses_non_square_kernels_naming_the_layer():
    with pytest.raises(ValueError, match=r"'up' has 4 x 3 kernels"):
        surgery.interp(deconv_net(2, 2, 4, 3), ['up'])


def test_interp_refuses_channel_mismatch_naming_the_layer():
    with pytest.raises(ValueError, match=r"'up' maps 2 channels to 3"):
        surgery.interp(deconv_net(2, 3, 4, 4), ['up'])
    with pytest.raises(ValueError, match="no layer 'nope'"):
        surgery.interp(deconv_net(2, 2, 4, 4), ['nope'])


# ------------------------------------------------------------------------ expand_score

def score_net(classes):
    return net_from_text(INPUT + '''
layer { name: "score" type: "Convolution" bottom: "data" top: "score"
        convolution_param { num_output: %d kernel_size: 1
                            weight_filler { type: "constant" value: 5 }
                            bias_filler { type: "constant" value: 5 } } }''' % classes)


def test_expand_score_fills_the_first_classes_and_keeps_the_rest():
    old, new = score_net(2), score_net(4)
    randomize(old)
    surgery.expand_score(new, 'score', old, 'score')
    np.testing.assert_array_equal(new.params['score'][0].data[:2], old.params['score'][0].data)
    np.testing.assert_array_equal(new.params['score'][1].data[:2], old.params['score'][1].data)
    assert np.all(new.params['score'][0].data[2:] == 5)
    assert np.all(new.params['score'][1].data[2:] == 5)


def test_expand_score_refuses_more_old_classes_than_new():
    with pytest.raises(ValueError, match="'score'.*first outputs of 'score'"):
        surgery.expand_score(score_net(2), 'score', score_net(4), 'score')


# ------------------------------------------------------------------------ VGG16 -> FCN

def legacy_blob(array):
    """A BlobProto with only the legacy num/channels/height/width dims, as V1 files."""
    blob = caffe_pb2.BlobProto()
    dims = (1,) * (4 - array.ndim) + array.shape
    blob.num, blob.channels, blob.height, blob.width = dims
    blob.data.extend(array.astype(np.float32).ravel().tolist())
    return blob


def write_v1_caffemodel(proto, params, path):
    """The layers of ``proto`` (minus Input) in V1 form, with ``params``' values."""
    net = caffe_pb2.NetParameter(name=proto.name)
    for layer in proto.layer:
        if layer.type == 'Input':
            continue
        v1 = net.layers.add(name=layer.name, type=V1_TYPES[layer.type],
                            bottom=layer.bottom, top=layer.top)
        for array in params.get(layer.name, []):
            v1.blobs.add().CopyFrom(legacy_blob(array))
    with open(path, 'wb') as f:
        f.write(net.SerializeToString())


@pytest.fixture(scope='module')
def vgg_files(tmp_path_factory):
    """Narrow classifier (10 classes) and FCN-32s (5 classes) prototxts and V1 weights."""
    tmp = tmp_path_factory.mktemp('vgg')
    classifier = vgg.classifier(shape=(1, 3, 224, 224), classes=10, width=WIDTH)
    paths = dict(classifier=str(tmp / 'classifier.prototxt'), fcn=str(tmp / 'fcn.prototxt'),
                 weights=str(tmp / 'vgg.caffemodel'), tmp=tmp)
    io.write_prototxt(classifier, paths['classifier'])
    io.write_prototxt(fcn.deploy('fcn32s', classes=5, width=WIDTH, shape=(1, 3, 64, 64)),
                      paths['fcn'])
    shapes = caffe.Net(paths['classifier'], caffe.TEST)
    rng = np.random.default_rng(3)
    params = {name: [rng.normal(size=b.data.shape).astype(np.float32) for b in blobs]
              for name, blobs in shapes.params.items()}
    write_v1_caffemodel(classifier, params, paths['weights'])
    paths['params'] = params
    return paths


@pytest.fixture(scope='module')
def converted(vgg_files):
    out = str(vgg_files['tmp'] / 'out' / 'vgg16-fcn.caffemodel')
    lines = []
    result = surgery.vgg16_to_fcn(vgg_files['classifier'], vgg_files['weights'],
                                  vgg_files['fcn'], out, report=lines.append)
    return dict(out=out, lines=lines, result=result, saved=io.read_caffemodel(out))


def saved_blobs(saved, name):
    layer = next(layer for layer in saved.layer if layer.name == name)
    return [io.blobproto_to_array(b) for b in layer.blobs]


def test_the_v1_weights_file_really_is_old_format(vgg_files):
    raw = caffe_pb2.NetParameter.FromString(open(vgg_files['weights'], 'rb').read())
    assert len(raw.layer) == 0 and len(raw.layers) > 0
    fc6 = next(layer for layer in raw.layers if layer.name == 'fc6')
    assert fc6.type == V1.INNER_PRODUCT
    assert (fc6.blobs[0].num, fc6.blobs[0].channels, fc6.blobs[0].height,
            fc6.blobs[0].width) == (1, 1, 256, 32 * 7 * 7)
    assert not fc6.blobs[0].HasField('shape')


def test_fc6_and_fc7_become_convolutions_holding_the_reshaped_inner_product(vgg_files,
                                                                            converted):
    ip6_w, ip6_b = vgg_files['params']['fc6']
    conv6_w, conv6_b = saved_blobs(converted['saved'], 'fc6')
    assert conv6_w.shape == (256, 32, 7, 7)
    np.testing.assert_array_equal(conv6_w, ip6_w.reshape(256, 32, 7, 7))
    assert conv6_w[5, 3, 2, 6] == ip6_w[5, 3 * 49 + 2 * 7 + 6]
    np.testing.assert_array_equal(conv6_b, ip6_b)
    conv7_w, _ = saved_blobs(converted['saved'], 'fc7')
    np.testing.assert_array_equal(conv7_w[:, :, 0, 0], vgg_files['params']['fc7'][0])


def test_convolutions_are_copied_unchanged(vgg_files, converted):
    for name in ('conv1_1', 'conv3_2', 'conv5_3'):
        saved, source = saved_blobs(converted['saved'], name), vgg_files['params'][name]
        assert len(saved) == len(source) == 2, name  # weights and bias
        for got, want in zip(saved, source):
            assert got.shape == want.shape, name
            np.testing.assert_array_equal(got, want)


def test_fc8_is_dropped_score_fr_stays_zero_and_upscore_is_bilinear(converted):
    names = [layer.name for layer in converted['saved'].layer]
    assert 'fc8' not in names and 'prob' not in names
    score_w, score_b = saved_blobs(converted['saved'], 'score_fr')
    assert score_w.shape == (5, 256, 1, 1) and not score_w.any() and not score_b.any()
    (up,) = saved_blobs(converted['saved'], 'upscore')
    assert up.shape == (5, 5, 64, 64)
    for i in range(5):
        np.testing.assert_array_equal(up[i, i], surgery.upsample_filt(64).astype(np.float32))
    assert not up[0, 1].any()
    assert converted['result']['interpolated'] == ['upscore']
    assert converted['result']['untouched'] == ['score_fr']


def test_conversion_reports_every_action(converted):
    lines = converted['lines']
    assert 'copying conv1_1 -> conv1_1 0' in lines
    assert 'coercing fc6 0 from (256, 1568) to (256, 32, 7, 7)' in lines
    assert 'coercing fc7 0 from (256, 256) to (256, 256, 1, 1)' in lines
    assert lines[-1] == 'dropping fc8'
    assert len(lines) == 2 * 15 + 1


def test_the_result_loads_into_the_fcn_train_style_net(vgg_files, converted):
    net = caffe.Net(vgg_files['fcn'], converted['out'], caffe.TEST)
    np.testing.assert_array_equal(net.params['fc6'][0].data,
                                  vgg_files['params']['fc6'][0].reshape(256, 32, 7, 7))


def test_command_line_writes_the_file_and_a_summary(vgg_files, tmp_path, capsys):
    out = str(tmp_path / 'vgg16-fcn.caffemodel')
    surgery.main(['vgg16-fcn', '--weights', vgg_files['weights'], '--out', out,
                  '--classifier', vgg_files['classifier'], '--fcn', vgg_files['fcn']])
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.startswith('wrote %s: 28 blobs copied; 2 coerced (fc6, fc7); dropped fc8;'
                           % out)
    assert 'bilinear upscore' in last and 'score_fr kept initial values' in last
    assert os.listdir(tmp_path) == ['vgg16-fcn.caffemodel']  # no temporary file left


def test_missing_weights_say_where_to_download_them(tmp_path, capsys):
    missing = str(tmp_path / 'VGG_ILSVRC_16_layers.caffemodel')
    with pytest.raises(SystemExit) as exc:
        surgery.main(['vgg16-fcn', '--weights', missing])
    url = open(os.path.join(ROOT, 'ilsvrc-nets', 'caffemodel-url')).read().strip()
    assert missing in str(exc.value) and url in str(exc.value)


def test_weights_without_a_classifier_layer_are_refused(vgg_files, tmp_path):
    proto = io.read_net_prototxt(vgg_files['classifier'])
    del proto.layer[[layer.name for layer in proto.layer].index('conv2_1')]
    weights = str(tmp_path / 'partial.caffemodel')
    write_v1_caffemodel(proto, vgg_files['params'], weights)
    with pytest.raises(ValueError, match='no weights for layer.*conv2_1'):
        surgery.vgg16_to_fcn(vgg_files['classifier'], weights, vgg_files['fcn'],
                             str(tmp_path / 'out.caffemodel'), report=None)
    assert not os.path.exists(tmp_path / 'out.caffemodel')
