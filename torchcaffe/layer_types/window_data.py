"""Caffe's WindowData (R-CNN fine-tuning): batches of warped object and background
windows from a window file (``src/caffe/layers/window_data_layer.cpp``).

The window file repeats, for each image::

    # image_index
    img_path
    channels
    height
    width
    num_windows
    class_index overlap x1 y1 x2 y2     (num_windows lines; inclusive pixel boxes)

A window with ``overlap >= fg_threshold`` is foreground (its class must be > 0);
one with ``overlap < bg_threshold`` is background (label 0); the rest are unused.
Each batch draws ``int(batch_size * fg_fraction)`` foreground windows and the rest
background ones, background first, each uniformly with replacement, then (with
``transform_param.mirror``) a coin for the flip. A window grows by ``context_pad``
pixels of context on each side after warping (``crop_mode: "square"`` first makes
it square), is clipped to the image, warped bilinearly to its share of the
``crop_size`` x ``crop_size`` output, and placed there; outside it the output is 0.
Values are ``(pixel - mean) * window_data_param.scale``, the mean taken from the
centre of ``transform_param.mean_file`` (or ``mean_value``). As in Caffe, the scale
is window_data_param's, not transform_param's (so a V1 net, whose upgrade moves
``scale`` into transform_param, runs with scale 1 here as in Caffe). Images are read in colour (BGR)
from ``root_folder`` + path. The random stream is a seeded numpy generator, not
Caffe's.
"""
import numpy as np

from ..data_transformer import TransformError, layer_rng, read_image, read_mean_file
from ..data_transformer import resize_bilinear, rng_state, set_rng_state
from .base import register
from .data import DataLayerError, _BatchLayer

__all__ = ['read_window_file', 'c_round', 'window_geometry']


def c_round(x):
    """C's ``round``: halves go away from zero (Python's round goes to even).

    >>> c_round(2.5), c_round(-2.5), c_round(1.4)
    (3, -3, 1)
    """
    return int(np.sign(x) * np.floor(abs(x) + 0.5))


def read_window_file(path, fg_threshold, bg_threshold, root_folder='', where='WindowData'):
    """Parse a window file.

    Returns
    -------
    images : list of (path, (channels, height, width))
        Indexed by image_index.
    fg, bg : list of (image_index, label, overlap, x1, y1, x2, y2)
    """
    try:
        with open(path, encoding='utf-8') as f:
            tokens = f.read().split()
    except OSError as err:
        raise DataLayerError('%s: failed to open window file %s: %s' % (where, path, err)) from None
    if not tokens:
        raise DataLayerError('%s: window file %s is empty' % (where, path))
    images, fg, bg = {}, [], []
    pos = 0

    def take(kind, what):
        nonlocal pos
        if pos >= len(tokens):
            raise DataLayerError('%s: window file %s ends in the middle of an image (expected '
                                 '%s)' % (where, path, what))
        text = tokens[pos]
        pos += 1
        try:
            return kind(text)
        except ValueError:
            raise DataLayerError('%s: window file %s: expected %s, got %r'
                                 % (where, path, what, text)) from None

    while pos < len(tokens):
        if take(str, "'#'") != '#':
            raise DataLayerError("%s: window file %s: expected '#' before image %d, got %r"
                                 % (where, path, len(images), tokens[pos - 1]))
        index = take(int, 'an image index')
        image_path = root_folder + take(str, 'an image path')
        size = (take(int, 'channels'), take(int, 'height'), take(int, 'width'))
        images[index] = (image_path, size)
        for _ in range(take(int, 'the number of windows')):
            label, overlap = take(int, 'a class index'), take(float, 'an overlap')
            box = tuple(take(int, 'a box coordinate') for _ in range(4))
            if overlap >= fg_threshold:
                if label <= 0:
                    raise DataLayerError('%s: window file %s: image %d has a foreground window '
                                         'of class %d (must be > 0)' % (where, path, index, label))
                fg.append((index, label, overlap) + box)
            elif overlap < bg_threshold:
                bg.append((index, 0, 0.0) + box)
    return [images[i] for i in sorted(images)], fg, bg


