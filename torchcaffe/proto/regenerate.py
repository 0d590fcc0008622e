"""Regenerate ``caffe_pb2.py`` from ``caffe.proto`` with grpcio-tools' protoc.

Run as ``python torchcaffe/proto/regenerate.py`` (it needs no package import).
The generated module checks the protobuf runtime on import: the runtime must be
at least the gencode version protoc writes, with the same major version.
"""
import os
import sys


def main():
    from grpc_tools import protoc
    here = os.path.dirname(os.path.abspath(__file__))
    status = protoc.main(['protoc', '-I' + here, '--python_out=' + here,
                          os.path.join(here, 'caffe.proto')])
    if status != 0:
        sys.exit('protoc failed with status %d' % status)
    print('wrote', os.path.join(here, 'caffe_pb2.py'))


if __name__ == '__main__':
    main()
