"""pycaffe's image helpers (``python/caffe/io.py``): loading, resizing, oversampling
and the ``Transformer`` that turns images into a net's input. ``torchcaffe.io``
(``caffe.io``) re-exports them.

Conventions are pycaffe's: :func:`load_image` gives float32 H x W x C images in
[0, 1] with channels in RGB order (as skimage reads them); nets take C x H x W
arrays, and the Transformer's ``set_channel_swap(in_, (2, 1, 0))`` makes the BGR
order that Caffe's reference models were trained on.

pycaffe uses skimage; this module uses Pillow and numpy/scipy and keeps
skimage's numbers where pycaffe's results depend on them:

* ``load_image``: skimage's ``img_as_float`` scaling (8-bit / 255, 16-bit /
  65535), alpha dropped, grey tiled to 3 channels when ``color``.
* ``resize_image`` of 1- or 3-channel images: pycaffe normalises to [0, 1], calls
  ``skimage.transform.resize(order=1, mode='constant')`` and scales back. That is
  bilinear interpolation at half-pixel centres (output pixel i samples input
  coordinate (i + 0.5) * in / out - 0.5) with zeros beyond the border in the
  normalised image, i.e. the image's minimum in the original range. It is
  computed here directly. Where this differs: skimage 0.19 and later smooth
  with a Gaussian before down-scaling by default (``anti_aliasing``), which the
  skimage releases of pycaffe's time did not; this follows those.
* other channel counts and ``interp_order`` other than 1 go through
  ``scipy.ndimage.zoom``, as pycaffe sends them (for orders other than 1 pycaffe
  would use skimage's spline warp; zoom's results differ slightly there).
"""
import numpy as np
from PIL import Image
from scipy.ndimage import zoom

__all__ = ['load_image', 'resize_image', 'oversample', 'Transformer']


# ------------------------------------------------------------------ loading

def load_image(filename, color=True):
    """Load an image as float32 in [0, 1], H x W x 3 (RGB), or H x W x 1 (grey).

    Parameters
    ----------
    filename : str or path
    color : bool
        True tiles a grey image to 3 channels; False keeps it 1 channel. Colour
        images stay RGB either way, as in pycaffe.

    Returns
    -------
    numpy.ndarray
        float32, H x W x 3 or H x W x 1.
    """
    with Image.open(filename) as im:
        im.load()
        img = _as_float(im)
    if img.ndim == 2:
        img = img[:, :, np.newaxis]
        if color:
            img = np.tile(img, (1, 1, 3))
    elif img.shape[2] == 4:
        img = img[:, :, :3]
    return img


def _as_float(im):
    """A PIL image as skimage's ``img_as_float(imread(...))`` gives it, in float32."""
    mode = im.mode
    if mode == 'P':
        im = im.convert('RGBA' if 'transparency' in im.info else 'RGB')
    elif mode == 'LA':
        im = im.convert('L')  # the alpha channel goes, as for RGBA
    elif mode in ('CMYK', 'YCbCr', 'LAB', 'HSV', 'RGBX'):
        im = im.convert('RGB')
    elif mode == 'PA':
        im = im.convert('RGBA')
    arr = np.asarray(im)
    if arr.dtype == np.bool_:
        return arr.astype(np.float32)
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / np.float32(255)
    if arr.dtype.kind == 'u' or mode.startswith('I;16'):
        return (arr.astype(np.float64) / 65535).astype(np.float32)
    if arr.dtype.kind == 'i':  # 32-bit integer images: skimage scales by the type's max
        return (arr.astype(np.float64) / np.iinfo(arr.dtype).max).astype(np.float32)
    return arr.astype(np.float32)


# ------------------------------------------------------------------ resizing

def _linear_weights(n_in, n_out):
    """The (n_out x n_in) matrix of 1-D linear interpolation at half-pixel centres,
    with zero beyond the border (skimage's ``resize(order=1, mode='constant')``).

    >>> _linear_weights(2, 4)
    array([[0.75, 0.  ],
           [0.75, 0.25],
           [0.25, 0.75],
           [0.  , 0.75]])
    """
    weights = np.zeros((n_out, n_in))
    coords = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    low = np.floor(coords).astype(int)
    frac = coords - low
    for i, (j, f) in enumerate(zip(low, frac)):
        if 0 <= j < n_in:
            weights[i, j] += 1 - f
        if 0 <= j + 1 < n_in:
            weights[i, j + 1] += f
    return weights


