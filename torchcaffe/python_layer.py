"""Python layers: pycaffe's ``caffe.Layer`` and the bridge that runs them in a net.

A prototxt layer of type ``Python`` names a module and a class in its
``python_param``; the class derives from :class:`Layer` and works on lists of
:class:`~torchcaffe.blob.Blob` through their numpy ``data`` and ``diff``. As in
Caffe, the object is made with the LayerParameter, gets ``param_str`` and ``phase``
before ``setup(bottom, top)``, then ``reshape`` before every ``forward`` (so each
forward may change the tops' shapes), and ``backward(top, propagate_down, bottom)``
when a bottom or one of its own blobs needs a gradient.

Inside a net the layer runs as one ``torch.autograd.Function``: forward hands it
the bottoms (host arrays), returns copies of its tops on the net's device; backward
hands it the tops' diffs and returns the bottoms' diffs. Learnable blobs it adds
with ``self.blobs.add_blob(...)`` are net params; its backward writes their diffs.

Files never run code
--------------------
A prototxt names a module and the net imports it, so a net file downloaded from
somewhere could otherwise run any module on ``sys.path`` (``module: "os"``, or a
``voc_layers.py`` planted in the current directory). Each dotted part of the
module name must therefore pass before anything is imported: either

- it is already imported (in ``sys.modules``): importing it again runs no new code,
  and the net only ever calls a class of it that derives from :class:`Layer`; or
- it resolves (``importlib.util.find_spec``, which runs nothing) to a file under
  an allowed folder:

  - the repository, i.e. the folder that holds the ``torchcaffe`` package (where
    the ``<dataset>_layers.py`` modules live); not when torchcaffe is installed in
    ``site-packages``, which would allow every installed package;
  - the folder of the prototxt the net is read from (``Net(path, ...)``, or a
    solver's ``net:`` / ``test_net:`` file), so a model folder may carry its own layers;
  - the folders listed in ``PYTHONPATH`` (read at each use; empty entries, which
    would mean the current directory, are skipped): the FCN reference's README
    puts its layers on ``PYTHONPATH``, and that is the user's own list;
  - the folders in the environment variable ``TORCHCAFFE_PYTHON_LAYER_PATH``
    (``os.pathsep``-separated), read at each use;
  - folders given to :func:`allow_python_layers_from`.

Neither way admits built-in and frozen modules, the standard library or installed
packages (``site-packages``, even a virtualenv inside the repository, or one listed
in ``PYTHONPATH``), imported or not: ``module: "os"`` stays refused. Those come
only from a folder allowed explicitly by the last two. A module that is refused
raises ``CaffeError`` naming the layer, the module, where it was found and how to
allow its folder. ``param_str`` is handed to the layer as text; the FCN data
layers read it with ``ast.literal_eval``, never ``eval``.
"""
import contextlib
import contextvars
import functools
import importlib
import importlib.util
import os
import re
import site
import sys
import sysconfig

import torch

from .blob import BlobVec
from .errors import CaffeError

__all__ = ['Layer', 'create_python_layer', 'PythonLayerRunner', 'allow_python_layers_from',
           'python_layer_roots', 'net_folder', 'ENV_VAR']

# Extra folders the user allows Python layer modules from (os.pathsep-separated).
ENV_VAR = 'TORCHCAFFE_PYTHON_LAYER_PATH'

_allowed = []  # folders given to allow_python_layers_from, as real paths
# Folders of the prototxts being turned into nets right now (see net_folder).
_net_folders = contextvars.ContextVar('torchcaffe_python_layer_net_folders', default=())
_MODULE_NAME = re.compile(r'[A-Za-z_]\w*(\.[A-Za-z_]\w*)*\Z')


class Layer:
    """Base class of Python layers (pycaffe's ``caffe.Layer``).

    Subclasses override ``setup``, ``reshape``, ``forward`` and, when they pass
    gradients, ``backward``. Attributes set by the net before ``setup``:

    Attributes
    ----------
    param_str : str
        ``python_param.param_str`` from the prototxt.
    phase : int
        ``caffe.TRAIN`` (0) or ``caffe.TEST`` (1).
    blobs : BlobVec
        Learnable blobs; ``self.blobs.add_blob(*shape)`` adds one.
    """

    def __init__(self, layer_param=None):
        self._layer_param = layer_param

    @property
    def type(self):
        """Caffe's type name of every Python layer."""
        return 'Python'

    @property
    def blobs(self):
        vec = self.__dict__.get('_caffe_blobs')
        if vec is None:
            vec = self.__dict__['_caffe_blobs'] = BlobVec()
        return vec

    def setup(self, bottom, top):
        """Check parameters and bottoms once, when the net is made."""

    def reshape(self, bottom, top):
        """Shape the tops (and internal buffers) for the current bottoms."""


def _real(path):
    return os.path.realpath(os.path.abspath(os.fspath(path)))


def repository_root():
    """The folder that holds the ``torchcaffe`` package, or None when it is installed."""
    root = os.path.dirname(os.path.dirname(_real(__file__)))
    if os.path.basename(root) in ('site-packages', 'dist-packages'):
        return None
    return root


