"""caffe.io as pycaffe has it (python/caffe/io.py): image loading, resizing,
oversampling, the Transformer, and the BlobProto helpers. Values by hand in numpy."""
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

import caffe
import caffe.io
from torchcaffe.errors import FormatError

RNG = np.random.RandomState(3)


# ---------------------------------------------------------------- load_image

def test_load_image_gives_rgb_floats_in_0_1(tmp_path):
    pixels = RNG.randint(0, 256, (5, 4, 3)).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / 'c.png')
    img = caffe.io.load_image(str(tmp_path / 'c.png'))
    assert img.dtype == np.float32 and img.shape == (5, 4, 3)
    np.testing.assert_allclose(img, pixels / 255.0, rtol=1e-6)


def test_load_image_tiles_grey_unless_asked_not_to_and_drops_alpha(tmp_path):
    grey = RNG.randint(0, 256, (3, 2)).astype(np.uint8)
    Image.fromarray(grey).save(tmp_path / 'g.png')
    img = caffe.io.load_image(str(tmp_path / 'g.png'))
    assert img.shape == (3, 2, 3)
    np.testing.assert_allclose(img[:, :, 2], grey / 255.0, rtol=1e-6)
    one = caffe.io.load_image(str(tmp_path / 'g.png'), color=False)
    assert one.shape == (3, 2, 1)
    rgba = RNG.randint(0, 256, (2, 2, 4)).astype(np.uint8)
    Image.fromarray(rgba, 'RGBA').save(tmp_path / 'a.png')
    np.testing.assert_allclose(caffe.io.load_image(str(tmp_path / 'a.png')),
                               rgba[:, :, :3] / 255.0, rtol=1e-6)


def test_load_image_scales_16_bit_by_65535(tmp_path):
    deep = np.array([[0, 65535], [32768, 1000]], dtype=np.uint16)
    Image.fromarray(deep).save(tmp_path / 'd.png')
    img = caffe.io.load_image(str(tmp_path / 'd.png'), color=False)
    np.testing.assert_allclose(img[:, :, 0], deep / 65535.0, rtol=1e-6)


# ---------------------------------------------------------------- resize_image

def test_resize_up_is_half_pixel_bilinear_with_the_minimum_beyond_the_border():
    im = np.array([[0.0, 1.0], [2.0, 3.0]])[:, :, None]
    out = caffe.io.resize_image(im, (4, 4))
    # 1-D weights from 2 to 4 pixels: output i samples input (i + 0.5) / 2 - 0.5.
    r = np.array([[0.75, 0], [0.75, 0.25], [0.25, 0.75], [0, 0.75]])
    np.testing.assert_allclose(out[:, :, 0], r @ im[:, :, 0] @ r.T, rtol=1e-6)
    assert out[1, 1, 0] == pytest.approx(0.75) and out[0, 0, 0] == 0.0
    assert out.dtype == np.float32 and out.shape == (4, 4, 1)


def test_resize_matches_scipys_grid_constant_zoom_which_skimage_uses():
    im = RNG.rand(5, 7, 3)
    out = caffe.io.resize_image(im, (9, 4))
    lo, hi = im.min(), im.max()
    std = (im - lo) / (hi - lo)
    ref = ndimage.zoom(std, (9 / 5, 4 / 7, 1), order=1, mode='grid-constant', grid_mode=True)
    np.testing.assert_allclose(out, ref * (hi - lo) + lo, rtol=1e-5, atol=1e-6)


def test_resize_of_a_constant_image_is_that_constant():
    out = caffe.io.resize_image(np.full((3, 3, 3), 0.4), (5, 2))
    assert out.shape == (5, 2, 3) and np.all(out == np.float32(0.4))


def test_resize_to_the_same_size_changes_nothing():
    im = RNG.rand(4, 6, 3).astype(np.float32)
    np.testing.assert_allclose(caffe.io.resize_image(im, (4, 6)), im, rtol=1e-6)


def test_resize_of_other_channel_counts_goes_through_ndimage_zoom():
    im = RNG.rand(4, 4, 2)
    np.testing.assert_allclose(caffe.io.resize_image(im, (8, 2)),
                               ndimage.zoom(im, (2, 0.5, 1), order=1), rtol=1e-6)


# ---------------------------------------------------------------- oversample

