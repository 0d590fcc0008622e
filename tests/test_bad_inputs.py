"""The catalogue of bad inputs: each one gets a clear error, and nothing is lost.

One row per fault, in the table ``CASES`` (after the functions that trigger the
faults). A row names the fault, the entry point that meets it (library API or
command line), what must come out and substrings the message must contain (the
file, line:column, layer, shapes):

* library rows: a specific exception type (``torchcaffe.errors``, the data layers'
  ``DataLayerError`` / ``DataFileNotFoundError``, ``download.DownloadError``, ...);
* command-line rows (``CLI``): the tool's ``main(argv)`` run in-process, or the script
  as a subprocess, prints ONE line on stderr besides torchcaffe's glog-style INFO /
  WARNING records (no traceback) and exits non-zero.

After every row, no temporary file is left anywhere under the test's folder. A row
that writes over a good file leaves ``X.expected`` (a copy of the good ``X``), which
must still equal ``X``; ``X.absent`` says no (partial) ``X`` may have been written.

The tests after the table pin the inputs accepted on purpose, and what they become:
grayscale / CMYK / RGBA images are converted to RGB (with a warning), NaN passes
through a forward as in Caffe, NaN weights load with a warning (training on them
stops with DivergedError), label 255 is ignored, not out of range.
"""
import collections
import errno
import os
import re
import shutil
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

import torchcaffe as caffe
from torchcaffe import io as cio
from torchcaffe.errors import (FormatError, LabelError, NetGraphError, NetMismatchError,
                               OutOfMemoryError, PrototxtError, ShapeError, SnapshotError, UnknownLayerError)
from torchcaffe.solver import DivergedError

import download
import infer
import nyud_layers
import pascalcontext_layers
import score
import siftflow_layers
import solve
import surgery
import training
import voc_layers
from seg_layers import DataFileNotFoundError, DataLayerError
from torchcaffe.layer_types.data import DataLayerError as DBLayerError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class CLI:
    """The expected outcome of a command-line row: one line on stderr, non-zero exit."""


class Ctx:
    """What a row's trigger gets: its own folder and pytest's monkeypatch."""

    def __init__(self, tmp, monkeypatch):
        self.tmp = str(tmp)
        self.mp = monkeypatch

    def path(self, *parts):
        return os.path.join(self.tmp, *parts)

    def write(self, name, content):
        path = self.path(name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, 'wb' if isinstance(content, bytes) else 'w') as f:
            f.write(content)
        return path


# ------------------------------------------------------------------------ nets

def input_layer(name='data', shape=(1, 3, 8, 8)):
    dims = ' '.join('dim: %d' % d for d in shape)
    return ('layer { name: "%s" type: "Input" top: "%s" input_param { shape { %s } } }\n'
            % (name, name, dims))


def conv(name, bottom, num_output=4, kernel=3, extra=''):
    return ('layer { name: "%s" type: "Convolution" bottom: "%s" top: "%s" convolution_param '
            '{ num_output: %d kernel_size: %d %s weight_filler { type: "gaussian" std: 0.1 } } }\n'
            % (name, bottom, name, num_output, kernel, extra))


def write_net(ctx, name, *layers):
    return ctx.write(name, 'name: "catalogue"\n' + ''.join(layers))


def build(ctx, *layers, name='net.prototxt', phase=caffe.TEST, weights=None):
    path = write_net(ctx, name, *layers)
    if weights is None:
        return caffe.Net(path, phase)
    return caffe.Net(path, weights, phase)


def two_bottoms(kind, shape_a, shape_b, params=''):
    return (input_layer('a', shape_a) + input_layer('b', shape_b)
            + 'layer { name: "join" type: "%s" bottom: "a" bottom: "b" top: "join" %s }\n'
            % (kind, params))


LOSS_NET = (input_layer('data', (1, 3, 4, 4)) + input_layer('label', (1, 1, 4, 4))
            + conv('score', 'data', num_output=5, kernel=1)
            + 'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "score" bottom: "label" '
              'top: "loss" loss_param { ignore_label: 255 } }\n')


def saved_model(ctx, name, layers, mutate=None):
    """A caffemodel of a net built from ``layers``; ``mutate(net_param)`` edits it first."""
    net = build(ctx, *layers, name=name + '.prototxt')
    param = net.to_proto()
    if mutate is not None:
        mutate(param)
    path = ctx.path(name)
    cio.write_caffemodel(param, path)
    return path


def good_bytes(ctx, name):
    """A small valid caffemodel's bytes, written as ``name``; returns (path, bytes)."""
    path = saved_model(ctx, name, [input_layer(), conv('conv', 'data')])
    with open(path, 'rb') as f:
        return path, f.read()


# ------------------------------------------------------------------------ prototxt rows

def prototxt_syntax(ctx):
    path = ctx.write('syntax.prototxt', 'name: "x"\nlayer {\n  name "a"\n}\n')
    caffe.Net(path, caffe.TEST)


def prototxt_unknown_field(ctx):
    path = ctx.write('field.prototxt', 'name: "x"\n' + input_layer()
                     + 'layer {\n  name: "r" type: "ReLU"\n  bottm: "data" top: "r"\n}\n')
    caffe.Net(path, caffe.TEST)


def prototxt_unknown_enum(ctx):
    path = ctx.write('enum.prototxt', 'name: "x"\n' + input_layer()
                     + 'layer { name: "p" type: "Pooling" bottom: "data" top: "p"\n'
                       '  pooling_param { pool: MEDIAN kernel_size: 2 } }\n')
    caffe.Net(path, caffe.TEST)


def prototxt_not_utf8(ctx):
    path = ctx.write('latin1.prototxt', b'name: "caf\xe9"\n')
    caffe.Net(path, caffe.TEST)


def prototxt_missing(ctx):
    caffe.Net(ctx.path('absent.prototxt'), caffe.TEST)


def solver_prototxt_syntax(ctx):
    path = ctx.write('solver.prototxt', 'base_lr: 0.1\nlr_policy "fixed"\n')
    caffe.SGDSolver(path)


def unknown_layer_type(ctx):
    build(ctx, input_layer(), 'layer { name: "c" type: "Convolutoin" bottom: "data" top: "c" }\n')


def bottom_not_produced(ctx):
    build(ctx, input_layer(), conv('conv', 'dta'))


def duplicate_top(ctx):
    build(ctx, input_layer(), conv('conv', 'data'),
          'layer { name: "relu" type: "ReLU" bottom: "data" top: "conv" }\n')


def wrong_bottom_count(ctx):
    build(ctx, input_layer(),
          'layer { name: "crop" type: "Crop" bottom: "data" top: "crop" }\n')


# ------------------------------------------------------------------------ shape rows

def conv_group_mismatch(ctx):
    build(ctx, input_layer(), conv('conv', 'data', extra='group: 2'))


def conv_channels_after_reshape(ctx):
    net = build(ctx, input_layer(), conv('conv', 'data'))
    net.blobs['data'].reshape(1, 4, 8, 8)
    net.forward()


def conv_kernel_too_large(ctx):
    build(ctx, input_layer(), conv('conv', 'data', kernel=9))


def deconv_channels_after_reshape(ctx):
    net = build(ctx, input_layer(shape=(1, 3, 4, 4)),
                'layer { name: "up" type: "Deconvolution" bottom: "data" top: "up" '
                'convolution_param { num_output: 3 kernel_size: 4 stride: 2 } }\n')
    net.blobs['data'].reshape(1, 5, 4, 4)
    net.reshape()


def eltwise_shapes(ctx):
    build(ctx, two_bottoms('Eltwise', (1, 3, 8, 8), (1, 3, 8, 6)))


def concat_shapes(ctx):
    build(ctx, two_bottoms('Concat', (1, 3, 8, 8), (1, 2, 6, 8)))


def crop_too_small(ctx):
    build(ctx, two_bottoms('Crop', (1, 3, 8, 8), (1, 3, 10, 10), 'crop_param { axis: 2 }'))


def crop_offset_too_far(ctx):
    build(ctx, two_bottoms('Crop', (1, 3, 8, 8), (1, 3, 6, 6),
                           'crop_param { axis: 2 offset: 3 }'))


def softmax_label_count(ctx):
    build(ctx, input_layer('score', (1, 5, 8, 8)), input_layer('label', (1, 1, 8, 6)),
          'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "score" bottom: "label" '
          'top: "loss" }\n')


