"""Python layers: pycaffe's lifecycle, data layers of changing size, losses, blobs, errors.

The layers under test are written into a module in a temporary directory that is put
on ``sys.path``, as a model folder's ``<dataset>_layers.py`` is found by Caffe.
"""
import importlib
import json
import os
import subprocess
import sys
import textwrap
import types
import uuid

import numpy as np
import pytest
import torch
from google.protobuf import text_format

import torchcaffe as caffe
from torchcaffe import blob as blob_module
from torchcaffe import python_layer
from torchcaffe.errors import CaffeError

LAYERS = '''
import ast
import numpy as np
import torchcaffe as caffe

CALLS = []


class Scale(caffe.Layer):
    """top = factor * bottom; records every call the net makes."""

    def __init__(self, param):
        super().__init__(param)
        CALLS.append(('init', param.name))

    def setup(self, bottom, top):
        CALLS.append(('setup', self.param_str, self.phase))
        self.factor = ast.literal_eval(self.param_str)['factor']

    def reshape(self, bottom, top):
        CALLS.append(('reshape',))
        for b, t in zip(bottom, top):
            t.reshape(*b.data.shape)

    def forward(self, bottom, top):
        CALLS.append(('forward', type(bottom[0].data).__name__))
        for b, t in zip(bottom, top):
            t.data[...] = self.factor * b.data

    def backward(self, top, propagate_down, bottom):
        CALLS.append(('backward', list(propagate_down)))
        for down, b, t in zip(propagate_down, bottom, top):
            if down:
                b.diff[...] = self.factor * t.diff


class Images(caffe.Layer):
    """A data layer: each forward gives the next image of SIZES, filled with its index."""
    SIZES = [(4, 6), (7, 5), (3, 3)]

    def setup(self, bottom, top):
        if len(bottom):
            raise Exception('no bottoms')
        self.index = 0

    def reshape(self, bottom, top):
        h, w = self.SIZES[self.index % len(self.SIZES)]
        top[0].reshape(1, 1, h, w)
        top[1].reshape(1, 1, h, w)

    def forward(self, bottom, top):
        h, w = top[0].data.shape[2:]
        top[0].data[...] = self.index + np.arange(h * w).reshape(1, 1, h, w)
        top[1].data[...] = self.index
        self.index += 1


class SquaredDistance(caffe.Layer):
    """pycaffe's example Euclidean loss: sum((a - b)^2) / num / 2."""

    def reshape(self, bottom, top):
        self.diff = np.zeros_like(bottom[0].data)
        top[0].reshape(1)

    def forward(self, bottom, top):
        self.diff[...] = bottom[0].data - bottom[1].data
        top[0].data[...] = np.sum(self.diff ** 2) / bottom[0].num / 2.

    def backward(self, top, propagate_down, bottom):
        for i, sign in ((0, 1), (1, -1)):
            if propagate_down[i]:
                bottom[i].diff[...] = sign * self.diff / bottom[i].num


class Bias(caffe.Layer):
    """A layer with its own learnable blob: top = bottom + b (b per channel)."""

    def setup(self, bottom, top):
        self.blobs.add_blob(bottom[0].data.shape[1])
        self.blobs[0].data[...] = 1

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = bottom[0].data + self.blobs[0].data

    def backward(self, top, propagate_down, bottom):
        self.blobs[0].diff[...] += top[0].diff.sum(0)
        if propagate_down[0]:
            bottom[0].diff[...] = top[0].diff


class NotALayer(object):
    pass
'''


@pytest.fixture(autouse=True, scope='module')
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def layers(tmp_path, monkeypatch):
    """A fresh layers module (unique name) importable from sys.path."""
    name = 'test_layers_%s' % uuid.uuid4().hex[:8]
    (tmp_path / (name + '.py')).write_text(LAYERS)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv('TORCHCAFFE_PYTHON_LAYER_PATH', str(tmp_path))  # allow its folder
    module = importlib.import_module(name)
    yield module
    sys.modules.pop(name, None)


