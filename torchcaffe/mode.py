"""Caffe's global mode: CPU or GPU, which GPU, and the random seed.

As in Caffe, the mode is process-wide state set by ``set_mode_cpu()`` /
``set_mode_gpu()`` / ``set_device(i)``; a Net runs on the mode's device at its next
forward. ``set_random_seed`` seeds what Caffe's global RNG would drive: weight fillers
(on a CPU generator, so initial weights do not depend on the device) and Dropout's
masks (one generator per device).
"""
import base64
import zlib

import torch

from .errors import CaffeError

__all__ = ['set_mode_cpu', 'set_mode_gpu', 'set_device', 'set_random_seed', 'device',
           'version', 'filler_generator', 'generator', 'random_state', 'set_random_state']

# The seed used until set_random_seed is called, so that nets start reproducibly.
DEFAULT_SEED = 1701

_state = {'gpu': False, 'device_id': 0, 'version': 0, 'seed': DEFAULT_SEED}
_generators = {}


def _changed():
    _state['version'] += 1


def set_mode_cpu():
    """Run nets on the CPU (Caffe's default)."""
    _state['gpu'] = False
    _changed()


def set_mode_gpu():
    """Run nets on the GPU chosen by :func:`set_device` (0 by default).

    The check that CUDA is present happens when a net next runs, as in a CPU-only
    Caffe build, which fails on first use of the GPU.
    """
    _state['gpu'] = True
    _changed()


def set_device(device_id):
    """Choose the GPU that GPU mode uses (Caffe's ``SetDevice``)."""
    device_id = int(device_id)
    if device_id < 0:
        raise CaffeError('set_device: device id must be non-negative, got %d' % device_id)
    _state['device_id'] = device_id
    if torch.cuda.is_available() and device_id < torch.cuda.device_count():
        torch.cuda.set_device(device_id)
    _changed()


def set_random_seed(seed):
    """Seed the filler and Dropout generators (Caffe's ``set_random_seed``)."""
    _state['seed'] = int(seed)
    for key, gen in _generators.items():
        gen.manual_seed(_seed_for(key))


def _seed_for(key):
    # Distinct streams per device so that CPU and GPU dropout do not share one.
    if key == 'fill':
        return _state['seed']
    return _state['seed'] + 7919 * (1 + zlib.crc32(key.encode()) % 1000)


def device():
    """The torch device nets run on now.

    Raises
    ------
    CaffeError
        GPU mode without CUDA, or a device id past the GPUs present.
    """
    if not _state['gpu']:
        return torch.device('cpu')
    if not torch.cuda.is_available():
        raise CaffeError('GPU mode is set (caffe.set_mode_gpu()) but CUDA is not available '
                         'to torch; call caffe.set_mode_cpu() to run on the CPU')
    count = torch.cuda.device_count()
    if _state['device_id'] >= count:
        raise CaffeError('set_device(%d) chose a GPU that does not exist (%d present)'
                         % (_state['device_id'], count))
    return torch.device('cuda', _state['device_id'])


def version():
    """A counter that changes whenever the mode or device changes."""
    return _state['version']


def filler_generator():
    """The CPU generator that weight fillers draw from."""
    return _generator('fill', 'cpu')


def generator(dev):
    """The generator Dropout draws its masks from on device ``dev``."""
    dev = torch.device(dev)
    return _generator(str(dev), dev)


def _generator(key, dev):
    gen = _generators.get(key)
    if gen is None:
        gen = torch.Generator(device=dev)
        gen.manual_seed(_seed_for(key))
        _generators[key] = gen
    return gen


def random_state():
    """The state of every generator made so far, as JSON-able text (base64 per generator)."""
    return {key: base64.b64encode(gen.get_state().numpy().tobytes()).decode('ascii')
            for key, gen in _generators.items()}


def set_random_state(state):
    """Restore generators from :func:`random_state`'s output (creating them as needed)."""
    for key, text in state.items():
        dev = 'cpu' if key == 'fill' else torch.device(key)
        if dev != 'cpu' and dev.type == 'cuda' and not torch.cuda.is_available():
            continue  # saved on a GPU, resumed without one: that stream is not used here
        raw = bytearray(base64.b64decode(text))
        _generator(key, dev).set_state(torch.frombuffer(raw, dtype=torch.uint8).clone())
