"""Write the narrow FCN-32s demo nets beside this script:
train.prototxt, val.prototxt and deploy.prototxt.

    python net.py            # into this folder, from any working directory
    python net.py OUT_DIR    # somewhere else (the tests regenerate and diff)

The definitions live in nets/demo.py at the repository root; the data layers read
../../data/demo-gen (python data/make_demo_data.py, or python demo.py, writes it).
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))

from nets import demo, write  # noqa: E402


def main(out_dir=HERE):
    return write.write_nets(demo.stage_nets('fcn32s'), out_dir)


if __name__ == '__main__':
    main(*sys.argv[1:2])