def resize_image(im, new_dims, interp_order=1):
    """Resize an H x W x K image to ``new_dims`` (pycaffe's ``caffe.io.resize_image``).

    Parameters
    ----------
    im : numpy.ndarray
        H x W x K.
    new_dims : (int, int)
        Height and width.
    interp_order : int
        1 (linear, the default) or another spline order.

    Returns
    -------
    numpy.ndarray
        float32, new_dims[0] x new_dims[1] x K.
    """
    im = np.asarray(im)
    new_dims = tuple(int(d) for d in new_dims)
    if im.shape[-1] in (1, 3):
        im_min, im_max = im.min(), im.max()
        if not im_max > im_min:  # a constant image (pycaffe avoids dividing by 0)
            return np.full(new_dims + (im.shape[-1],), im_min, dtype=np.float32)
        if interp_order == 1:
            std = (im.astype(np.float64) - im_min) / (im_max - im_min)
            rows = _linear_weights(im.shape[0], new_dims[0])
            cols = _linear_weights(im.shape[1], new_dims[1])
            resized = np.einsum('ij,jkc,lk->ilc', rows, std, cols)
            resized = np.clip(resized, 0, 1)  # skimage's clip=True
            return (resized * (im_max - im_min) + im_min).astype(np.float32)
    scale = tuple(np.array(new_dims, dtype=float) / np.array(im.shape[:2]))
    return zoom(im, scale + (1,), order=interp_order).astype(np.float32)


def oversample(images, crop_dims):
    """The 4 corner crops, the centre crop and their mirrors, of each image.

    Parameters
    ----------
    images : sequence of H x W x K arrays (all of one shape)
    crop_dims : (int, int)

    Returns
    -------
    numpy.ndarray
        float32, (10 N) x crop_h x crop_w x K: for each image its crops at the top
        left, top right, bottom left, bottom right, centre, then the same five
        mirrored left-right (pycaffe's order).
    """
    im_shape = np.array(images[0].shape)
    crop_dims = np.array(crop_dims)
    boxes = _crop_boxes(im_shape[:2], crop_dims)
    crops = np.empty((10 * len(images), crop_dims[0], crop_dims[1], im_shape[-1]),
                     dtype=np.float32)
    ix = 0
    for im in images:
        for y0, x0, y1, x1 in boxes:
            crops[ix] = im[y0:y1, x0:x1, :]
            ix += 1
        crops[ix:ix + 5] = crops[ix - 5:ix, :, ::-1, :]
        ix += 5
    return crops


def _crop_boxes(im_dims, crop_dims):
    """(y0, x0, y1, x1) of the four corner crops and the centre crop; the centre's
    coordinates are truncated to integers, as pycaffe's int array truncates them.

    >>> _crop_boxes((5, 6), (2, 3))
    [(0, 0, 2, 3), (0, 3, 2, 6), (3, 0, 5, 3), (3, 3, 5, 6), (1, 1, 3, 4)]
    """
    boxes = [(i, j, i + crop_dims[0], j + crop_dims[1])
             for i in (0, im_dims[0] - crop_dims[0]) for j in (0, im_dims[1] - crop_dims[1])]
    center = np.asarray(im_dims, dtype=float) / 2.0
    half = np.asarray(crop_dims, dtype=float) / 2.0
    centre = np.concatenate([center - half, center + half]).astype(int)
    boxes.append(tuple(centre))
    return [tuple(int(v) for v in b) for b in boxes]


# ------------------------------------------------------------------ Transformer

