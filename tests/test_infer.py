"""infer: outputs of a narrow FCN-8s with random weights on the real demo image.

The expected labels come from the reference's own steps (PIL -> float32, RGB -> BGR,
minus the mean, channels first, forward, argmax of ``score``) on a second Net.
"""
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import infer
import surgery
import torchcaffe as caffe
from nets import voc
from torchcaffe import io
from vis import make_palette

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_IMAGE = os.path.join(ROOT, 'data', 'demo', 'image.jpg')
MEAN = np.array((104.00698793, 116.66876762, 122.67891434))


def he_scaled(net, seed=7):
    """Random weights under which the labels depend on the image.

    Convolutions get He's scale, N(0, 2 / fan_in), so the scores keep the input's
    magnitude through the 16 layers (about +-200 here). Every filter after conv1_1 is
    made zero-mean: the ReLU features are all positive, and a filter's mean would
    otherwise add a near-constant to a class's score everywhere, so one class wins
    almost every pixel. conv1_1 keeps its mean, so that the mean pixel matters. The
    upsampling deconvolutions are bilinear, as FCN's are; biases are 0.
    """
    rng = np.random.RandomState(seed)
    for name, blobs in net.params.items():
        weight = blobs[0].data
        if net.layer_dict[name].type == 'Deconvolution':
            weight[...] = 0
            for c in range(weight.shape[0]):
                weight[c, c] = surgery.upsample_filt(weight.shape[-1])
        else:
            weight[...] = rng.normal(0, np.sqrt(2.0 / weight[0].size), weight.shape)
            if name != 'conv1_1':
                weight -= weight.mean(axis=(1, 2, 3), keepdims=True)
        for blob in blobs[1:]:
            blob.data[...] = 0


@pytest.fixture(scope='module')
def model(tmp_path_factory):
    """(deploy prototxt, caffemodel) of a 4-class FCN-8s at 1/16 width, random weights."""
    folder = tmp_path_factory.mktemp('model')
    deploy = str(folder / 'deploy.prototxt')
    io.write_prototxt(voc.stage_nets('fcn8s', classes=4, width=1 / 16)['deploy'], deploy)
    net = caffe.Net(deploy, caffe.TEST)
    he_scaled(net)
    weights = str(folder / 'weights.caffemodel')
    net.save(weights)
    return deploy, weights


def reference_labels(deploy, weights, path):
    """The reference infer.py's steps, on a separate Net."""
    in_ = np.array(Image.open(path), dtype=np.float32)
    in_ = in_[:, :, ::-1]
    in_ -= MEAN
    in_ = in_.transpose((2, 0, 1))
    net = caffe.Net(deploy, weights, caffe.TEST)
    net.blobs['data'].reshape(1, *in_.shape)
    net.blobs['data'].data[...] = in_
    net.forward()
    return net.blobs['score'].data[0].argmax(axis=0)


@pytest.fixture(scope='module')
def demo_labels(model):
    return reference_labels(*model, DEMO_IMAGE)


def run_cli(model, images, out, *extra):
    return infer.main([model[0], model[1], str(images), '--out', str(out), *extra])


def test_single_image_outputs_are_a_voc_label_png_and_an_overlay(model, demo_labels, tmp_path):
    assert run_cli(model, DEMO_IMAGE, tmp_path) == 0
    label = Image.open(tmp_path / 'image.png')
    source = Image.open(DEMO_IMAGE)
    assert label.format == 'PNG' and label.mode == 'P'
    assert label.size == source.size
    assert label.getpalette() == make_palette(256).ravel().tolist()
    values = np.array(label)
    assert np.array_equal(values, demo_labels)
    assert set(np.unique(values)) == {0, 1, 2, 3}  # every class wins somewhere
    overlay = Image.open(tmp_path / 'image_overlay.jpg')
    assert overlay.format == 'JPEG' and overlay.size == source.size
    assert not [p for p in os.listdir(tmp_path) if p.endswith('.tmp')]


def test_segment_is_the_argmax_of_a_direct_forward(model, demo_labels):
    net = infer.load_net(*model)
    label = infer.segment(net, np.array(Image.open(DEMO_IMAGE)))
    assert label.shape == demo_labels.shape == (500, 334)  # H x W of a 334 x 500 image
    assert np.array_equal(label, demo_labels)


def test_the_labels_depend_on_the_image_its_channel_order_and_the_mean(model, demo_labels):
    # Under these weights a grey image, the image in BGR order, or the image without
    # the mean subtracted agree with the labels on 35-52 % of the pixels (the four
    # classes take 12-33 % each): a net that ignored its input, or a segment() that
    # dropped a preprocessing step, could not reproduce demo_labels.
    net = infer.load_net(*model)
    rgb = np.array(Image.open(DEMO_IMAGE))
    grey = np.full_like(rgb, 128)
    for what, label in (('grey image', infer.segment(net, grey)),
                        ('channels swapped', infer.segment(net, rgb[:, :, ::-1].copy())),
                        ('no mean', infer.segment(net, rgb, mean=(0, 0, 0)))):
        agree = np.mean(label == demo_labels)
        assert agree < 0.7, '%s: %.3f of the labels unchanged' % (what, agree)


@pytest.fixture
def folder(tmp_path):
    """The demo image, a smaller PNG crop of it, an unreadable .jpg and a text file."""
    images = tmp_path / 'images'
    images.mkdir()
    shutil.copy(DEMO_IMAGE, images / 'a.jpg')
    Image.open(DEMO_IMAGE).crop((100, 50, 196, 122)).save(images / 'b.png')
    (images / 'broken.jpg').write_bytes(b'not a jpeg at all')
    (images / 'notes.txt').write_text('not an image')
    return images


