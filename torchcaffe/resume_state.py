"""What a solverstate cannot hold but an exact resume needs: the random streams.

Caffe's ``.solverstate`` keeps the iteration, the momentum history and the weights'
file; a restored Caffe run starts its data layers and Dropout masks afresh, so it
goes on differently from an uninterrupted run. Beside each solverstate torchcaffe
writes ``<solverstate>.resume.json`` with the state of its generators (weight fillers
and Dropout masks, per device) and of every layer of the train net that defines
``state_dict()`` / ``load_state_dict(state)`` (the VOC data layers do: their position
and shuffling generator; so do Caffe's Data, ImageData, HDF5Data and WindowData). Restoring reads it back, so N steps, snapshot,
restore, M steps gives exactly the N + M steps of a straight run. The file is plain
JSON, never code; Caffe itself ignores it, and a missing or stale one only costs that
exactness (with a warning).
"""
import json
import logging
import os

from . import io, mode

log = logging.getLogger(__name__)

SUFFIX = '.resume.json'
VERSION = 1


def path_for(state_file):
    """The sidecar file of ``state_file``."""
    return os.fspath(state_file) + SUFFIX


def _stateful_layers(net):
    """(name, layer) of the net's layers that can save and load their own state."""
    return [(name, layer) for name, layer in net.layer_dict.items()
            if callable(getattr(layer, 'state_dict', None))
            and callable(getattr(layer, 'load_state_dict', None))]


def write(state_file, iteration, net):
    """Write the sidecar of ``state_file`` for ``net`` at ``iteration``, atomically."""
    content = {
        'version': VERSION,
        'iter': int(iteration),
        'generators': mode.random_state(),
        'layers': {name: layer.state_dict() for name, layer in _stateful_layers(net)},
    }
    with io.atomic_path(path_for(state_file)) as tmp:
        with open(tmp, 'w', encoding='utf-8') as f:
            json.dump(content, f)


def read(state_file):
    """The sidecar of ``state_file`` as a dict, or None when missing or unreadable."""
    path = path_for(state_file)
    try:
        with open(path, encoding='utf-8') as f:
            content = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        log.warning('%s is unreadable (%s)', path, err)
        return None
    return content if isinstance(content, dict) else None


def is_current(content, iteration):
    """Whether sidecar ``content`` (from :func:`read`) belongs to a state at ``iteration``."""
    return bool(content) and content.get('version') == VERSION \
        and content.get('iter') == iteration


def load(state_file, iteration, net):
    """Restore generators and layer states saved beside ``state_file``.

    Returns
    -------
    bool
        Whether an up-to-date sidecar was found and applied; when not, a warning
        says that data order and Dropout masks restart.
    """
    path = path_for(state_file)
    content = read(state_file)
    if not is_current(content, iteration):
        log.warning('No up-to-date %s: data layers and Dropout restart their random '
                    'streams, so training goes on, but not exactly as an uninterrupted '
                    'run would', os.path.basename(path))
        return False
    mode.set_random_state(content['generators'])
    layers = dict(_stateful_layers(net))
    for name, state in content['layers'].items():
        if name in layers:
            layers[name].load_state_dict(state)
        else:
            log.warning('%s: the net has no stateful layer %r; its state is ignored', path, name)
    return True
