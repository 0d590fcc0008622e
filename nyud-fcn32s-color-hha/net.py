"""Write the FCN-32s NYUDv2 nets on color and HHA, fused late beside this script:
trainval.prototxt and test.prototxt.

    python net.py            # into this folder, from any working directory
    python net.py OUT_DIR    # somewhere else (the tests regenerate and diff)

The definitions live in nets/ at the repository root.
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from nets import nyud, write  # noqa: E402


def main(out_dir=HERE):
    return write.write_nets(nyud.model_nets('color-hha'), out_dir)


if __name__ == '__main__':
    main(*sys.argv[1:2])
