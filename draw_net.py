"""Draw a net's prototxt as a picture (PNG, SVG, PDF, or .dot source), as Caffe's draw_net.py.

    python draw_net.py voc-fcn8s/deploy.prototxt docs/voc-fcn8s.png --rankdir TB
    python draw_net.py NET.prototxt OUT.png [--rankdir LR] [--phase TRAIN|TEST|ALL] [--display_lrm]

The same tool is installed as the ``draw_net`` command; the code is in
torchcaffe/tools/draw_net.py and the drawing in torchcaffe/draw.py.
"""
import sys

from torchcaffe.tools.draw_net import main

if __name__ == '__main__':
    sys.exit(main())
