"""Caffe's DataTransformer: crop, mean, scale and mirror against hand-computed arrays."""
import numpy as np
import pytest

import torchcaffe as caffe
from torchcaffe import data_transformer as dt
from torchcaffe import io
from torchcaffe.proto import caffe_pb2

IMG = np.arange(2 * 4 * 5, dtype=np.uint8).reshape(2, 4, 5)


def param(**kw):
    mean_value = kw.pop('mean_value', [])
    p = caffe_pb2.TransformationParameter(**kw)
    p.mean_value.extend(mean_value)
    return p


def test_crop_then_mean_value_then_scale_then_mirror_by_hand():
    # channel 0 rows 1..2, cols 2..4: [[7, 8, 9], [12, 13, 14]]; minus 2, times 0.5,
    # flipped left-right.
    out = dt.transform(IMG, crop_size=2, h_off=1, w_off=2, mirror=False,
                       mean_values=[2, 4], scale=0.5)
    assert out.dtype == np.float32 and out.shape == (2, 2, 2)
    np.testing.assert_array_equal(out[0], [[2.5, 3.0], [5.0, 5.5]])
    np.testing.assert_array_equal(out[1], [[(27 - 4) / 2, (28 - 4) / 2],
                                           [(32 - 4) / 2, (33 - 4) / 2]])
    mirrored = dt.transform(IMG, 2, 1, 2, True, mean_values=[2, 4], scale=0.5)
    np.testing.assert_array_equal(mirrored, out[:, :, ::-1])


def test_mean_file_is_taken_at_the_crop_offset():
    mean = np.arange(40, dtype=np.float32).reshape(2, 4, 5) * np.float32(0.5)
    out = dt.transform(IMG, crop_size=3, h_off=1, w_off=1, mean=mean, scale=2.0)
    want = (IMG[:, 1:4, 1:4].astype(np.float32) - mean[:, 1:4, 1:4]) * np.float32(2)
    np.testing.assert_array_equal(out, want)


def test_one_mean_value_applies_to_every_channel_and_a_wrong_count_is_refused():
    out = dt.transform(IMG, mean_values=[3])
    np.testing.assert_array_equal(out, IMG.astype(np.float32) - 3)
    with pytest.raises(dt.TransformError, match='3 mean_value entries for an image of 2'):
        dt.transform(IMG, mean_values=[1, 2, 3])


def test_test_phase_takes_the_centre_crop_and_does_not_mirror_without_mirror():
    t = dt.DataTransformer(param(crop_size=2), caffe.TEST)
    for _ in range(3):
        # (4 - 2) // 2 = 1, (5 - 2) // 2 = 1
        np.testing.assert_array_equal(t(IMG), IMG[:, 1:3, 1:3].astype(np.float32))


def allowed_outcomes(img, crop):
    c, h, w = img.shape
    outs = []
    for i in range(h - crop + 1):
        for j in range(w - crop + 1):
            patch = img[:, i:i + crop, j:j + crop].astype(np.float32)
            outs += [patch, patch[:, :, ::-1]]
    return outs


def test_train_crop_and_mirror_give_allowed_outcomes_and_cover_them():
    t = dt.DataTransformer(param(crop_size=3, mirror=True), caffe.TRAIN,
                           rng=np.random.default_rng(0))
    allowed = allowed_outcomes(IMG, 3)
    seen = set()
    for _ in range(200):
        out = t(IMG)
        matches = [k for k, a in enumerate(allowed) if np.array_equal(out, a)]
        assert matches, 'not a crop or mirrored crop of the image'
        seen.add(matches[0])
    assert len(seen) == len(allowed)  # 2 x 3 offsets x 2 mirrors all occur


def test_train_randomness_is_reproducible_with_set_random_seed():
    def draws():
        t = dt.DataTransformer(param(crop_size=2, mirror=True), caffe.TRAIN, where='data')
        return [t(IMG) for _ in range(10)]
    caffe.set_random_seed(3)
    first = draws()
    caffe.set_random_seed(3)
    again = draws()
    caffe.set_random_seed(4)
    other = draws()
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))