def allow_python_layers_from(path):
    """Allow Python layer modules found under the folder ``path`` (for this process).

    Parameters
    ----------
    path : str or path
        An existing folder; modules in it and below it may be named by
        ``python_param.module``. The folder must also be on ``sys.path`` (or hold a
        package on it) for the import itself to find the module.

    Raises
    ------
    CaffeError
        ``path`` is not a folder.
    """
    real = _real(path)
    if not os.path.isdir(real):
        raise CaffeError('allow_python_layers_from(%r): not a folder' % (os.fspath(path),))
    if real not in _allowed:
        _allowed.append(real)


@contextlib.contextmanager
def net_folder(path):
    """Within the block, also allow modules under ``path`` (the prototxt's folder)."""
    if path is None:
        yield
        return
    token = _net_folders.set(_net_folders.get() + (_real(path),))
    try:
        yield
    finally:
        _net_folders.reset(token)


_IMPLICIT = ('the repository', "the prototxt's folder", 'PYTHONPATH')


def python_layer_roots():
    """The allowed folders now, as (folder, why) pairs, in the order they are checked."""
    roots = []
    repo = repository_root()
    if repo is not None:
        roots.append((repo, 'the repository'))
    roots.extend((folder, "the prototxt's folder") for folder in _net_folders.get())
    for entry in os.environ.get('PYTHONPATH', '').split(os.pathsep):
        if entry:
            roots.append((_real(entry), 'PYTHONPATH'))
    for entry in os.environ.get(ENV_VAR, '').split(os.pathsep):
        if entry:
            roots.append((_real(entry), ENV_VAR))
    roots.extend((folder, 'allow_python_layers_from') for folder in _allowed)
    return roots


def _inside(path, folder):
    try:
        return os.path.commonpath([path, folder]) == folder
    except ValueError:  # different drives
        return False


@functools.lru_cache(maxsize=1)
def _system_folders():
    """Folders of the standard library and of installed packages, as real paths (fixed
    for the process: worked out once, not for every path checked)."""
    paths = sysconfig.get_paths()
    folders = [paths.get(key) for key in ('stdlib', 'platstdlib', 'purelib', 'platlib')]
    folders += getattr(site, 'getsitepackages', list)()
    folders.append(getattr(site, 'USER_SITE', None))
    return {_real(f) for f in folders if f}


def _system_kind(path):
    """'the standard library' or 'an installed package' when ``path`` is one, else None."""
    if {'site-packages', 'dist-packages'} & set(path.split(os.sep)):
        return 'an installed package'
    if any(_inside(path, folder) for folder in _system_folders()):
        return 'the standard library'
    return None


def _allowed_path(path, roots):
    # The standard library and installed packages (a virtualenv inside the
    # repository, say) count only under a folder the user allowed explicitly.
    system = _system_kind(path) is not None
    return any(_inside(path, root) and not (system and why in _IMPLICIT)
               for root, why in roots)


def _already_imported(name, found):
    """Whether ``name`` passes as a module the program imported itself.

    ``found`` is what :func:`_spec_locations` says of it. Built-in and frozen
    modules, the standard library and installed packages do not pass.
    """
    if name not in sys.modules:
        return False
    if isinstance(found, list):
        return all(_system_kind(_real(p)) is None for p in found)
    # No file: a module object the program made itself (or an interactive __main__).
    return found == _NO_FILE


_NO_FILE = 'an object in sys.modules with no file'


def _spec_locations(name):
    """Where module ``name`` comes from: a list of paths, or a word ('built-in', ...)."""
    module = sys.modules.get(name)
    try:
        spec = importlib.util.find_spec(name)
    except ValueError:  # in sys.modules without __spec__ (e.g. __main__)
        spec = None
        if module is not None and getattr(module, '__file__', None):
            return [module.__file__]
        return _NO_FILE
    if spec is None:
        return None
    if spec.has_location and spec.origin:
        return [spec.origin]
    if spec.submodule_search_locations:  # a namespace package
        return list(spec.submodule_search_locations)
    return spec.origin or 'nowhere on disk'


def _check_module(name, where):
    """Resolve ``name`` part by part without running it; fail if it is not allowed."""
    if not _MODULE_NAME.match(name):
        raise CaffeError('%s: python_param.module %r is not a module name' % (where, name))
    parts = name.split('.')
    for i in range(len(parts)):
        # A parent package must pass before find_spec of its child imports it.
        prefix = '.'.join(parts[:i + 1])
        try:
            found = _spec_locations(prefix)
        except ImportError as err:
            raise CaffeError('%s: cannot import module %r: %s' % (where, name, err)) from err
        if found is None:
            raise CaffeError('%s: cannot import module %r: no module named %r on sys.path'
                             % (where, name, prefix))
        if _already_imported(prefix, found):
            continue
        roots = python_layer_roots()
        paths = [_real(p) for p in found] if isinstance(found, list) else []
        if not paths or not all(_allowed_path(p, roots) for p in paths):
            kinds = {_system_kind(p) for p in paths} - {None}
            if found in ('built-in', 'frozen'):
                kinds.add('the standard library')
            origin = ('found at ' + ', '.join(paths)) if paths else found
            if kinds:
                origin += ' (%s)' % ', '.join(sorted(kinds))
            # PYTHONPATH does not admit the standard library or installed packages.
            remedy = '' if kinds else 'list it in PYTHONPATH, '
            raise CaffeError(
                '%s: refusing to import python_param.module %r: %r is %s, outside the '
                'folders Python layers may come from (%s). A net file must not run code '
                'from elsewhere. To allow a folder, %sadd it to the environment variable '
                '%s (%r-separated) or call torchcaffe.allow_python_layers_from(folder).'
                % (where, name, prefix, origin, '; '.join('%s (%s)' % r for r in roots)
                   or 'none', remedy, ENV_VAR, os.pathsep))


