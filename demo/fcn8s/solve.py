"""Train the narrow demo FCN-8s from the trained demo FCN-16s on the generated data.

    python solve.py                      # from this folder (python demo.py runs all stages)
    python solve.py --gpu 0 --resume latest

Needs the generated dataset (python data/make_demo_data.py, or python demo.py, writes
data/demo-gen). Trains on its train split, scores on val after the solver's max_iter
(500) iterations; snapshots go to snapshot/.
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))

import training  # noqa: E402

# The reference starts each stage from the previous one's final weights.
WEIGHTS = '../fcn16s/snapshot/train_iter_500.caffemodel'

if __name__ == '__main__':
    sys.exit(training.main(HERE, WEIGHTS, sys.argv[1:], test_every=500))
