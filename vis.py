"""Colour maps and overlays for segmentations, in PASCAL VOC's colours.

    python vis.py data/demo/label.png --image data/demo/image.jpg --out out/vis
    python vis.py LABEL.png [--image IMAGE.jpg] [--alpha 0.5] [--out DIR]

writes ``<name>_color.png`` (the label in VOC's colours) and, with ``--image``,
``<name>_overlay.jpg`` (the colours blended over the image). In Python::

    from vis import make_palette, color_seg, vis_seg
    palette = make_palette(21)
    colors = color_seg(label, palette)        # H x W x 3 uint8
    overlay = vis_seg(image, label, palette)  # classes > 0 blended over the image

VOC's colour of class ``k`` interleaves the bits of ``k`` from the top of each
channel down: bit 0 of ``k`` goes to red's bit 7, bit 1 to green's bit 7, bit 2
to blue's bit 7, bit 3 to red's bit 6, and so on, so neighbouring classes get
far-apart colours. The void label 255 gets entry 255 of that map, VOC's cream
border colour (224, 224, 192), even when the palette has fewer entries.
"""
import argparse
import os
import sys

import numpy as np
from PIL import Image

__all__ = ['VOID_LABEL', 'VOID_COLOR', 'make_palette', 'color_seg', 'vis_seg', 'label_image']

VOID_LABEL = 255


def make_palette(num_classes):
    """VOC's colour map for ``num_classes`` classes.

    Parameters
    ----------
    num_classes : int

    Returns
    -------
    ndarray
        ``num_classes`` x 3 uint8 RGB colours; row ``k`` is class ``k``'s colour.

    Examples
    --------
    >>> make_palette(5).tolist()
    [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0], [0, 0, 128]]
    >>> make_palette(256)[255].tolist()
    [224, 224, 192]
    """
    num_classes = int(num_classes)
    if num_classes < 0:
        raise ValueError('make_palette: num_classes must be >= 0, got %d' % num_classes)
    palette = np.zeros((num_classes, 3), dtype=np.uint8)
    for k in range(num_classes):
        label, shift = k, 7
        while label:
            for channel in range(3):
                palette[k, channel] |= ((label >> channel) & 1) << shift
            label >>= 3
            shift -= 1
    return palette


VOID_COLOR = tuple(int(c) for c in make_palette(VOID_LABEL + 1)[VOID_LABEL])


def _lookup(seg, palette):
    """The colour of every pixel of ``seg`` (H x W x 3 uint8).

    Void (255) takes VOC's void colour when the palette stops short of it; any
    other label outside the palette is an error naming the labels.
    """
    seg = np.asarray(seg)
    palette = np.asarray(palette, dtype=np.uint8)
    if palette.ndim != 2 or palette.shape[1] != 3:
        raise ValueError('palette must be K x 3 (RGB rows), got shape %s' % (palette.shape,))
    if seg.dtype.kind not in 'uib':
        raise ValueError('segmentation must hold integer class indices, got dtype %s' % seg.dtype)
    seg = seg.astype(np.int64)
    table = palette
    if len(table) <= VOID_LABEL:
        table = np.concatenate([table, np.zeros((VOID_LABEL + 1 - len(table), 3), np.uint8)])
        table[VOID_LABEL] = VOID_COLOR
        valid = ((seg >= 0) & (seg < len(palette))) | (seg == VOID_LABEL)
    else:
        valid = (seg >= 0) & (seg < len(palette))
    if not valid.all():
        bad = np.unique(seg[~valid])
        raise ValueError('segmentation has label(s) %s outside the palette of %d colours '
                         '(0..%d, and %d for void)' % (', '.join(map(str, bad[:10])),
                                                      len(palette), len(palette) - 1, VOID_LABEL))
    return table[seg]


def color_seg(seg, palette):
    """Replace class indices by their colours.

    Parameters
    ----------
    seg : array_like
        H x W integer class indices (255 = void).
    palette : array_like
        K x 3 RGB colours, e.g. :func:`make_palette`.

    Returns
    -------
    ndarray
        H x W x 3 uint8.

    Examples
    --------
    >>> color_seg(np.array([[0, 1], [2, 255]]), make_palette(3)).tolist()
    [[[0, 0, 0], [128, 0, 0]], [[0, 128, 0], [224, 224, 192]]]
    """
    return _lookup(seg, palette)


