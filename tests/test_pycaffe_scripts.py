"""Existing pycaffe code runs unchanged with ``import caffe``: a classification script
(caffe.Classifier + caffe.io), a net-surgery script, a notebook snippet, Detector,
and the exceptions pycaffe code catches. Results are checked against numpy by hand.
"""
import json
import runpy
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import caffe
from caffe import layers as L
from caffe.coord_map import coord_map_from_to, crop

RNG = np.random.RandomState(7)
MEAN = np.array([104.0, 117.0, 123.0])
W = (RNG.randn(3, 48) * 1e-3).astype(np.float32)
B = RNG.randn(3).astype(np.float32)

TINY = '''
name: "tiny"
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 2 dim: 3 dim: 4 dim: 4 } } }
layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc"
        inner_product_param { num_output: 3 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
'''

CLASSIFY = '''
import json
import sys

import numpy as np
import caffe

caffe.set_mode_cpu()
mean = np.array([104.0, 117.0, 123.0])
net = caffe.Classifier(sys.argv[1], sys.argv[2], image_dims=(6, 6), mean=mean,
                       raw_scale=255, channel_swap=(2, 1, 0))
image = caffe.io.load_image(sys.argv[3])
scores = net.predict([image])                 # 10 crops, averaged
centre = net.predict([image], oversample=False)
print(json.dumps({'scores': scores.tolist(), 'centre': centre.tolist(),
                  'label': int(scores[0].argmax())}))
'''

SURGERY = '''
import sys
import caffe

folder = sys.argv[1]
net = caffe.Net(folder + '/tiny.prototxt', folder + '/tiny.caffemodel', caffe.TEST)
params = ['fc']
fc_params = {pr: (net.params[pr][0].data, net.params[pr][1].data) for pr in params}
for fc in params:
    print('{} weights are {} dimensional and biases are {} dimensional'.format(
        fc, fc_params[fc][0].shape, fc_params[fc][1].shape))
net_full_conv = caffe.Net(folder + '/conv.prototxt', folder + '/tiny.caffemodel', caffe.TEST)
params_full_conv = ['fc-conv']
conv_params = {pr: (net_full_conv.params[pr][0].data, net_full_conv.params[pr][1].data)
               for pr in params_full_conv}
for pr, pr_conv in zip(params, params_full_conv):
    conv_params[pr_conv][0].flat = fc_params[pr][0].flat  # flat unrolling
    conv_params[pr_conv][1][...] = fc_params[pr][1]
net_full_conv.save(folder + '/conv.caffemodel')
'''

CONV = '''
name: "tiny-conv"
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 1 dim: 3 dim: 6 dim: 6 } } }
layer { name: "fc-conv" type: "Convolution" bottom: "data" top: "fc-conv"
        convolution_param { num_output: 3 kernel_size: 4 } }
layer { name: "prob" type: "Softmax" bottom: "fc-conv" top: "prob" }
'''


@pytest.fixture()
def model(tmp_path):
    """The tiny classifier's prototxt and weights, and a 6 x 6 RGB PNG."""
    (tmp_path / 'tiny.prototxt').write_text(TINY)
    net = caffe.Net(str(tmp_path / 'tiny.prototxt'), caffe.TEST)
    net.params['fc'][0].data[...] = W
    net.params['fc'][1].data[...] = B
    net.save(str(tmp_path / 'tiny.caffemodel'))
    pixels = RNG.randint(0, 256, (6, 6, 3)).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / 'cat.png')
    return tmp_path, pixels


def softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


def by_hand(crop):
    """What the tiny net gives a 4 x 4 RGB crop in [0, 1]: BGR, x255, minus the mean."""
    x = crop.astype(np.float64).transpose(2, 0, 1)[::-1] * 255 - MEAN[:, None, None]
    return softmax(W.astype(np.float64) @ x.ravel() + B)


def run_script(tmp_path, text, *args):
    """Run ``text`` as a script in a fresh interpreter: its own ``import caffe``."""
    script = tmp_path / 'script.py'
    script.write_text(text)
    done = subprocess.run([sys.executable, str(script)] + [str(a) for a in args],
                          capture_output=True, text=True, cwd=str(tmp_path))
    assert done.returncode == 0, done.stderr
    return done.stdout


def run_script_here(tmp_path, text, *args, monkeypatch):
    """Run ``text`` as ``__main__`` in this interpreter, with ``sys.argv`` set."""
    script = tmp_path / 'script_here.py'
    script.write_text(text)
    monkeypatch.setattr(sys, 'argv', [str(script)] + [str(a) for a in args])
    runpy.run_path(str(script), run_name='__main__')


