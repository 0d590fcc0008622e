"""caffe.draw and draw_net: graph contents as pycaffe builds them, phases, formats, CLI.

Expected node names and labels are written out by hand from pycaffe's rules
(python/caffe/draw.py): a layer node is named by its quoted label, parts joined
by dot's ``\\n`` escape (a backslash and an n) in horizontal graphs.
"""
import io
import os
import re
import shlex
import subprocess
import sys

import pytest
from google.protobuf import text_format
from PIL import Image

from torchcaffe import draw
from torchcaffe.errors import CaffeError
from torchcaffe.proto import caffe_pb2
from torchcaffe.tools import draw_net as draw_net_cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG_MAGIC = b'\x89PNG\r\n\x1a\n'

TINY = '''
name: "tiny"
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TRAIN }
        data_param { source: "db" batch_size: 8 } }
layer { name: "input" type: "Input" top: "data" include { phase: TEST }
        input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        param { lr_mult: 1 } param { lr_mult: 2 }
        convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: AVE kernel_size: 2 stride: 2 } }
layer { name: "fc" type: "InnerProduct" bottom: "pool1" top: "fc"
        param { lr_mult: 0 } param { lr_mult: 0 } inner_product_param { num_output: 10 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss"
        exclude { phase: TEST } }
'''

# Layer node names (= labels) of TINY in a left-to-right graph.
DATA = r'"data\n(Data)"'
INPUT = r'"input\n(Input)"'
CONV1 = r'"conv1\n(Convolution)\nkernel size: 3\nstride: 1\npad: 1"'
RELU1 = r'"relu1\n(ReLU)"'
POOL1 = r'"pool1\n(Pooling AVE)\nkernel size: 2\nstride: 2\npad: 0"'
FC = r'"fc\n(InnerProduct)"'
LOSS = r'"loss\n(SoftmaxWithLoss)"'


def parse(text):
    return text_format.Parse(text, caffe_pb2.NetParameter())


def layer(text):
    return text_format.Parse(text, caffe_pb2.LayerParameter())


def node_names(graph):
    return [n.get_name() for n in graph.get_nodes()]


def edges(graph):
    return [(e.get_source(), e.get_destination(), e.get('label')) for e in graph.get_edges()]


def styles(graph):
    return {n.get_name(): (n.get('shape'), n.get('fillcolor')) for n in graph.get_nodes()}


def test_every_layer_and_blob_becomes_a_node_named_as_pycaffe_names_it():
    graph = draw.get_pydot_graph(parse(TINY), 'LR')
    assert graph.get_name() == 'tiny' and graph.get('rankdir') == 'LR'
    assert node_names(graph) == [DATA, 'data', 'label', INPUT, CONV1, 'conv1', RELU1, POOL1,
                                 'pool1', FC, 'fc', LOSS, 'loss']


def test_edges_run_bottom_to_layer_to_top_labelled_with_num_output_or_batch():
    assert edges(draw.get_pydot_graph(parse(TINY), 'LR')) == [
        (DATA, 'data', 'Batch 8'), (DATA, 'label', 'Batch 8'),
        (INPUT, 'data', '""'),
        ('data', CONV1, '""'), (CONV1, 'conv1', '4'),
        ('conv1', RELU1, '""'), (RELU1, 'conv1', '""'),
        ('conv1', POOL1, '""'), (POOL1, 'pool1', '""'),
        ('pool1', FC, '""'), (FC, 'fc', '10'),
        ('fc', LOSS, '""'), ('label', LOSS, '""'), (LOSS, 'loss', '""')]


def test_label_edges_false_leaves_every_edge_label_empty():
    graph = draw.get_pydot_graph(parse(TINY), 'LR', label_edges=False)
    assert {label for _, _, label in edges(graph)} == {'""'}


def test_nodes_are_coloured_by_type_in_place_layers_green_and_outputs_plain():
    s = styles(draw.get_pydot_graph(parse(TINY), 'LR'))
    assert s[CONV1] == ('record', '#FF5050')
    assert s[POOL1] == ('record', '#FF9900')
    assert s[FC] == ('record', '#CC33FF')
    assert s[DATA] == s[LOSS] == ('record', '#6495ED')
    assert s[RELU1] == ('record', '#90EE90')  # in place
    assert s['pool1'] == ('octagon', '#E0E0E0')
    # pycaffe restyles a blob at each mention: one no layer reads is a plain node
    assert s['loss'] == (None, None)


def test_a_net_without_a_name_is_drawn_as_Net():
    assert draw.get_pydot_graph(parse('layer { name: "a" type: "Input" top: "x" }'),
                                'LR').get_name() == 'Net'


