"""The ``caffe`` tool (torchcaffe.tools.caffe_cli) and the upgrade tools.

The nets are tiny and inline: a Python data layer gives the i-th batch of a fixed
seeded sequence at its i-th forward (two Gaussian clusters, label = cluster), then
InnerProduct -> SoftmaxWithLoss (+ Accuracy in TEST). Expected numbers come from
the engine run in-process on the same batches, or from numpy.
"""
import logging
import re
import sys
import uuid

import numpy as np
import pytest

import torchcaffe as caffe
from torchcaffe import caffe_pb2, io
from torchcaffe.tools import caffe_cli, flags, upgrade_proto
from torchcaffe.tools.caffe_cli import main

LAYERS = '''
import numpy as np
import torchcaffe as caffe


def batch(index, n=8):
    """The index-th batch: n points, label 1 for the cluster at +1, 0 for the one at -1."""
    rng = np.random.default_rng([3, index])
    label = (np.arange(n) % 2).astype(np.float32)
    data = (rng.normal(scale=0.5, size=(n, 2)) + (2 * label[:, None] - 1)).astype(np.float32)
    return data, label


START = 0  # the first batch's index; a resumed run sets it to go on where it stopped


class Clusters(caffe.Layer):
    def setup(self, bottom, top):
        self.index = START

    def reshape(self, bottom, top):
        top[0].reshape(8, 2)
        top[1].reshape(8)

    def forward(self, bottom, top):
        top[0].data[...], top[1].data[...] = batch(self.index)
        self.index += 1
'''

NET = '''
name: "clusters"
layer { name: "data" type: "Python" top: "data" top: "label"
  python_param { module: "MODULE" layer: "Clusters" } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
  inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "acc" type: "Accuracy" bottom: "ip" bottom: "label" top: "accuracy"
  include { phase: TEST } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
'''

SOLVER = '''
net: "net.prototxt"
test_iter: 2 test_interval: 10
base_lr: 0.1 momentum: 0.9 lr_policy: "step" gamma: 0.5 stepsize: 10
display: 5 max_iter: 20 snapshot: 10 snapshot_prefix: "snap/clusters"
random_seed: 1
'''


