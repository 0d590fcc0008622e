"""``import caffe`` is torchcaffe: the same module objects under pycaffe's names, and
pycaffe's module-level surface (python/caffe/__init__.py, _caffe.cpp)."""
import importlib
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import caffe
import torchcaffe
from torchcaffe import runtime

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------- one engine, two names

def test_caffe_names_are_torchcaffes_objects():
    assert caffe.Net is torchcaffe.Net and caffe.SGDSolver is torchcaffe.SGDSolver
    assert caffe.io is torchcaffe.io and caffe.layers is torchcaffe.layers
    assert caffe.__engine__ == 'torchcaffe' and caffe.__version__ == torchcaffe.__version__


@pytest.mark.parametrize('name', ['io', 'proto', 'proto.caffe_pb2', 'coord_map', 'net_spec',
                                  'draw', 'classifier', 'detector'])
def test_each_caffe_submodule_is_the_torchcaffe_module(name):
    alias = importlib.import_module('caffe.' + name)
    real = importlib.import_module('torchcaffe.' + name)
    assert alias is real
    assert sys.modules['caffe.' + name] is sys.modules['torchcaffe.' + name]
    assert real.__spec__.name == 'torchcaffe.' + name  # its own spec, not the alias's


def test_pycaffe_import_statements_work():
    from caffe import layers as L, params as P  # noqa: F401
    from caffe.proto import caffe_pb2
    import caffe.io  # noqa: F401
    assert caffe_pb2.NetParameter is torchcaffe.proto.caffe_pb2.NetParameter
    assert str(L.ReLU(L.Input(), in_place=True).fn.type_name) == 'ReLU'
    assert P.Pooling.MAX == caffe_pb2.PoolingParameter.MAX


def test_a_missing_submodule_is_a_module_not_found_error():
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module('caffe.no_such_module')
    with pytest.raises(AttributeError):
        caffe.no_such_name


def _python(code, cwd, **env):
    environ = dict(os.environ, **env)
    return subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          cwd=str(cwd), env=environ, check=True).stdout.split()


WHICH = 'import importlib.util as u; print(u.find_spec("caffe").origin)'
OURS = os.path.join(REPO, 'caffe', '__init__.py')


def test_a_real_caffe_earlier_on_the_path_wins_and_tells(tmp_path):
    real = tmp_path / 'bvlc' / 'caffe'
    real.mkdir(parents=True)
    (real / '__init__.py').write_text("__version__ = '1.0.0'\n")
    elsewhere = tmp_path / 'scripts'
    elsewhere.mkdir()
    path = {'PYTHONPATH': str(real.parent)}
    # PYTHONPATH comes before the installed packages: the real Caffe is imported,
    # and it has no __engine__.
    assert _python('import caffe; print(getattr(caffe, "__engine__", "bvlc"), '
                   'caffe.__version__)', elsewhere, **path) == ['bvlc', '1.0.0']
    assert _python(WHICH, elsewhere, **path) == [str(real / '__init__.py')]
    # A script's own folder comes first: in this repository, caffe is torchcaffe;
    # without a real Caffe on the path, it is torchcaffe everywhere.
    assert _python(WHICH, REPO, **path) == [OURS]
    assert _python(WHICH, elsewhere) == [OURS]


# ---------------------------------------------------------------- module-level names

def test_pycaffes_top_level_names_exist():
    for name in ('Net', 'SGDSolver', 'get_solver', 'TRAIN', 'TEST', 'set_mode_cpu',
                 'set_mode_gpu', 'set_device', 'set_random_seed', 'layer_type_list', 'Layer',
                 'Classifier', 'Detector', 'Timer', 'NCCL', 'has_nccl', 'solver_count',
                 'set_solver_count', 'solver_rank', 'set_solver_rank', 'set_multiprocess',
                 'init_log', 'log', '__version__', 'NetSpec', 'to_proto', 'layers', 'params'):
        assert hasattr(caffe, name), name
    assert (caffe.TRAIN, caffe.TEST) == (0, 1)


def test_layer_type_list_is_the_registry_in_caffes_order():
    types = caffe.layer_type_list()
    assert types == sorted(types)
    assert {'Convolution', 'Deconvolution', 'Crop', 'Python', 'Split', 'Input'} <= set(types)
    assert 'Dropout' in types and len(types) == len(set(types))


def test_set_random_seed_makes_fillers_repeat(tmp_path):
    proto = tmp_path / 'g.prototxt'
    proto.write_text('layer { name: "i" type: "Input" top: "x" input_param { shape { dim: 1 '
                     'dim: 2 } } }\nlayer { name: "ip" type: "InnerProduct" bottom: "x" '
                     'top: "y" inner_product_param { num_output: 3 weight_filler '
                     '{ type: "gaussian" } } }\n')
    caffe.set_random_seed(5)
    a = caffe.Net(str(proto), caffe.TEST).params['ip'][0].data.copy()
    caffe.set_random_seed(5)
    b = caffe.Net(str(proto), caffe.TEST).params['ip'][0].data.copy()
    caffe.set_random_seed(6)
    c = caffe.Net(str(proto), caffe.TEST).params['ip'][0].data.copy()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_mode_and_device_are_set_as_caffe_sets_them():
    from torchcaffe import mode
    caffe.set_mode_gpu()
    assert mode._state['gpu']
    caffe.set_device(0)
    caffe.set_mode_cpu()
    assert mode.device() == torch.device('cpu')
    with pytest.raises(caffe.CaffeError):
        caffe.set_device(-1)


