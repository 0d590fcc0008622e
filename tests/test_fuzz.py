"""Fuzz: broken files raise the documented errors, nothing else, quickly, in bounded memory.

Every target starts from a valid file (a small prototxt in the current and the V1
format, a solver prototxt, a caffemodel and a solverstate written by the engine,
their HDF5 forms, a JPEG, a label PNG, SBD and SIFT Flow ``.mat`` labels) and feeds
its reader mutated copies (bits flipped, bytes set, deleted, inserted, repeated,
truncated) and plain random bytes. A reader may raise only its documented errors:
``FormatError`` for the file readers of ``torchcaffe.io``, ``CaffeError`` for
``Net`` construction and ``copy_from``, ``DataLayerError`` for the data layers'
loaders. A raw ``KeyError``, ``IndexError``, ``struct.error``, protobuf
``DecodeError``, ``OSError``, ``ValueError`` or ``RecursionError`` fails the test,
and Hypothesis shrinks the input that raised it.

Hypothesis runs derandomized (the same examples on every run, no example database)
with a deadline per example; a watchdog (``faulthandler``) ends the process with a
traceback if one example hangs inside C code, where no deadline can interrupt it.
``test_declared_sizes_are_checked_before_allocating`` reads hostile files in a
subprocess under ``RLIMIT_AS``: sizes a file declares must be checked against what
it holds before anything that size is allocated.

Longer runs: ``TORCHCAFFE_FUZZ_EXAMPLES=5000 pytest tests/test_fuzz.py`` (examples per
target), or the coverage-guided atheris harness in ``tests/fuzz/``.
"""
import faulthandler
import importlib.util
import io as bytes_io
import os
import re
import subprocess
import sys
import textwrap
from datetime import timedelta

import h5py
import numpy as np
import pytest
import scipy.io
from google.protobuf import text_format
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image

import torchcaffe as caffe
from torchcaffe import io
from torchcaffe.errors import CaffeError, FormatError
from torchcaffe.proto import caffe_pb2

import pascalcontext_layers
import seg_layers
import voc_layers
from seg_layers import DataLayerError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = int(os.environ.get('TORCHCAFFE_FUZZ_EXAMPLES', 0))