def test_oversample_takes_corners_centre_and_their_mirrors():
    im = np.arange(5 * 6 * 1, dtype=np.float32).reshape(5, 6, 1)
    crops = caffe.io.oversample([im, im + 100], (2, 3))
    assert crops.shape == (20, 2, 3, 1)
    boxes = [(0, 0), (0, 3), (3, 0), (3, 3), (1, 1)]  # centre: (2.5 - 1, 3 - 1.5) truncated
    for k, (y, x) in enumerate(boxes):
        np.testing.assert_array_equal(crops[k], im[y:y + 2, x:x + 3])
        np.testing.assert_array_equal(crops[5 + k], im[y:y + 2, x:x + 3][:, ::-1])
        np.testing.assert_array_equal(crops[10 + k], im[y:y + 2, x:x + 3] + 100)


# ---------------------------------------------------------------- Transformer

def transformer(shape=(1, 3, 4, 5)):
    t = caffe.io.Transformer({'data': shape})
    t.set_transpose('data', (2, 0, 1))
    t.set_channel_swap('data', (2, 1, 0))
    t.set_raw_scale('data', 255)
    t.set_mean('data', np.array([104.0, 117.0, 123.0]))
    t.set_input_scale('data', 0.5)
    return t


def test_preprocess_is_transpose_swap_scale_mean_scale():
    image = RNG.rand(4, 5, 3).astype(np.float32)
    keep = image.copy()
    out = transformer().preprocess('data', image)
    bgr = image.transpose(2, 0, 1)[::-1] * 255
    expected = (bgr - np.array([104.0, 117.0, 123.0])[:, None, None]) * 0.5
    assert out.dtype == np.float32 and out.shape == (3, 4, 5)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(image, keep)  # the caller's image is left alone


def test_preprocess_resizes_to_the_input_first():
    image = RNG.rand(8, 10, 3).astype(np.float32)
    t = caffe.io.Transformer({'data': (1, 3, 4, 5)})
    t.set_transpose('data', (2, 0, 1))
    np.testing.assert_allclose(t.preprocess('data', image),
                               caffe.io.resize_image(image, (4, 5)).transpose(2, 0, 1))


def test_deprocess_undoes_preprocess():
    image = RNG.rand(4, 5, 3).astype(np.float32)
    t = transformer()
    np.testing.assert_allclose(t.deprocess('data', t.preprocess('data', image)), image,
                               rtol=1e-5, atol=1e-5)


def test_transformer_setters_check_against_the_input():
    t = caffe.io.Transformer({'data': (1, 3, 4, 5)})
    with pytest.raises(Exception, match='not one of the net inputs'):
        t.set_raw_scale('label', 1)
    with pytest.raises(Exception, match='Transpose order'):
        t.set_transpose('data', (1, 0))
    with pytest.raises(Exception, match='Channel swap'):
        t.set_channel_swap('data', (1, 0))
    with pytest.raises(ValueError, match='Mean channels'):
        t.set_mean('data', np.zeros(4))
    with pytest.raises(ValueError, match='Mean shape incompatible'):
        t.set_mean('data', np.zeros((3, 2, 2)))
    t.set_mean('data', np.ones((3, 4, 5)))  # an elementwise mean of the input's shape
    assert t.mean['data'].shape == (3, 4, 5)


# ---------------------------------------------------------------- BlobProto helpers

def test_blobproto_round_trips_and_legacy_dims():
    arr = RNG.randn(2, 3, 4).astype(np.float32)
    blob = caffe.io.array_to_blobproto(arr)
    np.testing.assert_array_equal(caffe.io.blobproto_to_array(blob), arr)
    legacy = caffe.proto.caffe_pb2.BlobProto(num=1, channels=2, height=1, width=3)
    legacy.data.extend([1, 2, 3, 4, 5, 6])
    back = caffe.io.blobproto_to_array(legacy)
    assert back.shape == (1, 2, 1, 3)
    # num, channels, height, width: row-major, the last axis fastest
    np.testing.assert_array_equal(back, [[[[1, 2, 3]], [[4, 5, 6]]]])


def test_blobprotovector_string_round_trip():
    arrays = [RNG.randn(3).astype(np.float32), RNG.randn(1, 2, 2).astype(np.float32)]
    data = caffe.io.arraylist_to_blobprotovector_str(arrays)
    assert isinstance(data, bytes)
    back = caffe.io.blobprotovector_str_to_arraylist(data)
    assert len(back) == len(arrays) == 2
    for a, b in zip(arrays, back):
        assert b.shape == a.shape and b.dtype == np.float32
        np.testing.assert_array_equal(a, b)
    with pytest.raises(FormatError):
        caffe.io.blobprotovector_str_to_arraylist(b'\xff\xff\xff')