@pytest.fixture(autouse=True)
def cpu_mode():
    caffe.set_mode_cpu()
    yield
    caffe.set_mode_cpu()


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A folder with the data layer module, net.prototxt and solver.prototxt; the cwd."""
    name = 'cli_layers_%s' % uuid.uuid4().hex[:8]
    (tmp_path / (name + '.py')).write_text(LAYERS)
    (tmp_path / 'net.prototxt').write_text(NET.replace('MODULE', name))
    (tmp_path / 'solver.prototxt').write_text(SOLVER)
    (tmp_path / 'snap').mkdir()
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv('TORCHCAFFE_PYTHON_LAYER_PATH', str(tmp_path))
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    sys.modules.pop(name, None)


def messages(caplog):
    return [r.getMessage() for r in caplog.records]


def run(argv, caplog):
    caplog.clear()
    with caplog.at_level(logging.INFO, logger='torchcaffe'):
        status = main(argv)
    return status, messages(caplog)


# ------------------------------------------------------------------ flags

def test_flags_take_either_dash_count_and_either_value_form():
    spec = caffe_cli.FLAGS
    for argv in (['train', '--solver=s.prototxt', '--iterations=7', '--gpu=0,1'],
                 ['train', '--solver', 's.prototxt', '--iterations', '7', '--gpu', '0,1'],
                 ['-solver', 's.prototxt', 'train', '-iterations=7', '-gpu', '0,1']):
        positional, f = flags.parse(argv, spec)
        assert positional == ['train']
        assert (f['solver'], f['iterations'], f['gpu']) == ('s.prototxt', 7, '0,1')
        assert f['sigint_effect'] == 'stop' and f['sighup_effect'] == 'snapshot'


def test_boolean_flags_read_bare_negated_and_valued_forms():
    spec = {'plot': (bool, False)}
    assert flags.parse(['--plot'], spec)[1]['plot'] is True
    assert flags.parse(['--noplot'], spec)[1]['plot'] is False
    assert flags.parse(['-plot=false'], spec)[1]['plot'] is False


@pytest.mark.parametrize('argv, words', [
    (['train', '--bogus=1'], "unknown command line flag 'bogus'"),
    (['train', '--solver'], "flag 'solver' is missing its argument"),
    (['test', '--iterations=ten'], "'ten' is not an integer"),
    (['tran'], 'Unknown action: tran'),
    (['train'], 'Need a solver definition'),
    (['train', '--solver=missing.prototxt'], 'solver missing.prototxt not found'),
    (['test', '--model=missing.prototxt', '--weights=w'], 'model missing.prototxt not found'),
    (['time'], 'Need a model definition'),
    (['train', '--solver=s', '--snapshot=a', '--weights=b'], 'but not both'),
])
def test_bad_command_lines_end_with_one_error_line_and_status_2(argv, words, capsys, tmp_path,
                                                               monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('error: ') and words in err[0]


def test_gpu_ids_parse_as_caffe_get_gpus_and_refuse_without_cuda():
    assert caffe_cli.parse_gpus('0,1', device_count=2) == [0, 1]
    assert caffe_cli.parse_gpus('all', device_count=4) == [0, 1, 2, 3]
    for text, words in (('0', 'no CUDA device is available'), ('all', 'no CUDA device'),
                        ('x', "separated by ','")):
        with pytest.raises(caffe_cli.UsageError, match=words):
            caffe_cli.parse_gpus(text, device_count=0)
    with pytest.raises(caffe_cli.UsageError, match='there is no GPU 2'):
        caffe_cli.parse_gpus('0,2', device_count=2)


def test_several_gpus_rerun_the_same_command_under_torchrun():
    cmd = caffe_cli.torchrun_command(['train', '--solver=s.prototxt', '--gpu=0,1'], 2)
    assert cmd[0] == sys.executable
    assert cmd[1:] == ['-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
                       '-m', 'torchcaffe.tools.caffe_cli', 'train', '--solver=s.prototxt',
                       '--gpu=0,1']


def test_bad_signal_effect_is_refused_before_training(workdir, capsys):
    assert main(['train', '--solver=solver.prototxt', '--sigint_effect=explode']) == 2
    assert 'Invalid signal effect "explode"' in capsys.readouterr().err


# ------------------------------------------------------------------ train

def test_train_solves_to_max_iter_snapshots_and_logs_as_caffe(workdir, caplog):
    status, log = run(['train', '-solver', 'solver.prototxt'], caplog)
    assert status == 0
    for it in (10, 20):
        assert (workdir / ('snap/clusters_iter_%d.caffemodel' % it)).is_file()
        assert (workdir / ('snap/clusters_iter_%d.solverstate' % it)).is_file()
    assert 'Starting Optimization' in log and log[-1] == 'Optimization Done.'
    assert 'Iteration 5, lr = 0.1' in log and 'Iteration 15, lr = 0.05' in log  # step policy
    tests = [m for m in log if m.startswith('    Test net output #0: accuracy = ')]
    assert len(tests) == 3  # at 0 (test_initialization), 10 and, after the last step, 20
    assert float(tests[-1].split('= ')[1]) > 0.9  # the clusters are easy


def saved_params(path):
    """layer name -> its blobs as arrays, from a .caffemodel."""
    return {layer.name: [io.blobproto_to_array(b) for b in layer.blobs]
            for layer in io.read_caffemodel(path).layer if layer.blobs}


def test_train_resumes_from_a_snapshot_and_finetunes_from_weights(workdir, caplog,
                                                                  monkeypatch):
    assert run(['train', '--solver=solver.prototxt'], caplog)[0] == 0
    straight = saved_params('snap/clusters_iter_20.caffemodel')
    assert list(straight) == ['ip'] and len(straight['ip']) == 2
    # The data layer counts its batches from setup: the resumed run starts at batch 10,
    # where the uninterrupted run was at iteration 10.
    layers = sys.modules[next(workdir.glob('cli_layers_*.py')).stem]
    monkeypatch.setattr(layers, 'START', 10)
    status, log = run(['train', '--solver=solver.prototxt',
                       '--snapshot=snap/clusters_iter_10.solverstate'], caplog)
    assert status == 0 and 'Resuming from snap/clusters_iter_10.solverstate' in log
    iterations = [int(m.split()[1]) for m in log if re.match(r'Iteration \d+ \(', m)]
    assert iterations == [10, 15]  # from the snapshot's iteration, with its lr step
    assert 'Iteration 10, lr = 0.05' in log
    resumed = saved_params('snap/clusters_iter_20.caffemodel')
    assert resumed.keys() == straight.keys()
    for a, b in zip(resumed['ip'], straight['ip'], strict=True):
        assert a.dtype == b.dtype == np.float32 and np.array_equal(a, b)
    # --weights: every net starts from the file's values.
    started = []
    solve = caffe.SGDSolver.solve

    def recording_solve(solver, *args, **kwargs):
        for net in [solver.net] + list(solver.test_nets):
            started.append([p.data.copy() for p in net.params['ip']])
        return solve(solver, *args, **kwargs)
    monkeypatch.setattr(caffe.SGDSolver, 'solve', recording_solve)
    status, log = run(['train', '--solver=solver.prototxt',
                       '--weights=snap/clusters_iter_20.caffemodel'], caplog)
    assert status == 0 and 'Finetuning from snap/clusters_iter_20.caffemodel' in log
    assert len(started) == 2  # the train net and the one test net
    for blobs in started:
        for a, b in zip(blobs, straight['ip'], strict=True):
            assert np.array_equal(a, b)
    assert not np.array_equal(straight['ip'][0], caffe.Net('net.prototxt', caffe.TRAIN)
                              .params['ip'][0].data)  # not what the fillers give anyway


def test_train_with_plot_leaves_log_and_curve_beside_the_snapshots(workdir, caplog):
    status, _ = run(['train', '--solver=solver.prototxt', '--plot'], caplog)
    assert status == 0
    log_text = (workdir / 'snap/clusters.log').read_text()
    assert 'Solving clusters' in log_text and 'Test net output #0: accuracy' in log_text
    png = (workdir / 'snap/clusters_curve.png').read_bytes()
    assert png[:8] == b'\x89PNG\r\n\x1a\n' and len(png) > 5000


# ------------------------------------------------------------------ test

def test_test_logs_each_batch_and_the_means_with_loss_weights(workdir, caplog):
    assert run(['train', '--solver=solver.prototxt'], caplog)[0] == 0
    weights = 'snap/clusters_iter_20.caffemodel'
    status, log = run(['test', '--model=net.prototxt', '--weights=' + weights,
                       '--iterations=3'], caplog)
    assert status == 0
    # The same three batches through the engine in-process.
    net = caffe.Net('net.prototxt', caffe.TEST, weights=weights)
    acc, loss = [], []
    for _ in range(3):
        out = net.forward()
        acc.append(np.float32(out['accuracy']))
        loss.append(np.float32(out['loss']))
    for i in range(3):
        assert 'Batch %d, accuracy = %g' % (i, acc[i]) in log
        assert 'Batch %d, loss = %g' % (i, loss[i]) in log
    mean_acc = np.float32(np.float32(np.float32(acc[0] + acc[1]) + acc[2]) / 3)
    mean_loss = np.float32(np.float32(np.float32(loss[0] + loss[1]) + loss[2]) / 3)
    assert 'accuracy = %g' % mean_acc in log
    assert 'loss = %g (* 1 = %g loss)' % (mean_loss, mean_loss) in log
    assert 'Loss: %g' % mean_loss in log
    assert mean_acc > 0.9


# ------------------------------------------------------------------ time

def test_time_reports_every_layer_forward_and_backward_and_the_averages(workdir, caplog):
    status, log = run(['time', '--model=net.prototxt', '--iterations=2'], caplog)
    assert status == 0
    net = caffe.Net('net.prototxt', caffe.TRAIN)
    for name in net._layer_names:
        assert any(re.match(r'\s*%s\tforward: [\d.e+-]+ ms\.$' % name, m) for m in log)
        assert any(re.match(r'\s*%s\tbackward: [\d.e+-]+ ms\.$' % name, m) for m in log)
    assert [m.split(':')[0] for m in log if m.startswith('Iteration: ')] == \
        ['Iteration', 'Iteration']
    for head in ('Average Forward pass: ', 'Average Backward pass: ',
                 'Average Forward-Backward: ', 'Total Time: '):
        assert any(m.startswith(head) and m.endswith(' ms.') for m in log)
    # TEST phase adds the Accuracy layer.
    status, log = run(['time', '--model=net.prototxt', '--iterations=1', '--phase=TEST'],
                      caplog)
    assert status == 0 and any(re.match(r'\s*acc\tforward: ', m) for m in log)


class TickingClock:
    """A clock that moves on by one second each time it is read."""

    def __init__(self):
        self.reads = 0

    def __call__(self):
        self.reads += 1
        return float(self.reads)


def test_time_of_a_layer_without_gradient_is_zero_backward():
    clock = TickingClock()
    times = caffe_cli.time_net(_input_net(), 2, clock=clock)
    assert times.names == ['data', 'ip', 'relu', 'loss'] and times.iterations == 2
    # Each span lasts 1 + the reads inside it. A layer's forward or backward has none
    # inside: 1 s per iteration. An iteration reads the clock at its start, around each
    # of the 4 forwards, at the middle, around each of the 3 backwards (the Input layer
    # has nothing to differentiate), and at its end: 2 + 8 + 1 + 6 = 17 reads, a
    # forward part of 1 + 8 s and a backward part of 1 + 6 s.
    assert times.forward == [2.0, 2.0, 2.0, 2.0]
    assert times.backward == [0.0, 2.0, 2.0, 2.0]
    assert times.forward_total == 2 * 9.0 and times.backward_total == 2 * 7.0
    assert times.total == 2 * 16.0 and times.per_iteration == [16.0, 16.0]
    assert clock.reads == 2 * 17


def _input_net():
    param = caffe_pb2.NetParameter()
    from google.protobuf import text_format
    text_format.Merge('''
        layer { name: "data" type: "Input" top: "data" top: "label"
          input_param { shape { dim: 4 dim: 3 } shape { dim: 4 } } }
        layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
          inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 1 } } }
        layer { name: "relu" type: "ReLU" bottom: "ip" top: "ip" }
        layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label"
          top: "loss" }''', param)
    param.state.phase = caffe_pb2.TRAIN
    net = caffe.Net(param)
    net.blobs['data'].data[...] = np.arange(12).reshape(4, 3)
    return net


def test_device_query_without_cuda_says_so_and_describes_the_cpu(caplog, monkeypatch):
    monkeypatch.setattr(caffe_cli.torch.cuda, 'is_available', lambda: False)
    status, log = run(['device_query'], caplog)
    assert status == 0
    assert any(m.startswith('No CUDA device is present') for m in log)
    assert any(m.startswith('Logical CPUs: ') for m in log)


# ------------------------------------------------------------------ upgrade tools

V1_NET = '''
name: "old"
input: "data"
input_dim: 1 input_dim: 3 input_dim: 8 input_dim: 8
layers { name: "conv" type: CONVOLUTION bottom: "data" top: "conv"
  blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0
  convolution_param { num_output: 4 kernel_size: 3 } }
layers { name: "relu" type: RELU bottom: "conv" top: "conv" }
layers { name: "prob" type: SOFTMAX bottom: "conv" top: "prob" }
'''


def test_upgrade_net_proto_text_turns_v1_layers_and_inputs_into_the_current_format(tmp_path):
    src, dst = tmp_path / 'old.prototxt', tmp_path / 'new.prototxt'
    src.write_text(V1_NET)
    assert upgrade_proto.net_text_main([str(src), str(dst)]) == 0
    net = io.read_net_prototxt(str(dst), upgrade=False)
    assert not len(net.layers) and not len(net.input)
    assert [(l.name, l.type) for l in net.layer] == [
        ('input', 'Input'), ('conv', 'Convolution'), ('relu', 'ReLU'), ('prob', 'Softmax')]
    assert list(net.layer[0].input_param.shape[0].dim) == [1, 3, 8, 8]
    assert [(p.lr_mult, p.decay_mult) for p in net.layer[1].param] == [(1, 1), (2, 0)]
    assert net.layer[1].convolution_param.num_output == 4


def test_upgrade_net_proto_binary_upgrades_a_v1_caffemodel(tmp_path):
    old = caffe_pb2.NetParameter(name='old')
    layer = old.layers.add(name='ip', type=caffe_pb2.V1LayerParameter.INNER_PRODUCT)
    layer.blobs.add().CopyFrom(io.array_to_blobproto(np.arange(6, dtype=np.float32)
                                                     .reshape(2, 3)))
    src, dst = tmp_path / 'old.caffemodel', tmp_path / 'new.caffemodel'
    src.write_bytes(old.SerializeToString())
    assert upgrade_proto.net_binary_main([str(src), str(dst)]) == 0
    new = caffe_pb2.NetParameter.FromString(dst.read_bytes())
    assert not len(new.layers) and new.layer[0].type == 'InnerProduct'
    np.testing.assert_array_equal(io.blobproto_to_array(new.layer[0].blobs[0]),
                                  np.arange(6).reshape(2, 3))


def test_upgrade_solver_proto_text_turns_solver_type_into_type(tmp_path, caplog):
    src, dst = tmp_path / 'old_solver.prototxt', tmp_path / 'solver.prototxt'
    src.write_text('net: "n.prototxt"\nbase_lr: 0.01\nsolver_type: NESTEROV\n')
    assert upgrade_proto.solver_text_main([str(src), str(dst)]) == 0
    solver = io.read_solver_prototxt(str(dst), upgrade=False)
    assert solver.type == 'Nesterov' and not solver.HasField('solver_type')
    assert not solver.HasField('snapshot_prefix')  # only the type changes
    # A file already up to date is written anyway, with Caffe's complaint.
    with caplog.at_level(logging.INFO, logger='torchcaffe'):
        assert upgrade_proto.solver_text_main([str(dst), str(tmp_path / 'again')]) == 0
    assert 'File already in latest proto format: %s' % dst in messages(caplog)


def test_upgrade_tools_name_the_bad_file_in_one_line(tmp_path, capsys):
    bad = tmp_path / 'bad.prototxt'
    bad.write_text('layer { name: "x" typo: 1 }\n')
    assert upgrade_proto.net_text_main([str(bad), str(tmp_path / 'o')]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('error: %s:1:' % bad)
    assert upgrade_proto.net_text_main([str(tmp_path / 'none'), 'o']) == 2
    assert 'none not found' in capsys.readouterr().err
    assert upgrade_proto.net_text_main(['only-one']) == 1


V0_NET = '''
name: "v0net"
input: "data"
input_dim: 1 input_dim: 3 input_dim: 12 input_dim: 12
layers { layer { name: "pad1" type: "padding" pad: 2 } bottom: "data" top: "pad1" }
layers { layer { name: "conv1" type: "conv" num_output: 4 kernelsize: 3 stride: 1
    biasterm: false weight_filler { type: "gaussian" std: 0.01 }
    blobs_lr: 1 weight_decay: 1 } bottom: "pad1" top: "conv1" }
layers { layer { name: "relu1" type: "relu" num_output: 7 } bottom: "conv1" top: "conv1" }
layers { layer { name: "pool1" type: "pool" pool: AVE kernelsize: 2 stride: 2 }
  bottom: "conv1" top: "pool1" }
layers { layer { name: "norm1" type: "lrn" local_size: 3 alpha: 0.0001 beta: 0.75 }
  bottom: "pool1" top: "norm1" }
layers { layer { name: "fc" type: "innerproduct" num_output: 10 } bottom: "norm1" top: "fc" }
layers { layer { name: "drop" type: "dropout" dropout_ratio: 0.4 } bottom: "fc" top: "fc" }
layers { layer { name: "prob" type: "softmax" } bottom: "fc" top: "prob" }
'''


def test_upgrade_net_proto_text_upgrades_v0_nets_folding_padding_layers(tmp_path, caplog):
    src, dst = tmp_path / 'v0.prototxt', tmp_path / 'new.prototxt'
    src.write_text(V0_NET)
    with caplog.at_level(logging.INFO, logger='torchcaffe'):
        assert upgrade_proto.net_text_main([str(src), str(dst)]) == 0
    # relu takes no num_output: Caffe logs it and drops the field.
    assert any("'relu1': Unknown parameter num_output for layer type relu" in m
               for m in messages(caplog))
    net = io.read_net_prototxt(str(dst), upgrade=False)
    assert [(l.name, l.type) for l in net.layer] == [
        ('input', 'Input'), ('conv1', 'Convolution'), ('relu1', 'ReLU'),
        ('pool1', 'Pooling'), ('norm1', 'LRN'), ('fc', 'InnerProduct'),
        ('drop', 'Dropout'), ('prob', 'Softmax')]
    conv = net.layer[1]
    assert list(conv.bottom) == ['data']  # the padding layer is folded into conv1
    c = conv.convolution_param
    assert (list(c.pad), list(c.kernel_size), list(c.stride), c.num_output, c.bias_term) == \
        ([2], [3], [1], 4, False)
    assert c.weight_filler.type == 'gaussian' and len(conv.param) == 1
    assert net.layer[3].pooling_param.pool == caffe_pb2.PoolingParameter.AVE
    assert net.layer[4].lrn_param.local_size == 3
    assert net.layer[6].dropout_param.dropout_ratio == pytest.approx(0.4)
    # The upgraded net builds: 12 + 2 * 2 - 3 + 1 = 14, pooled to 7.
    built = caffe.Net(str(dst), caffe.TEST)
    assert built.blobs['pool1'].shape == (1, 4, 7, 7)
    assert built.blobs['prob'].shape == (1, 10)


def test_the_thin_script_in_tools_runs_the_same_command(monkeypatch, capsys):
    import os
    import runpy
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    monkeypatch.setattr(sys, 'argv', ['tools/caffe', '-help'])
    with pytest.raises(SystemExit) as done:
        runpy.run_path(os.path.join(root, 'tools', 'caffe'), run_name='__main__')
    assert done.value.code == 0
    err = capsys.readouterr().err
    assert 'usage: caffe <command> <args>' in err and '-sighup_effect' in err


def test_train_on_several_gpus_hands_the_same_command_to_torchrun(workdir, monkeypatch):
    calls = []
    monkeypatch.setattr(caffe_cli, 'parse_gpus', lambda text, device_count=None: [0, 1])
    monkeypatch.setattr(caffe_cli.subprocess, 'call', lambda cmd: calls.append(cmd) or 0)
    argv = ['train', '--solver=solver.prototxt', '--gpu=0,1']
    assert main(argv) == 0
    assert calls == [caffe_cli.torchrun_command(argv, 2)]
    assert not (workdir / 'snap' / 'clusters_iter_20.caffemodel').exists()  # only the ranks train


def test_train_under_torchrun_runs_data_parallel_on_the_cpu(workdir):
    """Two gloo processes: rank 0 logs and snapshots, rank 1 keeps its own streams."""
    import os
    import subprocess
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(workdir)] + sys.path))
    done = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone',
                           '--nproc_per_node=2', '-m', 'torchcaffe.tools.caffe_cli', 'train',
                           '--solver=solver.prototxt'], cwd=str(workdir), env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert 'Data-parallel over 2 processes' in done.stderr
    assert (workdir / 'snap' / 'clusters_iter_20.caffemodel').is_file()
    assert (workdir / 'snap' / 'clusters_iter_20.solverstate.rank1.resume.json').is_file()


STAGED = '''
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "always" type: "ReLU" bottom: "data" top: "a" }
layer { name: "leveled" type: "ReLU" bottom: "a" top: "b" include { min_level: 1 } }
layer { name: "staged" type: "ReLU" bottom: "a" top: "c" include { stage: "deep" } }
'''


@pytest.mark.parametrize('extra, layers', [
    ([], ['data', 'always']),
    (['--level=1'], ['data', 'always', 'leveled']),
    (['-stage', 'deep,other'], ['data', 'always', 'staged']),
])
def test_level_and_stage_flags_choose_the_layers(tmp_path, caplog, extra, layers):
    (tmp_path / 'staged.prototxt').write_text(STAGED)
    status, log = run(['time', '--model=%s' % (tmp_path / 'staged.prototxt'),
                       '--iterations=1'] + extra, caplog)
    assert status == 0
    timed = [m.split('\t')[0].strip() for m in log if m.endswith(' ms.') and '\tforward: ' in m]
    assert timed == layers


def test_train_level_and_stage_go_into_the_train_state(workdir):
    f = dict({k: default for k, (_, default) in caffe_cli.FLAGS.items()},
             solver='solver.prototxt', level=2, stage='a,b')
    param, source = caffe_cli._solver_source(f)
    assert source is param  # changed: the solver is built from the parameter
    assert param.train_state.level == 2 and list(param.train_state.stage) == ['a', 'b']
    f.update(level=0, stage='')
    assert caffe_cli._solver_source(f)[1] == 'solver.prototxt'  # unchanged: the file itself


def test_plot_of_a_run_that_logs_no_outputs_warns_instead_of_failing(workdir, caplog):
    (workdir / 'quiet.prototxt').write_text(SOLVER.replace('display: 5', 'display: 0')
                                            .replace('test_iter: 2 test_interval: 10', ''))
    status, log = run(['train', '--solver=quiet.prototxt', '--plot'], caplog)
    assert status == 0 and any(m.startswith('No learning curve: ') for m in log)
    assert (workdir / 'snap' / 'clusters_iter_20.caffemodel').is_file()