def vis_seg(img, seg, palette, alpha=0.5):
    """Blend the colours of ``seg`` over ``img``.

    As the reference, background (0) pixels show the image unchanged and every
    other pixel, void included, becomes ``(1 - alpha) * image + alpha * colour``.
    Values are rounded to the nearest integer (the reference truncates, which can
    darken a pixel by one).

    Parameters
    ----------
    img : array_like
        H x W x 3 image with values in [0, 255].
    seg : array_like
        H x W class indices.
    palette : array_like
        K x 3 colours.
    alpha : float
        Opacity of the colours, in [0, 1].

    Returns
    -------
    ndarray
        H x W x 3 uint8.

    Examples
    --------
    >>> img = np.full((1, 2, 3), 100, np.uint8)
    >>> vis_seg(img, np.array([[0, 1]]), make_palette(2)).tolist()
    [[[100, 100, 100], [114, 50, 50]]]
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError('alpha must be in [0, 1], got %r' % (alpha,))
    vis = np.array(img, dtype=np.float32)
    seg = np.asarray(seg)
    if vis.ndim != 3 or vis.shape[2] != 3 or vis.shape[:2] != seg.shape:
        raise ValueError('image of shape %s does not fit a segmentation of shape %s '
                         '(expected H x W x 3 and H x W)' % (vis.shape, seg.shape))
    colors = _lookup(seg, palette)
    mask = seg != 0
    vis[mask] = (1.0 - alpha) * vis[mask] + alpha * colors[mask]
    return np.clip(np.rint(vis), 0, 255).astype(np.uint8)


def label_image(seg, palette=None):
    """A palette ('P') image whose pixel values are the class indices, as VOC's labels.

    Parameters
    ----------
    seg : array_like
        H x W class indices in 0..255.
    palette : array_like, optional
        Up to 256 x 3 colours; VOC's 256-colour map by default.

    Returns
    -------
    PIL.Image.Image
        Save it as PNG to get a file that reads back as the indices.
    """
    seg = np.asarray(seg)
    if seg.ndim != 2:
        raise ValueError('segmentation must be H x W, got shape %s' % (seg.shape,))
    if seg.size and (seg.min() < 0 or seg.max() > 255):
        raise ValueError('a palette PNG holds labels 0..255, got %d..%d' % (seg.min(), seg.max()))
    palette = make_palette(256) if palette is None else np.asarray(palette, np.uint8)
    im = Image.fromarray(seg.astype(np.uint8))  # mode 'L'
    im.putpalette(palette.ravel().tolist())     # 'L' becomes 'P', the indices unchanged
    return im


# ------------------------------------------------------------------------ command line

def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('label', help='label PNG of class indices (e.g. VOC SegmentationClass)')
    parser.add_argument('--image', help='the image to overlay the label on')
    parser.add_argument('--alpha', type=float, default=0.5, help='opacity of the colours')
    parser.add_argument('--out', default='.', help='output folder (default: here)')
    return parser.parse_args(argv)


def main(argv=None):
    from seg_layers import IMAGE_FORMATS  # the raster formats the data layers read
    args = parse_args(argv)
    try:
        seg = np.array(Image.open(args.label, formats=['PNG']))
        if seg.ndim != 2:
            raise ValueError('%s: a label must be a one-channel image of class indices, got '
                             'shape %s' % (args.label, seg.shape))
        palette = make_palette(VOID_LABEL)  # every label 0..254, and void
        os.makedirs(args.out, exist_ok=True)
        name = os.path.splitext(os.path.basename(args.label))[0]
        written = [os.path.join(args.out, name + '_color.png')]
        Image.fromarray(color_seg(seg, palette)).save(written[0])
        if args.image:
            img = np.array(Image.open(args.image, formats=IMAGE_FORMATS).convert('RGB'))
            written.append(os.path.join(args.out, name + '_overlay.jpg'))
            Image.fromarray(vis_seg(img, seg, palette, args.alpha)).save(
                written[1], quality=95)
    except (OSError, ValueError) as err:
        raise SystemExit('vis.py: %s' % err)
    for path in written:
        print(path)
    return 0


if __name__ == '__main__':
    sys.exit(main())
