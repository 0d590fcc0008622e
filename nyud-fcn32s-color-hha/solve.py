"""Train the late fusion of the NYUDv2 color and HHA FCN-32s nets, starting from
their trained snapshots.

    python solve.py --gpu 0                                   # from this folder
    python solve.py --gpu 0 --resume latest                   # continue after a stop
    python solve.py --weights fused.caffemodel                # a whole color-HHA net instead

Trains on trainval (795 images: train and val) and scores on test (654 images)
every 2000 iterations, to 100,000 (the reference's 50 x 2000, though its solver
says 300000); snapshots go to snapshot/ every 2000 iterations. Ctrl-C snapshots
and stops.

Train nyud-fcn32s-color and nyud-fcn32s-hha first. Their snapshots (the
iterations the reference fused: 28000 for color, 60000 for HHA; edit COLOR and
HHA to pick others) are transplanted into the two streams by name with the
suffixes 'color' and 'hha' (conv1_1 -> conv1_1color, score_fr -> score_frhha).
The reference's script named files that no script writes and scored an undefined
split; this one fails with the missing file's name.
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import nyud_layers  # noqa: E402
import surgery  # noqa: E402
import training  # noqa: E402

WEIGHTS = None
COLOR = '../nyud-fcn32s-color/snapshot/train_iter_28000.caffemodel'
HHA = '../nyud-fcn32s-hha/snapshot/train_iter_60000.caffemodel'


def init(net, weights):
    if weights:
        net.copy_from(weights)
        return
    for suffix, path, folder in (('color', COLOR, 'nyud-fcn32s-color'),
                                 ('hha', HHA, 'nyud-fcn32s-hha')):
        if not os.path.isfile(path):
            raise FileNotFoundError('%s weights %s not found: train %s first (python '
                                    'solve.py in that folder), or edit %s in %s'
                                    % (suffix, os.path.abspath(path), folder,
                                       suffix.upper(), os.path.abspath(__file__)))
        surgery.transplant(net, surgery.SavedParams(path), suffix)


if __name__ == '__main__':
    sys.exit(training.main(HERE, WEIGHTS, sys.argv[1:], test_every=2000, max_iter=100000,
                           heads=nyud_layers.scoring_heads(), init=init))