def make_net(text, module, phase=caffe.TRAIN):
    param = caffe.caffe_pb2.NetParameter()
    text_format.Merge(textwrap.dedent(text).replace('MODULE', module.__name__), param)
    return caffe.Net(param, phase)


SCALE_NET = '''
    force_backward: true
    layer { name: "input" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
    layer { name: "scale" type: "Python" bottom: "x" top: "y"
            python_param { module: "MODULE" layer: "Scale" param_str: "{'factor': 3}" } }
    layer { name: "loss" type: "Power" bottom: "y" top: "loss" loss_weight: 1
            power_param { power: 2 } }
'''


def test_lifecycle_follows_caffe(layers):
    net = make_net(SCALE_NET, layers)
    assert layers.CALLS == [('init', 'scale'), ('setup', "{'factor': 3}", caffe.TRAIN),
                            ('reshape',)]
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    del layers.CALLS[:]
    net.forward(x=x)
    net.forward(x=x)
    net.backward()
    assert layers.CALLS == [('reshape',), ('forward', 'ndarray'), ('reshape',),
                            ('forward', 'ndarray'), ('backward', [True])]
    np.testing.assert_allclose(net.blobs['y'].data, 3 * x)
    # loss = sum((3x)^2): d/dx = 18 x, through the Python layer's backward
    np.testing.assert_allclose(net.blobs['x'].diff, 18 * x, rtol=1e-6)
    np.testing.assert_allclose(net.blobs['y'].diff, 2 * (3 * x), rtol=1e-6)  # 2 y


def test_python_layer_objects_look_like_pycaffe(layers):
    net = make_net(SCALE_NET, layers, caffe.TEST)
    layer = net.layer_dict['scale']
    assert isinstance(layer, caffe.Layer) and layer.type == 'Python'
    assert layer.phase == caffe.TEST and len(layer.blobs) == 0
    assert 'scale' not in net.params


def test_backward_is_skipped_when_no_bottom_needs_a_gradient(layers):
    net = make_net(SCALE_NET.replace('force_backward: true', ''), layers)
    net.forward(x=np.ones((2, 3)))
    net.backward()
    assert not any(call[0] == 'backward' for call in layers.CALLS)


def test_propagate_down_tells_which_bottoms_need_gradients(layers):
    net = make_net('''
        layer { name: "input" type: "Input" top: "x" top: "z"
                input_param { shape { dim: 2 dim: 3 } } }
        layer { name: "ip" type: "InnerProduct" bottom: "x" top: "a"
                inner_product_param { num_output: 3 weight_filler { type: "constant" value: 1 } } }
        layer { name: "scale" type: "Python" bottom: "a" bottom: "z" top: "b" top: "c"
                python_param { module: "MODULE" layer: "Scale" param_str: "{'factor': 2}" } }
        layer { name: "loss" type: "Eltwise" bottom: "b" bottom: "c" top: "loss"
                loss_weight: 1 }''', layers)
    net.forward(x=np.ones((2, 3)), z=np.ones((2, 3)))
    net.backward()
    assert layers.CALLS[-1] == ('backward', [True, False])
    # loss = sum(2 (x W^T)) + ...: d/dW = 2 * sum over items of x
    np.testing.assert_allclose(net.params['ip'][0].diff, np.full((3, 3), 4.0))