class Transformer:
    """Turns images into a net's input and back (pycaffe's ``caffe.io.Transformer``).

    Parameters
    ----------
    inputs : dict
        Input blob name -> its shape (N, C, H, W), e.g.
        ``{'data': net.blobs['data'].data.shape}``.

    Notes
    -----
    :meth:`preprocess` applies, in order: conversion to float32, resizing to the
    input's H x W, ``transpose``, ``channel_swap``, ``raw_scale`` (multiply),
    ``mean`` (subtract), ``input_scale`` (multiply). :meth:`deprocess` undoes them
    in reverse. Unlike pycaffe, the caller's array is never modified in place.
    """

    def __init__(self, inputs):
        self.inputs = {name: tuple(int(d) for d in shape) for name, shape in inputs.items()}
        self.transpose = {}
        self.channel_swap = {}
        self.raw_scale = {}
        self.mean = {}
        self.input_scale = {}

    def __check_input(self, in_):
        if in_ not in self.inputs:
            raise Exception('{} is not one of the net inputs: {}'.format(in_, self.inputs))

    def preprocess(self, in_, data):
        """Format H' x W' x K ``data`` as input ``in_`` wants it: K x H x W float32.

        Parameters
        ----------
        in_ : str
            The input blob's name.
        data : numpy.ndarray
            H' x W' x K image.

        Returns
        -------
        numpy.ndarray
        """
        self.__check_input(in_)
        caffe_in = np.array(data, dtype=np.float32)  # a copy: the caller's stays as it is
        transpose = self.transpose.get(in_)
        channel_swap = self.channel_swap.get(in_)
        raw_scale = self.raw_scale.get(in_)
        mean = self.mean.get(in_)
        input_scale = self.input_scale.get(in_)
        in_dims = self.inputs[in_][2:]
        if caffe_in.shape[:2] != in_dims:
            caffe_in = resize_image(caffe_in, in_dims)
        if transpose is not None:
            caffe_in = caffe_in.transpose(transpose)
        if channel_swap is not None:
            caffe_in = caffe_in[list(channel_swap), :, :]
        if raw_scale is not None:
            caffe_in = caffe_in * np.float32(raw_scale)
        if mean is not None:  # pycaffe's in-place -= rounds back to float32 here
            caffe_in = (caffe_in - mean).astype(np.float32)
        if input_scale is not None:
            caffe_in = caffe_in * np.float32(input_scale)
        return np.ascontiguousarray(caffe_in, dtype=np.float32)

    def deprocess(self, in_, data):
        """Undo :meth:`preprocess` (except the resize): K x H x W back to H x W x K."""
        self.__check_input(in_)
        decaf_in = np.array(data, copy=True).squeeze()
        transpose = self.transpose.get(in_)
        channel_swap = self.channel_swap.get(in_)
        raw_scale = self.raw_scale.get(in_)
        mean = self.mean.get(in_)
        input_scale = self.input_scale.get(in_)
        if input_scale is not None:
            decaf_in = decaf_in / input_scale
        if mean is not None:
            decaf_in = decaf_in + mean
        if raw_scale is not None:
            decaf_in = decaf_in / raw_scale
        if channel_swap is not None:
            decaf_in = decaf_in[np.argsort(channel_swap), :, :]
        if transpose is not None:
            decaf_in = decaf_in.transpose(np.argsort(transpose))
        return decaf_in

    def set_transpose(self, in_, order):
        """Set the axis order, e.g. ``(2, 0, 1)`` for H x W x K images to K x H x W."""
        self.__check_input(in_)
        if len(order) != len(self.inputs[in_]) - 1:
            raise Exception('Transpose order needs to have the same number of '
                            'dimensions as the input.')
        self.transpose[in_] = tuple(order)

    def set_channel_swap(self, in_, order):
        """Set the channel order after transposing, e.g. ``(2, 1, 0)`` for RGB to BGR."""
        self.__check_input(in_)
        if len(order) != self.inputs[in_][1]:
            raise Exception('Channel swap needs to have the same number of '
                            'dimensions as the input channels.')
        self.channel_swap[in_] = tuple(order)

    def set_raw_scale(self, in_, scale):
        """Set the factor applied before the mean (255 for models trained on [0, 255]
        pixels, since ``load_image`` gives [0, 1])."""
        self.__check_input(in_)
        self.raw_scale[in_] = scale

    def set_mean(self, in_, mean):
        """Set the mean to subtract: K values (one per channel) or a K x H x W array.

        Raises
        ------
        ValueError
            The mean fits neither the input's channels nor its shape.
        """
        self.__check_input(in_)
        mean = np.asarray(mean)
        ms = mean.shape
        if mean.ndim == 1:
            if ms[0] != self.inputs[in_][1]:
                raise ValueError('Mean channels incompatible with input.')
            mean = mean[:, np.newaxis, np.newaxis]
        else:
            if len(ms) == 2:
                ms = (1,) + ms
            if len(ms) != 3:
                raise ValueError('Mean shape invalid')
            if ms != self.inputs[in_][1:]:
                raise ValueError('Mean shape incompatible with input shape.')
        self.mean[in_] = mean

    def set_input_scale(self, in_, scale):
        """Set the factor applied last, after the mean."""
        self.__check_input(in_)
        self.input_scale[in_] = scale


def input_transformer(name, shape, mean=None, input_scale=None, raw_scale=None,
                      channel_swap=None):
    """The Transformer pycaffe's Classifier and Detector set up for input ``name``:
    H x W x K images to K x H x W, then each given setting (None leaves it out)."""
    transformer = Transformer({name: shape})
    transformer.set_transpose(name, (2, 0, 1))
    if mean is not None:
        transformer.set_mean(name, mean)
    if input_scale is not None:
        transformer.set_input_scale(name, input_scale)
    if raw_scale is not None:
        transformer.set_raw_scale(name, raw_scale)
    if channel_swap is not None:
        transformer.set_channel_swap(name, channel_swap)
    return transformer
