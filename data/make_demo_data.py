"""Generate the demo dataset: small synthetic scenes in PASCAL VOC and SBD layouts.

    python data/make_demo_data.py                        # 200 train + 50 val into data/demo-gen
    python data/make_demo_data.py --out /tmp/demo --train 20 --val 5 --seed 3

The same scenes are written twice, so the FCN data layers read them exactly as
they read the real datasets (training on SBD, validating on VOC)::

    <out>/VOC/JPEGImages/<id>.jpg
    <out>/VOC/SegmentationClass/<id>.png      palette PNG, VOC's colour map
    <out>/VOC/ImageSets/Segmentation/{train,val,seg11valid}.txt
    <out>/sbdd/img/<id>.jpg
    <out>/sbdd/cls/<id>.mat                   struct GTcls, field Segmentation (uint8)
    <out>/sbdd/{train,val}.txt
    <out>/classes.txt

``seg11valid.txt`` repeats ``val.txt`` so the shipped val prototxts' split name works.

Scenes. Four classes (``CLASSES``): 0 background, 1 disc, 2 polygon (rotated
rectangles and triangles), 3 stripe (thin lines 2 to 4 pixels wide across the
image). Each class has its own colour family and texture (shaded reddish discs,
hatched bluish polygons, flat yellowish stripes) drawn with per-object colour
jitter; the background is a smooth random field of earthy colours with grain,
and holds a few background-coloured decoy shapes labelled background. Pixel
noise covers everything. Images are 128 to 192 pixels on each side, sizes vary
per image. Two scales, so that the stages differ as on VOC: the polygons, the
decoys and half the discs are large (sizes in proportion to the image, about
a tenth to a half of its side), blobs that FCN-32s's stride of 32 can find;
the other discs have radii of 2.5 to 5 pixels and the stripes are 2 to 4 pixels
wide at any image size, details that need FCN-8s's finer strides.

Labels. Shapes are drawn anti-aliased from signed distance fields. As in VOC,
a one-pixel band on every object outline is void (255) in the VOC PNGs; the SBD
labels, like SBD's own, have no void. Thin stripes keep a labelled core.

Determinism. Sample ``i`` is drawn from ``numpy.random.default_rng([seed, i])``,
so a seed always gives the same scenes, whatever the split sizes; JPEG, PNG and
MAT bytes are identical from run to run (the MAT header's creation date is fixed).
The default 250 scenes take about five seconds.
"""
import argparse
import io
import os

import numpy as np
import scipy.io
from PIL import Image

CLASSES = ('background', 'disc', 'polygon', 'stripe')
VOID = 255
DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'demo-gen')
JPEG_QUALITY = 90

# Half width, in pixels, of the void band VOC draws on object outlines.
VOID_HALF_WIDTH = 0.5

# Fixed 116-byte descriptive text of the MAT-file header (scipy writes the date there).
MAT_HEADER_TEXT = b'MATLAB 5.0 MAT-file, Platform: posix, Created by: make_demo_data.py'


def voc_palette():
    """PASCAL VOC's colour map as a flat list of 768 ints (index i -> RGB).

    Bit k of the index's three low bits goes to bit 7 - k of R, G and B, then the
    next three bits, and so on (VOC devkit's ``labelcolormap``).

    Examples
    --------
    >>> p = voc_palette()
    >>> p[3:6], p[15 * 3:15 * 3 + 3], p[255 * 3:]
    ([128, 0, 0], [192, 128, 128], [224, 224, 192])
    """
    palette = []
    for index in range(256):
        rgb = [0, 0, 0]
        c = index
        for bit in range(8):
            for channel in range(3):
                rgb[channel] |= ((c >> channel) & 1) << (7 - bit)
            c >>= 3
        palette.extend(rgb)
    return palette


# ------------------------------------------------------------------------ shapes

def disc_sdf(yy, xx, cy, cx, r):
    """Signed distance to a disc's outline, positive inside."""
    return r - np.hypot(yy - cy, xx - cx)