def create_python_layer(layer_param):
    """Import ``python_param.module`` and make its ``python_param.layer`` class.

    The module is imported from ``sys.path`` (so a model folder's own layers
    module is found when the script runs there), but only once it resolves to a
    file under an allowed folder (see the module docstring). The class is called
    with the LayerParameter, as Caffe's layer factory calls it.

    Raises
    ------
    CaffeError
        The module is outside the allowed folders, cannot be imported, lacks the
        class, or the class is not a :class:`Layer`; the message names the layer.
    """
    p = layer_param.python_param
    where = 'layer %r (Python)' % layer_param.name
    if not p.module or not p.layer:
        raise CaffeError('%s: python_param needs both module and layer' % where)
    _check_module(p.module, where)
    try:
        module = importlib.import_module(p.module)
    except ImportError as err:
        raise CaffeError('%s: cannot import module %r: %s' % (where, p.module, err)) from err
    cls = getattr(module, p.layer, None)
    if cls is None:
        raise CaffeError('%s: module %r (%s) has no attribute %r'
                         % (where, p.module, getattr(module, '__file__', '?'), p.layer))
    if not (isinstance(cls, type) and issubclass(cls, Layer)):
        raise CaffeError('%s: %s.%s is not a subclass of caffe.Layer'
                         % (where, p.module, p.layer))
    return cls(layer_param)


class PythonLayerRunner:
    """Drives one Python layer inside a net.

    Parameters
    ----------
    layer : Layer
    layer_param : caffe_pb2.LayerParameter
    phase : int
    bottoms, tops : list of Blob
        The net's own blobs, which the layer reads and writes.
    """

    def __init__(self, layer, layer_param, phase, bottoms, tops):
        self.layer = layer
        self.name = layer_param.name
        self.bottoms = bottoms
        self.tops = tops
        self.top_ids = {id(b) for b in tops}
        layer.param_str = layer_param.python_param.param_str
        layer.phase = int(phase)

    def setup(self):
        """Caffe's SetUp for a Python layer: ``setup`` then ``reshape``."""
        self.layer.setup(self.bottoms, self.tops)
        self.layer.reshape(self.bottoms, self.tops)

    def reshape(self):
        self.layer.reshape(self.bottoms, self.tops)

    def run(self):
        """``reshape`` and ``forward`` on the blobs (Caffe's Layer::Forward)."""
        self.layer.reshape(self.bottoms, self.tops)
        self.layer.forward(self.bottoms, self.tops)

    def apply(self, inputs):
        """Run through autograd; ``inputs`` are the bottom tensors then the params'."""
        return _PythonFunction.apply(self, len(self.bottoms), *inputs)

    def call_backward(self, propagate_down):
        """The layer's own ``backward(top, propagate_down, bottom)`` on the blobs as they
        stand, as Caffe's PythonLayer::Backward calls it."""
        if not hasattr(self.layer, 'backward'):
            raise CaffeError('layer %r (Python): %s has no backward() but a gradient is '
                             'needed' % (self.name, type(self.layer).__name__))
        self.layer.backward(self.tops, list(propagate_down), self.bottoms)

    def backward(self, grads, propagate_down):
        for blob, grad in zip(self.tops, grads):
            # A copy: the layer may write into it, and autograd may share the tensor.
            blob._diff.set(grad.detach().clone())
        for blob, down in zip(self.bottoms, propagate_down):
            if down and id(blob) not in self.top_ids:
                blob._diff.tensor = None  # zeros for the layer to fill
        self.call_backward(propagate_down)
        return [blob.diff_tensor().clone() if down else None
                for blob, down in zip(self.bottoms, propagate_down)]


class _PythonFunction(torch.autograd.Function):
    """A Python layer as one autograd node (see the module docstring)."""

    @staticmethod
    def forward(ctx, runner, num_bottoms, *inputs):
        ctx.runner = runner
        ctx.num_bottoms = num_bottoms
        ctx.num_params = len(inputs) - num_bottoms
        runner.run()
        return tuple(blob.data_tensor().detach().clone() for blob in runner.tops)

    @staticmethod
    def backward(ctx, *grads):
        nb = ctx.num_bottoms
        propagate_down = [bool(n) for n in ctx.needs_input_grad[2:2 + nb]]
        bottom_grads = ctx.runner.backward(grads, propagate_down)
        return (None, None) + tuple(bottom_grads) + (None,) * ctx.num_params