@pytest.mark.parametrize('phase, names', [
    (caffe_pb2.TRAIN, [DATA, 'data', 'label', CONV1, 'conv1', RELU1, POOL1, 'pool1', FC, 'fc',
                       LOSS, 'loss']),
    (caffe_pb2.TEST, [INPUT, 'data', CONV1, 'conv1', RELU1, POOL1, 'pool1', FC, 'fc']),
])
def test_phase_draws_only_that_phases_layers(phase, names):
    assert node_names(draw.get_pydot_graph(parse(TINY), 'LR', phase=phase)) == names


def test_a_rule_without_a_phase_matches_every_phase_and_include_with_exclude_fails():
    always = layer('name: "a" type: "ReLU" include { stage: "deploy" }')
    never = layer('name: "a" type: "ReLU" exclude { min_level: 1 }')
    for phase in (caffe_pb2.TRAIN, caffe_pb2.TEST):
        assert draw.layer_in_phase(always, phase)
        assert not draw.layer_in_phase(never, phase)
    both = layer('name: "b" type: "ReLU" include { phase: TRAIN } exclude { phase: TEST }')
    assert draw.layer_in_phase(both, None)
    with pytest.raises(ValueError, match="'b' has both include and exclude"):
        draw.layer_in_phase(both, caffe_pb2.TRAIN)


def test_display_lrm_adds_lr_mults_to_learning_layers_unless_both_are_zero():
    graph = draw.get_pydot_graph(parse(TINY), 'LR', display_lrm=True)
    names = node_names(graph)
    assert CONV1[:-1] + r'\nlr mult: 1.0, 2.0"' in names
    assert FC in names and POOL1 in names  # fc: 0, 0; pooling has none


@pytest.mark.parametrize('params, mults', [
    ('', (1.0, 1.0)), ('param { lr_mult: 3 }', (3.0, 1.0)),
    ('param { lr_mult: 0 } param { lr_mult: 0.5 }', (0.0, 0.5)),
    ('param { decay_mult: 0 }', (1.0, 1.0)),  # lr_mult's default is 1
])
def test_lr_mults_default_to_one(params, mults):
    assert draw.get_layer_lr_mult(layer('name: "d" type: "Deconvolution" ' + params)) == mults


def test_lr_mults_of_other_layers_are_refused():
    with pytest.raises(ValueError, match='ReLU layers do not have'):
        draw.get_layer_lr_mult(layer('name: "r" type: "ReLU"'))
    with pytest.raises(ValueError, match='3 param entries'):
        draw.get_layer_lr_mult(layer('name: "c" type: "Convolution" param {} param {} param {}'))


def test_vertical_graphs_separate_label_parts_with_spaces():
    conv = layer('name: "c" type: "Convolution" convolution_param { num_output: 2 '
                 'kernel_size: 7 stride: 2 pad: 3 }')
    for rankdir in ('TB', 'BT'):
        assert draw.get_layer_label(conv, rankdir) == \
            '"c (Convolution) kernel size: 7 stride: 2 pad: 3"'
    assert draw.get_layer_label(conv, 'RL') == \
        r'"c\n(Convolution)\nkernel size: 7\nstride: 2\npad: 3"'


@pytest.mark.parametrize('text, label', [
    # Caffe's defaults: kernel 1 when unset (pycaffe's choice), stride 1, pad 0
    ('type: "Convolution"', '"x (Convolution) kernel size: 1 stride: 1 pad: 0"'),
    ('type: "Convolution" convolution_param { kernel_h: 3 kernel_w: 5 stride_h: 2 '
     'stride_w: 2 pad_h: 1 pad_w: 0 }',
     '"x (Convolution) kernel size: 3x5 stride: 2 pad: 1x0"'),
    ('type: "Convolution" convolution_param { kernel_size: 3 kernel_size: 1 }',
     '"x (Convolution) kernel size: 3x1 stride: 1 pad: 0"'),
    ('type: "Pooling" pooling_param { pool: MAX global_pooling: true }',
     '"x (Pooling MAX) kernel size: global stride: 1 pad: 0"'),
    ('type: "Pooling" pooling_param { pool: STOCHASTIC kernel_h: 2 kernel_w: 4 }',
     '"x (Pooling STOCHASTIC) kernel size: 2x4 stride: 1 pad: 0"'),
    ('type: "Eltwise"', '"x (Eltwise)"'),
])
def test_spatial_labels(text, label):
    assert draw.get_layer_label(layer('name: "x" ' + text), 'TB') == label