def rectangle_sdf(yy, xx, cy, cx, half_h, half_w, angle):
    """Signed distance (inside exact, outside approximate) to a rotated rectangle."""
    c, s = np.cos(angle), np.sin(angle)
    u = (xx - cx) * c + (yy - cy) * s
    v = -(xx - cx) * s + (yy - cy) * c
    return np.minimum(half_w - np.abs(u), half_h - np.abs(v))


def triangle_sdf(yy, xx, corners):
    """Signed distance (inside exact, outside approximate) to a triangle ((y, x) x 3)."""
    (y0, x0), (y1, x1), (y2, x2) = corners
    if (x1 - x0) * (y2 - y0) - (y1 - y0) * (x2 - x0) < 0:  # make the winding consistent
        corners = corners[::-1]
    sd = None
    for (ya, xa), (yb, xb) in zip(corners, corners[1:] + corners[:1]):
        length = np.hypot(yb - ya, xb - xa)
        edge = ((xb - xa) * (yy - ya) - (yb - ya) * (xx - xa)) / length
        sd = edge if sd is None else np.minimum(sd, edge)
    return sd


def stripe_sdf(yy, xx, py, px, half_width, angle):
    """Signed distance to an infinite band through (py, px) at ``angle``."""
    return half_width - np.abs(-(xx - px) * np.sin(angle) + (yy - py) * np.cos(angle))


# ------------------------------------------------------------------------ textures

def jitter(rng, base, spread):
    """A colour near ``base`` (RGB), each channel moved by up to ``spread``."""
    return np.clip(np.asarray(base, float) + rng.uniform(-spread, spread, 3), 0, 255)


def background(rng, h, w):
    """A smooth field of earthy colours with fine grain, H x W x 3 float."""
    shade = rng.normal(0, 30, size=(4, 4, 1))  # brightness varies more than hue
    grid = np.clip(rng.normal((115, 118, 95), 18, size=(4, 4, 3)) + shade, 0, 255)
    grid = grid.astype(np.uint8)
    smooth = np.asarray(Image.fromarray(grid).resize((w, h), Image.BILINEAR), float)
    grain = rng.normal(0, 10, size=(h, w, 1))
    return smooth + grain


def hatch(yy, xx, rng):
    """A +-1 pattern of parallel lines (polygon texture)."""
    angle = rng.uniform(0, np.pi)
    period = rng.uniform(3, 5)
    return np.sign(np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period))


# ------------------------------------------------------------------------ scenes

def random_shapes(rng, h, w, yy, xx):
    """The scene's shapes in drawing order: (class, signed distance, H x W x 3 colour)."""
    shapes = []
    ones = np.ones((h, w, 1))
    k = min(h, w) / 100.0  # the large shapes' sizes are in hundredths of the image side

    def centre(margin=0):
        return rng.uniform(margin, h - margin), rng.uniform(margin, w - margin)

    for _ in range(rng.integers(0, 3)):  # background-coloured decoys
        cy, cx = centre()
        sd = (disc_sdf(yy, xx, cy, cx, k * rng.uniform(4, 12)) if rng.random() < 0.5 else
              rectangle_sdf(yy, xx, cy, cx, *(k * rng.uniform(3, 10, 2)),
                            rng.uniform(0, np.pi)))
        shapes.append((0, sd, ones * jitter(rng, (110, 115, 90), 40)))
    for _ in range(rng.integers(1, 3)):  # polygons
        cy, cx = centre(4)
        if rng.random() < 0.5:
            sd = rectangle_sdf(yy, xx, cy, cx, *(k * rng.uniform(6, 20, 2)),
                               rng.uniform(0, np.pi))
        else:
            radius = k * rng.uniform(10, 28)
            # corners about a third of a turn apart: no slivers
            angles = rng.uniform(0, 2 * np.pi) + np.arange(3) * 2 * np.pi / 3 \
                + rng.uniform(-0.5, 0.5, 3)
            corners = [(cy + radius * np.sin(a), cx + radius * np.cos(a)) for a in angles]
            sd = triangle_sdf(yy, xx, corners)
        colour = jitter(rng, (55, 85, 185), 35)
        shapes.append((2, sd, colour + 25 * hatch(yy, xx, rng)[..., None]))
    for _ in range(rng.integers(1, 5)):  # discs, half of them small at any image size
        cy, cx = centre(2)
        r = rng.uniform(2.5, 5) if rng.random() < 0.5 else k * rng.uniform(8, 20)
        dist = np.hypot(yy - cy, xx - cx)
        shade = (0.65 + 0.35 * np.clip(1 - dist / r, 0, 1))[..., None]
        shapes.append((1, disc_sdf(yy, xx, cy, cx, r), shade * jitter(rng, (205, 70, 55), 35)))
    for _ in range(rng.integers(0, 3)):  # thin stripes
        py, px = centre()
        sd = stripe_sdf(yy, xx, py, px, rng.uniform(1.0, 2.0), rng.uniform(0, np.pi))
        shapes.append((3, sd, ones * jitter(rng, (225, 205, 70), 30)))
    order = rng.permutation(len(shapes))
    return [shapes[i] for i in order]