def fuzz_settings(examples):
    """Deterministic settings: ``examples`` per target (unless the environment says more)."""
    return settings(max_examples=EXAMPLES or examples, derandomize=True, database=None,
                    deadline=timedelta(seconds=5), print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(autouse=True)
def watchdog():
    """End the run with every thread's traceback if one test hangs (even in C code)."""
    faulthandler.dump_traceback_later(600 if EXAMPLES else 120, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


# ---------------------------------------------------------------- mutations

INTERESTING = [0x00, 0x01, 0x7F, 0x80, 0xFF, 0x0A, 0x22, 0x7B, 0x7D, 0x3A, 0x30, 0x39]
OPS = ('flip', 'set', 'delete', 'insert', 'repeat', 'truncate')


@st.composite
def mutated(draw, seed):
    """``seed`` with 1 to 6 random edits."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(OPS))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if op == 'flip' and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == 'set' and data:
            data[pos] = draw(st.sampled_from(INTERESTING) | st.integers(0, 255))
        elif op == 'delete':
            del data[pos:pos + draw(st.integers(1, 32))]
        elif op == 'insert':
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == 'repeat':
            chunk = data[pos:pos + draw(st.integers(1, 64))]
            data[pos:pos] = chunk * draw(st.integers(1, 4))
        elif op == 'truncate':
            del data[pos:]
    return bytes(data)


def broken(seed):
    """Mostly mutated copies of ``seed``, sometimes random bytes."""
    return st.one_of(mutated(seed), mutated(seed), mutated(seed), st.binary(max_size=512))


def only(allowed, read, *args):
    """Call ``read``; an ``allowed`` exception is fine, any other one fails the test."""
    try:
        read(*args)
    except allowed:
        pass


def rejects(error, read, *args, match=None):
    """``read(*args)`` must raise ``error``: a corrupted input is refused, not read as
    garbage. Each fuzz target checks at least one such input of its own."""
    with pytest.raises(error, match=match):
        read(*args)


# ---------------------------------------------------------------- seed files

NET_TEXT = '''name: "seed"
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 1 dim: 3 dim: 12 dim: 12 } } }
layer { name: "label" type: "Input" top: "label"
        input_param { shape { dim: 1 dim: 1 dim: 12 dim: 12 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
        convolution_param { num_output: 4 kernel_size: 3 pad: 1
                            weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "drop" type: "Dropout" bottom: "pool" top: "pool"
        dropout_param { dropout_ratio: 0.5 } include { phase: TRAIN } }
layer { name: "score" type: "Convolution" bottom: "pool" top: "score"
        convolution_param { num_output: 3 kernel_size: 1 } }
layer { name: "up" type: "Deconvolution" bottom: "score" top: "up"
        param { lr_mult: 0 } convolution_param { num_output: 3 kernel_size: 4 stride: 2
                                                 bias_term: false group: 3 } }
layer { name: "crop" type: "Crop" bottom: "up" bottom: "data" top: "crop"
        crop_param { axis: 2 offset: 1 } }
layer { name: "sum" type: "Eltwise" bottom: "crop" bottom: "crop" top: "sum"
        eltwise_param { operation: SUM coeff: 1 coeff: -0.5 } }
layer { name: "fc" type: "InnerProduct" bottom: "pool" top: "fc"
        inner_product_param { num_output: 5 } }
layer { name: "scale" type: "Scale" bottom: "fc" top: "fc"
        scale_param { axis: 1 num_axes: 1 filler { type: "constant" value: 0.01 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "sum" bottom: "label" top: "loss"
        loss_param { ignore_label: 255 normalize: false } }
'''

V1_NET_TEXT = '''name: "old"
input: "data"
input_dim: 1 input_dim: 3 input_dim: 10 input_dim: 10
layers { name: "conv1" type: CONVOLUTION bottom: "data" top: "conv1"
         blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0
         convolution_param { num_output: 2 kernel_size: 3 } }
layers { name: "relu1" type: RELU bottom: "conv1" top: "conv1" }
layers { name: "pool1" type: POOLING bottom: "conv1" top: "pool1"
         pooling_param { pool: AVE kernel_size: 2 stride: 2 } }
layers { name: "fc" type: INNER_PRODUCT bottom: "pool1" top: "fc"
         inner_product_param { num_output: 3 } }
layers { name: "prob" type: SOFTMAX bottom: "fc" top: "prob" }
'''

SOLVER_TEXT = '''train_net: "train.prototxt"
test_net: "val.prototxt"
test_iter: 736
test_interval: 999999999
base_lr: 1e-10
lr_policy: "step" gamma: 0.1 stepsize: 1000
momentum: 0.99
weight_decay: 0.0005
max_iter: 100000
snapshot: 4000
snapshot_prefix: "snapshot/train"
solver_type: SGD
test_initialization: false
'''


def encode_image(array, mode, fmt):
    buf = bytes_io.BytesIO()
    Image.fromarray(array, mode=mode).save(buf, format=fmt)
    return buf.getvalue()


def encode_mat(variables):
    buf = bytes_io.BytesIO()
    scipy.io.savemat(buf, variables, do_compression=False, oned_as='column')
    return buf.getvalue()


@pytest.fixture(scope='module')
def seeds(tmp_path_factory):
    """name -> bytes of every seed file, and 'net': the seed net the caffemodels came from."""
    where = tmp_path_factory.mktemp('seeds')
    rng = np.random.RandomState(0)
    net = caffe.Net(io.parse_prototxt(NET_TEXT, caffe_pb2.NetParameter), caffe.TEST)
    net.save(str(where / 'seed.caffemodel'))
    net.save_hdf5(str(where / 'seed.caffemodel.h5'))
    v1 = io.parse_prototxt(V1_NET_TEXT, caffe_pb2.NetParameter)
    conv = v1.layers[0]
    legacy = conv.blobs.add(num=2, channels=3, height=3, width=3)
    legacy.data.extend(rng.randn(54).astype(np.float32))
    conv.blobs.add(num=1, channels=1, height=1, width=2).data.extend([0.5, -1])
    state = caffe_pb2.SolverState(iter=12, learned_net='seed_iter_12.caffemodel',
                                  current_step=1)
    state.history.extend(io.array_to_blobproto(rng.randn(*shape).astype(np.float32))
                         for shape in [(4, 3, 3, 3), (4,), (3, 4, 1, 1)])
    io.write_solverstate(state, where / 'seed.solverstate')
    io.write_solverstate(state, where / 'seed.solverstate.h5')
    label = rng.randint(0, 21, (9, 7)).astype(np.uint8)
    label[0, :3] = 255
    png = Image.fromarray(label, mode='P')
    png.putpalette(list(rng.randint(0, 256, 768).astype(np.uint8)))
    buf = bytes_io.BytesIO()
    png.save(buf, format='PNG')
    files = {
        'net.prototxt': NET_TEXT.encode(),
        'v1.prototxt': V1_NET_TEXT.encode(),
        'solver.prototxt': SOLVER_TEXT.encode(),
        'caffemodel': (where / 'seed.caffemodel').read_bytes(),
        'v1.caffemodel': v1.SerializeToString(),
        'caffemodel.h5': (where / 'seed.caffemodel.h5').read_bytes(),
        'solverstate': (where / 'seed.solverstate').read_bytes(),
        'solverstate.h5': (where / 'seed.solverstate.h5').read_bytes(),
        'jpg': encode_image(rng.randint(0, 256, (9, 7, 3)).astype(np.uint8), 'RGB', 'JPEG'),
        'png': buf.getvalue(),
        'sbd.mat': encode_mat({'GTcls': {'Segmentation': label,
                                         'CategoriesPresent': np.array([[1], [5]], np.uint8)}}),
        'siftflow.mat': encode_mat({'S': label.astype(np.int16), 'names': ['sky', 'tree']}),
        'context.mat': encode_mat({'LabelMap': label.astype(np.float64)}),
    }
    return files, net


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp('fuzz')


def write(folder, name, data):
    path = folder / name
    path.write_bytes(data)
    return str(path)


def test_every_seed_reads_cleanly(seeds, workdir):
    """The fuzzers start from valid files: each seed passes its reader."""
    files, _ = seeds
    assert len(io.read_net_prototxt(write(workdir, 'a.prototxt', files['net.prototxt'])).layer) == 13
    v1 = io.read_net_prototxt(write(workdir, 'a.prototxt', files['v1.prototxt']))
    assert [l.type for l in v1.layer][:2] == ['Input', 'Convolution']
    assert io.read_solver_prototxt(write(workdir, 's.prototxt', files['solver.prototxt'])).type == 'SGD'
    for name in ('caffemodel', 'v1.caffemodel', 'caffemodel.h5'):
        assert io.read_caffemodel(write(workdir, 'w.' + name, files[name])).layer
    for name in ('solverstate', 'solverstate.h5'):
        assert io.read_solverstate(write(workdir, 'w.' + name, files[name])).iter == 12
    assert voc_layers.read_rgb(write(workdir, 'i.jpg', files['jpg'])).shape == (9, 7, 3)
    assert voc_layers.read_voc_label(write(workdir, 'l.png', files['png'])).shape == (1, 9, 7)
    assert voc_layers.read_sbd_label(write(workdir, 'l.mat', files['sbd.mat'])).shape == (1, 9, 7)
    assert seg_layers.read_mat_field(write(workdir, 'l.mat', files['siftflow.mat']), 'S').shape == (9, 7)
    assert pascalcontext_layers.read_label_map(write(workdir, 'l.mat', files['context.mat'])).shape == (9, 7)


# ---------------------------------------------------------------- torchcaffe.io readers

def test_mutated_prototxt_text_parses_or_raises_format_error(seeds):
    files, _ = seeds
    text = files['net.prototxt'].decode()
    rejects(FormatError, io.parse_prototxt, text[:text.rindex('}')], caffe_pb2.NetParameter,
            match='Expected "}"')  # the last layer left open
    rejects(FormatError, io.parse_prototxt, text.replace('kernel_size: 3', 'kernel_sise: 3'),
            caffe_pb2.NetParameter, match='kernel_sise')
    rejects(FormatError, io.parse_prototxt, text.replace('num_output: 4', 'num_output: 4.5'),
            caffe_pb2.NetParameter)

    @fuzz_settings(150)
    @given(st.one_of(broken(files['net.prototxt']), broken(files['v1.prototxt'])))
    def check(data):
        text = data.decode('utf-8', 'replace')
        only(FormatError, io.parse_prototxt, text, caffe_pb2.NetParameter)
        only(FormatError, io.parse_prototxt, text, caffe_pb2.SolverParameter)
    check()


def test_mutated_prototxt_files_read_or_raise_format_error(seeds, workdir):
    files, _ = seeds
    rejects(FormatError, io.read_net_prototxt,
            write(workdir, 'net.prototxt', files['v1.prototxt'].replace(b'{', b'}', 1)))
    solver = files['solver.prototxt'].replace(b'1e-10', b'1e-1O')  # letter O, not zero
    rejects(FormatError, io.read_solver_prototxt, write(workdir, 'solver.prototxt', solver),
            match='solver.prototxt')

    @fuzz_settings(80)
    @given(st.one_of(broken(files['net.prototxt']), broken(files['v1.prototxt'])),
           broken(files['solver.prototxt']))
    def check(net, solver):
        only(FormatError, io.read_net_prototxt, write(workdir, 'net.prototxt', net))
        only(FormatError, io.read_solver_prototxt, write(workdir, 'solver.prototxt', solver))
    check()


def test_mutated_caffemodels_read_or_raise_format_error(seeds, workdir):
    files, _ = seeds
    data = files['caffemodel']
    rejects(FormatError, io.read_caffemodel, write(workdir, 'w.caffemodel', data[:len(data) // 2]))
    short = caffe_pb2.NetParameter.FromString(data)
    blob = next(layer for layer in short.layer if layer.name == 'conv').blobs[0]
    del blob.data[-1]  # a valid message whose blob lacks one of its 108 values
    rejects(FormatError, io.read_caffemodel,
            write(workdir, 'w.caffemodel', short.SerializeToString()),
            match="layer 'conv' blob 0: 107 data values")

    @fuzz_settings(120)
    @given(st.one_of(broken(files['caffemodel']), broken(files['v1.caffemodel'])))
    def check(data):
        only(FormatError, io.read_caffemodel, write(workdir, 'w.caffemodel', data))
    check()


def test_mutated_solverstates_read_or_raise_format_error(seeds, workdir):
    files, _ = seeds
    data = files['solverstate']
    rejects(FormatError, io.read_solverstate,
            write(workdir, 'w.solverstate', data[:len(data) // 2]))
    short = caffe_pb2.SolverState.FromString(data)
    del short.history[1].data[:]  # history blob 1 keeps its shape, loses its values
    rejects(FormatError, io.read_solverstate,
            write(workdir, 'w.solverstate', short.SerializeToString()), match='history')

    @fuzz_settings(80)
    @given(broken(files['solverstate']))
    def check(data):
        only(FormatError, io.read_solverstate, write(workdir, 'w.solverstate', data))
    check()


def test_mutated_hdf5_files_read_or_raise_format_error(seeds, workdir):
    files, _ = seeds
    for name, read in (('caffemodel.h5', io.read_caffemodel),
                       ('solverstate.h5', io.read_solverstate)):
        data = files[name]
        rejects(FormatError, read, write(workdir, 'w.' + name, data[:len(data) // 2]))
        rejects(FormatError, read, write(workdir, 'w.' + name, b'\x00' + data[1:]))

    @fuzz_settings(60)
    @given(broken(files['caffemodel.h5']), broken(files['solverstate.h5']))
    def check(model, state):
        only(FormatError, io.read_caffemodel, write(workdir, 'w.caffemodel.h5', model))
        only(FormatError, io.read_solverstate, write(workdir, 'w.solverstate.h5', state))
    check()


# HDF5 files whose bytes are valid but whose structure is not Caffe's: random trees
# of groups and datasets of odd types, shapes and names, and links.
H5_DTYPES = ['<f4', '<f8', '<i4', '|u1', '|b1', '<c8', 'S3', 'O', 'V4', [('a', '<f4')]]
h5_names = st.sampled_from(['0', '1', '2', '07', '10', 'x', '-1', '\u00b2', '\u0663', 'data',
                            'history', 'iter', 'current_step', 'learned_net', 'conv', 'a/b'])
h5_shapes = st.lists(st.integers(0, 3), max_size=3).map(tuple)
h5_tree = st.recursive(
    st.tuples(st.just('dataset'), st.sampled_from(range(len(H5_DTYPES))), h5_shapes)
    | st.tuples(st.just('link'), st.sampled_from(['soft', 'external', 'dangling']))
    | st.tuples(st.just('huge'), st.sampled_from(['<f4', '<i4'])),
    lambda children: st.dictionaries(h5_names, children, max_size=4),
    max_leaves=12)


def build_h5(group, tree):
    for name, node in tree.items():
        if name in group or '/' in name:
            continue
        if isinstance(node, dict):
            build_h5(group.create_group(name), node)
        elif node[0] == 'dataset':
            dtype = H5_DTYPES[node[1]]
            if dtype == 'O':
                group.create_dataset(name, data=np.array(['ab', 'c'], dtype=object),
                                     dtype=h5py.string_dtype())
            else:
                group.create_dataset(name, data=np.zeros(node[2], dtype=np.dtype(dtype)))
        elif node[0] == 'link':
            group[name] = {'soft': h5py.SoftLink('/'),
                           'external': h5py.ExternalLink('/etc/hostname.h5', '/data'),
                           'dangling': h5py.SoftLink('/nowhere')}[node[1]]
        else:  # declares 400 GB, stores nothing: must not be read into memory
            group.create_dataset(name, shape=(1 << 17, 1 << 17, 6), dtype=node[1],
                                 chunks=(1, 64, 6))


def test_odd_hdf5_structures_read_or_raise_format_error(workdir):
    path = str(workdir / 'odd.caffemodel.h5')
    with h5py.File(path, 'w') as f:  # text where a layer's blob should be
        build_h5(f, {'data': {'conv': {'0': ('dataset', H5_DTYPES.index('S3'), (2,))}}})
    rejects(FormatError, io.read_caffemodel, path, match='conv')
    path = str(workdir / 'odd.solverstate.h5')
    with h5py.File(path, 'w') as f:  # no iter
        build_h5(f, {'current_step': ('dataset', 2, (1,)), 'history': {}})
    rejects(FormatError, io.read_solverstate, path, match='iter')

    @fuzz_settings(60)
    @given(st.dictionaries(h5_names, h5_tree, max_size=5))
    def check(tree):
        path = str(workdir / 'odd.caffemodel.h5')
        with h5py.File(path, 'w') as f:
            build_h5(f, tree)
        only(FormatError, io.read_caffemodel, path)
        os.replace(path, str(workdir / 'odd.solverstate.h5'))
        only(FormatError, io.read_solverstate, str(workdir / 'odd.solverstate.h5'))
    check()


# ---------------------------------------------------------------- nets from broken files

def small_numbers(text):
    """True when every number in ``text`` is small: a net must not ask for gigabytes."""
    return all(len(d) <= 2 for d in re.findall(r'\d+', text.split('#')[0]))


def test_nets_from_mutated_prototxts_build_or_raise_caffe_error(seeds):
    files, _ = seeds
    text = files['net.prototxt'].decode().replace('bottom: "pool" top: "score"',
                                                  'bottom: "poo1" top: "score"')
    rejects(CaffeError, caffe.Net, io.parse_prototxt(text, caffe_pb2.NetParameter), caffe.TEST,
            match='poo1')

    @fuzz_settings(100)
    @given(st.one_of(mutated(files['net.prototxt']), mutated(files['v1.prototxt'])),
           st.sampled_from([caffe.TRAIN, caffe.TEST]))
    def check(data, phase):
        text = data.decode('utf-8', 'replace')
        assume(small_numbers(text))
        try:
            param = io.parse_prototxt(text, caffe_pb2.NetParameter)
        except FormatError:
            return
        only(CaffeError, caffe.Net, param, phase)
    check()


def test_mutated_caffemodels_copy_into_a_net_or_raise_caffe_error(seeds, workdir):
    files, net = seeds
    wrong = caffe_pb2.NetParameter.FromString(files['caffemodel'])
    blob = next(layer for layer in wrong.layer if layer.name == 'score').blobs[0]
    blob.shape.dim[:] = [4, 3, 1, 1]  # 12 values as before, the other way round
    rejects(CaffeError, net.copy_from, write(workdir, 'c.caffemodel', wrong.SerializeToString()),
            match='score')

    @fuzz_settings(60)
    @given(st.one_of(broken(files['caffemodel']).map(lambda data: ('c.caffemodel', data)),
                     broken(files['caffemodel.h5']).map(lambda data: ('c.caffemodel.h5', data))))
    def check(name_data):
        only(CaffeError, net.copy_from, write(workdir, *name_data))
    check()


# ---------------------------------------------------------------- data layer loaders

def test_mutated_images_load_or_raise_data_layer_error(seeds, workdir):
    files, _ = seeds
    jpg, png = files['jpg'], bytearray(files['png'])
    rejects(DataLayerError, voc_layers.read_rgb, write(workdir, 'i.jpg', jpg[:len(jpg) // 2]))
    idat = png.index(b'IDAT')
    png[idat + 8] ^= 0xFF  # a byte of the pixel data: its chunk's CRC no longer matches
    for read in (voc_layers.read_rgb, voc_layers.read_voc_label):
        rejects(DataLayerError, read, write(workdir, 'l.png', bytes(png)))

    @fuzz_settings(100)
    @given(broken(files['jpg']), broken(files['png']))
    def check(jpg, png):
        only(DataLayerError, voc_layers.read_rgb, write(workdir, 'i.jpg', jpg))
        only(DataLayerError, voc_layers.read_rgb, write(workdir, 'i.png', png))
        only(DataLayerError, voc_layers.read_voc_label, write(workdir, 'l.png', png))
    check()


def test_mutated_mat_labels_load_or_raise_data_layer_error(seeds, workdir):
    files, _ = seeds
    for name, read in (('sbd.mat', voc_layers.read_sbd_label),
                       ('siftflow.mat', lambda path: seg_layers.read_mat_field(path, 'S')),
                       ('context.mat', pascalcontext_layers.read_label_map)):
        data = files[name]
        rejects(DataLayerError, read, write(workdir, name, data[:len(data) - 40]))

    @fuzz_settings(80)
    @given(broken(files['sbd.mat']), broken(files['siftflow.mat']), broken(files['context.mat']))
    def check(sbd, sift, context):
        only(DataLayerError, voc_layers.read_sbd_label, write(workdir, 'sbd.mat', sbd))
        only(DataLayerError, seg_layers.read_mat_field, write(workdir, 'sift.mat', sift), 'S')
        only(DataLayerError, pascalcontext_layers.read_label_map,
             write(workdir, 'context.mat', context))
    check()


# ---------------------------------------------------------------- the atheris harness

def test_each_atheris_target_reads_its_seed_and_refuses_a_corrupted_one(tmp_path, capsys,
                                                                       monkeypatch):
    """tests/fuzz/fuzz_readers.py: every target's seed passes its reader, and the seed
    cut in half (text formats: with a stray closing brace) is refused with the
    target's documented error. The mat target's reader tries three loaders and
    swallows their errors, so each of those must refuse the cut file itself."""
    spec = importlib.util.spec_from_file_location(
        'fuzz_readers', os.path.join(ROOT, 'tests', 'fuzz', 'fuzz_readers.py'))
    harness = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(harness)
    monkeypatch.setattr(sys, 'path', list(sys.path))  # _targets() puts ROOT in front
    harness._targets()
    harness.make_corpus(str(tmp_path / 'corpus'))
    assert len(harness.TARGETS) == 9
    for target, (suffix, read, allowed) in harness.TARGETS.items():
        seed = (tmp_path / 'corpus' / target / 'seed').read_bytes()
        read(write(tmp_path, 'seed' + suffix, seed))
        corrupted = seed + b'}' if target in ('prototxt', 'solver') else seed[:len(seed) // 2]
        path = write(tmp_path, 'bad' + suffix, corrupted)
        if target == 'mat':
            for load in (voc_layers.read_sbd_label, pascalcontext_layers.read_label_map,
                         lambda p: seg_layers.read_mat_field(p, 'S')):
                rejects(DataLayerError, load, path)
        else:
            rejects(allowed, read, path)
    capsys.readouterr()


# ---------------------------------------------------------------- declared sizes

HOSTILE = r'''
import os, resource, struct, sys, zlib
import h5py, numpy as np
sys.path[:0] = [ROOT]
import torchcaffe as caffe
from torchcaffe import io
from torchcaffe.errors import FormatError
from torchcaffe.proto import caffe_pb2
import mat5, voc_layers
from seg_layers import DataLayerError

where = sys.argv[1]
def path(name):
    return os.path.join(where, name)

# A zlib stream inflating past the limit (lowered to 16 MB to keep this quick).
mat5.MAX_INFLATED = 1 << 24
deflate = zlib.compressobj(1)
bomb = b''.join(deflate.compress(bytes(1 << 20)) for _ in range((mat5.MAX_INFLATED >> 20) + 64))
bomb += deflate.flush()

# Readers may use this much more than now; a file that makes them allocate what it
# declares (terabytes) fails with MemoryError instead of the documented error.
size = int(open('/proc/self/statm').read().split()[0]) * os.sysconf('SC_PAGE_SIZE')
resource.setrlimit(resource.RLIMIT_AS, (size + (1 << 30), resource.getrlimit(resource.RLIMIT_AS)[1]))

def expect(error, read, *args):
    try:
        read(*args)
    except error as e:
        print('ok', type(e).__name__, str(e)[:150])
    else:
        raise SystemExit('no error from %s%r' % (read.__name__, args))

# caffemodel: shapes whose value count is huge, negative, or overflows int64 to 0
for dims in ([1 << 40, 1 << 40], [1 << 32, 1 << 32], [-2, -3], [1 << 62, 4]):
    net = caffe_pb2.NetParameter()
    blob = net.layer.add(name='conv', type='Convolution').blobs.add()
    blob.shape.dim.extend(dims)
    open(path('a.caffemodel'), 'wb').write(net.SerializeToString())
    expect(FormatError, io.read_caffemodel, path('a.caffemodel'))
# a packed float field that claims 64 GB
head = caffe_pb2.NetParameter(layer=[caffe_pb2.LayerParameter(name='x')]).SerializeToString()
blob = b'\x2a' + bytes([0x80, 0x80, 0x80, 0x80, 0x40]) + b'\0' * 64
layer = b'\x0a\x01x' + b'\x3a' + bytes([len(blob)]) + blob
open(path('b.caffemodel'), 'wb').write(b'\xa2\x06' + bytes([len(layer)]) + layer)
expect(FormatError, io.read_caffemodel, path('b.caffemodel'))

# HDF5: datasets that declare 400 GB and store nothing
with h5py.File(path('c.caffemodel.h5'), 'w') as f:
    f.create_dataset('data/conv/0', shape=(1 << 17, 1 << 17, 6), dtype='<f4', chunks=(1, 64, 6))
expect(FormatError, io.read_caffemodel, path('c.caffemodel.h5'))
with h5py.File(path('d.solverstate.h5'), 'w') as f:
    f.create_dataset('iter', shape=(1 << 37,), dtype='<i4', chunks=(1024,))
    f.create_dataset('current_step', data=[0])
    f.create_group('history')
expect(FormatError, io.read_solverstate, path('d.solverstate.h5'))

# an image claiming 40000 x 40000 pixels
from PIL import Image
import io as bytes_io
buf = bytes_io.BytesIO()
Image.new('L', (8, 8)).save(buf, format='PNG')
png = bytearray(buf.getvalue())
png[16:24] = struct.pack('>II', 40000, 40000)
png[29:33] = struct.pack('>I', zlib.crc32(bytes(png[12:29])))
open(path('e.png'), 'wb').write(bytes(png))
expect(DataLayerError, voc_layers.read_rgb, path('e.png'))

# MAT: a 100000 x 100000 double with 8 bytes of values; a compressed variable
# inflating past mat5.MAX_INFLATED
def element(kind, payload):
    return struct.pack('<II', kind, len(payload)) + payload + b'\0' * (-len(payload) % 8)
header = b'MATLAB 5.0 MAT-file'.ljust(116) + b'\0' * 8 + struct.pack('<H', 0x100) + b'IM'
matrix = (element(6, struct.pack('<II', 6, 0)) + element(5, struct.pack('<ii', 100000, 100000))
          + element(1, b'S') + element(9, b'\0' * 8))
open(path('f.mat'), 'wb').write(header + element(14, matrix))
expect(DataLayerError, voc_layers.read_sbd_label, path('f.mat'))
open(path('g.mat'), 'wb').write(header + struct.pack('<II', 15, len(bomb)) + bomb)
expect(DataLayerError, voc_layers.read_sbd_label, path('g.mat'))
'''


def test_declared_sizes_are_checked_before_allocating(tmp_path):
    """Files that declare terabytes read under RLIMIT_AS (+1 GB) fail with the documented error."""
    script = HOSTILE.replace('[ROOT]', repr([ROOT]))
    done = subprocess.run([sys.executable, '-c', script, str(tmp_path)], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count('ok ') == 10, done.stdout


# ---------------------------------------------------------------- files never run code

# Calls that turn data into code or objects: none may appear in the library and scripts.
RUNS_CODE = re.compile(r'(?<![.\w])(eval|exec)\(|import (c?pickle|marshal|shelve|dill)\b'
                       r'|torch\.load\(|allow_pickle\s*=\s*True|yaml\.(unsafe_)?load\('
                       r'|scipy\.io\.loadmat\(|io import loadmat')


def test_no_reader_in_the_repository_evaluates_or_unpickles():
    """Only ast.literal_eval; MAT files go through mat5, never scipy's compiled reader."""
    found = []
    for folder, dirs, names in os.walk(ROOT):
        dirs[:] = [d for d in dirs if not d.startswith('.') and d not in ('tests', 'out')]
        for name in names:
            if name.endswith('.py'):
                path = os.path.join(folder, name)
                with open(path, encoding='utf-8') as f:
                    for number, line in enumerate(f, 1):
                        code = line.split('#')[0]
                        if RUNS_CODE.search(code) and 'literal_eval' not in code:
                            found.append('%s:%d: %s' % (os.path.relpath(path, ROOT), number,
                                                        line.strip()))
    assert found == []


DATA_LAYERS = [(module, name) for module in ('voc_layers', 'siftflow_layers', 'nyud_layers',
                                             'pascalcontext_layers')
               for name, cls in vars(__import__(module)).items()
               if isinstance(cls, type) and issubclass(cls, seg_layers.SegDataLayer)
               and cls.__module__ == module and cls.make_loader is not
               seg_layers.SegDataLayer.make_loader]


@pytest.mark.parametrize('module, name', DATA_LAYERS)
def test_data_layers_never_evaluate_param_str(module, name, tmp_path):
    marker = tmp_path / 'ran'
    layer = getattr(__import__(module), name)()
    layer.param_str = "{'split': __import__('os').system('touch %s')}" % marker
    with pytest.raises(DataLayerError, match='literal_eval'):
        layer.setup([], [])
    assert not marker.exists()


def test_an_eps_file_named_jpg_is_not_handed_to_ghostscript(workdir):
    eps = b'%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nnewpath 0 0 moveto showpage\n'
    with pytest.raises(DataLayerError, match='formats read: JPEG'):
        voc_layers.read_rgb(write(workdir, 'eps.jpg', eps))
