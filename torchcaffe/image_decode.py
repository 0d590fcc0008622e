"""Images as Caffe reads them through OpenCV, here through Pillow: decoded to C x H x W
uint8 arrays in OpenCV's channel order (BGR for colour), grey as OpenCV's codecs make
it, resized with ``cv::resize``'s INTER_LINEAR fixed-point arithmetic.

Caffe's ``DecodeDatumToCVMat`` is :func:`decode_image`, ``ReadImageToCVMat`` is
:func:`read_image`. Both :mod:`torchcaffe.io` (encoded Datums) and
:mod:`torchcaffe.data_transformer` use them; this module imports neither.
"""
import io as _io

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import TransformError

__all__ = ['decode_image', 'read_image', 'resize_bilinear', 'rgb_to_gray']


def rgb_to_gray(rgb, image_format='PNG'):
    """Grey values of an H x W x 3 uint8 RGB array, as OpenCV's IMREAD_GRAYSCALE makes them.

    For PNG, OpenCV asks libpng (``png_set_rgb_to_gray`` with 0.299, 0.587, which
    libpng truncates to 15-bit weights and applies without rounding); for other
    formats it converts with ``cvtColor`` (14-bit weights, rounded). JPEGs are
    decoded to grey by the JPEG library itself (see :func:`decode_image`).

    >>> rgb_to_gray(np.array([[[255, 0, 0], [10, 200, 30]]], np.uint8))
    array([[ 76, 123]], dtype=uint8)
    """
    r, g, b = (rgb[..., k].astype(np.int64) for k in range(3))
    if image_format == 'PNG':
        gray = (9797 * r + 19234 * g + 3737 * b) >> 15
    else:
        gray = (4899 * r + 9617 * g + 1868 * b + 8192) >> 14
    return gray.astype(np.uint8)


_GREY_MODES = ('1', 'L', 'LA', 'I', 'I;16', 'F')


def _to_array(img, color):
    """A Pillow image as a C x H x W uint8 array, BGR for colour (OpenCV's order).

    ``color``: True -> 3 channels, False -> 1 channel, None -> as stored (OpenCV's
    IMREAD_ANYCOLOR: grey stays grey, alpha is dropped).
    """
    if color is None:
        color = img.mode not in _GREY_MODES
    if color:
        arr = np.asarray(img.convert('RGB'))[:, :, ::-1]
        return np.ascontiguousarray(arr.transpose(2, 0, 1))
    if img.mode in _GREY_MODES:
        return np.asarray(img.convert('L'))[None].copy()
    return rgb_to_gray(np.asarray(img.convert('RGB')), img.format)[None]


def decode_image(data, color=None, where='image'):
    """Decode encoded image bytes (JPEG, PNG, ...) to a C x H x W uint8 array.

    Colour images match OpenCV's ``imdecode`` exactly; grey conversions follow its
    codecs (:func:`rgb_to_gray`; a JPEG is decoded straight to grey, as libjpeg
    does for OpenCV).

    Parameters
    ----------
    data : bytes
    color : bool or None
        True: 3 channels BGR; False: 1 grey channel; None: as stored (Caffe's
        ``DecodeDatumToCVMatNative``).
    where : str
        What the bytes are, for the error message.
    """
    try:
        with Image.open(_io.BytesIO(data)) as img:
            if color is False and img.format == 'JPEG':
                img.draft('L', img.size)
            img.load()
            return _to_array(img, color)
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise TransformError('%s: could not decode the image (%d bytes): %s'
                             % (where, len(data), err)) from err


def _linear_taps(n_in, n_out, clamp_fraction):
    """OpenCV's INTER_LINEAR source taps: lower index, upper index, the fraction (in
    float32, as OpenCV computes it: ``(i + 0.5) * scale - 0.5`` with ``scale = 1 /
    (n_out / n_in)``) and both weights in 1/2048 units.

    Past the image's edges the taps are clamped to the first / last pixel. OpenCV
    (resize.cpp) also zeroes the fraction there along x, but not along y: its row
    loop reads the clamped row twice with the unclamped weights, whose fixed-point
    terms round separately (``clamp_fraction=False``)."""
    scale = 1.0 / (n_out / n_in)
    pos = ((np.arange(n_out) + 0.5) * scale - 0.5).astype(np.float32)
    lo = np.floor(pos).astype(np.int64)
    frac = (pos - lo.astype(np.float32)).astype(np.float32)
    if clamp_fraction:
        frac[lo < 0] = 0
        frac[lo >= n_in - 1] = 0
    hi = np.clip(lo + 1, 0, n_in - 1)
    lo = np.clip(lo, 0, n_in - 1)
    w0 = np.rint((np.float32(1) - frac) * np.float32(2048)).astype(np.int64)
    w1 = np.rint(frac * np.float32(2048)).astype(np.int64)
    return lo, hi, frac, w0, w1


def resize_bilinear(image, height, width):
    """Resize a C x H x W array bilinearly, as OpenCV's ``cv::resize`` INTER_LINEAR.

    Source coordinates are ``(x + 0.5) * W_in / W_out - 0.5``, clamped to the image.
    uint8 images use OpenCV's fixed-point arithmetic (11-bit weights; the rows are
    combined as its vectorised code does, the border rows included), which gives
    OpenCV 4's values exactly, upscaling and downscaling alike (the tests compare with
    ``cv2.resize``). Other dtypes are interpolated in float64.

    >>> resize_bilinear(np.array([[[0, 100]]], np.uint8), 1, 4)
    array([[[  0,  25,  75, 100]]], dtype=uint8)
    """
    image = np.asarray(image)
    if image.dtype == np.uint8:
        y0, y1, fy, b0, b1 = _linear_taps(image.shape[1], height, clamp_fraction=False)
        x0, x1, fx, a0, a1 = _linear_taps(image.shape[2], width, clamp_fraction=True)
        src = image.astype(np.int64)
        top = src[:, y0][:, :, x0] * a0 + src[:, y0][:, :, x1] * a1
        bottom = src[:, y1][:, :, x0] * a0 + src[:, y1][:, :, x1] * a1
        out = (((top >> 4) * b0[:, None]) >> 16) + (((bottom >> 4) * b1[:, None]) >> 16)
        return np.clip((out + 2) >> 2, 0, 255).astype(np.uint8)
    y0, y1, fy, _, _ = _linear_taps(image.shape[1], height, clamp_fraction=True)
    x0, x1, fx, _, _ = _linear_taps(image.shape[2], width, clamp_fraction=True)
    src = image.astype(np.float64)
    fx, fy = fx.astype(np.float64), fy.astype(np.float64)[:, None]
    top = src[:, y0][:, :, x0] * (1 - fx) + src[:, y0][:, :, x1] * fx
    bottom = src[:, y1][:, :, x0] * (1 - fx) + src[:, y1][:, :, x1] * fx
    return (top * (1 - fy) + bottom * fy).astype(image.dtype)


def read_image(path, new_height=0, new_width=0, is_color=True):
    """Read an image file as Caffe's ReadImageToCVMat: C x H x W uint8, BGR for colour,
    resized to ``new_height x new_width`` when both are positive.

    Raises
    ------
    TransformError
        The file is missing or does not decode; the message names it.
    """
    try:
        with open(path, 'rb') as f:
            data = f.read()
    except OSError as err:
        raise TransformError('could not open or find file %s: %s' % (path, err)) from err
    image = decode_image(data, bool(is_color), where=path)
    if new_height > 0 and new_width > 0:
        image = resize_bilinear(image, new_height, new_width)
    return image
