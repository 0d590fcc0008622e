"""Caffe's protobuf schema; ``caffe_pb2`` as in pycaffe's ``caffe.proto.caffe_pb2``.

``caffe_pb2.py`` is generated from ``caffe.proto``; after editing the schema run::

    python torchcaffe/proto/regenerate.py

(protoc from grpcio-tools 1.85.1, gencode 7.35.1; needs protobuf runtime >= 7.35.1, < 8).
"""
from . import caffe_pb2

__all__ = ['caffe_pb2']