def test_data_layer_may_change_size_every_forward(layers):
    net = make_net('''
        layer { name: "data" type: "Python" top: "data" top: "label"
                python_param { module: "MODULE" layer: "Images" } }
        layer { name: "pool" type: "Pooling" bottom: "data" top: "pool"
                pooling_param { pool: MAX kernel_size: 2 stride: 2 } }''', layers)
    assert net.blobs['data'].shape == (1, 1, 4, 6)  # set up by its first reshape
    for index, (h, w) in enumerate(layers.Images.SIZES):
        out = net.forward(blobs=['data', 'label'])
        assert out['data'].shape == (1, 1, h, w)
        assert out['pool'].shape == (1, 1, -(-(h - 2) // 2) + 1, -(-(w - 2) // 2) + 1)
        assert out['pool'].max() == index + h * w - 1
        assert (out['label'] == index).all()


def test_python_loss_layer_backpropagates_into_the_net(layers):
    net = make_net('''
        layer { name: "input" type: "Input" top: "x" top: "t"
                input_param { shape { dim: 2 dim: 3 } shape { dim: 2 dim: 2 } } }
        layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y"
                inner_product_param { num_output: 2 bias_term: false } }
        layer { name: "loss" type: "Python" bottom: "y" bottom: "t" top: "loss"
                python_param { module: "MODULE" layer: "SquaredDistance" } loss_weight: 1 }
    ''', layers)
    rng = np.random.RandomState(0)
    W, x, t = rng.randn(2, 3), rng.randn(2, 3), rng.randn(2, 2)
    net.params['ip'][0].data[...] = W
    out = net.forward(x=x, t=t)
    y = x @ W.T
    np.testing.assert_allclose(out['loss'], [np.sum((y - t) ** 2) / 4], rtol=1e-5)
    assert net.blob_loss_weights['loss'] == 1
    net.backward()
    np.testing.assert_allclose(net.params['ip'][0].diff, ((y - t) / 2).T @ x, rtol=1e-5)


def test_python_layer_blobs_are_net_params(layers, tmp_path):
    text = '''
        layer { name: "input" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
        layer { name: "bias" type: "Python" bottom: "x" top: "y" param { lr_mult: 2 }
                python_param { module: "MODULE" layer: "Bias" } }
        layer { name: "loss" type: "Power" bottom: "y" top: "loss" loss_weight: 1 }'''
    net = make_net(text, layers)
    assert [b.shape for b in net.params['bias']] == [(3,)]
    assert net.learnable_params == net.params['bias'] and net.params_lr == [2]
    out = net.forward(x=np.zeros((2, 3)), blobs=['y'])
    np.testing.assert_array_equal(out['y'], np.ones((2, 3)))
    net.backward()
    net.backward()
    np.testing.assert_array_equal(net.params['bias'][0].diff, [4, 4, 4])  # 2 items, 2 calls
    net.clear_param_diffs()
    assert not net.params['bias'][0].diff.any()
    net.params['bias'][0].data[...] = [1, 2, 3]
    path = str(tmp_path / 'bias.caffemodel')
    net.save(path)
    other = make_net(text, layers)
    other.copy_from(path)
    np.testing.assert_array_equal(other.params['bias'][0].data, [1, 2, 3])


def test_python_layers_work_with_host_mirrors(layers, monkeypatch):
    """The accelerator path: bottoms are copied to the host, tops back to the device."""
    monkeypatch.setattr(blob_module, 'needs_mirror', lambda dev: True)
    net = make_net(SCALE_NET, layers)
    net._move(torch.device('cpu'))
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    net.forward(x=x)
    net.backward()
    np.testing.assert_allclose(net.blobs['y'].data, 3 * x)
    np.testing.assert_allclose(net.blobs['x'].diff, 18 * x, rtol=1e-6)


@pytest.mark.parametrize('module, cls, message', [
    ('no_such_module_xyz', 'Scale', "'scale'.*cannot import module 'no_such_module_xyz'"),
    ('MODULE', 'Missing', "'scale'.*has no attribute 'Missing'"),
    ('MODULE', 'NotALayer', "'scale'.*not a subclass of caffe.Layer"),
])
def test_bad_python_param_names_the_layer(layers, module, cls, message):
    text = '''
        layer { name: "input" type: "Input" top: "x" input_param { shape { dim: 1 } } }
        layer { name: "scale" type: "Python" bottom: "x" top: "y"
                python_param { module: "%s" layer: "%s" } }''' % (module, cls)
    with pytest.raises(CaffeError, match=message):
        make_net(text, layers)


# ---------------------------------------------------------------- files never run code

MARKED = '''
import os
import torchcaffe as caffe

open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'RAN'), 'w').close()


class Echo(caffe.Layer):
    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].shape)

    def forward(self, bottom, top):
        top[0].data[...] = bottom[0].data
'''

ECHO_NET = '''
layer { name: "input" type: "Input" top: "x" input_param { shape { dim: 2 } } }
layer { name: "echo" type: "Python" bottom: "x" top: "y"
        python_param { module: "MODULE" layer: "Echo" } }
'''


@pytest.fixture
def outside(tmp_path, monkeypatch):
    """(folder, module name): a layers module on sys.path that marks the folder when run."""
    monkeypatch.delenv(python_layer.ENV_VAR, raising=False)
    monkeypatch.delenv('PYTHONPATH', raising=False)
    monkeypatch.setattr(python_layer, '_allowed', [])
    folder = tmp_path / 'elsewhere'
    folder.mkdir()
    name = 'outside_layers_%s' % uuid.uuid4().hex[:8]
    (folder / (name + '.py')).write_text(MARKED)
    monkeypatch.syspath_prepend(str(folder))
    yield folder, name
    sys.modules.pop(name, None)


def echo_param(name):
    return text_format.Parse(ECHO_NET.replace('MODULE', name), caffe.caffe_pb2.NetParameter())


def test_a_standard_library_module_is_refused_naming_layer_module_and_remedy():
    text = '''
        layer { name: "input" type: "Input" top: "x" input_param { shape { dim: 1 } } }
        layer { name: "pwn" type: "Python" bottom: "x" top: "y"
                python_param { module: "os" layer: "system" param_str: "touch /tmp/x" } }'''
    param = text_format.Parse(text, caffe.caffe_pb2.NetParameter())
    with pytest.raises(CaffeError) as info:
        caffe.Net(param, caffe.TEST)
    message = str(info.value)
    for part in ("layer 'pwn'", "module 'os'", "'os' is ", python_layer.ENV_VAR,
                 'allow_python_layers_from'):
        assert part in message


def test_a_module_outside_the_allowed_folders_is_refused_before_it_runs(outside):
    folder, name = outside
    with pytest.raises(CaffeError, match="'echo'.*%s.*found at %s" % (name, folder)):
        caffe.Net(echo_param(name), caffe.TEST)
    assert not (folder / 'RAN').exists()
    assert name not in sys.modules


def test_a_package_outside_is_refused_before_its_init_runs(outside, tmp_path, monkeypatch):
    folder, _ = outside
    package = folder / ('outside_pkg_%s' % uuid.uuid4().hex[:8])
    package.mkdir()
    (package / '__init__.py').write_text(MARKED.replace("'RAN'", "'..', 'RAN'"))
    (package / 'layers.py').write_text(MARKED)
    with pytest.raises(CaffeError, match='refusing'):
        caffe.Net(echo_param(package.name + '.layers'), caffe.TEST)
    assert not (folder / 'RAN').exists() and not (package / 'RAN').exists()


def test_a_module_the_program_already_imported_is_accepted_without_running_again(outside):
    folder, name = outside
    importlib.import_module(name)
    (folder / 'RAN').unlink()  # its import ran it once
    net = caffe.Net(echo_param(name), caffe.TEST)
    np.testing.assert_array_equal(net.forward(x=np.array([3., 4.]))['y'], [3, 4])
    assert not (folder / 'RAN').exists()  # importing again ran nothing


def test_a_module_object_the_program_made_is_accepted(monkeypatch):
    module = types.ModuleType('made_layers_%s' % uuid.uuid4().hex[:8])
    exec(MARKED.split('open(', 1)[0] + MARKED.split("close()\n", 1)[1], module.__dict__)
    monkeypatch.setitem(sys.modules, module.__name__, module)
    net = caffe.Net(echo_param(module.__name__), caffe.TEST)
    assert net.forward(x=np.array([5., 6.]))['y'].tolist() == [5, 6]


@pytest.mark.parametrize('module, layer, kind', [
    ('os', 'system', 'the standard library'),
    ('json', 'JSONDecoder', 'the standard library'),
    ('numpy', 'ndarray', 'an installed package'),
])
def test_imported_standard_and_installed_modules_stay_refused(module, layer, kind, monkeypatch):
    assert module in sys.modules  # imported: the already-imported rule must not admit them
    folder = os.path.dirname(os.path.dirname(sys.modules[module].__file__))
    monkeypatch.setenv('PYTHONPATH', folder)  # nor does listing their folder
    param = text_format.Parse(ECHO_NET.replace('MODULE', module).replace('Echo', layer),
                              caffe.caffe_pb2.NetParameter())
    with pytest.raises(CaffeError) as info:
        caffe.Net(param, caffe.TEST)
    message = str(info.value)
    assert "layer 'echo'" in message and "refusing to import python_param.module %r" % module \
        in message and '(%s)' % kind in message
    assert 'list it in PYTHONPATH' not in message  # it would not help


def test_a_built_in_module_stays_refused():
    param = text_format.Parse(ECHO_NET.replace('MODULE', 'builtins').replace('Echo', 'object'),
                              caffe.caffe_pb2.NetParameter())
    with pytest.raises(CaffeError, match="'builtins' is built-in"):
        caffe.Net(param, caffe.TEST)


def test_a_folder_listed_in_pythonpath_is_allowed(outside, monkeypatch):
    folder, name = outside
    monkeypatch.setenv('PYTHONPATH', os.pathsep.join(['/nonexistent', str(folder)]))
    assert (str(folder.resolve()), 'PYTHONPATH') in python_layer.python_layer_roots()
    net = caffe.Net(echo_param(name), caffe.TEST)
    np.testing.assert_array_equal(net.forward(x=np.array([1., 2.]))['y'], [1, 2])
    assert (folder / 'RAN').exists()


def test_an_empty_pythonpath_entry_does_not_allow_the_current_directory(outside, monkeypatch):
    folder, name = outside
    monkeypatch.chdir(folder)
    monkeypatch.setenv('PYTHONPATH', os.pathsep)
    with pytest.raises(CaffeError, match='list it in PYTHONPATH'):
        caffe.Net(echo_param(name), caffe.TEST)
    assert not (folder / 'RAN').exists()


def test_pythonpath_does_not_allow_installed_packages(outside, monkeypatch):
    folder, _ = outside
    site = folder / 'venv' / 'lib' / 'site-packages'
    site.mkdir(parents=True)
    name = 'installed_layers_%s' % uuid.uuid4().hex[:8]
    (site / (name + '.py')).write_text(MARKED)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv('PYTHONPATH', str(site))
    with pytest.raises(CaffeError, match=r'\(an installed package\)'):
        caffe.Net(echo_param(name), caffe.TEST)
    assert not (site / 'RAN').exists()


CUBE = textwrap.dedent('''
    import ast
    import caffe


    class Cube(caffe.Layer):
        """top = scale * bottom ** 3."""

        def setup(self, bottom, top):
            self.scale = ast.literal_eval(self.param_str)['scale']

        def reshape(self, bottom, top):
            top[0].reshape(*bottom[0].data.shape)

        def forward(self, bottom, top):
            top[0].data[...] = self.scale * bottom[0].data ** 3

        def backward(self, top, propagate_down, bottom):
            bottom[0].diff[...] = 3 * self.scale * bottom[0].data ** 2 * top[0].diff
''')

PYCAFFE_SCRIPT = textwrap.dedent('''
    import json, sys
    import numpy as np
    import caffe

    net = caffe.Net(sys.argv[1], caffe.TEST)
    x = np.array([[1, -2, 0.5], [3, 0, -1]], dtype=np.float32)
    y = net.forward(x=x)['y']
    net.backward(y=np.array([[1, 2, 3], [4, 5, 6]], dtype=np.float32))
    print(json.dumps({'y': y.tolist(), 'dx': net.blobs['x'].diff.tolist(),
                      'file': sys.modules[sys.argv[2]].__file__}))
''')


def test_pycaffe_script_runs_a_layer_from_a_pythonpath_folder(tmp_path):
    """As the FCN README says: put the layers' folder on PYTHONPATH, then import caffe."""
    name = 'cube_layers_%s' % uuid.uuid4().hex[:8]
    layers_dir, model_dir, run_dir = (tmp_path / d for d in ('layers', 'model', 'run'))
    for d in (layers_dir, model_dir, run_dir):
        d.mkdir()
    (layers_dir / (name + '.py')).write_text(CUBE)
    (model_dir / 'deploy.prototxt').write_text(textwrap.dedent('''
        force_backward: true
        layer { name: "input" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
        layer { name: "cube" type: "Python" bottom: "x" top: "y"
                python_param { module: "%s" layer: "Cube" param_str: "{'scale': 2}" } }
    ''' % name))
    # The repository too, so that `import caffe` works without an installed package.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(layers_dir), root]))
    env.pop(python_layer.ENV_VAR, None)
    result = subprocess.run([sys.executable, '-c', PYCAFFE_SCRIPT,
                             str(model_dir / 'deploy.prototxt'), name],
                            cwd=str(run_dir), env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.splitlines()[-1])
    assert out['file'] == str(layers_dir / (name + '.py'))
    # y = 2 x^3; dx = 6 x^2 * dy, by hand
    assert out['y'] == [[2, -16, 0.25], [54, 0, -2]]
    assert out['dx'] == [[6, 48, 4.5], [216, 0, 36]]


def test_the_environment_variable_allows_a_folder(outside, monkeypatch):
    folder, name = outside
    monkeypatch.setenv(python_layer.ENV_VAR, os.pathsep.join(['/nonexistent', str(folder)]))
    net = caffe.Net(echo_param(name), caffe.TEST)
    np.testing.assert_array_equal(net.forward(x=np.array([1., 2.]))['y'], [1, 2])
    assert (folder / 'RAN').exists()


def test_allow_python_layers_from_allows_a_folder(outside):
    folder, name = outside
    caffe.allow_python_layers_from(folder)
    caffe.Net(echo_param(name), caffe.TEST)
    assert (folder / 'RAN').exists()
    with pytest.raises(CaffeError, match='not a folder'):
        caffe.allow_python_layers_from(folder / name)


def test_the_prototxt_folder_is_allowed_for_its_own_net_only(outside):
    folder, name = outside
    path = folder / 'deploy.prototxt'
    path.write_text(ECHO_NET.replace('MODULE', name))
    other = 'other_layers_%s' % uuid.uuid4().hex[:8]
    (folder / (other + '.py')).write_text(MARKED)
    caffe.Net(str(path), caffe.TEST)  # the model folder's own layers module
    assert (folder / 'RAN').exists()
    try:
        with pytest.raises(CaffeError, match='refusing'):  # not once that net is made
            caffe.Net(echo_param(other), caffe.TEST)
    finally:
        sys.modules.pop(other, None)
    caffe.Net(echo_param(name), caffe.TEST)  # this one is imported now, so it may be reused


def test_a_solver_allows_its_net_files_folder(outside):
    folder, name = outside
    path = folder / 'train.prototxt'
    path.write_text(ECHO_NET.replace('MODULE', name))
    solver = caffe.SGDSolver(caffe.caffe_pb2.SolverParameter(
        net=str(path), base_lr=0.1, lr_policy='fixed', max_iter=1))
    assert list(solver.net.blobs) == ['x', 'y']


def test_installed_packages_need_an_explicit_allowance(outside, monkeypatch):
    folder, _ = outside
    site = folder / 'venv' / 'site-packages'
    site.mkdir(parents=True)
    name = 'installed_layers_%s' % uuid.uuid4().hex[:8]
    (site / (name + '.py')).write_text(MARKED)
    monkeypatch.syspath_prepend(str(site))
    with python_layer.net_folder(folder):  # a prototxt folder holding a virtualenv
        with pytest.raises(CaffeError, match='refusing'):
            caffe.Net(echo_param(name), caffe.TEST)
        monkeypatch.setenv(python_layer.ENV_VAR, str(site))
        caffe.Net(echo_param(name), caffe.TEST)
    sys.modules.pop(name, None)

