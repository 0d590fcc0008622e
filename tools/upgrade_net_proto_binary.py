#!/usr/bin/env python3
"""Upgrade an old-format (V0/V1) binary caffemodel.

    python tools/upgrade_net_proto_binary.py old.caffemodel new.caffemodel

The code is torchcaffe.tools.upgrade_proto (also installed as the ``upgrade_net_proto_binary`` console script).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from torchcaffe.tools.upgrade_proto import net_binary_main  # noqa: E402

if __name__ == '__main__':
    sys.exit(net_binary_main())
