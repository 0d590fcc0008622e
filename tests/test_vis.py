"""vis: VOC's palette is the one in real VOC labels; colouring and overlays by hand."""
import os

import numpy as np
import pytest
from PIL import Image

import vis
from vis import VOID_COLOR, color_seg, label_image, make_palette, vis_seg

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_LABEL = os.path.join(ROOT, 'data', 'demo', 'label.png')
DEMO_IMAGE = os.path.join(ROOT, 'data', 'demo', 'image.jpg')


def real_palette():
    return np.array(Image.open(DEMO_LABEL).getpalette(), dtype=np.uint8).reshape(-1, 3)


def test_palette_equals_the_real_voc_label_palette_for_the_21_classes():
    assert np.array_equal(make_palette(21), real_palette()[:21])


def test_palette_of_256_equals_the_whole_label_palette_void_included():
    real = real_palette()
    assert real.shape == (256, 3)
    assert np.array_equal(make_palette(256), real)
    assert tuple(real[255]) == VOID_COLOR == (224, 224, 192)


def test_palette_interleaves_label_bits_from_the_top_bit_down():
    # 9 = 0b001001: bit 0 -> red bit 7, bit 3 -> red bit 6; 10 = 0b1010: bit 1 -> green 7,
    # bit 3 -> red 6; 12 = 0b1100: bit 2 -> blue 7, bit 3 -> red 6.
    p = make_palette(13)
    assert p[9].tolist() == [128 + 64, 0, 0]
    assert p[10].tolist() == [64, 128, 0]
    assert p[12].tolist() == [64, 0, 128]
    assert p.dtype == np.uint8 and p.shape == (13, 3)


def test_color_seg_replaces_indices_by_their_colours():
    seg = np.array([[0, 1, 2], [3, 4, 1]], dtype=np.uint8)
    colors = color_seg(seg, make_palette(5))
    assert colors.shape == (2, 3, 3) and colors.dtype == np.uint8
    assert colors[0].tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0]]
    assert colors[1].tolist() == [[128, 128, 0], [0, 0, 128], [128, 0, 0]]


def test_color_seg_gives_void_its_voc_colour_with_a_short_palette():
    colors = color_seg(np.array([[255, 1]]), make_palette(2))
    assert colors[0, 0].tolist() == [224, 224, 192]
    assert colors[0, 1].tolist() == [128, 0, 0]


def test_color_seg_uses_a_full_palettes_own_void_entry():
    palette = make_palette(256)
    palette[255] = (1, 2, 3)
    assert color_seg(np.array([[255]]), palette)[0, 0].tolist() == [1, 2, 3]


def test_color_seg_refuses_labels_outside_the_palette():
    with pytest.raises(ValueError, match=r'label\(s\) 7 outside the palette of 3'):
        color_seg(np.array([[0, 7]]), make_palette(3))
    with pytest.raises(ValueError, match='-1'):
        color_seg(np.array([[-1]]), make_palette(3))
    with pytest.raises(ValueError, match='integer'):
        color_seg(np.array([[0.5]]), make_palette(3))


def test_vis_seg_blends_classes_and_leaves_background_alone():
    img = np.array([[[10, 20, 30], [200, 100, 50], [40, 40, 40]]], dtype=np.uint8)
    seg = np.array([[0, 1, 2]])
    out = vis_seg(img, seg, make_palette(3), alpha=0.25)
    assert out.dtype == np.uint8
    assert out[0, 0].tolist() == [10, 20, 30]
    # 0.75 * (200, 100, 50) + 0.25 * (128, 0, 0) = (182, 75, 37.5 -> 38)
    assert out[0, 1].tolist() == [182, 75, 38]
    # 0.75 * 40 + 0.25 * (0, 128, 0) = (30, 62, 30)
    assert out[0, 2].tolist() == [30, 62, 30]


def test_vis_seg_blends_void_with_the_void_colour():
    img = np.zeros((1, 1, 3), np.uint8)
    out = vis_seg(img, np.array([[255]]), make_palette(21), alpha=0.5)
    assert out[0, 0].tolist() == [112, 112, 96]


def test_vis_seg_at_full_opacity_is_color_seg_on_the_classes():
    rng = np.random.RandomState(0)
    img = rng.randint(0, 256, (5, 6, 3)).astype(np.uint8)
    seg = rng.randint(0, 4, (5, 6))
    out = vis_seg(img, seg, make_palette(4), alpha=1.0)
    colors = color_seg(seg, make_palette(4))
    assert np.array_equal(out[seg > 0], colors[seg > 0])
    assert np.array_equal(out[seg == 0], img[seg == 0])


def test_vis_seg_checks_shapes_and_alpha():
    with pytest.raises(ValueError, match='does not fit'):
        vis_seg(np.zeros((2, 2, 3)), np.zeros((2, 3), int), make_palette(2))
    with pytest.raises(ValueError, match='alpha'):
        vis_seg(np.zeros((2, 2, 3)), np.zeros((2, 2), int), make_palette(2), alpha=1.5)


def test_label_image_saves_a_palette_png_that_reads_back_as_the_indices(tmp_path):
    seg = np.array([[0, 1, 2], [15, 255, 20]])
    path = tmp_path / 'label.png'
    label_image(seg).save(path)
    back = Image.open(path)
    assert back.mode == 'P'
    assert np.array_equal(np.array(back), seg)
    assert back.getpalette() == real_palette().ravel().tolist()


def test_cli_writes_colour_map_and_overlay_of_the_demo_label(tmp_path, capsys):
    assert vis.main([DEMO_LABEL, '--image', DEMO_IMAGE, '--out', str(tmp_path)]) == 0
    label = np.array(Image.open(DEMO_LABEL))
    colors = np.array(Image.open(tmp_path / 'label_color.png'))
    assert np.array_equal(colors, real_palette()[label])  # void included
    overlay = Image.open(tmp_path / 'label_overlay.jpg')
    assert overlay.size == Image.open(DEMO_IMAGE).size
    assert str(tmp_path / 'label_overlay.jpg') in capsys.readouterr().out


def test_cli_fails_in_one_line_on_a_missing_label(tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        vis.main([str(tmp_path / 'none.png')])
    assert str(exit_info.value).startswith('vis.py: ') and '\n' not in str(exit_info.value)