def render_scene(rng, min_size=128, max_size=192):
    """One random scene.

    Returns
    -------
    image : (H, W, 3) uint8 RGB
    label : (H, W) uint8 class indices, no void (SBD style)
    voc_label : (H, W) uint8 class indices with 255 on object outlines (VOC style)
    """
    h, w = (int(v) for v in rng.integers(min_size, max_size + 1, size=2))
    yy, xx = np.mgrid[0:h, 0:w].astype(float) + 0.5  # pixel centres
    image = background(rng, h, w)
    label = np.zeros((h, w), np.uint8)
    void = np.zeros((h, w), bool)
    for cls, sd, colour in random_shapes(rng, h, w, yy, xx):
        alpha = np.clip(sd + 0.5, 0, 1)[..., None]  # anti-aliased coverage
        image = image * (1 - alpha) + colour * alpha
        label[sd > 0] = cls
        void &= sd < VOID_HALF_WIDTH           # hidden under this shape's interior
        void |= np.abs(sd) < VOID_HALF_WIDTH   # this shape's outline
    void &= near_class_change(label)           # decoy outlines inside background stay 0
    image += rng.normal(0, 6, size=image.shape)
    image = np.clip(np.round(image), 0, 255).astype(np.uint8)
    voc_label = np.where(void, VOID, label).astype(np.uint8)
    return image, label, voc_label


def near_class_change(label):
    """Pixels with a different class among their 8 neighbours."""
    padded = np.pad(label, 1, mode='edge')
    h, w = label.shape
    change = np.zeros(label.shape, bool)
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            change |= padded[dy:dy + h, dx:dx + w] != label
    return change


# ------------------------------------------------------------------------ writing

def _write_bytes(path, data):
    with open(path, 'wb') as f:
        f.write(data)


def encode_jpeg(image):
    """JPEG bytes; 4:4:4 chroma keeps the colour of thin stripes."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format='JPEG', quality=JPEG_QUALITY, subsampling=0)
    return buf.getvalue()


def encode_voc_png(label):
    """A palette PNG with VOC's colour map (pixel values are the class indices)."""
    h, w = label.shape
    im = Image.frombytes('P', (w, h), np.ascontiguousarray(label, np.uint8).tobytes())
    im.putpalette(voc_palette())
    buf = io.BytesIO()
    im.save(buf, format='PNG')
    return buf.getvalue()


def encode_sbd_mat(label):
    """SBD's ``cls/<id>.mat``: struct GTcls with Segmentation and CategoriesPresent.

    scipy writes the creation time into the 128-byte header's text; it is replaced
    by a fixed text so the bytes depend only on the label.
    """
    present = np.array([c for c in np.unique(label) if c != 0], np.uint8).reshape(-1, 1)
    gtcls = {'Segmentation': label.astype(np.uint8), 'CategoriesPresent': present}
    buf = io.BytesIO()
    scipy.io.savemat(buf, {'GTcls': gtcls}, do_compression=False, oned_as='column')
    data = bytearray(buf.getvalue())
    data[:116] = MAT_HEADER_TEXT.ljust(116, b' ')
    return bytes(data)


