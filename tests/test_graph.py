"""Phase rules and shape propagation over a parsed net, before anything runs."""
import pytest

import torchcaffe as caffe
from torchcaffe import graph, io
from torchcaffe.errors import CaffeError, ShapeError

RULES = '''
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
layer { name: "train_only" type: "ReLU" bottom: "data" top: "a" include { phase: TRAIN } }
layer { name: "not_test" type: "ReLU" bottom: "data" top: "b" exclude { phase: TEST } }
layer { name: "deep" type: "ReLU" bottom: "data" top: "c" include { min_level: 2 } }
layer { name: "staged" type: "ReLU" bottom: "data" top: "d" include { stage: "x" stage: "y" } }
layer { name: "unstaged" type: "ReLU" bottom: "data" top: "e" include { not_stage: "x" } }
layer { name: "either" type: "ReLU" bottom: "data" top: "f"
        include { phase: TEST } include { stage: "y" } }
'''


def kept(phase, level=0, stages=()):
    net = io.parse_prototxt(RULES, caffe.caffe_pb2.NetParameter)
    return [l.name for l in graph.filter_layers(net, graph.make_state(phase, level, stages))]


def test_phase_include_and_exclude_select_layers():
    assert kept(caffe.TRAIN) == ['data', 'train_only', 'not_test', 'unstaged']
    assert kept(caffe.TEST) == ['data', 'unstaged', 'either']


def test_level_and_stage_rules_need_every_condition():
    assert 'deep' in kept(caffe.TEST, level=2) and 'deep' not in kept(caffe.TEST, level=1)
    assert 'staged' not in kept(caffe.TEST, stages=['x'])
    assert 'staged' in kept(caffe.TEST, stages=['x', 'y'])
    assert 'unstaged' not in kept(caffe.TEST, stages=['x'])


def test_any_include_rule_is_enough():
    assert 'either' in kept(caffe.TRAIN, stages=['y'])
    assert 'either' not in kept(caffe.TRAIN)


def test_include_and_exclude_together_is_an_error():
    net = io.parse_prototxt('layer { name: "bad" type: "ReLU" include { phase: TRAIN } '
                            'exclude { phase: TEST } }', caffe.caffe_pb2.NetParameter)
    with pytest.raises(CaffeError, match="'bad'"):
        graph.filter_layers(net, graph.make_state(caffe.TRAIN))


def layers_of(text):
    return list(io.parse_prototxt(text, caffe.caffe_pb2.NetParameter).layer)


def test_shapes_follow_conv_pool_deconv_crop_arithmetic():
    layers = layers_of('''
    layer { name: "data" type: "Python" top: "data" top: "label" }
    layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
            convolution_param { num_output: 4 kernel_size: 3 pad: 100 } }
    layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool"
            pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
    layer { name: "up" type: "Deconvolution" bottom: "pool" top: "up"
            convolution_param { num_output: 2 kernel_size: 4 stride: 2 bias_term: false } }
    layer { name: "score" type: "Crop" bottom: "up" bottom: "data" top: "score"
            crop_param { axis: 2 offset: 5 } }
    ''')
    shapes = graph.infer_shapes(layers, {'data': (1, 3, 7, 9), 'label': (1, 1, 7, 9)})
    # conv: 7 + 200 - 3 + 1 = 205, 9 + 198 = 207; pool rounds up: 103, 104;
    # deconv: 2 * 102 + 4 = 208, 2 * 103 + 4 = 210; crop to the data's 7 x 9.
    assert shapes['conv'] == (1, 4, 205, 207)
    assert shapes['pool'] == (1, 4, 103, 104)
    assert shapes['up'] == (1, 2, 208, 210)
    assert shapes['score'] == (1, 2, 7, 9)


def test_a_bottom_nobody_produces_names_the_layer_and_blob():
    layers = layers_of('layer { name: "relu" type: "ReLU" bottom: "nowhere" top: "x" }')
    with pytest.raises(CaffeError, match="'relu'.*'nowhere'"):
        graph.infer_shapes(layers)


def test_python_tops_need_given_shapes():
    layers = layers_of('layer { name: "data" type: "Python" top: "data" }')
    with pytest.raises(CaffeError, match="'data'"):
        graph.infer_shapes(layers)


def test_a_crop_that_does_not_fit_is_a_shape_error_naming_the_layer():
    layers = layers_of('''
    layer { name: "in" type: "Input" top: "a" top: "b"
            input_param { shape { dim: 1 dim: 1 dim: 4 dim: 4 } shape { dim: 1 dim: 1 dim: 3 dim: 3 } } }
    layer { name: "cropper" type: "Crop" bottom: "a" bottom: "b" top: "c"
            crop_param { axis: 2 offset: 2 } }
    ''')
    with pytest.raises(ShapeError, match='cropper'):
        graph.infer_shapes(layers)
