"""Caffe's ``convert_imageset``: images listed in a file into an LMDB or LevelDB of Datums.

    convert_imageset [FLAGS] ROOTFOLDER/ LISTFILE DB_NAME

LISTFILE has one ``subfolder/file.jpg label`` a line (the label follows the last
space); ROOTFOLDER is prepended to each name as it is (keep its trailing slash).
As ``tools/convert_imageset.cpp``: records are keyed ``%08d_<name>`` by list
position, committed every 1000; images that cannot be read are skipped with a
warning; the database must not exist yet. Unlike Caffe, the database is built in
``DB_NAME.partial-<pid>`` and renamed to DB_NAME only when complete: a killed run
leaves no short database under DB_NAME, and the next run says it found the
leftover, removes it and starts again; a failed write (full disk, ``ulimit -f``,
permissions) is one error line naming the database and the cause. Flags:

- ``--gray``: one grey channel (default: 3 channels, BGR);
- ``--shuffle``: shuffle the list first (seeded by ``caffe.set_random_seed``'s
  default seed, so reproducible; Caffe's order would differ);
- ``--backend lmdb|leveldb`` (default lmdb);
- ``--resize_width``, ``--resize_height``: resize to that size when both are set;
- ``--check_size``: all images must have the same size;
- ``--encoded``: store the encoded image (the file itself when it needs no
  change), with ``--encode_type png|jpg|...`` (default: the file's extension).
"""
import logging
import os
import sys

import numpy as np
from PIL import Image

from .. import db
from ..data_transformer import TransformError, layer_rng, read_image
from ..errors import CaffeError
from ..glog import LOGGER_NAME, install_default_handler
from ..proto import caffe_pb2
from . import flags

__all__ = ['main', 'convert_imageset', 'image_to_datum', 'encode_image', 'read_list']

log = logging.getLogger(LOGGER_NAME + '.convert_imageset')

FLAGS = {
    'gray': (bool, False), 'shuffle': (bool, False), 'backend': (str, 'lmdb'),
    'resize_width': (int, 0), 'resize_height': (int, 0), 'check_size': (bool, False),
    'encoded': (bool, False), 'encode_type': (str, ''),
}
HELP = {
    'gray': 'When this option is on, treat images as grayscale ones',
    'shuffle': 'Randomly shuffle the order of images and their labels',
    'backend': 'The backend {lmdb, leveldb} for storing the result',
    'resize_width': 'Width images are resized to', 'resize_height': 'Height images are resized to',
    'check_size': 'When this option is on, check that all the datum have the same size',
    'encoded': 'When this option is on, the encoded image will be save in datum',
    'encode_type': "Optional: What type should we encode the image as ('png','jpg',...).",
}
USAGE = ('Convert a set of images to the leveldb/lmdb\nformat used as input for Caffe.\n'
         'Usage:\n    convert_imageset [FLAGS] ROOTFOLDER/ LISTFILE DB_NAME\n'
         'The ImageNet dataset for the training demo is at\n'
         '    http://www.image-net.org/download-images\n')

_PIL_FORMATS = {'jpg': 'JPEG', 'jpeg': 'JPEG', 'png': 'PNG', 'bmp': 'BMP', 'tif': 'TIFF',
                'tiff': 'TIFF', 'ppm': 'PPM', 'pgm': 'PPM', 'webp': 'WEBP'}


def read_list(path):
    """``(name, label)`` per line: the label is the integer after the last space."""
    out = []
    with open(path, encoding='utf-8') as f:
        for number, line in enumerate(f, 1):
            line = line.rstrip('\r\n')
            if not line.strip():
                continue
            name, _, label = line.rpartition(' ')
            try:
                out.append((name, int(label)))
            except ValueError:
                raise CaffeError('%s:%d: expected "path label", got %r'
                                 % (path, number, line)) from None
    return out