def sample_ids(count, start=0):
    """VOC-like ids: ``demo_000001``, ..."""
    return ['demo_%06d' % (start + i + 1) for i in range(count)]


def make_demo_data(out=DEFAULT_OUT, num_train=200, num_val=50, seed=0,
                   min_size=128, max_size=192):
    """Write the demo dataset under ``out`` in both layouts (see the module docstring).

    Parameters
    ----------
    out : str
        Folder to write; created if needed, files of the same names overwritten.
    num_train, num_val : int
        Samples in the ``train`` and ``val`` splits.
    seed : int
        Sample ``i`` comes from ``numpy.random.default_rng([seed, i])``.
    min_size, max_size : int
        Range of each image side, in pixels (inclusive).

    Returns
    -------
    dict
        ``voc_dir``, ``sbdd_dir``, ``train`` and ``val`` (lists of ids), ``classes``.
    """
    if num_train < 0 or num_val < 0 or num_train + num_val == 0:
        raise ValueError('need a positive number of samples, got train=%d val=%d'
                         % (num_train, num_val))
    if not 1 <= min_size <= max_size:
        raise ValueError('need 1 <= min_size <= max_size, got %d, %d' % (min_size, max_size))
    voc_dir = os.path.join(out, 'VOC')
    sbdd_dir = os.path.join(out, 'sbdd')
    folders = [os.path.join(voc_dir, 'JPEGImages'), os.path.join(voc_dir, 'SegmentationClass'),
               os.path.join(voc_dir, 'ImageSets', 'Segmentation'),
               os.path.join(sbdd_dir, 'img'), os.path.join(sbdd_dir, 'cls')]
    for folder in folders:
        os.makedirs(folder, exist_ok=True)

    ids = sample_ids(num_train + num_val)
    for i, sample_id in enumerate(ids):
        image, label, voc_label = render_scene(np.random.default_rng([seed, i]),
                                               min_size, max_size)
        jpeg = encode_jpeg(image)
        _write_bytes(os.path.join(voc_dir, 'JPEGImages', sample_id + '.jpg'), jpeg)
        _write_bytes(os.path.join(sbdd_dir, 'img', sample_id + '.jpg'), jpeg)
        _write_bytes(os.path.join(voc_dir, 'SegmentationClass', sample_id + '.png'),
                     encode_voc_png(voc_label))
        _write_bytes(os.path.join(sbdd_dir, 'cls', sample_id + '.mat'), encode_sbd_mat(label))

    splits = {'train': ids[:num_train], 'val': ids[num_train:]}
    lists = [(os.path.join(voc_dir, 'ImageSets', 'Segmentation', name + '.txt'), splits[name])
             for name in ('train', 'val')]
    lists.append((os.path.join(voc_dir, 'ImageSets', 'Segmentation', 'seg11valid.txt'),
                  splits['val']))
    lists += [(os.path.join(sbdd_dir, name + '.txt'), splits[name]) for name in ('train', 'val')]
    lists.append((os.path.join(out, 'classes.txt'), list(CLASSES)))
    for path, lines in lists:
        _write_bytes(path, ''.join(line + '\n' for line in lines).encode())
    return dict(voc_dir=voc_dir, sbdd_dir=sbdd_dir, classes=CLASSES, **splits)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', default=DEFAULT_OUT, help='output folder (default %(default)s)')
    parser.add_argument('--train', type=int, default=200, help='training samples')
    parser.add_argument('--val', type=int, default=50, help='validation samples')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--min-size', type=int, default=128)
    parser.add_argument('--max-size', type=int, default=192)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    info = make_demo_data(args.out, args.train, args.val, args.seed, args.min_size,
                          args.max_size)
    print('wrote %d train + %d val samples to %s and %s'
          % (len(info['train']), len(info['val']), info['voc_dir'], info['sbdd_dir']))
    return info


if __name__ == '__main__':
    main()