def test_folder_skips_unreadable_files_and_segments_the_rest(model, demo_labels, folder,
                                                            tmp_path, capsys):
    out = tmp_path / 'out'
    assert run_cli(model, folder, out) == 0
    assert sorted(os.listdir(out)) == ['a.png', 'a_overlay.jpg', 'b.png', 'b_overlay.jpg']
    assert np.array_equal(np.array(Image.open(out / 'a.png')), demo_labels)
    b = np.array(Image.open(out / 'b.png'))
    assert b.shape == (72, 96)
    assert np.array_equal(b, reference_labels(*model, folder / 'b.png'))
    captured = capsys.readouterr()
    assert 'skipping %s' % (folder / 'broken.jpg') in captured.err
    assert '2 segmented' in captured.out and '1 skipped' in captured.out


def test_rerun_skips_images_whose_outputs_exist_unless_overwrite(model, folder, tmp_path,
                                                                 capsys):
    out = tmp_path / 'out'
    os.remove(folder / 'a.jpg')  # keep it quick: the small image only
    run_cli(model, folder, out)
    good = (out / 'b.png').read_bytes()
    (out / 'b.png').write_bytes(b'sentinel')
    capsys.readouterr()
    run_cli(model, folder, out)
    assert (out / 'b.png').read_bytes() == b'sentinel'
    assert '0 segmented' in capsys.readouterr().out
    run_cli(model, folder, out, '--overwrite')
    assert (out / 'b.png').read_bytes() == good


def test_an_image_missing_one_output_is_done_again(model, folder, tmp_path):
    out = tmp_path / 'out'
    os.remove(folder / 'a.jpg')
    run_cli(model, folder, out)
    good = (out / 'b.png').read_bytes()
    os.remove(out / 'b_overlay.jpg')
    (out / 'b.png').write_bytes(b'left by an interrupted run')
    run_cli(model, folder, out)
    assert (out / 'b.png').read_bytes() == good
    assert (out / 'b_overlay.jpg').exists()


def one_line_error(argv):
    with pytest.raises(SystemExit) as exit_info:
        infer.main(argv)
    message = str(exit_info.value)
    assert message.startswith('infer.py: error: ') and '\n' not in message
    return message


def test_nothing_readable_fails_in_one_line(model, tmp_path):
    images = tmp_path / 'images'
    images.mkdir()
    (images / 'x.jpg').write_bytes(b'\xff\xd8 truncated')
    message = one_line_error([*model, str(images), '--out', str(tmp_path / 'out')])
    assert 'none of the 1 image(s) could be segmented' in message and 'x.jpg' in message


def test_a_folder_without_images_fails(model, tmp_path):
    (tmp_path / 'notes.txt').write_text('x')
    message = one_line_error([*model, str(tmp_path), '--out', str(tmp_path / 'out')])
    assert 'no image files in' in message and '1 other files ignored' in message


def test_missing_prototxt_or_weights_fail_naming_the_file(model, tmp_path):
    message = one_line_error([str(tmp_path / 'no.prototxt'), model[1], DEMO_IMAGE])
    assert 'deploy prototxt not found: %s' % (tmp_path / 'no.prototxt') in message
    message = one_line_error([model[0], str(tmp_path / 'no.caffemodel'), DEMO_IMAGE])
    assert 'weights not found: %s' % (tmp_path / 'no.caffemodel') in message
    assert 'download.py' not in message


def test_missing_published_weights_point_to_download(model, tmp_path):
    (tmp_path / 'caffemodel-url').write_text('http://127.0.0.1/x.caffemodel\n')
    message = one_line_error([model[0], str(tmp_path / 'x.caffemodel'), DEMO_IMAGE])
    assert 'python download.py' in message


def test_two_inputs_with_one_name_are_refused(model, folder, tmp_path):
    shutil.copy(folder / 'b.png', folder / 'a.png')
    message = one_line_error([*model, str(folder), '--out', str(tmp_path / 'out')])
    assert 'would both write' in message
    assert not os.listdir(tmp_path / 'out')


def test_output_folder_must_not_be_the_input_folder(model, folder):
    message = one_line_error([*model, str(folder), '--out', str(folder)])
    assert '--out must not be the input folder' in message


def test_read_classes_stops_at_the_first_blank_line():
    names = infer.read_classes(infer.DEFAULT_CLASSES)
    assert len(names) == 21 and names[0] == 'background' and names[15] == 'person'


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the error without CUDA')
def test_gpu_without_cuda_fails_in_one_line(model):
    message = one_line_error([*model, DEMO_IMAGE, '--gpu', '0'])
    assert '--gpu 0: no such CUDA device (0 found)' in message


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
def test_gpu_labels_match_the_cpu_ones(model, demo_labels):
    rgb = np.array(Image.open(DEMO_IMAGE))
    cpu = infer.load_net(*model)
    assert np.array_equal(infer.segment(cpu, rgb), demo_labels)
    cpu_scores = cpu.blobs['score'].data[0].copy()
    try:
        net = infer.load_net(*model, gpu=0)
        label = infer.segment(net, rgb)
        scores = net.blobs['score'].data[0].copy()
    finally:
        caffe.set_mode_cpu()
    assert label.shape == demo_labels.shape and scores.shape == cpu_scores.shape
    # The scores reach about 200; float32 sums in cuDNN's order differ from the CPU's
    # in the last bits of each of the 16 layers.
    tolerance = 1e-4 * np.abs(cpu_scores).max()
    np.testing.assert_allclose(scores, cpu_scores, rtol=0, atol=tolerance)
    # The argmax may flip only where the CPU's two best scores are that close.
    top2 = np.sort(cpu_scores, axis=0)[-2:]
    clear = top2[1] - top2[0] > 2 * tolerance
    assert clear.mean() > 0.99
    assert np.array_equal(label[clear], demo_labels[clear])