def encode_image(image, encoding):
    """A C x H x W uint8 BGR (or grey) array encoded as ``encoding`` (png, jpg, ...);
    JPEG at quality 95, OpenCV's default."""
    fmt = _PIL_FORMATS.get(encoding.lower())
    if fmt is None:
        raise CaffeError('cannot encode images as %r; known: %s'
                         % (encoding, ', '.join(sorted(_PIL_FORMATS))))
    if image.shape[0] == 3:
        pil = Image.fromarray(np.ascontiguousarray(image[::-1].transpose(1, 2, 0)), 'RGB')
    else:
        pil = Image.fromarray(image[0], 'L')
    import io
    buf = io.BytesIO()
    pil.save(buf, fmt, **({'quality': 95} if fmt == 'JPEG' else {}))
    return buf.getvalue()


def image_to_datum(path, label, height=0, width=0, is_color=True, encoding=''):
    """Caffe's ReadImageToDatum: a Datum of the image at ``path``.

    Unencoded: channels, height, width and the C x H x W bytes. Encoded: the file's
    own bytes when it needs no conversion (same colour mode, no resize, extension
    ``encoding``), else the image re-encoded; ``encoded`` is set and the
    dimensions are not.
    """
    image = read_image(path, height, width, is_color)
    datum = caffe_pb2.Datum(label=label)
    if encoding:
        ext = os.path.splitext(path)[1][1:].lower()
        same_ext = ext == encoding.lower() or {ext, encoding.lower()} == {'jpg', 'jpeg'}
        if (image.shape[0] == 3) == bool(is_color) and not height and not width and same_ext:
            with open(path, 'rb') as f:
                datum.data = f.read()
        else:
            datum.data = encode_image(image, encoding)
        datum.encoded = True
        return datum
    datum.channels, datum.height, datum.width = image.shape
    datum.data = image.tobytes()
    return datum


def convert_imageset(root_folder, list_file, db_name, gray=False, shuffle=False,
                     backend='lmdb', resize_width=0, resize_height=0, check_size=False,
                     encoded=False, encode_type=''):
    """Write the listed images into a new database; returns how many were written."""
    lines = read_list(list_file)
    if shuffle:
        log.info('Shuffling data')
        order = layer_rng('convert_imageset', 'shuffle').permutation(len(lines))
        lines = [lines[i] for i in order]
    log.info('A total of %d images.', len(lines))
    if encode_type and not encoded:
        log.info('encode_type specified, assuming encoded=true.')
    encoded = encoded or bool(encode_type)
    height, width = max(0, resize_height), max(0, resize_width)
    data_size = None
    count = 0
    with db.open_writer(db_name, backend) as writer:
        for line_id, (name, label) in enumerate(lines):
            enc = encode_type
            if encoded and not enc:  # guess the encoding from the file name
                dot = name.rfind('.')
                if dot < 0:
                    log.warning("Failed to guess the encoding of '%s'", name)
                enc = name[dot + 1:].lower() if dot >= 0 else ''
            path = root_folder + name
            try:
                datum = image_to_datum(path, label, height, width, not gray, enc)
            except TransformError as err:
                log.error('%s', err)
                continue
            if check_size:
                size = len(datum.data)
                if data_size is None:
                    data_size = size
                elif size != data_size:
                    raise CaffeError('%s: incorrect data field size %d, the first image has %d '
                                     '(--check_size)' % (path, size, data_size))
            writer.put('%08d_%s' % (line_id, name), datum.SerializeToString())
            count += 1
            if count % 1000 == 0:
                writer.commit()
                log.info('Processed %d files.', count)
        if count % 1000 != 0:
            writer.commit()
            log.info('Processed %d files.', count)
    return count


def main(argv=None):
    """The command line: ``convert_imageset [FLAGS] ROOTFOLDER/ LISTFILE DB_NAME``."""
    install_default_handler()
    argv = sys.argv[1:] if argv is None else argv
    parsed = flags.parse_tool('convert_imageset', argv, FLAGS, HELP, USAGE, lambda n: n >= 3)
    if isinstance(parsed, int):
        return parsed
    args, values = parsed
    try:
        convert_imageset(*args[:3], **values)
    except (CaffeError, OSError) as err:
        print('convert_imageset: %s' % err, file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