def test_pooling_types_and_colours_are_pycaffes():
    assert draw.get_pooling_types_dict() == {0: 'MAX', 1: 'AVE', 2: 'STOCHASTIC'}
    assert [draw.choose_color_by_layertype(t) for t in
            ('Convolution', 'Deconvolution', 'Pooling', 'InnerProduct', 'Crop')] == \
        ['#FF5050', '#FF5050', '#FF9900', '#CC33FF', '#6495ED']


def test_old_format_nets_are_upgraded_before_drawing():
    net = parse('''
        input: "data" input_dim: 1 input_dim: 3 input_dim: 4 input_dim: 4
        layers { name: "conv" type: CONVOLUTION bottom: "data" top: "conv"
                 blobs_lr: 1 blobs_lr: 2 convolution_param { num_output: 5 kernel_size: 1 } }''')
    graph = draw.get_pydot_graph(net, 'TB', display_lrm=True)
    assert node_names(graph) == [
        '"input (Input)"', 'data',  # Caffe's UpgradeNetInput names it "input"
        '"conv (Convolution) kernel size: 1 stride: 1 pad: 0 lr mult: 1.0, 2.0"', 'conv']
    assert len(net.layers) == 1 and len(net.layer) == 0  # the caller's net is untouched


def test_names_with_dot_and_record_syntax_are_drawn_literally():
    net = parse(r'''layer { name: "a|b \"x\" {y}<z>" type: "Eltwise"
                            bottom: "p:q" bottom: "say \"hi\"" top: "out" }''')
    assert net.layer[0].name == 'a|b "x" {y}<z>'
    svg = draw.draw_net(net, 'TB', 'svg').decode()
    texts = re.findall(r'<text[^>]*>([^<]*)</text>', svg)
    assert sorted(texts) == sorted(['a|b &quot;x&quot; {y}&lt;z&gt; (Eltwise)', 'p:q',
                                    'say &quot;hi&quot;', 'out'])


def test_a_blob_name_with_a_colon_stays_one_node():
    graph = draw.get_pydot_graph(parse('layer { name: "a" type: "Input" top: "x:0" }'), 'LR')
    assert node_names(graph) == [r'"a\n(Input)"', '"x:0"']
    assert '"x:0";' in graph.to_string()


@pytest.mark.parametrize('ext, check', [
    ('png', lambda data: data.startswith(PNG_MAGIC)),
    ('svg', lambda data: b'<svg' in data[:1000] and b'conv1' in data),
    ('pdf', lambda data: data.startswith(b'%PDF')),
    ('dot', lambda data: data.startswith(b'digraph tiny {') and b'rankdir=TB;' in data),
])
def test_each_format_gives_its_file_signature(ext, check, tmp_path):
    assert check(draw.draw_net(parse(TINY), 'TB', ext=ext))
    path = tmp_path / ('tiny.' + ext)
    draw.draw_net_to_file(parse(TINY), str(path), rankdir='TB')
    assert check(path.read_bytes())


def test_png_is_drawn_top_to_bottom_or_left_to_right():
    def size(rankdir):
        return Image.open(io.BytesIO(draw.draw_net(parse(TINY), rankdir))).size
    (w_tb, h_tb), (w_lr, h_lr) = size('TB'), size('LR')
    assert h_tb > w_tb and w_lr > h_lr


def test_a_format_graphviz_does_not_know_fails_with_its_message(tmp_path):
    path = tmp_path / 'tiny.nosuch'
    with pytest.raises(draw.GraphvizError, match="dot -Tnosuch.*not recognized"):
        draw.draw_net_to_file(parse(TINY), str(path))
    assert not path.exists()


def test_without_graphviz_drawing_says_to_install_it_but_dot_source_still_works(
        tmp_path, monkeypatch):
    monkeypatch.setenv('PATH', str(tmp_path))  # no dot there
    with pytest.raises(draw.GraphvizNotFoundError, match='Install Graphviz') as info:
        draw.draw_net(parse(TINY), 'LR')
    assert isinstance(info.value, CaffeError)
    assert draw.draw_net(parse(TINY), 'LR', ext='dot').startswith(b'digraph tiny')


def test_pycaffe_drawing_code_runs_unchanged_with_import_caffe(tmp_path):
    """The body of pycaffe's draw_net.py, positional arguments as it passes them."""
    import caffe
    import caffe.draw
    from caffe.proto import caffe_pb2 as pb2
    net = pb2.NetParameter()
    text_format.Merge(TINY, net)
    caffe.draw.draw_net_to_file(net, str(tmp_path / 'tiny.dot'), 'TB', caffe.TEST, True)
    source = (tmp_path / 'tiny.dot').read_text()
    assert '"conv1 (Convolution) kernel size: 3 stride: 1 pad: 1 lr mult: 1.0, 2.0"' in source
    assert '(Data)' not in source and '(Input)' in source
    assert caffe.draw.draw_net(net, 'LR', 'svg').lstrip().startswith(b'<?xml')