def pool_kernel_too_large(ctx):
    build(ctx, input_layer(shape=(1, 3, 2, 2)),
          'layer { name: "pool" type: "Pooling" bottom: "data" top: "pool" '
          'pooling_param { pool: MAX kernel_size: 5 pad: 1 } }\n')


def pool_pad_not_below_kernel(ctx):
    build(ctx, input_layer(),
          'layer { name: "pool" type: "Pooling" bottom: "data" top: "pool" '
          'pooling_param { pool: MAX kernel_size: 2 pad: 2 stride: 2 } }\n')


def forward_input_shape(ctx):
    net = build(ctx, input_layer(), conv('conv', 'data'))
    net.forward(data=np.zeros((1, 3, 4, 4), np.float32))


# Sizes past any machine's address space (2**47 bytes), so that the allocation fails at
# once whatever the kernel's overcommit policy; the 1x3x100000x100000 input
# (120 GB) gives the same error on a machine with less memory than that.
HUGE_INPUT = (1, 3, 10 ** 7, 10 ** 7)


def input_too_large_for_memory(ctx):
    net = build(ctx, input_layer('data', HUGE_INPUT), conv('conv', 'data'))
    net.forward()


def conv_num_output_too_large(ctx):
    build(ctx, input_layer('data', (1, 3, 100, 100)),
          conv('conv', 'data', num_output=2000000000, kernel=100))


def cuda_out_of_memory_in_a_layer(ctx):
    """torch's CUDA allocator error, raised where a GPU would raise it (in the layer)."""
    net = build(ctx, input_layer(), conv('conv', 'data'))
    layer = net.layer_dict['conv']
    impl = getattr(layer, 'layer', layer)

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError('CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 '
                                     'has a total capacity of 139.81 GiB')
    ctx.mp.setattr(impl, 'forward', oom)
    net.forward()


def label_out_of_range(ctx):
    net = build(ctx, LOSS_NET)
    label = np.zeros((1, 1, 4, 4), np.float32)
    label[0, 0, 1, 2] = 7
    net.forward(data=np.zeros((1, 3, 4, 4), np.float32), label=label)


# ------------------------------------------------------------------------ weights rows

def caffemodel_empty(ctx):
    caffe.Net(write_net(ctx, 'n.prototxt', input_layer(), conv('conv', 'data')),
              ctx.write('empty.caffemodel', b''), caffe.TEST)


