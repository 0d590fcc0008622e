"""Segment images with a deploy net and its weights, as the reference's infer.py.

    python download.py voc-fcn8s     # fetches voc-fcn8s/fcn8s-heavy-pascal.caffemodel
    python infer.py voc-fcn8s/deploy.prototxt voc-fcn8s/fcn8s-heavy-pascal.caffemodel \\
        data/demo/image.jpg --out out/infer
    python infer.py DEPLOY.prototxt WEIGHTS.caffemodel IMAGE_OR_FOLDER [--out DIR] [--gpu ID]
        [--classes data/pascal/classes.txt] [--overwrite] [--precision fp32|tf32|bf16]
        [--backend torch|onnxruntime]

``--backend onnxruntime`` runs the net in onnxruntime (``torchcaffe.ort_backend``): it
is exported once per weights file and cached beside the weights as
``<weights>.<key>.onnx``; a cache made for other weights or another prototxt is
rebuilt, never used.

For every image it writes into ``--out`` (default ``out/infer``):

- ``<name>.png``: the prediction as a palette PNG in VOC's colours whose pixel
  values are the class indices, so it opens as a VOC ``SegmentationClass`` label;
- ``<name>_overlay.jpg``: the prediction blended over the image (``vis.vis_seg``).

Each image goes through the net alone, at its own size: RGB to BGR, minus the
ILSVRC mean pixel (104.00698793, 116.66876762, 122.67891434), channels first;
the ``data`` blob is reshaped to it, and the label is the argmax over the
channels of ``score``. In Python::

    net = load_net('voc-fcn8s/deploy.prototxt', 'voc-fcn8s/fcn8s-heavy-pascal.caffemodel')
    label = segment(net, read_rgb('data/demo/image.jpg'))   # H x W class indices

A folder is processed in name order with a progress bar. Files that cannot be
read as images are skipped with a message; when none can be read the run fails.
Images whose two outputs already exist are skipped, so an interrupted run
resumes where it stopped (``--overwrite`` redoes them); outputs are written to a
temporary file and renamed, so an interrupted write never leaves a partial one.
The label PNG is written last: its presence marks an image as done, so the
outputs themselves are the progress record. The closing summary counts every
image, the resumed ones too, so it is the same as an uninterrupted run's.
(Outputs made with other weights are not detected: use a new ``--out``.)
"""
import argparse
import collections
import os
import sys
import time

import numpy as np
import torch
from PIL import Image

import torchcaffe as caffe
from torchcaffe.errors import CaffeError, ShapeError
from torchcaffe.io import atomic_path
from torchcaffe.ort_backend import BACKENDS, OnnxRuntimeNet
from torchcaffe.progress import progress
import score
from vis import VOID_LABEL, label_image, make_palette, vis_seg
from voc_layers import MEAN_BGR, DataFileNotFoundError, DataLayerError, preprocess, read_rgb

__all__ = ['BACKENDS', 'InferError', 'load_net', 'segment', 'list_images', 'output_paths',
           'read_classes', 'infer_file', 'run', 'class_summary']

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CLASSES = os.path.join(ROOT, 'data', 'pascal', 'classes.txt')


class InferError(CaffeError):
    """Inference cannot start or cannot do anything: missing files, nothing readable."""


# ------------------------------------------------------------------------ the net

def _require_file(path, what, hint=''):
    if not os.path.isfile(path):
        raise InferError('%s not found: %s%s' % (what, path, hint))


def _download_hint(weights):
    """How to get missing weights, when their folder says where they are published."""
    folder = os.path.dirname(os.path.abspath(weights))
    if os.path.isfile(os.path.join(folder, 'caffemodel-url')):
        return ' (fetch it with: python download.py %s)' % os.path.relpath(folder)
    return ''


def load_net(deploy, weights, gpu=None, backend='torch'):
    """The deploy net in the TEST phase with ``weights`` loaded, ready for inference.

    Parameters
    ----------
    deploy : str
        Deploy prototxt (its ``data`` input is reshaped to each image).
    weights : str
        ``.caffemodel`` or ``.caffemodel.h5``.
    gpu : int, optional
        Run on this GPU; the CPU when None.
    backend : {'torch', 'onnxruntime'}
        The engine (default), or onnxruntime (:class:`torchcaffe.ort_backend.OnnxRuntimeNet`,
        the same ``blobs`` / ``forward`` for inference; on a GPU it needs onnxruntime-gpu).

    Raises
    ------
    InferError
        A file is missing, or a GPU is asked for and CUDA is not available.
    CaffeError
        The prototxt or weights are malformed or do not fit each other.
    """
    _require_file(deploy, 'deploy prototxt')
    _require_file(weights, 'weights', _download_hint(weights))
    if backend not in BACKENDS:
        raise InferError('backend %r: give one of %s' % (backend, ', '.join(BACKENDS)))
    if backend == 'onnxruntime':
        return OnnxRuntimeNet(deploy, weights, gpu=gpu)
    if gpu is None:
        caffe.set_mode_cpu()
    else:
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if not 0 <= gpu < count:
            raise InferError('--gpu %d: no such CUDA device (%d found)' % (gpu, count))
        caffe.set_device(gpu)
        caffe.set_mode_gpu()
    net = caffe.Net(deploy, weights, caffe.TEST)
    net.autograd = False  # forward only: no gradient graph to keep
    return net