def window_geometry(box, image_hw, crop_size, context_pad=0, square=False, mirror=False):
    """Where a window's pixels go in the crop (Caffe's WindowDataLayer arithmetic, in
    float32 as Caffe's Dtype).

    Parameters
    ----------
    box : (x1, y1, x2, y2)
        Inclusive pixel box.
    image_hw : (height, width)

    Returns
    -------
    (x1, y1, x2, y2), (out_h, out_w), (pad_h, pad_w)
        The clipped source box, the size it is warped to, and where its top-left goes.

    Examples
    --------
    A 4 x 4 box with 2 pixels of context in an 8-pixel crop doubles about Caffe's
    centre ``x1 + width / 2`` (half a pixel right of the box's own centre):

    >>> window_geometry((2, 2, 5, 5), (10, 10), 8, context_pad=2)
    ((0, 0, 8, 8), (8, 8), (0, 0))

    At the image corner the part past the edge becomes padding (2 * 8/9, rounded):

    >>> window_geometry((0, 0, 3, 3), (10, 10), 8, context_pad=2)
    ((0, 0, 6, 6), (6, 6), (2, 2))
    """
    x1, y1, x2, y2 = box
    rows, cols = image_hw
    f = np.float32
    if not (context_pad > 0 or square):
        return (x1, y1, x2, y2), (crop_size, crop_size), (0, 0)
    context_scale = f(crop_size) / f(crop_size - 2 * context_pad)
    half_h = f((y2 - y1 + 1) / 2.0)
    half_w = f((x2 - x1 + 1) / 2.0)
    cx, cy = f(x1) + half_w, f(y1) + half_h
    if square:
        half_h = half_w = max(half_h, half_w)
    x1 = c_round(cx - half_w * context_scale)
    x2 = c_round(cx + half_w * context_scale)
    y1 = c_round(cy - half_h * context_scale)
    y2 = c_round(cy + half_h * context_scale)
    unclipped_h, unclipped_w = y2 - y1 + 1, x2 - x1 + 1
    pad_x1, pad_y1 = max(0, -x1), max(0, -y1)
    pad_x2, pad_y2 = max(0, x2 - cols + 1), max(0, y2 - rows + 1)
    x1, x2, y1, y2 = x1 + pad_x1, x2 - pad_x2, y1 + pad_y1, y2 - pad_y2
    scale_x = f(crop_size) / f(unclipped_w)
    scale_y = f(crop_size) / f(unclipped_h)
    out_w = c_round(f(x2 - x1 + 1) * scale_x)
    out_h = c_round(f(y2 - y1 + 1) * scale_y)
    pad_x1, pad_x2 = c_round(f(pad_x1) * scale_x), c_round(f(pad_x2) * scale_x)
    pad_y1 = c_round(f(pad_y1) * scale_y)
    pad_h = pad_y1
    pad_w = pad_x2 if mirror else pad_x1  # the padding is mirrored too
    # rounding may leave the warped region plus padding past the crop: shrink it
    out_h = min(out_h, crop_size - pad_h)
    out_w = min(out_w, crop_size - pad_w)
    return (x1, y1, x2, y2), (out_h, out_w), (pad_h, pad_w)