def test_solver_count_and_rank_default_to_one_process_and_can_be_set(monkeypatch):
    monkeypatch.setattr(runtime, '_state', dict(runtime._state, solver_count=None,
                                                solver_rank=None, multiprocess=False))
    assert (caffe.solver_count(), caffe.solver_rank()) == (1, 0)
    caffe.set_solver_count(4)
    caffe.set_solver_rank(2)
    caffe.set_multiprocess(True)
    assert (caffe.solver_count(), caffe.solver_rank(), runtime.multiprocess()) == (4, 2, True)


def test_init_log_sets_glogs_level_and_log_writes_info(caplog):
    logger = logging.getLogger('torchcaffe')
    old = logger.level
    try:
        caffe.init_log(1)
        assert logger.level == logging.WARNING
        caffe.init_log()
        assert logger.level == logging.INFO
        with caplog.at_level(logging.INFO, logger='torchcaffe'):
            caffe.log('hello from pycaffe')
        assert 'hello from pycaffe' in caplog.text
        with pytest.raises(ValueError):
            caffe.init_log(7)
    finally:
        logger.setLevel(old)


def test_timer_measures_between_start_and_stop(monkeypatch):
    now = [10.0]
    monkeypatch.setattr(runtime, '_clock', lambda: now[0])
    t = caffe.Timer()
    assert t.ms == 0  # never started: Caffe warns and gives 0
    t.start()
    now[0] = 10.25
    t.stop()
    now[0] = 99.0
    assert t.ms == pytest.approx(250.0) and t.Seconds() == pytest.approx(0.25)
    assert t.MicroSeconds() == pytest.approx(250000.0)
    t.Start()
    now[0] = 100.5
    assert t.MilliSeconds() == pytest.approx(1500.0)  # reading a running timer stops it
    assert not t.running


def test_has_nccl_is_torchs_nccl_backend():
    dist = torch.distributed
    assert caffe.has_nccl() == bool(dist.is_available() and dist.is_nccl_available())


SOLVER_NET = '''
layer { name: "input" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y"
        inner_product_param { num_output: 1 bias_term: false
                              weight_filler { type: "constant" value: 0.5 } } }
layer { name: "loss" type: "Power" bottom: "y" top: "loss" loss_weight: 1 }
'''


def _solver(tmp_path):
    (tmp_path / 'train.prototxt').write_text(SOLVER_NET)
    (tmp_path / 'solver.prototxt').write_text(
        'net: "%s" base_lr: 0.1 lr_policy: "fixed" max_iter: 10 display: 0 '
        'snapshot_prefix: "%s"\n' % (tmp_path / 'train.prototxt', tmp_path / 's'))
    solver = caffe.get_solver(str(tmp_path / 'solver.prototxt'))
    return solver


def test_nccl_in_one_process_trains_as_one_solver(tmp_path):
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    solver = _solver(tmp_path)
    uid = caffe.NCCL.new_uid()
    assert isinstance(uid, str) and uid != caffe.NCCL.new_uid()
    nccl = caffe.NCCL(solver, uid)
    nccl.bcast()  # one solver: nothing to broadcast
    np.testing.assert_array_equal(solver.net.params['ip'][0].data, [[0.5, 0.5, 0.5]])
    solver.add_callback(nccl)
    solver.net.blobs['x'].data[...] = x
    solver.step(1)
    # loss = sum(y), so dloss/dW = sum over the batch of x; SGD: W -= 0.1 * that
    np.testing.assert_allclose(solver.net.params['ip'][0].data,
                               0.5 - 0.1 * x.sum(0, keepdims=True), rtol=1e-6)


def test_sgd_solver_is_what_get_solver_makes_for_sgd(tmp_path):
    solver = _solver(tmp_path)
    assert isinstance(solver, caffe.SGDSolver)
    direct = caffe.SGDSolver(str(tmp_path / 'solver.prototxt'))
    assert direct.iter == 0 and list(direct.net.params) == ['ip']


@pytest.mark.parametrize('kind', ['Nesterov', 'AdaGrad', 'RMSProp', 'AdaDelta', 'Adam'])
def test_caffe_exposes_every_solver_get_solver_makes(tmp_path, kind):
    (tmp_path / 'train.prototxt').write_text(SOLVER_NET)
    (tmp_path / 'solver.prototxt').write_text(
        'net: "%s" type: "%s" base_lr: 0.1 %s lr_policy: "fixed" display: 0 '
        'snapshot_prefix: "%s"\n' % (tmp_path / 'train.prototxt', kind,
                                     '' if kind in ('AdaGrad', 'RMSProp') else 'momentum: 0.9',
                                     tmp_path / 's'))
    cls = getattr(caffe, kind + 'Solver')
    assert cls is getattr(torchcaffe, kind + 'Solver')
    assert type(caffe.get_solver(str(tmp_path / 'solver.prototxt'))) is cls
