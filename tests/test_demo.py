"""The README's main command: validate every net, then the staged pipeline on generated data.

The pipeline runs with --quick (three iterations per stage): these tests check that
it runs end to end and writes what it says, not what it learns.
"""
import os

import numpy as np
from PIL import Image

import demo


def test_validate_only_checks_every_net_and_round_trips_weights(tmp_path, capsys):
    assert demo.main(['--validate-only', '--out', str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert 'DIFFERS' not in out and 'MISMATCH' not in out
    # The real VOC image is 500 rows x 334 columns: the score map comes out that size.
    assert out.count('score 1x21x500x334') == 15  # 4 VGG16 + AlexNet x train/val/deploy
    assert out.count('score 1x4x500x334') == 9  # the demo nets: 3 stages x train/val/deploy
    # The other families, with their own data-layer tops: SIFT Flow's two heads (3 stages x
    # trainval/test), NYUDv2's 4 modalities incl. 4-channel color-d and the late fusion,
    # PASCAL-Context's 60 classes (3 stages x train/val/deploy).
    assert out.count('score_sem 1x33x500x334') == 6
    assert out.count('score 1x40x500x334') == 8
    assert out.count('score 1x60x500x334') == 9
    assert 'score_pool4c [5], score_pool3c [9], score [31]' in out
    assert (tmp_path / 'nets' / 'voc-fcn8s' / 'train.prototxt').exists()
    assert (tmp_path / 'nets' / 'demo' / 'fcn8s' / 'deploy.prototxt').exists()
    assert (tmp_path / 'nets' / 'fcn8s-narrow.caffemodel.h5').exists()
    assert 'FCN-32s' not in out  # nothing trained


def table_rows(out):
    """The rows of the per-stage table, split into fields."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith('stage '))
    assert lines[start].split() == ['stage', 'iterations', 'overall', 'acc', 'mean', 'acc',
                                    'mean', 'IU', 'fwavacc', 'time']
    return [line.split() for line in lines[start + 1:start + 4]]


def test_quick_demo_trains_scores_and_segments_every_stage(tmp_path, capsys):
    assert demo.main(['--quick', '--out', str(tmp_path)]) == 0
    out = capsys.readouterr().out
    rows = table_rows(out)
    assert [row[0] for row in rows] == ['FCN-32s', 'FCN-16s', 'FCN-8s']
    iters = demo.QUICK['iters']
    for row in rows:
        assert int(row[1]) == iters
        metrics = [float(x) for x in row[2:6]]
        assert all(0 <= m <= 1 for m in metrics), row
    assert '==== FCN-16s (demo/fcn16s) from FCN-32s' in out
    assert '==== FCN-8s (demo/fcn8s) from FCN-16s' in out
    assert 'total time' in out and '(ok)' in out

    # Snapshots go to --out, not to the model folders.
    for stage in ('fcn32s', 'fcn16s', 'fcn8s'):
        assert (tmp_path / stage / ('train_iter_%d.caffemodel' % iters)).exists()
        assert (tmp_path / stage / 'solver.prototxt').exists()

    # A label PNG (class indices, VOC palette) and an overlay per segmented val image.
    labels = sorted((tmp_path / 'infer').glob('*.png'))
    assert len(labels) == demo.QUICK['infer']
    for path in labels:
        label = Image.open(path)
        assert label.mode == 'P'
        image = Image.open(os.path.join(demo.DATA_DIR, 'VOC', 'JPEGImages',
                                        path.stem + '.jpg'))
        assert label.size == image.size
        assert np.array(label).max() < 4  # the four demo classes
        assert (tmp_path / 'infer' / (path.stem + '_overlay.jpg')).exists()


def test_generated_data_is_reused_while_its_stamp_is_current(capsys):
    demo.ensure_data()  # generates if missing or stale (the previous test has made it)
    capsys.readouterr()
    demo.ensure_data()
    assert 'is current' in capsys.readouterr().out


def test_quick_demo_twice_on_one_machine_gives_the_same_bytes(tmp_path, capsys):
    # The README's determinism promise is per machine (torch's float32 kernels differ
    # between CPUs), so it is checked by comparing two runs here, never against a
    # number recorded elsewhere.
    runs = []
    for name in ('a', 'b'):
        assert demo.main(['--quick', '--out', str(tmp_path / name)]) == 0
        rows = table_rows(capsys.readouterr().out)
        iters = demo.QUICK['iters']
        weights = [(tmp_path / name / stage / ('train_iter_%d.caffemodel' % iters)).read_bytes()
                   for stage in ('fcn32s', 'fcn16s', 'fcn8s')]
        runs.append(([row[:6] for row in rows], weights))
    assert runs[0][0] == runs[1][0]
    assert runs[0][1] == runs[1][1]
