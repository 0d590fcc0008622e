"""pycaffe's ``caffe.Classifier`` (``python/caffe/classifier.py``): a Net that
classifies images, with the resize / crop / oversample / average steps of the
reference ImageNet demo."""
import numpy as np

from . import image_io
from .net import Net
from .proto import caffe_pb2

__all__ = ['Classifier']


class Classifier(Net):
    """A TEST-phase Net that predicts class scores for H x W x K images.

    Parameters
    ----------
    model_file : str
        Deploy prototxt; its first input takes the images.
    pretrained_file : str
        Weights (``.caffemodel`` or ``.h5``).
    image_dims : (int, int), optional
        Size the images are resized to before cropping; the input's H x W by default.
    mean : numpy.ndarray, optional
        K values or a K x H x W array to subtract (see ``Transformer.set_mean``).
    input_scale, raw_scale : float, optional
        See ``Transformer.set_input_scale`` / ``set_raw_scale``.
    channel_swap : tuple of int, optional
        E.g. ``(2, 1, 0)``: RGB images to the BGR order of Caffe's models.
    """

    def __init__(self, model_file, pretrained_file, image_dims=None, mean=None,
                 input_scale=None, raw_scale=None, channel_swap=None):
        Net.__init__(self, model_file, pretrained_file, caffe_pb2.TEST)
        in_ = self.inputs[0]
        self.transformer = image_io.input_transformer(
            in_, self.blobs[in_].data.shape, mean, input_scale, raw_scale, channel_swap)
        self.crop_dims = np.array(self.blobs[in_].data.shape[2:])
        if not image_dims:
            image_dims = self.crop_dims
        self.image_dims = image_dims

    def predict(self, inputs, oversample=True):
        """Class scores of each image.

        Parameters
        ----------
        inputs : sequence of H x W x K arrays (K channels, e.g. from ``load_image``)
        oversample : bool
            True: average over the 10 crops of ``caffe.io.oversample`` (corners,
            centre, mirrors). False: the centre crop only.

        Returns
        -------
        numpy.ndarray
            N x C scores (the net's first output, flattened per image).
        """
        input_ = np.zeros((len(inputs), self.image_dims[0], self.image_dims[1],
                           inputs[0].shape[2]), dtype=np.float32)
        for ix, in_ in enumerate(inputs):
            input_[ix] = image_io.resize_image(in_, self.image_dims)
        if oversample:
            input_ = image_io.oversample(input_, self.crop_dims)
        else:
            center = np.array(self.image_dims) / 2.0
            crop = np.tile(center, (1, 2))[0] + np.concatenate(
                [-self.crop_dims / 2.0, self.crop_dims / 2.0])
            crop = crop.astype(int)
            input_ = input_[:, crop[0]:crop[2], crop[1]:crop[3], :]
        name = self.inputs[0]
        caffe_in = np.zeros(np.array(input_.shape)[[0, 3, 1, 2]], dtype=np.float32)
        for ix, in_ in enumerate(input_):
            caffe_in[ix] = self.transformer.preprocess(name, in_)
        out = self.forward_all(**{name: caffe_in})
        predictions = out[self.outputs[0]]
        if oversample:
            predictions = predictions.reshape((len(predictions) // 10, 10, -1))
            predictions = predictions.mean(1)
        return predictions
