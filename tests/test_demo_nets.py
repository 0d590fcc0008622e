"""The demo's model folders: the VOC nets made narrow, filled, normalized, and pointed
at the generated dataset; solvers whose odd values say why."""
import ast
import importlib.util
import os
import runpy

import pytest

from torchcaffe import io

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGES = ('fcn32s', 'fcn16s', 'fcn8s')
SPLITS = ('train', 'val', 'deploy')


def read_net(folder, split):
    return io.read_net_prototxt(os.path.join(ROOT, folder, split + '.prototxt'), upgrade=False)


def conv_outputs(net):
    return {l.name: l.convolution_param.num_output for l in net.layer
            if l.type in ('Convolution', 'Deconvolution')}


@pytest.mark.parametrize('split', SPLITS)
@pytest.mark.parametrize('stage', STAGES)
def test_demo_net_is_the_voc_net_at_an_eighth_of_the_width_with_four_classes(stage, split):
    demo, voc = read_net('demo/' + stage, split), read_net('voc-' + stage, split)
    # Same layers, wiring and crop offsets: weights pass between stages by layer name.
    assert [(l.name, l.type, list(l.bottom), list(l.top)) for l in demo.layer] == \
        [(l.name, l.type, list(l.bottom), list(l.top)) for l in voc.layer]
    assert [list(l.crop_param.offset) for l in demo.layer if l.type == 'Crop'] == \
        [list(l.crop_param.offset) for l in voc.layer if l.type == 'Crop']
    voc_out = conv_outputs(voc)
    for name, nout in conv_outputs(demo).items():
        if name.startswith(('score', 'upscore')):
            assert (nout, voc_out[name]) == (4, 21), name
        else:
            assert nout * 8 == voc_out[name], name


@pytest.mark.parametrize('stage', STAGES)
def test_trunk_convolutions_have_fillers_and_score_layers_start_at_zero(stage):
    for split in SPLITS:
        for l in read_net('demo/' + stage, split).layer:
            filler = l.convolution_param.weight_filler
            if l.type == 'Deconvolution' or l.name.startswith('score'):
                # score: Caffe's constant 0, so a new skip adds nothing at first;
                # upscore: set bilinear by surgery.interp.
                assert not l.convolution_param.HasField('weight_filler'), l.name
            elif l.name == 'conv1_1':
                assert (filler.type, round(filler.std, 6)) == ('gaussian', 0.005)
            elif l.type == 'Convolution':
                assert filler.type == 'msra', l.name
            assert not l.convolution_param.HasField('bias_filler')  # constant 0


@pytest.mark.parametrize('stage', STAGES)
def test_loss_is_normalized_and_ignores_void(stage):
    for split in ('train', 'val'):
        loss = [l for l in read_net('demo/' + stage, split).layer if l.type == 'SoftmaxWithLoss']
        assert len(loss) == 1
        assert (loss[0].loss_param.normalize, loss[0].loss_param.ignore_label) == (True, 255)


def load_generator():
    spec = importlib.util.spec_from_file_location(
        'make_demo_data', os.path.join(ROOT, 'data', 'make_demo_data.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_data_layers_read_the_splits_the_generator_writes(tmp_path):
    info = load_generator().make_demo_data(str(tmp_path), num_train=2, num_val=1,
                                           min_size=20, max_size=24)
    expected = {'SBDDSegDataLayer': ('sbdd_dir', info['sbdd_dir'], '%s.txt'),
                'VOCSegDataLayer': ('voc_dir', info['voc_dir'],
                                    os.path.join('ImageSets', 'Segmentation', '%s.txt'))}
    for stage in STAGES:
        folder = os.path.join(ROOT, 'demo', stage)
        for split in ('train', 'val'):
            layer = read_net('demo/' + stage, split).layer[0]
            params = ast.literal_eval(layer.python_param.param_str)
            key, generated, split_file = expected[layer.python_param.layer]
            # Relative to the model folder, where training runs: the repository's data/demo-gen.
            assert os.path.normpath(os.path.join(folder, params[key])) == \
                os.path.join(ROOT, 'data', 'demo-gen', os.path.basename(generated))
            assert os.path.isfile(os.path.join(generated, split_file % params['split']))
            assert ('train' in params['split']) == (split == 'train')  # random order only there


def solver_lines(stage):
    with open(os.path.join(ROOT, 'demo', stage, 'solver.prototxt')) as f:
        return f.read().splitlines()


@pytest.mark.parametrize('stage', STAGES)
def test_solver_comments_every_odd_value(stage):
    lines = solver_lines(stage)
    for setting in ('base_lr:', 'momentum:', 'max_iter:', 'random_seed:', 'test_interval:',
                    'test_iter:'):
        i = next(k for k, line in enumerate(lines) if line.startswith(setting))
        assert lines[i - 1].startswith('#'), setting
    solver = io.read_solver_prototxt(os.path.join(ROOT, 'demo', stage, 'solver.prototxt'))
    assert solver.random_seed >= 0  # the fillers start the same on every run
    assert solver.snapshot == solver.max_iter  # one snapshot, at the end


def test_each_stage_starts_from_the_previous_stages_final_snapshot():
    for stage, previous in (('fcn16s', 'fcn32s'), ('fcn8s', 'fcn16s')):
        script = runpy.run_path(os.path.join(ROOT, 'demo', stage, 'solve.py'))
        max_iter = io.read_solver_prototxt(
            os.path.join(ROOT, 'demo', previous, 'solver.prototxt')).max_iter
        assert script['WEIGHTS'] == '../%s/snapshot/train_iter_%d.caffemodel' % (previous,
                                                                                 max_iter)
    assert runpy.run_path(os.path.join(ROOT, 'demo', 'fcn32s', 'solve.py'))['WEIGHTS'] is None