def segment(net, rgb, mean=MEAN_BGR, data='data', score='score'):
    """Class indices for one image: the argmax over the channels of ``score``.

    Parameters
    ----------
    net : torchcaffe.Net
        A deploy net (any input size).
    rgb : ndarray
        H x W x 3 uint8 RGB image, e.g. from ``voc_layers.read_rgb``.
    mean : sequence of 3 floats
        BGR mean pixel subtracted from the input.
    data, score : str
        The input and output blobs.

    Returns
    -------
    ndarray
        H' x W' int64 class indices (H' x W' is the score map's size, the image's
        for the FCN nets).
    """
    in_ = preprocess(rgb, np.asarray(mean, dtype=np.float64))
    net.blobs[data].reshape(1, *in_.shape)
    net.blobs[data].data[...] = in_
    net.forward()
    return net.blobs[score].data[0].argmax(axis=0)


# ------------------------------------------------------------------------ files

def _image_extensions():
    return {ext.lower() for ext in Image.registered_extensions()}


def list_images(path):
    """The image files to segment: ``path`` itself, or a folder's image files by name.

    A folder's files count as images by their extension (those Pillow knows);
    whether they can be read is found out when they are read.

    Returns
    -------
    list of str
    ignored : int
        Files in the folder without an image extension.
    """
    if os.path.isfile(path):
        return [path], 0
    if not os.path.isdir(path):
        raise InferError('no such image or folder: %s' % path)
    exts = _image_extensions()
    images, ignored = [], 0
    for name in sorted(os.listdir(path)):
        full = os.path.join(path, name)
        if name.startswith('.') or not os.path.isfile(full):
            continue
        if os.path.splitext(name)[1].lower() in exts:
            images.append(full)
        else:
            ignored += 1
    return images, ignored


def output_paths(image, out_dir):
    """``(<out>/<name>.png, <out>/<name>_overlay.jpg)`` for an image file."""
    name = os.path.splitext(os.path.basename(image))[0]
    return (os.path.join(out_dir, name + '.png'), os.path.join(out_dir, name + '_overlay.jpg'))


def _check_unique_outputs(images, out_dir):
    """Two inputs with one name (``a.jpg``, ``a.png``) would overwrite each other's outputs."""
    seen = {}
    for image in images:
        label_path = output_paths(image, out_dir)[0]
        if label_path in seen:
            raise InferError('%s and %s would both write %s; rename one of them'
                             % (seen[label_path], image, label_path))
        seen[label_path] = image


def read_classes(path):
    """Class names, one a line, up to the first blank line (``data/pascal/classes.txt``)."""
    _require_file(path, 'class list')
    return score.read_class_names(path)


def _save(image, path, **options):
    """Write a PIL image through a temporary file (the format from ``path``'s extension)."""
    fmt = Image.registered_extensions()[os.path.splitext(path)[1].lower()]
    with atomic_path(path) as tmp:
        image.save(tmp, format=fmt, **options)


# ------------------------------------------------------------------------ running

def infer_file(net, image, out_dir, palette):
    """Segment one image file and write its two outputs; return the label array.

    Raises
    ------
    voc_layers.DataLayerError, voc_layers.DataFileNotFoundError
        The image cannot be read.
    ShapeError
        The image does not fit the net (e.g. too small for its crops).
    """
    rgb = read_rgb(image)
    label = segment(net, rgb)
    label_path, overlay_path = output_paths(image, out_dir)
    if label.shape == rgb.shape[:2]:
        _save(Image.fromarray(vis_seg(rgb, label, palette)), overlay_path, quality=95)
    else:  # not a fully convolutional output: there is nothing to overlay pixel by pixel
        _save(Image.fromarray(rgb), overlay_path, quality=95)
    _save(label_image(label), label_path)  # last: its presence marks the image as done
    return label


def _check_net_outputs(net, score='score'):
    if score not in net.blobs:
        raise InferError('the net has no %r blob to take the argmax of (its blobs: %s)'
                         % (score, ', '.join(net.blobs)))
    channels = net.blobs[score].shape[1]
    if channels > VOID_LABEL:
        raise InferError('the net scores %d classes; a label PNG holds class indices 0..%d '
                         '(%d is VOC\'s void)' % (channels, VOID_LABEL - 1, VOID_LABEL))
    return channels


