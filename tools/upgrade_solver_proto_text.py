#!/usr/bin/env python3
"""Upgrade a solver prototxt that uses the deprecated solver_type enum.

    python tools/upgrade_solver_proto_text.py old_solver.prototxt new_solver.prototxt

The code is torchcaffe.tools.upgrade_proto (also installed as the ``upgrade_solver_proto_text`` console script).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from torchcaffe.tools.upgrade_proto import solver_text_main  # noqa: E402

if __name__ == '__main__':
    sys.exit(solver_text_main())