def test_a_classification_script_runs_unchanged(model):
    folder, pixels = model
    out = json.loads(run_script(folder, CLASSIFY, folder / 'tiny.prototxt',
                                folder / 'tiny.caffemodel', folder / 'cat.png'))
    image = pixels / 255.0
    corners = [(0, 0), (0, 2), (2, 0), (2, 2), (1, 1)]
    crops = [image[y:y + 4, x:x + 4] for y, x in corners]
    crops += [c[:, ::-1] for c in crops]
    expected = np.mean([by_hand(c) for c in crops], axis=0)
    np.testing.assert_allclose(out['scores'][0], expected, rtol=1e-5)
    np.testing.assert_allclose(out['centre'][0], by_hand(image[1:5, 1:5]), rtol=1e-5)
    assert out['label'] == int(expected.argmax())


def test_a_net_surgery_script_runs_unchanged(model, monkeypatch, capsys):
    folder, _ = model
    (folder / 'conv.prototxt').write_text(CONV)
    run_script_here(folder, SURGERY, folder, monkeypatch=monkeypatch)
    printed = capsys.readouterr().out
    assert 'fc weights are (3, 48) dimensional and biases are (3,) dimensional' in printed
    conv = caffe.Net(str(folder / 'conv.prototxt'), str(folder / 'conv.caffemodel'),
                     caffe.TEST)
    x = RNG.randn(1, 3, 6, 6).astype(np.float32)
    scores = conv.forward(data=x, blobs=['fc-conv'])['fc-conv'][0]
    for i in range(3):
        for j in range(3):
            window = x[0, :, i:i + 4, j:j + 4].astype(np.float64).ravel()
            np.testing.assert_allclose(scores[:, i, j], W @ window + B, rtol=1e-4, atol=1e-5)


NOTEBOOK = '''
import numpy as np
import caffe
caffe.set_mode_cpu()

net = caffe.Net(model_def,      # defines the structure of the model
                model_weights,  # contains the trained weights
                caffe.TEST)     # use test mode (e.g., don't perform dropout)

mu = np.array([104.0, 117.0, 123.0])
print('mean-subtracted values:', list(zip('BGR', mu)))

transformer = caffe.io.Transformer({'data': net.blobs['data'].data.shape})
transformer.set_transpose('data', (2, 0, 1))  # move image channels to outermost dimension
transformer.set_mean('data', mu)              # subtract the dataset-mean value in each channel
transformer.set_raw_scale('data', 255)        # rescale from [0, 1] to [0, 255]
transformer.set_channel_swap('data', (2, 1, 0))  # swap channels from RGB to BGR

net.blobs['data'].reshape(1, 3, 4, 4)
image = caffe.io.load_image(image_file)
transformed_image = transformer.preprocess('data', image)
net.blobs['data'].data[...] = transformed_image
output = net.forward()
output_prob = output['prob'][0]
print('predicted class is:', output_prob.argmax())
for layer_name, blob in net.blobs.items():
    print(layer_name + '\\t' + str(blob.data.shape))
for layer_name, param in net.params.items():
    print(layer_name + '\\t' + str(param[0].data.shape), str(param[1].data.shape))
'''


def test_a_classification_notebook_snippet_runs_unchanged(model, capsys):
    folder, _ = model
    pixels = RNG.randint(0, 256, (4, 4, 3)).astype(np.uint8)
    Image.fromarray(pixels).save(folder / 'small.png')
    scope = {'model_def': str(folder / 'tiny.prototxt'),
             'model_weights': str(folder / 'tiny.caffemodel'),
             'image_file': str(folder / 'small.png')}
    exec(compile(NOTEBOOK, 'notebook', 'exec'), scope)
    expected = by_hand(pixels / 255.0)
    np.testing.assert_allclose(scope['output_prob'], expected, rtol=1e-5)
    printed = capsys.readouterr().out
    assert 'predicted class is: %d' % expected.argmax() in printed
    assert 'data\t(1, 3, 4, 4)' in printed and 'prob\t(1, 3)' in printed
    assert 'fc\t(3, 48) (3,)' in printed


def test_detector_scores_each_window(model):
    folder, pixels = model
    det = caffe.Detector(str(folder / 'tiny.prototxt'), str(folder / 'tiny.caffemodel'),
                         mean=MEAN, raw_scale=255, channel_swap=(2, 1, 0))
    windows = [np.array([0, 0, 4, 4]), np.array([2, 1, 6, 5])]
    found = det.detect_windows([(str(folder / 'cat.png'), windows)])
    image = pixels / 255.0
    assert [d['filename'] for d in found] == [str(folder / 'cat.png')] * 2
    np.testing.assert_allclose(found[0]['prediction'], by_hand(image[0:4, 0:4]), rtol=1e-5)
    np.testing.assert_allclose(found[1]['prediction'], by_hand(image[2:6, 1:5]), rtol=1e-5)


def test_detector_context_crop_pads_with_the_mean_in_image_space(model):
    folder, pixels = model
    det = caffe.Detector(str(folder / 'tiny.prototxt'), str(folder / 'tiny.caffemodel'),
                         mean=MEAN, raw_scale=255, channel_swap=(2, 1, 0), context_pad=1)
    np.testing.assert_allclose(det.crop_mean.ravel(), MEAN[::-1] / 255, rtol=1e-6)
    image = (pixels / 255.0).astype(np.float32)
    # window 2 x 2 at (1, 1), scaled by 4 / (4 - 2): the box grows to the whole image
    np.testing.assert_allclose(det.crop(image, np.array([1, 1, 3, 3])),
                               caffe.io.resize_image(image, (4, 4)), rtol=1e-6)


