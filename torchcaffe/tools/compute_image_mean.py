"""Caffe's ``compute_image_mean``: the mean image of a database of Datums.

    compute_image_mean [--backend lmdb|leveldb] INPUT_DB [OUTPUT_FILE]

As ``tools/compute_image_mean.cpp``: every record is decoded as stored, summed in
float32 (element by element, in key order, so the rounding is Caffe's), divided by
the count and written as a BlobProto (``.binaryproto``, legacy 1 x C x H x W
dimensions) when OUTPUT_FILE is given; the per-channel means are logged. All
records must have the size of the first.
"""
import logging
import sys

import numpy as np

from .. import db, io
from ..errors import CaffeError
from ..glog import LOGGER_NAME, install_default_handler
from ..layer_types.data import datum_image
from ..proto import caffe_pb2
from . import flags

__all__ = ['main', 'compute_image_mean', 'mean_blobproto']

log = logging.getLogger(LOGGER_NAME + '.compute_image_mean')

FLAGS = {'backend': (str, 'lmdb')}
HELP = {'backend': 'The backend {leveldb, lmdb} containing the images'}
USAGE = ('Compute the mean_image of a set of images given by a leveldb/lmdb\n'
         'Usage:\n    compute_image_mean [FLAGS] INPUT_DB [OUTPUT_FILE]\n')


def compute_image_mean(db_path, backend='lmdb'):
    """The float32 C x H x W mean of the database's images.

    Raises
    ------
    CaffeError
        A record whose size differs from the first's, or an empty database.
    """
    reader = db.open_reader(db_path, backend)  # main's messages name the tool
    total = None
    count = 0
    try:
        for key, value in reader:
            where = 'record %r of %s' % (key.decode('utf-8', 'replace'), db_path)
            image = datum_image(caffe_pb2.Datum.FromString(value), None, where)
            if total is None:
                total = np.zeros(image.shape, np.float32)
            elif image.shape != total.shape:
                raise CaffeError('%s: incorrect data field size: image %s, the first is %s'
                                 % (where, image.shape, total.shape))
            total += image.astype(np.float32)  # Caffe sums in float32
            count += 1
            if count % 10000 == 0:
                log.info('Processed %d files.', count)
    finally:
        reader.close()
    if count % 10000 != 0:
        log.info('Processed %d files.', count)
    return total / np.float32(count)


def mean_blobproto(mean):
    """A BlobProto of a C x H x W mean with legacy dims 1 x C x H x W, as Caffe writes it."""
    c, h, w = mean.shape
    blob = caffe_pb2.BlobProto(num=1, channels=c, height=h, width=w)
    blob.data.extend(np.asarray(mean, np.float32).ravel())
    return blob


def main(argv=None):
    """The command line: ``compute_image_mean [FLAGS] INPUT_DB [OUTPUT_FILE]``."""
    install_default_handler()
    argv = sys.argv[1:] if argv is None else argv
    parsed = flags.parse_tool('compute_image_mean', argv, FLAGS, HELP, USAGE,
                              lambda n: n in (1, 2))
    if isinstance(parsed, int):
        return parsed
    args, values = parsed
    try:
        mean = compute_image_mean(args[0], values['backend'])
        if len(args) == 2:
            log.info('Write to %s', args[1])
            io.write_blobproto(mean_blobproto(mean), args[1])
    except (CaffeError, OSError) as err:
        print('compute_image_mean: %s' % err, file=sys.stderr)
        return 1
    log.info('Number of channels: %d', mean.shape[0])
    for c, value in enumerate(mean.reshape(mean.shape[0], -1).mean(axis=1, dtype=np.float64)):
        log.info('mean_value channel [%d]: %g', c, value)
    return 0


if __name__ == '__main__':
    sys.exit(main())