# ------------------------------------------------------------------------------ the CLI

@pytest.fixture
def tiny_file(tmp_path):
    path = tmp_path / 'tiny.prototxt'
    path.write_text(TINY)
    return path


def run_cli(capsys, *argv):
    status = draw_net_cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def test_cli_writes_the_format_of_the_extension(tiny_file, tmp_path, capsys):
    out_png = tmp_path / 'tiny.png'
    status, out, err = run_cli(capsys, tiny_file, out_png, '--rankdir', 'TB')
    assert (status, err) == (0, '') and out == 'Drawing net to %s\n' % out_png
    assert out_png.read_bytes().startswith(PNG_MAGIC)
    out_dot = tmp_path / 'tiny.dot'
    assert run_cli(capsys, tiny_file, out_dot, '--phase', 'TEST', '--display_lrm')[0] == 0
    source = out_dot.read_text()
    assert 'lr mult: 1.0, 2.0' in source and '(Input)' in source and '(Data)' not in source


def test_cli_phase_all_draws_every_layer(tiny_file, tmp_path, capsys):
    out_dot = tmp_path / 'tiny.dot'
    run_cli(capsys, tiny_file, out_dot)
    assert '(Input)' in out_dot.read_text() and '(Data)' in out_dot.read_text()


def test_cli_missing_file_is_one_error_line_and_status_2(tmp_path, capsys):
    missing = tmp_path / 'missing.prototxt'
    status, out, err = run_cli(capsys, missing, tmp_path / 'x.png')
    assert status == 2 and out == ''
    assert err == 'error: %s: no such file\n' % missing


def test_cli_parse_error_names_the_line(tmp_path, capsys):
    bad = tmp_path / 'bad.prototxt'
    bad.write_text('layer {\n  name: "a"\n  bottm: "x"\n}\n')
    status, _, err = run_cli(capsys, bad, tmp_path / 'x.png')
    assert status == 2 and err.count('\n') == 1
    assert err.startswith('error: %s:3:' % bad) and 'bottm' in err
    assert not (tmp_path / 'x.png').exists()


@pytest.mark.parametrize('name', ['x.bmp', 'x'])
def test_cli_unknown_extension_is_refused_before_reading(tiny_file, tmp_path, capsys, name):
    status, _, err = run_cli(capsys, tiny_file, tmp_path / name)
    assert status == 2 and err.startswith('error: ') and 'unknown picture format' in err
    assert '.png' in err and '.svg' in err and '.pdf' in err
    assert not (tmp_path / name).exists()


def test_cli_without_graphviz_says_to_install_it(tiny_file, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv('PATH', str(tmp_path))
    status, _, err = run_cli(capsys, tiny_file, tmp_path / 'x.svg')
    assert status == 2 and err.startswith('error: ') and 'Install Graphviz' in err


def test_cli_refuses_an_unknown_phase(tiny_file, tmp_path):
    with pytest.raises(SystemExit) as info:
        draw_net_cli.main([str(tiny_file), str(tmp_path / 'x.png'), '--phase', 'DEPLOY'])
    assert info.value.code == 2


# --------------------------------------------------------------- the README's picture

def readme_command():
    """The README's command that drew docs/voc-fcn8s.png, as an argument list."""
    with open(os.path.join(ROOT, 'README.md'), encoding='utf-8') as f:
        lines = [l.strip() for l in f if 'draw_net.py' in l and 'docs/voc-fcn8s.png' in l]
    assert len(lines) == 1, lines
    return shlex.split(lines[0])


def test_the_readme_picture_of_fcn8s_is_regenerated_by_its_command(tmp_path):
    argv = readme_command()
    assert argv[:2] == ['python', 'draw_net.py']
    argv = [sys.executable] + argv[1:]
    argv[argv.index('docs/voc-fcn8s.png')] = str(tmp_path / 'fcn8s.png')
    subprocess.run(argv, cwd=ROOT, check=True, capture_output=True)
    committed = Image.open(os.path.join(ROOT, 'docs', 'voc-fcn8s.png'))
    drawn = Image.open(tmp_path / 'fcn8s.png')
    assert committed.format == drawn.format == 'PNG'
    # Graphviz versions differ in fonts and spacing; the layout must be alike.
    for committed_side, drawn_side in zip(committed.size, drawn.size):
        assert abs(drawn_side - committed_side) <= 0.2 * committed_side
    assert committed.size[1] > 2 * committed.size[0]  # drawn top to bottom
    assert os.path.getsize(os.path.join(ROOT, 'docs', 'voc-fcn8s.png')) < 1 << 20
