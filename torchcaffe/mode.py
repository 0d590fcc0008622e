"""Caffe's global mode: CPU or GPU, which GPU, the random seed, and the precision.

As in Caffe, the mode is process-wide state set by ``set_mode_cpu()`` /
``set_mode_gpu()`` / ``set_device(i)``; a Net runs on the mode's device at its next
forward. ``set_random_seed`` seeds what Caffe's global RNG would drive: weight fillers
(on a CPU generator, so initial weights do not depend on the device) and Dropout's
masks (one generator per device).

``set_precision`` is not Caffe's: it opts in to faster arithmetic than Caffe's
float32 (TF32 tensor cores, or bfloat16 autocast). The default, 'fp32', is Caffe's.
"""
import base64
import contextlib
import logging
import zlib

import torch

from .errors import CaffeError

__all__ = ['set_mode_cpu', 'set_mode_gpu', 'set_device', 'set_random_seed', 'device',
           'version', 'filler_generator', 'generator', 'random_state', 'set_random_state',
           'PRECISIONS', 'set_precision', 'precision', 'autocast']

log = logging.getLogger(__name__)

# The seed used until set_random_seed is called, so that nets start reproducibly.
DEFAULT_SEED = 1701

_state = {'gpu': False, 'device_id': 0, 'version': 0, 'seed': DEFAULT_SEED,
          'precision': 'fp32'}
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
    """A counter that changes whenever the mode, device or precision changes."""
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


# ------------------------------------------------------------------------------ precision

# The choices, in the order command lines list them.
PRECISIONS = {
    'fp32': "float32 throughout, as Caffe (TF32 off for cuBLAS and cuDNN)",
    'tf32': "float32 storage, TF32 tensor-core matmuls and convolutions on CUDA "
            "(Ampere or later)",
    'bf16': "bfloat16 autocast for the nets' forward; float32 params, loss, gradients "
            "and SGD update",
}


def set_precision(name):
    """Choose the arithmetic nets use: 'fp32' (Caffe's, the default), 'tf32' or 'bf16'.

    'fp32' turns TF32 off for matmuls and cuDNN convolutions (torch lets cuDNN use
    TF32 by default, Caffe never did). 'tf32' turns it on; it changes nothing on the
    CPU. 'bf16' runs each net's forward under ``torch.autocast`` to bfloat16 (on the
    CPU too): convolutions and matmuls compute in bfloat16 while the params, the
    SoftmaxWithLoss, the gradients of the params and the solver's update and
    history stay float32 -- mixed precision, as production trainers use it. Blobs
    read from numpy (``net.blobs[name].data``) are float32 arrays in every mode.

    Parameters
    ----------
    name : {'fp32', 'tf32', 'bf16'}

    Raises
    ------
    ValueError
        ``name`` is not one of those.
    """
    if name not in PRECISIONS:
        raise ValueError('unknown precision %r: choose one of %s'
                         % (name, ', '.join(PRECISIONS)))
    tf32 = name == 'tf32'
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.set_float32_matmul_precision('high' if tf32 else 'highest')
    _state['precision'] = name
    _changed()  # what is keyed on version() (the mode) is redone under the new arithmetic
    note = ''
    if not (_state['gpu'] and torch.cuda.is_available()):
        note = {'tf32': ' -- a no-op on the CPU: TF32 only changes CUDA arithmetic',
                'bf16': ' -- on the CPU too, in CPU mode'}.get(name, '')
    log.info('Precision %s: %s%s', name, PRECISIONS[name], note)


def precision():
    """The precision chosen by :func:`set_precision` ('fp32' until then)."""
    return _state['precision']


def autocast(dev):
    """The context a net's forward runs in on device ``dev``: bfloat16 autocast under
    'bf16', else nothing."""
    if _state['precision'] != 'bf16':
        return contextlib.nullcontext()
    return torch.autocast(torch.device(dev).type, dtype=torch.bfloat16)


# Caffe computes in float32; torch's own default lets cuDNN convolutions use TF32 on
# Ampere and later GPUs, so the engine starts by turning that off.
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