class _WindowSource:
    def __init__(self, images, fg, bg, p, crop_size, mirror, mean, mean_values, rng, where):
        self.images, self.fg, self.bg, self.p = images, fg, bg, p
        self.crop_size, self.mirror, self.rng, self.where = crop_size, mirror, rng, where
        self.mean, self.mean_values = mean, mean_values
        self.channels = images[-1][1][0]

    def get_state(self):
        """Windows are drawn with replacement: the generator is all there is to save."""
        return {'rng': rng_state(self.rng)}

    def set_state(self, state):
        set_rng_state(self.rng, state['rng'], self.where)

    def _window(self, window, do_mirror):
        index, label = window[0], window[1]
        path = self.images[index][0]
        try:
            image = read_image(path, 0, 0, True)
        except TransformError as err:
            raise DataLayerError('%s: %s' % (self.where, err)) from None
        c = self.crop_size
        (x1, y1, x2, y2), (out_h, out_w), (pad_h, pad_w) = window_geometry(
            window[3:], image.shape[1:], c, self.p.context_pad, self.p.crop_mode == 'square',
            do_mirror)
        if not (0 <= x1 <= x2 < image.shape[2] and 0 <= y1 <= y2 < image.shape[1]):
            raise DataLayerError('%s: window (%d, %d, %d, %d) lies outside %s (%d x %d)'
                                 % (self.where, x1, y1, x2, y2, path, image.shape[1],
                                    image.shape[2]))
        patch = resize_bilinear(image[:, y1:y2 + 1, x1:x2 + 1], out_h, out_w)
        if do_mirror:
            patch = patch[:, :, ::-1]
        out = np.zeros((image.shape[0], c, c), np.float32)
        rows, cols = slice(pad_h, pad_h + out_h), slice(pad_w, pad_w + out_w)
        values = patch.astype(np.float32)
        if self.mean is not None:
            off = (self.mean.shape[2] - c) // 2
            values = values - self.mean[:, off + pad_h:off + pad_h + out_h,
                                        off + pad_w:off + pad_w + out_w]
        elif self.mean_values is not None:
            values = values - self.mean_values[:, None, None]
        out[:, rows, cols] = values * np.float32(self.p.scale)
        return out, label

    def load(self):
        n = self.p.batch_size
        num_fg = int(np.float32(n) * np.float32(self.p.fg_fraction))
        images, labels = [], []
        for pool, count in ((self.bg, n - num_fg), (self.fg, num_fg)):
            for _ in range(count):
                window = pool[int(self.rng.integers(len(pool)))]
                do_mirror = self.mirror and bool(self.rng.integers(2))
                image, label = self._window(window, do_mirror)
                images.append(image)
                labels.append(label)
        return np.stack(images), np.asarray(labels, np.float32)


@register
class WindowDataLayer(_BatchLayer):
    """Caffe's WindowData; see the module docstring."""
    type = 'WindowData'
    top_counts = (2, 2)

    def make_source(self):
        p = self.layer_param.window_data_param
        t = self.layer_param.transform_param
        if p.batch_size <= 0:
            raise self.error('window_data_param.batch_size must be positive')
        if t.crop_size <= 0:
            raise self.error('WindowData needs transform_param.crop_size > 0')
        if p.crop_mode not in ('warp', 'square'):
            raise self.error('crop_mode must be "warp" or "square", got %r' % p.crop_mode)
        if 2 * p.context_pad >= t.crop_size:
            raise self.error('context_pad %d leaves nothing of a crop of %d'
                             % (p.context_pad, t.crop_size))
        images, fg, bg = read_window_file(p.source, p.fg_threshold, p.bg_threshold,
                                          p.root_folder, self.where)
        num_fg = int(np.float32(p.batch_size) * np.float32(p.fg_fraction))
        for pool, count, what in ((fg, num_fg, 'foreground'),
                                  (bg, p.batch_size - num_fg, 'background')):
            if count and not pool:
                raise self.error('%s has no %s windows, and a batch needs %d'
                                 % (p.source, what, count))
        if t.mean_file and len(t.mean_value):
            raise self.error('cannot specify mean_file and mean_value at the same time')
        mean = read_mean_file(t.mean_file, self.where) if t.mean_file else None
        channels = images[-1][1][0]
        if mean is not None and (mean.shape[0] != channels or min(mean.shape[1:]) < t.crop_size):
            raise self.error('mean_file is %s, smaller than %d x %d x %d'
                             % (mean.shape, channels, t.crop_size, t.crop_size))
        mean_values = None
        if len(t.mean_value):
            mean_values = np.asarray(list(t.mean_value), np.float32)
            if len(mean_values) == 1:
                mean_values = np.repeat(mean_values, channels)
            elif len(mean_values) != channels:
                raise self.error('%d mean_value entries for %d channels'
                                 % (len(mean_values), channels))
        return _WindowSource(images, fg, bg, p, t.crop_size, t.mirror, mean, mean_values,
                             layer_rng(self.name, 'windows'), self.where)
