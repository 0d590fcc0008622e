"""Helpers of the ONNX export tests: run a model in onnxruntime and the net in the
engine on the same inputs, and compare."""
import numpy as np
import onnxruntime as ort
from google.protobuf import text_format

import torchcaffe as caffe
from random_weights import randomize
from torchcaffe import caffe_pb2

# The bar: onnxruntime within 1e-4 of the engine, relative to the output's
# scale (as export.py --check), with a floor for outputs near 0.
RTOL, ATOL = 1e-4, 1e-5


def run_engine(net, inputs, blobs):
    for name, value in inputs.items():
        net.blobs[name].reshape(*value.shape)
    net.reshape()
    out = net.forward(blobs=list(blobs), **inputs)
    return {name: np.array(out[name]) for name in blobs}


def run_onnx(model, inputs):
    session = ort.InferenceSession(model.SerializeToString(), providers=['CPUExecutionProvider'])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, inputs)))


def image(shape, seed=1, spread=20):
    return np.random.default_rng(seed).normal(0, spread, shape).astype(np.float32)


def assert_matches_engine(model, net, inputs, rtol=1e-5, atol=1e-5):
    """onnxruntime and the engine agree on every output within ``rtol`` of the
    output's largest magnitude (+ ``atol``), with NaN in the same places; returns
    onnxruntime's outputs."""
    got = run_onnx(model, inputs)
    want = run_engine(net, inputs, [name.split('@')[0] for name in got])
    for name, value in got.items():
        ref = want[name.split('@')[0]]
        assert value.shape == ref.shape, name
        # NaN where Caffe computes it too (AVE with kernel < stride, Log of a negative)
        np.testing.assert_array_equal(np.isnan(value), np.isnan(ref), err_msg=name)
        value, ref = value[~np.isnan(ref)], ref[~np.isnan(ref)]
        scale = np.abs(ref).max(initial=0)
        diff = np.abs(value - ref).max(initial=0)
        assert diff <= rtol * scale + atol, (name, diff, scale)
    return got


def deploy_net(proto, seed=0):
    """A TEST net of ``proto`` (NetParameter or prototxt text) with random weights
    (:func:`set_batch_norm_statistics` for its BatchNorm layers)."""
    if isinstance(proto, str):
        proto = inline_net(proto)
    net = caffe.Net(proto, caffe.TEST)
    randomize(net, seed)
    set_batch_norm_statistics(net, seed)
    return net


def set_batch_norm_statistics(net, seed=0, factor=999.982):
    """Give every BatchNorm Caffe-style stored statistics: running sums of a mean in
    N(0, 0.5) and a variance in [0.5, 2] times a moving-average scale factor (about
    what Caffe's default fraction 0.999 leaves after many iterations), not 1."""
    rng = np.random.default_rng(seed + 100)
    for name, blobs in net.params.items():
        if net.layer_dict[name].type != 'BatchNorm':
            continue
        c = blobs[0].data.shape
        blobs[0].data[...] = rng.normal(0, 0.5, c) * factor
        blobs[1].data[...] = rng.uniform(0.5, 2, c) * factor
        blobs[2].data[...] = factor


def inline_net(text):
    return text_format.Parse(text, caffe_pb2.NetParameter())
