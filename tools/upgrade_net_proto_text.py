#!/usr/bin/env python3
"""Upgrade an old-format (V0/V1) net prototxt.

    python tools/upgrade_net_proto_text.py old_net.prototxt new_net.prototxt

The code is torchcaffe.tools.upgrade_proto (also installed as the ``upgrade_net_proto_text`` console script).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from torchcaffe.tools.upgrade_proto import net_text_main  # noqa: E402

if __name__ == '__main__':
    sys.exit(net_text_main())
