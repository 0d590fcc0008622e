#!/usr/bin/env sh
# Caffe's examples/mnist/train_lenet.sh: run from the repository root, after
# python examples/mnist/make_digits.py. --plot leaves examples/mnist/lenet.log and
# examples/mnist/lenet_curve.png beside the snapshots.
set -e
caffe train --solver=examples/mnist/lenet_solver.prototxt --plot "$@"
