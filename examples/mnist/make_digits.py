"""Generate MNIST-like digits and convert them into LMDBs, as Caffe's create_mnist.sh.

    python examples/mnist/make_digits.py                 # 5000 train + 1000 test digits
    python examples/mnist/make_digits.py --train 2000 --test 500 --seed 3
    caffe train --solver=examples/mnist/lenet_solver.prototxt --plot

Run from the repository root (the prototxts name ``examples/mnist/...`` paths, as
Caffe's do). Each digit 0-9 is drawn with Pillow's default font (DejaVu Sans) at a
random size, stroke, slant and shift, then blurred and noised: 28x28 grey PNGs in
``examples/mnist/digits/{train,test}/`` with Caffe's list files (``name label`` a
line). Then, as one would on the command line::

    convert_imageset --gray --shuffle examples/mnist/digits/ \\
        examples/mnist/digits/train.txt examples/mnist/mnist_train_lmdb
    convert_imageset --gray examples/mnist/digits/ \\
        examples/mnist/digits/test.txt examples/mnist/mnist_test_lmdb

Existing LMDBs are replaced (convert_imageset refuses to write into one).
"""
import argparse
import os
import shutil
import sys

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

HERE = os.path.dirname(os.path.abspath(__file__))
SIZE = 28


def render_digit(digit, rng):
    """One 28x28 uint8 image of ``digit``: white on black, as MNIST."""
    canvas = 56  # draw at twice the size, then shrink (antialiased strokes)
    font = ImageFont.load_default(size=int(rng.integers(30, 46)))
    im = Image.new('L', (canvas, canvas), 0)
    draw = ImageDraw.Draw(im)
    draw.text((canvas / 2, canvas / 2), str(digit), fill=255, font=font, anchor='mm',
              stroke_width=int(rng.integers(0, 3)), stroke_fill=255)
    shear = rng.uniform(-0.3, 0.3)
    im = im.transform(im.size, Image.AFFINE, (1, shear, -shear * canvas / 2, 0, 1, 0),
                      resample=Image.BILINEAR)
    im = im.rotate(rng.uniform(-15, 15), resample=Image.BILINEAR,
                   translate=tuple(int(v) for v in rng.integers(-6, 7, 2)))
    im = im.resize((SIZE, SIZE), Image.LANCZOS).filter(ImageFilter.GaussianBlur(0.4))
    a = np.asarray(im, np.float32) + rng.normal(0, 12, (SIZE, SIZE))
    return np.clip(a, 0, 255).astype(np.uint8)


def write_split(folder, split, count, rng):
    """``count`` digits (labels cycling 0-9) as PNGs in ``folder/split/`` and the list
    file ``folder/split.txt``; returns the list file's path."""
    os.makedirs(os.path.join(folder, split), exist_ok=True)
    lines = []
    for i in range(count):
        digit = i % 10
        name = '%s/%05d.png' % (split, i)
        Image.fromarray(render_digit(digit, rng)).save(os.path.join(folder, name))
        lines.append('%s %d\n' % (name, digit))
    path = os.path.join(folder, split + '.txt')
    with open(path, 'w') as f:
        f.writelines(lines)
    return path


def make_lmdbs(out, num_train, num_test, seed=0):
    """Digits under ``out/digits``, LMDBs ``out/mnist_train_lmdb`` and ``out/mnist_test_lmdb``."""
    from torchcaffe.tools import convert_imageset
    rng = np.random.default_rng(seed)
    digits = os.path.join(out, 'digits')
    for split, count, shuffle in (('train', num_train, True), ('test', num_test, False)):
        listing = write_split(digits, split, count, rng)
        db = os.path.join(out, 'mnist_%s_lmdb' % split)
        if os.path.exists(db):
            shutil.rmtree(db)
        argv = ['--gray'] + (['--shuffle'] if shuffle else []) + [digits + '/', listing, db]
        print('convert_imageset ' + ' '.join(argv))
        if convert_imageset.main(argv) != 0:
            raise SystemExit('make_digits.py: convert_imageset failed for %s' % listing)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--train', type=int, default=5000, help='training digits (default 5000)')
    p.add_argument('--test', type=int, default=1000, help='test digits (default 1000)')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--out', default=os.path.relpath(HERE),
                   help='folder for digits/ and the LMDBs (default: this example folder)')
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    make_lmdbs(args.out, args.train, args.test, args.seed)
    return 0


if __name__ == '__main__':
    sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))  # the repository root
    sys.exit(main())
