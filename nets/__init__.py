"""Shared net definitions, written once and used by every model folder's ``net.py``.

- ``nets.vgg``: the VGG16 trunk (FCN form) and the ILSVRC VGG16 classifier.
- ``nets.fcn``: the FCN score, upsampling and skip layers, and the staged nets
  (FCN-32s, FCN-16s, FCN-8s, FCN-8s at-once).
- ``nets.voc``: the PASCAL VOC data layers and the train / val / deploy triple.
- ``nets.siftflow``: SIFT Flow's two-headed (semantic, geometric) nets.
- ``nets.nyud``: the NYUDv2 nets on color, HHA, color-depth and color-HHA.
- ``nets.alexnet``: the AlexNet (CaffeNet) trunk, FCN-AlexNet and the ILSVRC CaffeNet.
- ``nets.pascalcontext``: the PASCAL-Context data layer and its triples.
- ``nets.demo``: the narrow demo nets on the generated dataset (trained from scratch).
- ``nets.write``: writes NetParameters as prototxt files.
- ``nets.deploy_zoo``: narrow deploy nets in the style of the model zoo's (ResNet,
  MobileNet v1 / v2, PReLU, ELU), for the ONNX export checks (imported by name).
"""
from . import vgg, fcn, voc, alexnet, pascalcontext, siftflow, nyud, demo, write

__all__ = ['vgg', 'fcn', 'voc', 'alexnet', 'pascalcontext', 'siftflow', 'nyud', 'demo', 'write']
