"""pycaffe's ``caffe.Detector`` (``python/caffe/detector.py``): windowed detection,
R-CNN style, by classifying crops of images (optionally with context around them).
"""
import os

import numpy as np

from . import image_io
from .net import Net
from .proto import caffe_pb2

__all__ = ['Detector']


class Detector(Net):
    """A TEST-phase Net that scores windows of images.

    Parameters
    ----------
    model_file, pretrained_file : str
        Deploy prototxt and weights.
    mean, input_scale, raw_scale, channel_swap :
        Preprocessing, as for :class:`~torchcaffe.classifier.Classifier`.
    context_pad : int, optional
        Pixels of context in the net's input around each window, as in R-CNN's
        feature extraction; the context outside the image is filled with the mean.
    """

    def __init__(self, model_file, pretrained_file, mean=None, input_scale=None,
                 raw_scale=None, channel_swap=None, context_pad=None):
        Net.__init__(self, model_file, pretrained_file, caffe_pb2.TEST)
        in_ = self.inputs[0]
        self.transformer = image_io.input_transformer(
            in_, self.blobs[in_].data.shape, mean, input_scale, raw_scale, channel_swap)
        self.configure_crop(context_pad)

    def detect_windows(self, images_windows):
        """Score windows of images.

        Parameters
        ----------
        images_windows : iterable of (image filename, windows)
            Each window is (ymin, xmin, ymax, xmax) in pixels.

        Returns
        -------
        list of dict
            ``{'window': window, 'prediction': scores, 'filename': filename}`` per
            window, in order.
        """
        images_windows = list(images_windows)
        window_inputs = []
        for image_fname, windows in images_windows:
            image = image_io.load_image(image_fname).astype(np.float32)
            for window in windows:
                window_inputs.append(self.crop(image, window))
        in_ = self.inputs[0]
        caffe_in = np.zeros((len(window_inputs), window_inputs[0].shape[2])
                            + tuple(self.blobs[in_].data.shape[2:]), dtype=np.float32)
        for ix, window_in in enumerate(window_inputs):
            caffe_in[ix] = self.transformer.preprocess(in_, window_in)
        out = self.forward_all(**{in_: caffe_in})
        predictions = out[self.outputs[0]]
        if predictions.ndim == 4:  # pycaffe squeezes the 1 x 1 of fully-convolutional scores
            predictions = predictions.squeeze(axis=(2, 3))
        detections = []
        ix = 0
        for image_fname, windows in images_windows:
            for window in windows:
                detections.append({'window': window, 'prediction': predictions[ix],
                                   'filename': image_fname})
                ix += 1
        return detections

    def detect_selective_search(self, image_fnames):
        """Score Selective Search proposals (needs the external
        ``selective_search_ijcv_with_python`` package and MATLAB, as pycaffe)."""
        import selective_search_ijcv_with_python as selective_search
        image_fnames = [os.path.abspath(f) for f in image_fnames]
        windows_list = selective_search.get_windows(image_fnames, cmd='selective_search_rcnn')
        return self.detect_windows(zip(image_fnames, windows_list))

    def crop(self, im, window):
        """The window (ymin, xmin, ymax, xmax) of H x W x K image ``im``, with
        ``context_pad`` context around it when configured (then already resized to the
        net's input, the context outside the image filled with the mean)."""
        window = np.asarray(window)
        crop = im[int(window[0]):int(window[2]), int(window[1]):int(window[3])]
        if not self.context_pad:
            return crop
        box = window.astype(float)
        crop_size = self.blobs[self.inputs[0]].width  # assumes square, as pycaffe
        scale = crop_size / (1. * crop_size - self.context_pad * 2)
        half_h = (box[2] - box[0] + 1) / 2.
        half_w = (box[3] - box[1] + 1) / 2.
        center = (box[0] + half_h, box[1] + half_w)
        scaled_dims = scale * np.array((-half_h, -half_w, half_h, half_w))
        box = np.round(np.tile(center, 2) + scaled_dims)
        full_h = box[2] - box[0] + 1
        full_w = box[3] - box[1] + 1
        scale_h = crop_size / full_h
        scale_w = crop_size / full_w
        pad_y = int(round(max(0, -box[0]) * scale_h))  # the part outside the image
        pad_x = int(round(max(0, -box[1]) * scale_w))
        im_h, im_w = im.shape[:2]
        box = np.clip(box, 0., [im_h, im_w, im_h, im_w])
        clip_h = box[2] - box[0] + 1
        clip_w = box[3] - box[1] + 1
        assert clip_h > 0 and clip_w > 0
        crop_h = int(round(clip_h * scale_h))
        crop_w = int(round(clip_w * scale_w))
        if pad_y + crop_h > crop_size:
            crop_h = crop_size - pad_y
        if pad_x + crop_w > crop_size:
            crop_w = crop_size - pad_x
        box = box.astype(int)
        context_crop = im[box[0]:box[2], box[1]:box[3]]
        context_crop = image_io.resize_image(context_crop, (crop_h, crop_w))
        crop = np.ones(self.crop_dims, dtype=np.float32) * self.crop_mean
        crop[pad_y:(pad_y + crop_h), pad_x:(pad_x + crop_w)] = context_crop
        return crop

    def configure_crop(self, context_pad):
        """Set ``crop_dims`` (the input's H x W x K) and ``context_pad``; with context,
        ``crop_mean``: the mean in the unprocessed image's space, to pad with."""
        in_ = self.inputs[0]
        tpose = self.transformer.transpose[in_]
        inv_tpose = [tpose[t] for t in tpose]
        self.crop_dims = np.array(self.blobs[in_].data.shape[1:])[inv_tpose]
        self.context_pad = context_pad
        if self.context_pad:
            transpose = self.transformer.transpose.get(in_)
            channel_order = self.transformer.channel_swap.get(in_)
            raw_scale = self.transformer.raw_scale.get(in_)
            mean = self.transformer.mean.get(in_)
            if mean is not None:
                inv_transpose = [transpose[t] for t in transpose]
                crop_mean = np.array(mean, dtype=np.float32).transpose(inv_transpose)
                if channel_order is not None:
                    channel_order_inverse = [list(channel_order).index(i)
                                             for i in range(crop_mean.shape[2])]
                    crop_mean = crop_mean[:, :, channel_order_inverse]
                if raw_scale is not None:
                    crop_mean = crop_mean / raw_scale
                self.crop_mean = crop_mean
            else:
                self.crop_mean = np.zeros(self.crop_dims, dtype=np.float32)