def test_mean_file_of_another_size_and_a_too_large_crop_are_refused(tmp_path):
    mean_file = str(tmp_path / 'mean.binaryproto')
    with open(mean_file, 'wb') as f:
        f.write(io.array_to_blobproto(np.zeros((1, 2, 3, 3), np.float32)).SerializeToString())
    t = dt.DataTransformer(param(mean_file=mean_file), caffe.TEST, where="layer 'd'")
    with pytest.raises(dt.TransformError, match=r"layer 'd': mean_file is \(2, 3, 3\)"):
        t(IMG)
    t = dt.DataTransformer(param(crop_size=5), caffe.TEST, where="layer 'd'")
    with pytest.raises(dt.TransformError, match='smaller than crop_size 5'):
        t(IMG)
    with pytest.raises(dt.TransformError, match='mean_file and mean_value'):
        dt.DataTransformer(param(mean_file=mean_file, mean_value=[1]), caffe.TEST)
    with pytest.raises(dt.TransformError, match='not found'):
        dt.DataTransformer(param(mean_file=str(tmp_path / 'none')), caffe.TEST)


def test_bilinear_resize_matches_opencv_but_for_rare_off_by_ones():
    cv2 = pytest.importorskip('cv2')
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (3, 37, 53), dtype=np.uint8)
    for h, w in ((20, 30), (37, 17), (5, 5), (70, 90), (227, 227)):
        ours = dt.resize_bilinear(img, h, w).astype(int)
        theirs = cv2.resize(img.transpose(1, 2, 0), (w, h), interpolation=cv2.INTER_LINEAR)
        diff = np.abs(ours - theirs.transpose(2, 0, 1).astype(int))
        assert diff.max() <= 1 and np.count_nonzero(diff) <= 0.005 * diff.size
    flt = dt.resize_bilinear(img.astype(np.float32), 20, 30)
    assert flt.dtype == np.float32
    np.testing.assert_allclose(flt, dt.resize_bilinear(img, 20, 30), atol=1)


def test_decode_keeps_grey_grey_and_orders_colour_bgr():
    from PIL import Image
    import io as pyio
    rgb = np.array([[[10, 20, 30]]], np.uint8)
    buf = pyio.BytesIO()
    Image.fromarray(rgb).save(buf, 'PNG')
    np.testing.assert_array_equal(dt.decode_image(buf.getvalue()), [[[30]], [[20]], [[10]]])
    assert dt.decode_image(buf.getvalue(), color=False).shape == (1, 1, 1)
    buf = pyio.BytesIO()
    Image.fromarray(rgb[:, :, 0]).save(buf, 'PNG')
    assert dt.decode_image(buf.getvalue()).shape == (1, 1, 1)
    assert dt.decode_image(buf.getvalue(), color=True).shape == (3, 1, 1)
    with pytest.raises(dt.TransformError, match='could not decode'):
        dt.decode_image(b'junk', where='x.png')


@pytest.mark.parametrize('fmt', ['PNG', 'JPEG', 'BMP'])
def test_decoding_matches_opencv_imdecode_in_colour_and_grey(fmt):
    cv2 = pytest.importorskip('cv2')
    from PIL import Image
    import io as pyio
    rgb = np.random.default_rng(2).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    buf = pyio.BytesIO()
    Image.fromarray(rgb).save(buf, fmt)
    data = buf.getvalue()
    raw = np.frombuffer(data, np.uint8)
    np.testing.assert_array_equal(dt.decode_image(data, color=True),
                                  cv2.imdecode(raw, cv2.IMREAD_COLOR).transpose(2, 0, 1))
    np.testing.assert_array_equal(dt.decode_image(data, color=False)[0],
                                  cv2.imdecode(raw, cv2.IMREAD_GRAYSCALE))


def test_a_damaged_mean_file_is_refused_naming_the_layer_and_file(tmp_path):
    path = tmp_path / 'mean.binaryproto'
    path.write_bytes(b'\x0a\xff\xff')  # a length-delimited field running past the end
    with pytest.raises(dt.TransformError, match="layer 'x': mean_file .*mean.binaryproto is "
                                                'not a BlobProto'):
        dt.read_mean_file(str(path), "layer 'x'")