def caffemodel_truncated(ctx):
    path, data = good_bytes(ctx, 'cut.caffemodel')
    ctx.write('cut.caffemodel', data[:len(data) // 2 + 3])
    build(ctx, input_layer(), conv('conv', 'data'), weights=path)


def caffemodel_not_protobuf(ctx):
    png = ctx.path('picture.caffemodel')
    Image.new('RGB', (4, 4)).save(png, format='PNG')
    build(ctx, input_layer(), conv('conv', 'data'), weights=png)


def caffemodel_is_solverstate(ctx):
    state = caffe.caffe_pb2.SolverState(iter=3, learned_net='x.caffemodel')
    path = ctx.path('state_as_model.caffemodel')
    cio.write_solverstate(state, path)
    build(ctx, input_layer(), conv('conv', 'data'), weights=path)


def caffemodel_value_count(ctx):
    def drop_a_value(param):
        blob = param.layer[1].blobs[0]
        values = list(blob.data)[:-1]
        del blob.data[:]
        blob.data.extend(values)
    path = saved_model(ctx, 'short.caffemodel', [input_layer(), conv('conv', 'data')],
                       drop_a_value)
    build(ctx, input_layer(), conv('conv', 'data'), weights=path)


def h5_not_hdf5(ctx):
    path = ctx.write('junk.caffemodel.h5', b'not an HDF5 file at all')
    build(ctx, input_layer(), conv('conv', 'data'), weights=path)


def h5_missing_data_group(ctx):
    path = ctx.path('nodata.caffemodel.h5')
    with h5py.File(path, 'w') as f:
        f.create_group('weights')
    build(ctx, input_layer(), conv('conv', 'data'), weights=path)


def h5_missing_blob(ctx):
    path = ctx.path('oneblob.caffemodel.h5')
    with h5py.File(path, 'w') as f:
        f.create_dataset('data/conv/0', data=np.zeros((4, 3, 3, 3), np.float32))
    build(ctx, input_layer(), conv('conv', 'data'), weights=path)


def copy_from_blob_count(ctx):
    path = saved_model(ctx, 'nobias.caffemodel',
                       [input_layer(), conv('conv', 'data', extra='bias_term: false')])
    build(ctx, input_layer(), conv('conv', 'data'), weights=path)


def ip_layers(num_input):
    return [input_layer(shape=(1, num_input)),
            'layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" '
            'inner_product_param { num_output: 10 } }\n']


def copy_from_ip_shape(ctx):
    path = saved_model(ctx, 'fc100.caffemodel', ip_layers(100))
    build(ctx, *ip_layers(192), weights=path)


def deconv_layer(num_output):
    return [input_layer(shape=(1, 3, 4, 4)),
            'layer { name: "up" type: "Deconvolution" bottom: "data" top: "up" '
            'convolution_param { num_output: %d kernel_size: 4 stride: 2 bias_term: false } }\n'
            % num_output]


def copy_from_deconv_shape(ctx):
    path = saved_model(ctx, 'up21.caffemodel', deconv_layer(21))
    build(ctx, *deconv_layer(60), weights=path)


def weights_missing(ctx):
    build(ctx, input_layer(), conv('conv', 'data'), weights=ctx.path('absent.caffemodel'))


# ------------------------------------------------------------------------ solver rows

TRAIN_NET = LOSS_NET.replace('num_output: 5', 'num_output: 2')


def make_solver(ctx, net_text=TRAIN_NET, extra=''):
    ctx.write('train.prototxt', 'name: "t"\n' + net_text)
    solver = ctx.write('solver.prototxt', textwrap.dedent('''\
        net: "%s"
        base_lr: 0.01
        lr_policy: "fixed"
        momentum: 0.9
        max_iter: 100
        display: 0
        snapshot_prefix: "%s"
        %s''') % (ctx.path('train.prototxt'), ctx.path('snap', 'train'), extra))
    os.makedirs(ctx.path('snap'), exist_ok=True)
    return caffe.SGDSolver(solver)


def trained_state(ctx):
    """A solverstate of the default train net after one iteration; returns its path."""
    solver = make_solver(ctx)
    solver.step(1)
    return solver.snapshot()[1]


def solverstate_empty(ctx):
    make_solver(ctx).restore(ctx.write('empty.solverstate', b''))


def solverstate_truncated(ctx):
    path = trained_state(ctx)
    with open(path, 'rb') as f:
        data = f.read()
    make_solver(ctx).restore(ctx.write('cut.solverstate', data[:len(data) - 5]))


def solverstate_is_caffemodel(ctx):
    path, _ = good_bytes(ctx, 'model.solverstate')
    make_solver(ctx).restore(path)


def solverstate_h5_missing_history(ctx):
    path = ctx.path('nohistory.solverstate.h5')
    with h5py.File(path, 'w') as f:
        f.create_dataset('iter', data=np.array([4], np.int32))
        f.create_dataset('current_step', data=np.array([0], np.int32))
    make_solver(ctx).restore(path)


def solverstate_other_net_count(ctx):
    path = trained_state(ctx)
    solver = make_solver(ctx, TRAIN_NET.replace('kernel_size: 1',
                                                'kernel_size: 1 bias_term: false'))
    try:
        solver.restore(path)
    finally:
        assert solver.iter == 0  # nothing changed


def solverstate_other_net_shape(ctx):
    path = trained_state(ctx)
    solver = make_solver(ctx, TRAIN_NET.replace('num_output: 2', 'num_output: 3'))
    try:
        solver.restore(path)
    finally:
        assert solver.iter == 0 and solver.history[0].shape == (3, 3, 1, 1)


def nan_weights_diverge(ctx):
    solver = make_solver(ctx)
    solver.net.params['score'][0].data[...] = np.nan
    solver.step(1)


def snapshot_prefix_unwritable_setup(ctx):
    ctx.write('blocker', 'a file where a folder should be')
    ctx.write('train.prototxt', 'name: "t"\n' + TRAIN_NET)
    path = ctx.write('solver.prototxt', 'net: "%s"\nbase_lr: 0.1\nlr_policy: "fixed"\n'
                     'snapshot: 10\nsnapshot_prefix: "%s"\n'
                     % (ctx.path('train.prototxt'), ctx.path('blocker', 'train')))
    caffe.SGDSolver(path)


class _FullDisk:
    """A file whose writes store half the bytes, then fail with ENOSPC."""

    def __init__(self, f):
        self.f = f

    def write(self, data):
        self.f.write(data[:len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def fill_the_disk(ctx):
    """From now on every file torchcaffe.io writes hits a full disk."""
    def full_open(path, mode='r', *args, **kwargs):
        f = open(path, mode, *args, **kwargs)
        return _FullDisk(f) if any(m in mode for m in 'wax') else f
    ctx.mp.setattr(cio, 'open', full_open, raising=False)


def snapshot_disk_full(ctx):
    solver = make_solver(ctx)
    solver.step(1)
    model, state = solver.snapshot()
    for path in (model, state):
        shutil.copy(path, path + '.expected')
    solver.step(1)
    for path in (model, state):
        ctx.write(path.replace('_iter_1', '_iter_2') + '.absent', '')
    fill_the_disk(ctx)
    solver.snapshot()


def snapshot_h5_fsync_fails(ctx):
    solver = make_solver(ctx, extra='snapshot_format: HDF5\n')
    solver.step(1)
    model, state = solver.snapshot()
    for path in (model, state):
        shutil.copy(path, path + '.expected')
    solver.net.params['score'][0].data[...] += 1  # a new snapshot would differ

    def fsync_fails(path):
        raise OSError(errno.EIO, os.strerror(errno.EIO))
    ctx.mp.setattr(cio, '_fsync', fsync_fails)
    solver.snapshot()  # the same iteration: it would replace the files


def save_over_good_disk_full(ctx):
    path, data = good_bytes(ctx, 'good.caffemodel')
    ctx.write('good.caffemodel.expected', data)
    net = build(ctx, input_layer(), conv('conv', 'data'), name='other.prototxt')
    fill_the_disk(ctx)
    net.save(path)


# ------------------------------------------------------------------------ data trees

def save_rgb(path, size, mode='RGB', fmt='JPEG'):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    h, w = size
    rgb = np.random.RandomState(h * w).randint(0, 256, (h, w, 3)).astype(np.uint8)
    Image.fromarray(rgb).convert(mode).save(path, format=fmt)


def save_label(path, size, value=0, mode='L'):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.full(size, value, np.uint8)).convert(mode).save(path, format='PNG')


def make_voc(ctx, ids=('a',), size=(4, 5), split='val'):
    voc = ctx.path('VOC2011')
    for i in ids:
        save_rgb(os.path.join(voc, 'JPEGImages', i + '.jpg'), size)
        save_label(os.path.join(voc, 'SegmentationClass', i + '.png'), size)
    ctx.write(os.path.join('VOC2011', 'ImageSets', 'Segmentation', split + '.txt'),
              ''.join(i + '\n' for i in ids))
    return voc


def make_sbd(ctx, ids=('a',), size=(4, 5), split='val', field='GTcls'):
    sbd = ctx.path('sbdd', 'dataset')
    for i in ids:
        save_rgb(os.path.join(sbd, 'img', i + '.jpg'), size)
        os.makedirs(os.path.join(sbd, 'cls'), exist_ok=True)
        seg = np.zeros(size, np.uint8)
        scipy.io.savemat(os.path.join(sbd, 'cls', i + '.mat'),
                         {field: {'Segmentation': seg, 'Boundaries': 0}})
    ctx.write(os.path.join('sbdd', 'dataset', split + '.txt'), ''.join(i + '\n' for i in ids))
    return sbd


def run_layer(cls, ntop=2, param_str=None, **params):
    """Set a data layer up as a net does, then one forward; closes it."""
    params.setdefault('prefetch', False)
    layer = cls()
    layer.param_str = param_str or repr(params)
    layer.phase = caffe.TEST
    top = [caffe.Blob() for _ in range(ntop)]
    try:
        layer.setup([], top)
        layer.reshape([], top)
        layer.forward([], top)
    finally:
        layer.close()
    return layer, top


def voc(ctx, voc_dir, split='val', **params):
    return run_layer(voc_layers.VOCSegDataLayer, voc_dir=voc_dir, split=split,
                     mean=voc_layers.MEAN_BGR, **params)


def voc_missing_dir(ctx):
    voc(ctx, ctx.path('VOCdevkit', 'VOC2011'))


def voc_missing_split(ctx):
    voc(ctx, make_voc(ctx), split='seg11valid')


def voc_empty_split(ctx):
    root = make_voc(ctx)
    ctx.write(os.path.join('VOC2011', 'ImageSets', 'Segmentation', 'val.txt'), '\n  \n')
    voc(ctx, root)


def voc_missing_image(ctx):
    root = make_voc(ctx, ids=('a', 'gone'))
    os.remove(os.path.join(root, 'JPEGImages', 'gone.jpg'))
    voc(ctx, root)


def voc_missing_label(ctx):
    root = make_voc(ctx, ids=('a', 'nolabel'))
    os.remove(os.path.join(root, 'SegmentationClass', 'nolabel.png'))
    voc(ctx, root)


def voc_label_size(ctx):
    root = make_voc(ctx)
    save_label(os.path.join(root, 'SegmentationClass', 'a.png'), (4, 4))
    voc(ctx, root)


def voc_rgb_label(ctx):
    root = make_voc(ctx)
    save_label(os.path.join(root, 'SegmentationClass', 'a.png'), (4, 5), mode='RGB')
    voc(ctx, root)


def voc_truncated_jpeg(ctx):
    root = make_voc(ctx, size=(40, 50))
    path = os.path.join(root, 'JPEGImages', 'a.jpg')
    with open(path, 'rb') as f:
        data = f.read()
    ctx.write(path, data[:len(data) // 3])
    voc(ctx, root)


def voc_sixteen_bit_image(ctx):
    root = make_voc(ctx)
    Image.fromarray(np.zeros((4, 5), np.uint16)).save(
        os.path.join(root, 'JPEGImages', 'a.jpg'), format='PNG')
    voc(ctx, root)


def voc_misspelt_key(ctx):
    voc(ctx, make_voc(ctx), randomise=False)


def voc_infinite_mean(ctx):
    # 1e999 is a literal that reads as inf (nan and inf themselves are not literals).
    run_layer(voc_layers.VOCSegDataLayer, param_str="{'voc_dir': %r, 'split': 'val', "
              "'mean': (1e999, 116.7, 122.7), 'prefetch': False}" % make_voc(ctx))


def voc_label_beyond_classes(ctx):
    root = make_voc(ctx)
    save_label(os.path.join(root, 'SegmentationClass', 'a.png'), (4, 5), value=30, mode='P')
    param_str = repr(dict(voc_dir=root, split='val', mean=voc_layers.MEAN_BGR, prefetch=False))
    net = build(ctx, 'layer { name: "data" type: "Python" top: "data" top: "label" '
                     'python_param { module: "voc_layers" layer: "VOCSegDataLayer" '
                     'param_str: "%s" } }\n' % param_str,
                conv('score', 'data', num_output=21, kernel=1),
                'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "score" bottom: "label" '
                'top: "loss" loss_param { ignore_label: 255 } }\n', phase=caffe.TRAIN)
    net.forward()


def sbd(ctx, sbd_dir, split='val'):
    return run_layer(voc_layers.SBDDSegDataLayer, sbdd_dir=sbd_dir, split=split,
                     mean=voc_layers.MEAN_BGR)


def sbd_mat_without_gtcls(ctx):
    sbd(ctx, make_sbd(ctx, field='GTinst'))


def sbd_mat_garbage(ctx):
    root = make_sbd(ctx)
    ctx.write(os.path.join(root, 'cls', 'a.mat'), b'MATLAB? no')
    sbd(ctx, root)


CAT = siftflow_layers.CATEGORY_DIR


def make_siftflow(ctx, sem=1, geo=1, field='S', size=(4, 5)):
    root = ctx.path('sift-flow')
    save_rgb(os.path.join(root, 'Images', CAT, 'coast1.jpg'), size)
    for folder, value in (('SemanticLabels', sem), ('GeoLabels', geo)):
        os.makedirs(os.path.join(root, folder, CAT), exist_ok=True)
        scipy.io.savemat(os.path.join(root, folder, CAT, 'coast1.mat'),
                         {field: np.full(size, value, np.float64)})
    ctx.write(os.path.join('sift-flow', 'test.txt'), 'coast1\n')
    return root


def siftflow(ctx, root):
    run_layer(siftflow_layers.SIFTFlowSegDataLayer, ntop=3, siftflow_dir=root, split='test')


def siftflow_missing_dir(ctx):
    siftflow(ctx, ctx.path('no-sift-flow'))


def siftflow_missing_label_folder(ctx):
    root = make_siftflow(ctx)
    shutil.rmtree(os.path.join(root, 'GeoLabels'))
    siftflow(ctx, root)


def siftflow_mat_without_s(ctx):
    siftflow(ctx, make_siftflow(ctx, field='L'))


def siftflow_semantic_out_of_range(ctx):
    siftflow(ctx, make_siftflow(ctx, sem=40))


def make_nyud(ctx, depth=1000, depth_mode='I;16', size=(4, 5)):
    root = ctx.path('nyud')
    save_rgb(os.path.join(root, 'data', 'images', 'img_5001.png'), size, fmt='PNG')
    save_rgb(os.path.join(root, 'data', 'hha', 'img_5001.png'), size, fmt='PNG')
    os.makedirs(os.path.join(root, 'data', 'depth'))
    d = np.full(size, depth, np.uint16 if depth_mode == 'I;16' else np.uint8)
    Image.fromarray(d).save(os.path.join(root, 'data', 'depth', 'img_5001.png'))
    os.makedirs(os.path.join(root, 'segmentation'))
    scipy.io.savemat(os.path.join(root, 'segmentation', 'img_5001.mat'),
                     {'segmentation': np.ones(size, np.uint8)})
    ctx.write(os.path.join('nyud', 'test.txt'), '5001\n')
    return root


def nyud(ctx, root, tops=('color', 'depth', 'label')):
    run_layer(nyud_layers.NYUDSegDataLayer, ntop=len(tops), nyud_dir=root, split='test',
              tops=list(tops))


def nyud_missing_split(ctx):
    root = make_nyud(ctx)
    os.remove(os.path.join(root, 'test.txt'))
    nyud(ctx, root)


def nyud_zero_depth(ctx):
    nyud(ctx, make_nyud(ctx, depth=0))


def nyud_eight_bit_depth(ctx):
    nyud(ctx, make_nyud(ctx, depth=200, depth_mode='L'))


def nyud_unknown_top(ctx):
    nyud(ctx, make_nyud(ctx), tops=('color', 'normals'))


def make_context(ctx, field='LabelMap', size=(4, 5)):
    voc_dir = ctx.path('pascal')
    save_rgb(os.path.join(voc_dir, 'VOC2010', 'JPEGImages', '2008_000002.jpg'), size)
    ctx.write(os.path.join('pascal', 'VOC2010', 'ImageSets', 'Main', 'val.txt'),
              '2008_000002\n')
    context = ctx.path('pascal-context')
    os.makedirs(os.path.join(context, 'trainval'))
    for name in ('classes-400.txt', 'classes-59.txt'):
        shutil.copy(os.path.join(ROOT, 'data', 'pascal-context', name), context)
    scipy.io.savemat(os.path.join(context, 'trainval', '2008_000002.mat'),
                     {field: np.ones(size, np.uint16)})
    return voc_dir, context


def context_layer(ctx, voc_dir, context_dir):
    run_layer(pascalcontext_layers.PASCALContextSegDataLayer, voc_dir=voc_dir,
              context_dir=context_dir, split='val')


def context_missing_context_dir(ctx):
    voc_dir, context = make_context(ctx)
    context_layer(ctx, voc_dir, context + '-missing')


def context_mat_without_labelmap(ctx):
    context_layer(ctx, *make_context(ctx, field='Labels'))


def context_missing_class_lists(ctx):
    voc_dir, context = make_context(ctx)
    os.remove(os.path.join(context, 'classes-59.txt'))
    context_layer(ctx, voc_dir, context)


# ------------------------------------------------------------------------ downloads

class _Response:
    """What urllib returns, serving ``body``; reads fail after ``cut`` bytes."""

    def __init__(self, body, cut=None):
        self.body, self.cut, self.pos = body, cut, 0
        self.status, self.reason, self.url = 200, 'OK', 'http://mirror.test/w.caffemodel'
        self.headers = {'Content-Length': str(len(body))}

    def read(self, n):
        if self.cut is not None and self.pos >= self.cut:
            raise ConnectionResetError(errno.ECONNRESET, 'Connection reset by peer')
        end = len(self.body) if self.cut is None else min(self.pos + n, self.cut)
        block = self.body[self.pos:min(end, self.pos + n)]
        self.pos += len(block)
        return block

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


GOOD_WEIGHTS = b'good weights ' * 100


def model_folder(ctx, body, cut=None, record=True):
    """A model folder holding good weights (and their checksum); the 'server' sends ``body``."""
    folder = ctx.path('model')
    os.makedirs(folder)
    ctx.write(os.path.join('model', 'caffemodel-url'), 'http://mirror.test/w.caffemodel\n')
    ctx.write(os.path.join('model', 'w.caffemodel'), GOOD_WEIGHTS)
    ctx.write(os.path.join('model', 'w.caffemodel.expected'), GOOD_WEIGHTS)
    if record:
        download.write_checksum(os.path.join(folder, 'caffemodel-sha256'), 'w.caffemodel',
                                download.sha256_file(os.path.join(folder, 'w.caffemodel')),
                                len(GOOD_WEIGHTS))
    ctx.mp.setattr(download, '_open', lambda url, start, timeout: _Response(body, cut))
    return folder


def download_interrupted(ctx):
    folder = model_folder(ctx, GOOD_WEIGHTS.replace(b'good', b'next'), cut=300, record=False)
    download.download(folder, force=True, stream=False)


def download_checksum_mismatch(ctx):
    folder = model_folder(ctx, b'x' * len(GOOD_WEIGHTS))
    ctx.write(os.path.join('model', 'w.caffemodel.part.absent'), '')  # the bad bytes go
    download.download(folder, force=True, stream=False)


def download_no_url_file(ctx):
    os.makedirs(ctx.path('no-url'))
    download.download(ctx.path('no-url'), stream=False)


# ------------------------------------------------------------------------ databases

def small_database(ctx, name, backend='lmdb', count=40, size=(16, 16)):
    """A database of ``count`` random images made by convert_imageset; returns its path."""
    from torchcaffe.tools import convert_imageset
    rng = np.random.default_rng(0)
    os.makedirs(ctx.path('img'), exist_ok=True)
    lines = []
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, size + (3,), dtype=np.uint8)).save(
            ctx.path('img', '%d.png' % i))
        lines.append('img/%d.png %d\n' % (i, i % 10))
    list_file = ctx.write('list.txt', ''.join(lines))
    out = ctx.path(name)
    assert convert_imageset.main(['--backend', backend, ctx.tmp + '/', list_file, out]) == 0
    return out


def data_layer(ctx, source, backend):
    return build(ctx, 'layer { name: "data" type: "Data" top: "data" top: "label" data_param '
                 '{ source: "%s" backend: %s batch_size: 2 } }\n' % (source, backend),
                 phase=caffe.TRAIN)


def lmdb_cut_in_half(ctx):
    out = small_database(ctx, 'train_lmdb')
    data = os.path.join(out, 'data.mdb')
    os.truncate(data, os.path.getsize(data) // 2)  # mapped, it would die of SIGBUS
    return out


def lmdb_truncated(ctx):
    data_layer(ctx, lmdb_cut_in_half(ctx), 'LMDB')


def leveldb_table_truncated(ctx):
    import plyvel
    out = small_database(ctx, 'train_leveldb', 'leveldb')
    d = plyvel.DB(out)
    d.compact_range()  # the records into a table file
    d.close()
    table = [f for f in os.listdir(out) if f.endswith('.ldb')][0]
    os.truncate(os.path.join(out, table), os.path.getsize(os.path.join(out, table)) // 2)
    data_layer(ctx, out, 'LEVELDB')


def leveldb_log_checksum(ctx):
    out = small_database(ctx, 'train_leveldb', 'leveldb')
    log = [f for f in os.listdir(out) if f.endswith('.log')][0]
    with open(os.path.join(out, log), 'r+b') as f:
        f.seek(os.path.getsize(os.path.join(out, log)) // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    data_layer(ctx, out, 'LEVELDB')


def hdf5_data_truncated(ctx):
    path = ctx.path('train.h5')
    with h5py.File(path, 'w') as f:
        f['data'] = np.zeros((4, 3, 8, 8), np.float32)
        f['label'] = np.zeros(4, np.float32)
    os.truncate(path, os.path.getsize(path) // 2)
    source = ctx.write('h5list.txt', path + '\n')
    build(ctx, 'layer { name: "h5" type: "HDF5Data" top: "data" top: "label" '
          'hdf5_data_param { source: "%s" batch_size: 2 } }\n' % source, phase=caffe.TRAIN)


def caffemodel_h5_truncated(ctx):
    net = build(ctx, input_layer(), conv('conv', 'data'), name='h5net.prototxt')
    path = ctx.path('cut.caffemodel.h5')
    net.save_hdf5(path)
    os.truncate(path, os.path.getsize(path) // 2)
    build(ctx, input_layer(), conv('conv', 'data'), name='h5net.prototxt', weights=path)


def cli_compute_image_mean_truncated_lmdb(ctx):
    from torchcaffe.tools import compute_image_mean
    out = lmdb_cut_in_half(ctx)
    ctx.write('mean.binaryproto.absent', '')
    return compute_image_mean.main, [out, ctx.path('mean.binaryproto')]


def cli_convert_imageset_file_size_limit(ctx):
    small_database(ctx, 'first_lmdb', count=120, size=(64, 64))  # 1.4 MB of records
    ctx.write('full_lmdb.absent', '')
    # a full disk, for real: writes past 512 KB fail with EFBIG (SIGXFSZ ignored)
    limit = ('import resource, runpy, signal, sys\n'
             'signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n'
             'resource.setrlimit(resource.RLIMIT_FSIZE, (524288, 524288))\n'
             'sys.argv = sys.argv[1:]\n'
             'runpy.run_path(sys.argv[0], run_name="__main__")\n')
    return [sys.executable, '-c', limit, os.path.join(ROOT, 'tools', 'convert_imageset.py'),
            ctx.tmp + '/', ctx.path('list.txt'), ctx.path('full_lmdb')]


# ------------------------------------------------------------------------ command lines

def cli_score_missing_prototxt(ctx):
    return score.main, [ctx.path('absent_val.prototxt'), ctx.path('w.caffemodel')]


def cli_score_empty_weights(ctx):
    net = write_net(ctx, 'val.prototxt', input_layer(), conv('score', 'data'))
    return score.main, [net, ctx.write('empty.caffemodel', b'')]


def cli_score_missing_pred_dir(ctx):
    return score.main, ['--pred-dir', ctx.path('no_preds'), '--gt-dir', ctx.path('gt'),
                        '--classes', '21']


def cli_score_gt_label_out_of_range(ctx):
    save_label(ctx.path('preds', 'a.png'), (4, 5), value=1)
    gt = np.zeros((4, 5), np.uint8)
    gt[0, :3] = 100  # not a class of 21, not the void 255
    gt[1, 0] = 255
    os.makedirs(ctx.path('gt'))
    Image.fromarray(gt).save(ctx.path('gt', 'a.png'), format='PNG')
    return score.main, ['--pred-dir', ctx.path('preds'), '--gt-dir', ctx.path('gt'),
                        '--classes', '21']


def cli_score_net_too_large_for_memory(ctx):
    net = write_net(ctx, 'val.prototxt', input_layer('data', (1, 3, 100, 100)),
                    conv('score', 'data', num_output=2000000000, kernel=100))
    return score.main, [net, ctx.write('w.caffemodel', b'')]


def cli_infer_missing_deploy(ctx):
    save_rgb(ctx.path('images', 'x.jpg'), (4, 4))
    return infer.main, [ctx.path('absent_deploy.prototxt'), ctx.path('w.caffemodel'),
                        ctx.path('images'), '--out', ctx.path('out')]


def cli_infer_no_images(ctx):
    os.makedirs(ctx.path('empty_images'))
    return infer.main, [ctx.path('deploy.prototxt'), ctx.path('w.caffemodel'),
                        ctx.path('empty_images'), '--out', ctx.path('out')]


def cli_surgery_missing_weights(ctx):
    return surgery.main, ['vgg16-fcn', '--weights', ctx.path('absent_vgg16.caffemodel'),
                          '--out', ctx.path('fcn.caffemodel')]


def cli_solve_unknown_folder(ctx):
    return solve.main, ['voc-fcn64s']


def cli_solve_no_folder(ctx):
    return solve.main, []


def cli_download_not_a_model_folder(ctx):
    os.makedirs(ctx.path('plain'))
    return download.main, [ctx.path('plain')]


def cli_train_missing_weights(ctx):
    make_solver(ctx)
    return (lambda argv: training.main(ctx.tmp, None, argv)), [
        '--weights', ctx.path('absent_prev.caffemodel')]


def cli_train_resume_other_net(ctx):
    path = trained_state(ctx)
    ctx.write('train.prototxt', 'name: "t"\n' + TRAIN_NET.replace('num_output: 2',
                                                                   'num_output: 3'))
    return (lambda argv: training.main(ctx.tmp, None, argv)), ['--resume', path]


def subprocess_solve(ctx):
    return [sys.executable, os.path.join(ROOT, 'solve.py'), 'voc-fcn64s']


# ------------------------------------------------------------------------ the table

Case = collections.namedtuple('Case', 'id fault entry error expect trigger')

CASES = [
    # --- prototxt and net definitions
    Case('prototxt-syntax-error', 'a field without its colon', 'Net(prototxt)',
         PrototxtError, ['syntax.prototxt:3:'], prototxt_syntax),
    Case('prototxt-unknown-field', 'misspelt field bottm', 'Net(prototxt)',
         PrototxtError, ['field.prototxt:5:3', 'bottm'], prototxt_unknown_field),
    Case('prototxt-unknown-enum', 'pool: MEDIAN', 'Net(prototxt)',
         PrototxtError, ['enum.prototxt:4:25', 'MEDIAN'], prototxt_unknown_enum),
    Case('prototxt-not-utf8', 'Latin-1 bytes', 'Net(prototxt)',
         FormatError, ['latin1.prototxt', 'UTF-8'], prototxt_not_utf8),
    Case('prototxt-missing', 'no such file', 'Net(prototxt)',
         FileNotFoundError, ['absent.prototxt'], prototxt_missing),
    Case('solver-prototxt-syntax-error', 'a field without its colon', 'SGDSolver(prototxt)',
         PrototxtError, ['solver.prototxt:2:'], solver_prototxt_syntax),
    Case('unknown-layer-type', 'type "Convolutoin"', 'Net(prototxt)',
         UnknownLayerError, ["'c'", 'Convolutoin', 'known types', 'Convolution, Crop'],
         unknown_layer_type),
    Case('bottom-not-produced', 'bottom "dta" that no layer makes', 'Net(prototxt)',
         NetGraphError, ["'conv'", "'dta'", 'not produced'], bottom_not_produced),
    Case('duplicate-top', 'two layers write top "conv" (not in place)', 'Net(prototxt)',
         NetGraphError, ["'relu'", "'conv'", 'multiple sources'], duplicate_top),
    Case('wrong-bottom-count', 'Crop with one bottom', 'Net(prototxt)',
         NetGraphError, ["'crop'", 'takes 2 bottom'], wrong_bottom_count),
    # --- shapes, at every layer kind
    Case('conv-group-mismatch', '3 channels into group 2', 'Net(prototxt)',
         ShapeError, ["'conv'", 'group 2', '(1, 3, 8, 8)'], conv_group_mismatch),
    Case('conv-channels-changed', 'input reshaped to 4 channels after setup', 'Net.forward',
         ShapeError, ["'conv'", '(1, 4, 8, 8)', '(4, 4, 3, 3)', '(4, 3, 3, 3)'],
         conv_channels_after_reshape),
    Case('conv-kernel-too-large', 'kernel 9 on 8 x 8', 'Net(prototxt)',
         ShapeError, ["'conv'", 'kernel 9', '(1, 3, 8, 8)'], conv_kernel_too_large),
    Case('deconv-channels-changed', 'input reshaped to 5 channels after setup', 'Net.reshape',
         ShapeError, ["'up'", '(1, 5, 4, 4)', '(5, 3, 4, 4)', '(3, 3, 4, 4)'],
         deconv_channels_after_reshape),
    Case('eltwise-shapes', 'bottoms 8 x 8 and 8 x 6', 'Net(prototxt)',
         ShapeError, ["'join'", '(1, 3, 8, 8)', '(1, 3, 8, 6)'], eltwise_shapes),
    Case('concat-shapes', 'bottoms differ off the concat axis', 'Net(prototxt)',
         ShapeError, ["'join'", '(1, 3, 8, 8)', '(1, 2, 6, 8)'], concat_shapes),
    Case('crop-larger-than-input', 'crop 8 x 8 to 10 x 10', 'Net(prototxt)',
         ShapeError, ["'join'", 'does not fit', '(1, 3, 8, 8)', '(1, 3, 10, 10)'],
         crop_too_small),
    Case('crop-offset-too-far', 'offset 3 + 6 > 8', 'Net(prototxt)',
         ShapeError, ["'join'", 'offset 3', '(1, 3, 8, 8)', '(1, 3, 6, 6)'],
         crop_offset_too_far),
    Case('softmax-label-count', 'label 8 x 6 for scores 8 x 8', 'Net(prototxt)',
         ShapeError, ["'loss'", '(1, 5, 8, 8)', '(1, 1, 8, 6)'], softmax_label_count),
    Case('pool-kernel-too-large', 'kernel 5 on 2 x 2 padded by 1', 'Net(prototxt)',
         ShapeError, ["'pool'", '(1, 3, 2, 2)'], pool_kernel_too_large),
    Case('pool-pad-not-below-kernel', 'pad 2 with kernel 2', 'Net(prototxt)',
         ShapeError, ["'pool'", 'pad', '(1, 3, 8, 8)'], pool_pad_not_below_kernel),
    Case('forward-input-shape', 'a 4 x 4 array for an 8 x 8 input', 'Net.forward(data=...)',
         ShapeError, ["'data'", '(1, 3, 4, 4)', '(1, 3, 8, 8)'], forward_input_shape),
    Case('input-too-large-for-memory', 'Input of 1x3x1e7x1e7 (1.2 PB)', 'Net.forward',
         OutOfMemoryError, ["layer 'data' (Input)", "'data' (1, 3, 10000000, 10000000)",
                            '1200000000000000 bytes', 'out of cpu memory'],
         input_too_large_for_memory),
    Case('conv-num-output-too-large', 'Convolution num_output 2e9, kernel 100',
         'Net(prototxt)', OutOfMemoryError,
         ["layer 'conv' (Convolution), param 0", '(2000000000, 3, 100, 100)',
          '240000000000000 bytes'], conv_num_output_too_large),
    Case('cuda-out-of-memory-in-layer', "torch's CUDA OOM inside a layer's forward",
         'Net.forward', OutOfMemoryError,
         ["layer 'conv' (Convolution)", "top 'conv' (1, 4, 6, 6)", '2147483648 bytes',
          'out of cuda memory'], cuda_out_of_memory_in_a_layer),
    Case('label-out-of-range', 'label 7 with 5 classes (not 255)', 'Net.forward',
         LabelError, ["'loss'", 'label 7', '[0, 5)'], label_out_of_range),
    # --- weights files
    Case('caffemodel-empty', 'zero bytes', 'Net(prototxt, weights)',
         FormatError, ['empty.caffemodel', 'empty file'], caffemodel_empty),
    Case('caffemodel-truncated', 'cut in the middle of a blob', 'Net(prototxt, weights)',
         FormatError, ['cut.caffemodel', 'not a valid caffemodel'], caffemodel_truncated),
    Case('caffemodel-not-protobuf', 'a PNG named .caffemodel', 'Net(prototxt, weights)',
         FormatError, ['picture.caffemodel', 'not a valid caffemodel'],
         caffemodel_not_protobuf),
    Case('caffemodel-is-solverstate', 'a solverstate given as weights', 'Net(prototxt, weights)',
         FormatError, ['state_as_model.caffemodel', 'reads as a solverstate'],
         caffemodel_is_solverstate),
    Case('caffemodel-value-count', 'a blob one value short of its shape', 'Net.copy_from',
         FormatError, ['short.caffemodel', "'conv' blob 0", '107 data values', '(4, 3, 3, 3)'],
         caffemodel_value_count),
    Case('caffemodel-h5-not-hdf5', 'junk bytes named .h5', 'Net.copy_from',
         FormatError, ['junk.caffemodel.h5', 'HDF5'], h5_not_hdf5),
    Case('caffemodel-h5-missing-group', 'no /data group', 'Net.copy_from',
         FormatError, ['nodata.caffemodel.h5', '"/data"'], h5_missing_data_group),
    Case('caffemodel-h5-missing-blob', 'data/conv has 0 but not 1', 'Net.copy_from',
         NetMismatchError, ['oneblob.caffemodel.h5', "'conv'", 'blob 1 is missing'],
         h5_missing_blob),
    Case('copy-from-blob-count', 'weights without the bias', 'Net.copy_from',
         NetMismatchError, ['nobias.caffemodel', "'conv'", 'file has 1, the net 2'],
         copy_from_blob_count),
    Case('copy-from-innerproduct-shape', 'fc weights for 100 inputs, net has 192',
         'Net.copy_from', NetMismatchError, ["'fc'", '(10, 100)', '(10, 192)'],
         copy_from_ip_shape),
    Case('copy-from-deconv-shape', 'upscore for 21 classes, net has 60', 'Net.copy_from',
         NetMismatchError, ["'up'", '(3, 21, 4, 4)', '(3, 60, 4, 4)'], copy_from_deconv_shape),
    Case('weights-missing', 'no such file', 'Net(prototxt, weights)',
         FileNotFoundError, ['absent.caffemodel'], weights_missing),
    # --- solver states and snapshots
    Case('solverstate-empty', 'zero bytes', 'SGDSolver.restore',
         FormatError, ['empty.solverstate', 'empty file'], solverstate_empty),
    Case('solverstate-truncated', 'last bytes cut off', 'SGDSolver.restore',
         FormatError, ['cut.solverstate', 'not a valid solverstate'], solverstate_truncated),
    Case('solverstate-is-caffemodel', 'a caffemodel given as state', 'SGDSolver.restore',
         FormatError, ['model.solverstate', 'reads as a caffemodel'], solverstate_is_caffemodel),
    Case('solverstate-h5-missing-history', 'no /history group', 'SGDSolver.restore',
         FormatError, ['nohistory.solverstate.h5', '"/history"'],
         solverstate_h5_missing_history),
    Case('solverstate-other-net-count', 'state of a net with one more param',
         'SGDSolver.restore', NetMismatchError,
         ['train_iter_1.solverstate', '2 history blobs', '1 learnable params'],
         solverstate_other_net_count),
    Case('solverstate-other-net-shape', 'state of a 2-class net, solver has 3',
         'SGDSolver.restore', NetMismatchError,
         ['train_iter_1.solverstate', "'score'", '(2, 3, 1, 1)', '(3, 3, 1, 1)'],
         solverstate_other_net_shape),
    Case('nan-weights-diverge', 'NaN in the weights being trained', 'SGDSolver.step',
         DivergedError, ['Iteration 0', 'nan', 'diverged'], nan_weights_diverge),
    Case('snapshot-prefix-unwritable', 'snapshot_prefix under a regular file',
         'SGDSolver(prototxt)', SnapshotError, ['solver.prototxt', 'blocker', 'snapshot prefix'],
         snapshot_prefix_unwritable_setup),
    Case('snapshot-disk-full', 'ENOSPC while writing a new snapshot', 'SGDSolver.snapshot',
         OSError, ['No space left', 'train_iter_2.caffemodel'], snapshot_disk_full),
    Case('snapshot-h5-overwrite-fails', 'EIO at fsync replacing an HDF5 snapshot',
         'SGDSolver.snapshot', OSError, ['train_iter_1.caffemodel.h5'], snapshot_h5_fsync_fails),
    Case('save-over-good-disk-full', 'ENOSPC while replacing a good caffemodel', 'Net.save',
         OSError, ['No space left', 'good.caffemodel'], save_over_good_disk_full),
    # --- data layers
    Case('voc-missing-dir', 'voc_dir does not exist', 'VOCSegDataLayer.setup',
         DataFileNotFoundError, ['voc_dir', 'VOCdevkit'], voc_missing_dir),
    Case('voc-missing-split', 'no seg11valid.txt', 'VOCSegDataLayer.setup',
         DataFileNotFoundError, ['seg11valid.txt'], voc_missing_split),
    Case('voc-empty-split', 'split list of blank lines', 'VOCSegDataLayer.setup',
         DataLayerError, ['val.txt', 'empty'], voc_empty_split),
    Case('voc-missing-image', 'a listed id without its JPEG', 'VOCSegDataLayer.setup',
         DataFileNotFoundError, ['gone.jpg', '1 of the 2 samples'], voc_missing_image),
    Case('voc-missing-label', 'a listed id without its PNG', 'VOCSegDataLayer.setup',
         DataFileNotFoundError, ['nolabel.png'], voc_missing_label),
    Case('voc-label-size', 'label 4 x 4, image 4 x 5', 'VOCSegDataLayer.reshape',
         DataLayerError, ['a.png is 4 x 4', 'a.jpg is 4 x 5'], voc_label_size),
    Case('voc-rgb-label', 'a colour-coded label PNG', 'VOCSegDataLayer.reshape',
         DataLayerError, ['a.png', "'RGB'"], voc_rgb_label),
    Case('voc-truncated-jpeg', 'a JPEG cut to a third', 'VOCSegDataLayer.reshape',
         DataLayerError, ['a.jpg', 'cannot read image'], voc_truncated_jpeg),
    Case('voc-16-bit-image', 'a 16-bit grayscale image', 'VOCSegDataLayer.reshape',
         DataLayerError, ['a.jpg', 'mode', 'not supported'], voc_sixteen_bit_image),
    Case('voc-misspelt-param', "param_str key 'randomise'", 'VOCSegDataLayer.setup',
         DataLayerError, ["'randomise'", 'known keys'], voc_misspelt_key),
    Case('voc-infinite-mean', 'mean with an infinite value', 'VOCSegDataLayer.setup',
         DataLayerError, ["'mean'", '(inf, 116.7, 122.7)'], voc_infinite_mean),
    Case('voc-label-beyond-classes', 'label PNG of 30s for a 21-class net', 'Net.forward',
         LabelError, ["'loss'", 'label 30', '[0, 21)', '20 position(s)'],
         voc_label_beyond_classes),
    Case('sbd-mat-without-gtcls', 'cls/*.mat without GTcls', 'SBDDSegDataLayer.reshape',
         DataLayerError, ['a.mat', 'GTcls.Segmentation'], sbd_mat_without_gtcls),
    Case('sbd-mat-garbage', 'cls/*.mat that is not a MAT file', 'SBDDSegDataLayer.reshape',
         DataLayerError, ['a.mat', 'cannot read MAT file'], sbd_mat_garbage),
    Case('siftflow-missing-dir', 'siftflow_dir does not exist', 'SIFTFlowSegDataLayer.setup',
         DataFileNotFoundError, ['siftflow_dir', 'no-sift-flow'], siftflow_missing_dir),
    Case('siftflow-missing-label-folder', 'no GeoLabels/', 'SIFTFlowSegDataLayer.setup',
         DataFileNotFoundError, ['GeoLabels', 'SiftFlowDataset.zip'],
         siftflow_missing_label_folder),
    Case('siftflow-mat-without-s', 'label MAT without field S', 'SIFTFlowSegDataLayer.reshape',
         DataLayerError, ['coast1.mat', "no field 'S'"], siftflow_mat_without_s),
    Case('siftflow-label-out-of-range', 'semantic class 40 of 33',
         'SIFTFlowSegDataLayer.reshape', DataLayerError, ['coast1.mat', '0..33', '40'],
         siftflow_semantic_out_of_range),
    Case('nyud-missing-split', 'no test.txt', 'NYUDSegDataLayer.setup',
         DataFileNotFoundError, ['test.txt'], nyud_missing_split),
    Case('nyud-zero-depth', 'depth 0 (log -inf)', 'NYUDSegDataLayer.reshape',
         DataLayerError, ['img_5001.png', 'depth 0'], nyud_zero_depth),
    Case('nyud-8-bit-depth', 'an 8-bit depth PNG', 'NYUDSegDataLayer.reshape',
         DataLayerError, ['img_5001.png', '16-bit'], nyud_eight_bit_depth),
    Case('nyud-unknown-top', "tops ['color', 'normals']", 'NYUDSegDataLayer.setup',
         DataLayerError, ["'normals'", 'color, depth, hha, label'], nyud_unknown_top),
    Case('context-missing-context-dir', 'context_dir does not exist',
         'PASCALContextSegDataLayer.setup', DataFileNotFoundError,
         ['context_dir', 'pascal-context-missing'], context_missing_context_dir),
    Case('context-missing-class-list', 'no classes-59.txt', 'PASCALContextSegDataLayer.setup',
         DataFileNotFoundError, ['class lists', 'classes-59.txt'], context_missing_class_lists),
    Case('context-mat-without-labelmap', 'trainval/*.mat without LabelMap',
         'PASCALContextSegDataLayer.reshape', DataLayerError,
         ['2008_000002.mat', 'LabelMap'], context_mat_without_labelmap),
    # --- downloads
    Case('download-interrupted', 'the connection drops after 300 bytes', 'download.download',
         download.DownloadError, ['stopped after 300', 'resume'], download_interrupted),
    Case('download-checksum-mismatch', 'the server sends other bytes', 'download.download',
         download.DownloadError, ['SHA-256', 'unchanged'], download_checksum_mismatch),
    Case('download-no-url-file', 'a folder without caffemodel-url', 'download.download',
         download.DownloadError, ['caffemodel-url not found'], download_no_url_file),
    # --- databases and HDF5 inputs cut short or damaged
    Case('lmdb-truncated', 'data.mdb cut to half (an interrupted copy)', 'Net(prototxt) Data',
         DBLayerError, ["layer 'data' (Data)", 'data.mdb', 'is truncated', 'holds', 'needs'],
         lmdb_truncated),
    Case('leveldb-table-truncated', 'a .ldb table cut to half', 'Net(prototxt) Data',
         DBLayerError, ['train_leveldb', '.ldb', 'is truncated', 'manifest says'],
         leveldb_table_truncated),
    Case('leveldb-log-checksum', 'a byte of the log flipped', 'Net(prototxt) Data',
         DBLayerError, ['train_leveldb', 'checksum mismatch'], leveldb_log_checksum),
    Case('hdf5-data-truncated', 'an HDF5Data source file cut to half', 'Net(prototxt) HDF5Data',
         DBLayerError, ["layer 'h5' (HDF5Data)", 'train.h5', 'truncated file'],
         hdf5_data_truncated),
    Case('caffemodel-h5-truncated', 'HDF5 weights cut to half', 'Net(prototxt, weights)',
         FormatError, ['cut.caffemodel.h5', 'truncated file'], caffemodel_h5_truncated),
    Case('cli-compute-image-mean-truncated-lmdb', 'data.mdb cut to half', 'compute_image_mean',
         CLI, ['compute_image_mean: lmdb database', 'data.mdb', 'is truncated'],
         cli_compute_image_mean_truncated_lmdb),
    Case('cli-convert-imageset-full-disk', 'RLIMIT_FSIZE 512 KB for 1.4 MB of records',
         'python tools/convert_imageset.py', CLI,
         ['cannot write lmdb database', 'full_lmdb', 'file-size limit (ulimit -f) of 524288',
          'partial build was removed'], cli_convert_imageset_file_size_limit),
    # --- command lines: one line on stderr, non-zero exit
    Case('cli-score-missing-prototxt', 'no such net file', 'score.py', CLI,
         ['score.py: error', 'absent_val.prototxt'], cli_score_missing_prototxt),
    Case('cli-score-empty-weights', 'zero-byte caffemodel', 'score.py', CLI,
         ['score.py: error', 'empty.caffemodel', 'empty file'], cli_score_empty_weights),
    Case('cli-score-missing-pred-dir', 'no such prediction folder', 'score.py --pred-dir', CLI,
         ['score.py: error', 'no_preds'], cli_score_missing_pred_dir),
    Case('cli-score-gt-label-out-of-range', 'ground truth labelled 100 with --classes 21',
         'score.py --gt-dir', CLI, ['score.py: error', 'a.png', '3 pixels', 'label 100',
                                    '[0, 21)', 'ignore label 255'],
         cli_score_gt_label_out_of_range),
    Case('cli-score-net-too-large', 'a val net whose conv needs 240 TB', 'score.py', CLI,
         ['score.py: error', "layer 'score' (Convolution), param 0", 'bytes'],
         cli_score_net_too_large_for_memory),
    Case('cli-infer-missing-deploy', 'no such deploy prototxt', 'infer.py', CLI,
         ['infer.py: error', 'absent_deploy.prototxt'], cli_infer_missing_deploy),
    Case('cli-infer-no-images', 'an image folder without images', 'infer.py', CLI,
         ['infer.py: error', 'no image files', 'empty_images'], cli_infer_no_images),
    Case('cli-surgery-missing-weights', 'no such classifier caffemodel', 'surgery.py vgg16-fcn',
         CLI, ['surgery.py: error', 'absent_vgg16.caffemodel', '--weights PATH'],
         cli_surgery_missing_weights),
    Case('cli-solve-unknown-folder', 'a model folder that does not exist', 'solve.py', CLI,
         ['voc-fcn64s', 'voc-fcn32s'], cli_solve_unknown_folder),
    Case('cli-solve-no-folder', 'no arguments', 'solve.py', CLI,
         ['usage: python solve.py MODEL_FOLDER'], cli_solve_no_folder),
    Case('cli-download-not-model-folder', 'a folder without caffemodel-url', 'download.py', CLI,
         ['download.py: error', 'caffemodel-url not found'], cli_download_not_a_model_folder),
    Case('cli-train-missing-weights', '--weights that do not exist', '<model>/solve.py', CLI,
         ['error', 'absent_prev.caffemodel', 'not found'], cli_train_missing_weights),
    Case('cli-train-resume-other-net', '--resume a state of another net', '<model>/solve.py',
         CLI, ['error', 'train_iter_1.solverstate', 'different net'], cli_train_resume_other_net),
    Case('subprocess-solve-unknown-folder', 'a model folder that does not exist',
         'python solve.py', CLI, ['voc-fcn64s'], subprocess_solve),
]


# ------------------------------------------------------------------------ the tests

def leftover_temp_files(root):
    """Files a failed atomic write or probe would leave: ``.<name>.<random>.tmp``, and
    the folder of a database build that failed."""
    found = []
    for folder, folders, files in os.walk(root):
        found += [os.path.join(folder, f) for f in files
                  if f.endswith(('.tmp', '.tempfile'))]
        # a database a tool was building: ``<name>.partial-<pid>``
        found += [os.path.join(folder, f) for f in folders if re.search(r'\.partial-\d+$', f)]
    return found


def check_unchanged(root):
    """Every ``X.expected`` copy a row left must still equal ``X``; every ``X.absent``
    marker says that no (partial) ``X`` may exist."""
    for folder, _, files in os.walk(root):
        for name in files:
            if name.endswith('.absent'):
                target = os.path.join(folder, name[:-len('.absent')])
                assert not os.path.exists(target), '%s was left behind' % target
            if name.endswith('.expected'):
                with open(os.path.join(folder, name), 'rb') as f:
                    expected = f.read()
                target = os.path.join(folder, name[:-len('.expected')])
                with open(target, 'rb') as f:
                    assert f.read() == expected, '%s changed' % target


# A glog record (torchcaffe logs INFO to stderr as Caffe does): not part of the error.
GLOG_LINE = re.compile(r'^[IW]\d{4} \d\d:\d\d:\d\d\.\d{6} +\d+ \S+:\d+\] ')


def run_cli(trigger, ctx, capsys):
    """(exit status, stderr) of a command-line row."""
    made = trigger(ctx)
    if isinstance(made, list):  # a subprocess
        done = subprocess.run(made, cwd=ctx.tmp, capture_output=True, text=True, timeout=120)
        return done.returncode, done.stderr
    main, argv = made
    capsys.readouterr()
    try:
        status = main(argv)
    except SystemExit as exit_:
        status = exit_.code
        if isinstance(status, str):  # how Python exits on sys.exit('message')
            sys.stderr.write(status + '\n')
            status = 1
    return status, capsys.readouterr().err


def test_the_catalogue_has_at_least_45_distinct_rows():
    assert len(CASES) >= 45
    assert len({c.id for c in CASES}) == len(CASES)
    assert all(c.expect and c.fault and c.entry for c in CASES)


@pytest.mark.parametrize('case', CASES, ids=[c.id for c in CASES])
def test_bad_input_gets_a_clear_error_and_nothing_is_lost(case, tmp_path, monkeypatch,
                                                          capsys):
    ctx = Ctx(tmp_path, monkeypatch)
    monkeypatch.chdir(tmp_path)
    if case.error is CLI:
        status, err = run_cli(case.trigger, ctx, capsys)
        lines = [line for line in err.strip().splitlines() if not GLOG_LINE.match(line)]
        assert status not in (0, None), err
        assert len(lines) == 1 and 'Traceback' not in err, err
        message = lines[0]
    else:
        with pytest.raises(case.error) as info:
            case.trigger(ctx)
        message = str(info.value)
        assert '\n' not in message.strip() or isinstance(info.value, PrototxtError), message
    for part in case.expect:
        assert part in message, 'missing %r in: %s' % (part, message)
    monkeypatch.undo()  # the real open / fsync again, for the checks
    assert leftover_temp_files(ctx.tmp) == []
    check_unchanged(ctx.tmp)


# ------------------------------------------------------------------------ accepted on purpose

def image_in_mode(ctx, mode):
    """A VOC tree whose one image is saved in ``mode``; the layer's data top and the
    image converted to RGB by PIL, preprocessed as the layer would."""
    root = make_voc(ctx)
    path = os.path.join(root, 'JPEGImages', 'a.jpg')
    rgb = np.random.RandomState(7).randint(0, 256, (4, 5, 3)).astype(np.uint8)
    im = Image.fromarray(rgb).convert(mode)
    im.save(path, format='PNG' if mode == 'RGBA' else 'JPEG')
    with Image.open(path) as saved:
        expected = voc_layers.preprocess(np.array(saved.convert('RGB')), voc_layers.MEAN_BGR)
        assert saved.mode == mode
    layer, top = voc(ctx, root)
    return top[0].data[0], expected


@pytest.mark.parametrize('mode', ['L', 'CMYK', 'RGBA'])
def test_grayscale_cmyk_and_rgba_images_become_rgb_with_a_warning(mode, tmp_path, monkeypatch,
                                                                  caplog):
    # Decision: PIL's conversion to RGB (alpha dropped, CMYK by PIL's formula), where
    # the reference's in_[:, :, ::-1] would fail on a 2-D grayscale array.
    data, expected = image_in_mode(Ctx(tmp_path, monkeypatch), mode)
    assert data.shape == (3, 4, 5)
    np.testing.assert_array_equal(data, expected)
    if mode == 'L':  # gray: the three BGR channels differ only by the mean
        np.testing.assert_allclose(data[0] + voc_layers.MEAN_BGR[0],
                                   data[2] + voc_layers.MEAN_BGR[2], atol=1e-4)
    assert 'a.jpg: %s image converted to RGB' % mode in caplog.text


def test_nan_input_passes_through_a_forward_as_in_caffe(tmp_path, monkeypatch):
    # Decision: Net.forward does not check its inputs (Caffe does not); the solver
    # is what stops on a NaN loss (row nan-weights-diverge).
    net = build(Ctx(tmp_path, monkeypatch), input_layer(), conv('conv', 'data'))
    data = np.zeros((1, 3, 8, 8), np.float32)
    data[0, 0, 0, 0] = np.nan
    out = net.forward(data=data)['conv']
    assert np.isnan(out[:, :, 0, 0]).all() and np.isfinite(out[:, :, 2:, 2:]).all()


def test_nan_weights_load_with_a_warning_naming_file_and_layer(tmp_path, monkeypatch, caplog):
    # Decision: weights with NaN load (a diverged snapshot can still be inspected, and
    # Caffe loads them silently) with a warning; training on them raises DivergedError.
    ctx = Ctx(tmp_path, monkeypatch)

    def poison(param):
        blob = param.layer[1].blobs[0]
        values = list(blob.data)
        values[5] = float('nan')
        values[6] = float('inf')
        del blob.data[:]
        blob.data.extend(values)
    path = saved_model(ctx, 'nan.caffemodel', [input_layer(), conv('conv', 'data')], poison)
    net = build(ctx, input_layer(), conv('conv', 'data'), weights=path)
    assert np.isnan(net.params['conv'][0].data.ravel()[5])
    assert "nan.caffemodel: layer 'conv' blob 0 has 2 NaN or infinite values of 108" in caplog.text


def test_ignore_label_255_is_not_out_of_range(tmp_path, monkeypatch):
    net = build(Ctx(tmp_path, monkeypatch), LOSS_NET)
    label = np.full((1, 1, 4, 4), 255, np.float32)
    label[0, 0, 0, 0] = 4
    loss = net.forward(data=np.zeros((1, 3, 4, 4), np.float32), label=label)['loss']
    assert np.isclose(float(loss), np.log(5), atol=1e-5)  # zero weights: uniform softmax
