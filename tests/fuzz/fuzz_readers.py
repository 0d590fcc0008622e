"""Coverage-guided fuzzing of the file readers with atheris, for long runs (not run by pytest).

``tests/test_fuzz.py`` runs a few hundred fixed examples per reader in CI; this
harness lets libFuzzer mutate towards new code paths for as long as you like:

    pip install atheris                                   # not a project dependency
    python tests/fuzz/fuzz_readers.py --make-corpus /tmp/corpus
    python tests/fuzz/fuzz_readers.py caffemodel /tmp/corpus/caffemodel -max_total_time=3600
    python tests/fuzz/fuzz_readers.py mat /tmp/corpus/mat -max_total_time=600 -rss_limit_mb=4096

Targets: prototxt, solver, caffemodel, solverstate, caffemodel_h5, solverstate_h5,
image, label, mat. A target may raise only its documented errors (``FormatError``
for ``torchcaffe.io``, ``DataLayerError`` for the data layers' loaders); any other
exception, a crash, a hang (``-timeout=N``) or memory past ``-rss_limit_mb`` is a
finding, and libFuzzer saves the input as ``crash-<sha1>`` in the current folder.
Replay one with ``python tests/fuzz/fuzz_readers.py <target> crash-<sha1>``. The
HDF5 targets go through the HDF5 C library; a crash there is HDF5's, but report it.
"""
import io as bytes_io
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# name -> (file suffix, reader(path), allowed exceptions); filled by _targets().
TARGETS = {}


def _targets():
    sys.path[:0] = [ROOT]
    from torchcaffe import io
    from torchcaffe.errors import FormatError
    import pascalcontext_layers
    import seg_layers
    import voc_layers

    def label_mats(path):
        for read in (voc_layers.read_sbd_label, pascalcontext_layers.read_label_map,
                     lambda p: seg_layers.read_mat_field(p, 'S')):
            try:
                read(path)
            except seg_layers.DataLayerError:
                pass

    TARGETS.update({
        'prototxt': ('.prototxt', io.read_net_prototxt, FormatError),
        'solver': ('.prototxt', io.read_solver_prototxt, FormatError),
        'caffemodel': ('.caffemodel', io.read_caffemodel, FormatError),
        'solverstate': ('.solverstate', io.read_solverstate, FormatError),
        'caffemodel_h5': ('.caffemodel.h5', io.read_caffemodel, FormatError),
        'solverstate_h5': ('.solverstate.h5', io.read_solverstate, FormatError),
        'image': ('.jpg', voc_layers.read_rgb, seg_layers.DataLayerError),
        'label': ('.png', voc_layers.read_voc_label, seg_layers.DataLayerError),
        'mat': ('.mat', label_mats, seg_layers.DataLayerError),
    })


def make_corpus(folder):
    """Write one valid seed file per target under ``folder/<target>/``."""
    import numpy as np
    import scipy.io
    from PIL import Image
    from torchcaffe import io
    from torchcaffe.proto import caffe_pb2

    rng = np.random.RandomState(0)
    net = caffe_pb2.NetParameter(name='seed')
    net.layer.add(name='data', type='Input', top=['data']).input_param.shape.add(dim=[1, 3, 8, 8])
    conv = net.layer.add(name='conv', type='Convolution', bottom=['data'], top=['conv'])
    conv.convolution_param.num_output = 2
    conv.convolution_param.kernel_size.append(3)
    conv.blobs.extend([io.array_to_blobproto(rng.randn(2, 3, 3, 3)),
                       io.array_to_blobproto(rng.randn(2))])
    state = caffe_pb2.SolverState(iter=3, learned_net='x.caffemodel', current_step=0)
    state.history.extend([io.array_to_blobproto(rng.randn(2, 3, 3, 3)),
                          io.array_to_blobproto(rng.randn(2))])
    solver = caffe_pb2.SolverParameter(net='train.prototxt', base_lr=1e-10, lr_policy='fixed',
                                       momentum=0.99, max_iter=100, snapshot_prefix='s')
    label = rng.randint(0, 21, (9, 7)).astype(np.uint8)
    files = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, message in (('caffemodel', net), ('caffemodel_h5', net)):
            path = os.path.join(tmp, 'w' + TARGETS[name][0])
            io.write_caffemodel(message, path)
            files[name] = open(path, 'rb').read()
        for name in ('solverstate', 'solverstate_h5'):
            path = os.path.join(tmp, 's' + TARGETS[name][0])
            io.write_solverstate(state, path)
            files[name] = open(path, 'rb').read()
    files['prototxt'] = io.message_to_text(
        caffe_pb2.NetParameter(name='seed', layer=net.layer[:1])).encode()
    files['solver'] = io.message_to_text(solver).encode()
    for name, fmt, array, mode in (('image', 'JPEG', rng.randint(0, 256, (9, 7, 3)), 'RGB'),
                                   ('label', 'PNG', label, 'L')):
        buf = bytes_io.BytesIO()
        Image.fromarray(np.asarray(array, np.uint8), mode=mode).save(buf, format=fmt)
        files[name] = buf.getvalue()
    buf = bytes_io.BytesIO()
    scipy.io.savemat(buf, {'GTcls': {'Segmentation': label}, 'S': label.astype(np.int16),
                           'LabelMap': label.astype(float)}, do_compression=True)
    files['mat'] = buf.getvalue()
    for name, data in files.items():
        os.makedirs(os.path.join(folder, name), exist_ok=True)
        with open(os.path.join(folder, name, 'seed'), 'wb') as f:
            f.write(data)
    print('wrote %d seeds under %s' % (len(files), folder))


def one_input(target, scratch):
    suffix, read, allowed = TARGETS[target]
    path = os.path.join(scratch, 'input' + suffix)

    def test(data):
        with open(path, 'wb') as f:
            f.write(data)
        try:
            read(path)
        except allowed:
            pass
    return test


def main(argv):
    if len(argv) >= 2 and argv[1] == '--make-corpus':
        _targets()
        return make_corpus(argv[2])
    import atheris
    with atheris.instrument_imports():  # coverage of torchcaffe, the layers and mat5
        _targets()
    if len(argv) < 2 or argv[1] not in TARGETS:
        raise SystemExit('usage: %s TARGET [libFuzzer args...] | --make-corpus DIR\ntargets: %s'
                         % (argv[0], ', '.join(TARGETS)))
    target = argv.pop(1)
    with tempfile.TemporaryDirectory() as scratch:
        atheris.Setup(argv, one_input(target, scratch))
        atheris.Fuzz()


if __name__ == '__main__':
    main(sys.argv)