# ---------------------------------------------------------------- exceptions

def test_a_tuple_of_tops_as_a_bottom_is_a_type_error():
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 4]))
    pair = L.Slice(n.data, ntop=2)
    with pytest.raises(TypeError, match=r'^ReLU input 0 is not a Top \(type is '
                                        r"<class 'tuple'>\)$"):
        L.ReLU(pair)
    # pycaffe's test_net_spec: the exact text, nothing after it.
    with pytest.raises(TypeError) as err:
        L.Silence(L.DummyData(ntop=2), ntop=0)
    assert str(err.value) == "Silence input 0 is not a Top (type is <class 'tuple'>)"
    with pytest.raises(TypeError) as err:
        L.ReLU(n.data, 3)
    assert str(err.value) == "ReLU input 1 is not a Top (type is <class 'int'>)"


def coord_net(dpad=0, pool=2):
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 1, 100, 100]))
    n.conv = L.Convolution(n.data, num_output=1, kernel_size=3)
    n.pool = L.Pooling(n.conv, kernel_size=pool, stride=pool)
    n.up = L.Deconvolution(n.pool, num_output=1, kernel_size=4, stride=2, pad=dpad)
    return n


def test_coord_map_refusals_are_assertion_errors_with_their_message():
    n = coord_net(dpad=10)  # deconv padding makes the output smaller than the input
    with pytest.raises(AssertionError, match='negative offset'):
        crop(n.up, n.data)
    n = coord_net(pool=3)
    with pytest.raises(AssertionError, match='scale mismatch'):
        crop(n.up, n.data)
    other = caffe.NetSpec()
    other.x = L.Input(shape=dict(dim=[1, 1, 10, 10]))
    n = coord_net()
    with pytest.raises(AssertionError, match='share no ancestor'):
        coord_map_from_to(n.up, other.x)
    with pytest.raises(RuntimeError):  # what pycaffe raises there
        coord_map_from_to(n.up, other.x)


NET_SPEC = '''
import json
import sys

import caffe
from caffe import layers as L, params as P


def lenet(batch_size):
    n = caffe.NetSpec()
    n.data, n.label = L.DummyData(shape=[dict(dim=[batch_size, 1, 28, 28]),
                                         dict(dim=[batch_size, 1, 1, 1])],
                                  data_filler=[dict(type='constant', value=0.5),
                                               dict(type='constant', value=3)],
                                  ntop=2)
    n.conv1 = L.Convolution(n.data, kernel_size=5, num_output=4,
                            weight_filler=dict(type='constant', value=0.01))
    n.pool1 = L.Pooling(n.conv1, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.ip1 = L.InnerProduct(n.pool1, num_output=10, weight_filler=dict(type='xavier'))
    n.relu1 = L.ReLU(n.ip1, in_place=True)
    n.loss = L.SoftmaxWithLoss(n.ip1, n.label)
    return n.to_proto()


with open(sys.argv[1], 'w') as f:
    f.write(str(lenet(3)))
caffe.set_mode_cpu()
net = caffe.Net(sys.argv[1], caffe.TRAIN)
out = net.forward()
print(json.dumps(dict(loss=float(out['loss']), conv1=net.blobs['conv1'].data.tolist(),
                      ip1=net.blobs['ip1'].data.tolist(),
                      label=net.blobs['label'].data.ravel().tolist(),
                      shapes={k: list(v.data.shape) for k, v in net.blobs.items()},
                      types=[layer.type for layer in net.layers])))
'''


def test_a_net_spec_script_with_dummy_data_runs_unchanged(tmp_path):
    out = json.loads(run_script(tmp_path, NET_SPEC, tmp_path / 'lenet.prototxt'))
    assert out['types'] == ['DummyData', 'Convolution', 'Pooling', 'InnerProduct', 'ReLU',
                            'SoftmaxWithLoss']
    assert out['shapes']['data'] == [3, 1, 28, 28] and out['shapes']['label'] == [3, 1, 1, 1]
    assert out['shapes']['conv1'] == [3, 4, 24, 24] and out['shapes']['ip1'] == [3, 10]
    # constant data 0.5 and weights 0.01 over a 5 x 5 window, bias 0: 25 * 0.005
    np.testing.assert_allclose(out['conv1'], 0.125, rtol=1e-6)
    assert out['label'] == [3.0, 3.0, 3.0]
    scores = np.array(out['ip1'], np.float64)  # after the in-place ReLU
    assert (scores >= 0).all()
    log_p = scores - scores.max(1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(1, keepdims=True))
    assert out['loss'] == pytest.approx(-log_p[:, 3].mean(), rel=1e-5)
    written = (tmp_path / 'lenet.prototxt').read_text()
    assert 'type: "DummyData"' in written and 'num_output: 10' in written
