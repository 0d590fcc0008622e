"""``import caffe``: pycaffe's name for the torchcaffe engine.

Everything here *is* torchcaffe: ``caffe.Net is torchcaffe.Net``, and every
submodule ``caffe.X`` is the module ``torchcaffe.X`` itself (``import caffe.io``,
``caffe.proto.caffe_pb2``, ``caffe.coord_map``, ``caffe.draw``, ``caffe.net_spec``
...), registered in ``sys.modules`` under both names. An import hook does the
mapping generically, so a module added to torchcaffe is reachable as ``caffe.X``
with no change here.

``caffe.__engine__ == 'torchcaffe'`` tells this package from a real Caffe
(BVLC's pycaffe has no ``__engine__``); whichever ``caffe`` comes first on
``sys.path`` is the one imported (see the README, "Using existing pycaffe code").
"""
import importlib
import importlib.abc
import importlib.util
import sys

import torchcaffe
from torchcaffe import *  # noqa: F401,F403  (pycaffe's top-level names)
from torchcaffe import __engine__, __version__  # noqa: F401

_PREFIX = __name__ + '.'
_TARGET = 'torchcaffe.'


class _AliasFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds ``caffe.X`` as the already-importable ``torchcaffe.X`` module object."""

    def __init__(self, package):
        self._package = package
        self._specs = {}  # alias name -> the real module's own spec

    def find_spec(self, fullname, path=None, target=None):
        if not fullname.startswith(_PREFIX) or sys.modules.get(__name__) is not self._package:
            return None  # another package named caffe (a real Caffe) was imported
        try:
            real = importlib.util.find_spec(_TARGET + fullname[len(_PREFIX):])
        except (ImportError, ValueError):
            return None
        if real is None:
            return None
        return importlib.util.spec_from_loader(
            fullname, self, is_package=real.submodule_search_locations is not None)

    def create_module(self, spec):
        module = importlib.import_module(_TARGET + spec.name[len(_PREFIX):])
        self._specs[spec.name] = module.__spec__
        return module

    def exec_module(self, module):
        # The import system gave the module the alias's spec: give back its own,
        # so that it still reloads and pickles as torchcaffe.X.
        for alias, real in list(self._specs.items()):
            if real.name == module.__name__:
                module.__spec__ = real
                del self._specs[alias]


def _install():
    package = sys.modules[__name__]
    if not any(isinstance(f, _AliasFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _AliasFinder(package))


_install()


def __getattr__(name):
    """Names torchcaffe gains after this import (and its submodules, imported on
    first use, e.g. ``caffe.draw``)."""
    try:
        return getattr(torchcaffe, name)
    except AttributeError:
        pass
    if not name.startswith('_'):
        try:
            return importlib.import_module(_PREFIX + name)
        except ModuleNotFoundError as err:
            if err.name != _PREFIX + name and err.name != _TARGET + name:
                raise
    raise AttributeError("module 'caffe' has no attribute %r" % (name,))