def run(net, images, out_dir, overwrite=False, stream=None):
    """Segment ``images`` into ``out_dir``, skipping those that cannot be read.

    Parameters
    ----------
    stream : file or False, optional
        Where the progress bar and skip messages go (stderr by default; False: nowhere).

    Returns
    -------
    dict
        ``done`` (list of (image, label)), ``resumed`` (images skipped because
        their outputs exist), ``failed`` (list of (image, reason)).
    """
    os.makedirs(out_dir, exist_ok=True)
    _check_unique_outputs(images, out_dir)
    palette = make_palette(VOID_LABEL)
    done, resumed, failed = [], [], []
    messages = sys.stderr if stream is None else stream
    for image in progress(images, desc='infer', stream=stream):
        if not overwrite and all(os.path.exists(p) for p in output_paths(image, out_dir)):
            resumed.append(image)
            continue
        try:
            done.append((image, infer_file(net, image, out_dir, palette)))
        except (DataLayerError, DataFileNotFoundError, ShapeError) as error:
            reason = str(error).splitlines()[0]
            if image not in reason:
                reason = '%s: %s' % (image, reason)
            failed.append((image, reason))
            if messages:
                messages.write('skipping %s\n' % reason)
    return dict(done=done, resumed=resumed, failed=failed)


def class_summary(labels, names):
    """``name share%`` of the pixels of ``labels``, commonest first."""
    counts = collections.Counter()
    for label in labels:
        values, n = np.unique(label, return_counts=True)
        counts.update(dict(zip(values.tolist(), n.tolist())))
    total = sum(counts.values()) or 1
    return ', '.join('%s %.1f%%' % (names[c] if c < len(names) else 'class %d' % c,
                                    100.0 * n / total) for c, n in counts.most_common())


# ------------------------------------------------------------------------ command line

def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('deploy', help='deploy prototxt, e.g. voc-fcn8s/deploy.prototxt')
    parser.add_argument('weights', help='.caffemodel (or .caffemodel.h5)')
    parser.add_argument('images', help='an image file or a folder of images')
    parser.add_argument('--out', default=os.path.join(ROOT, 'out', 'infer'),
                        help='output folder (default out/infer)')
    parser.add_argument('--gpu', type=int, default=None, metavar='ID',
                        help='run on this GPU (default: CPU)')
    parser.add_argument('--precision', choices=list(caffe.PRECISIONS), default='fp32',
                        help="arithmetic: fp32 (Caffe's, default), tf32 (TF32 tensor cores "
                             "on CUDA) or bf16 (bfloat16 autocast)")
    parser.add_argument('--classes', default=DEFAULT_CLASSES,
                        help='class names, one a line (default data/pascal/classes.txt)')
    parser.add_argument('--overwrite', action='store_true',
                        help='redo images whose outputs already exist')
    parser.add_argument('--backend', choices=BACKENDS, default='torch',
                        help='run the net in the engine (default) or in onnxruntime '
                             '(exported once, cached beside the weights)')
    return parser.parse_args(argv)


def _labels_in_order(images, result, out_dir):
    """The label of every segmented image, in input order; resumed ones read back."""
    labels = dict(result['done'])
    for image in result['resumed']:
        try:
            labels[image] = score.read_label_png(output_paths(image, out_dir)[0])
        except (OSError, ValueError):  # damaged since: left out of the summary
            pass
    return [labels[image] for image in images if image in labels]


def _main(args):
    images, ignored = list_images(args.images)
    if not images:
        raise InferError('no image files in %s%s' % (
            args.images, ' (%d other files ignored)' % ignored if ignored else ''))
    if os.path.isdir(args.images) and os.path.realpath(args.images) == os.path.realpath(args.out):
        raise InferError('--out must not be the input folder %s (the outputs would be read '
                         'as inputs on the next run)' % args.images)
    names = read_classes(args.classes)
    if args.backend == 'onnxruntime' and args.precision != 'fp32':
        raise InferError('--precision %s applies to the engine; --backend onnxruntime '
                         'runs float32' % args.precision)
    caffe.set_precision(args.precision)
    net = load_net(args.deploy, args.weights, args.gpu, args.backend)
    channels = _check_net_outputs(net)
    if len(names) < channels:
        print('note: %s names %d classes, the net scores %d; the others are shown by number'
              % (args.classes, len(names), channels), file=sys.stderr)
    start = time.time()
    result = run(net, images, args.out, args.overwrite)
    done, resumed, failed = result['done'], result['resumed'], result['failed']
    if failed and not done and not resumed:
        raise InferError('none of the %d image(s) could be segmented (first: %s)'
                         % (len(images), failed[0][1]))
    print('%d segmented in %.1f s, %d already done (--overwrite redoes them), %d skipped; '
          'outputs in %s' % (len(done), time.time() - start, len(resumed),
                                          len(failed), args.out))
    if done or resumed:
        print('predicted: %s' % class_summary(_labels_in_order(images, result, args.out),
                                              names))
    return 0


def main(argv=None):
    args = parse_args(argv)
    try:
        return _main(args)
    except (CaffeError, OSError) as err:
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise SystemExit('infer.py: error: %s' % message) from None


if __name__ == '__main__':
    sys.exit(main())
