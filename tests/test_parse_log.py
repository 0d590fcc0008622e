"""parse_log and plot_training_log on real Caffe glog logs and on torchcaffe's.

tests/fixtures/caffe_lenet_glog.log is a LeNet run as Caffe (2015, before the
iter/s field) logs it, over New Year: the expected rows below are worked out by
hand from its lines (Seconds from the "Solving LeNet" line at 23:59:51.190459).
"""
import math
import os

import pytest

from torchcaffe.tools import parse_log, plot_training_log

FIXTURE = os.path.join(os.path.dirname(__file__), 'fixtures', 'caffe_lenet_glog.log')

# (NumIters, Seconds, LearningRate, loss)
CAFFE_TRAIN = [(0, 0.722777, 0.01, 2.37829), (100, 2.662972, 0.01, 0.213893),
               (200, 4.603199, 0.00992565, 0.153624), (300, 6.542982, 0.00985258, 0.175482),
               (400, 8.482393, 0.00978075, 0.0947125)]
# (NumIters, Seconds, LearningRate, accuracy, loss); the test at 500 is after midnight.
CAFFE_TEST = [(0, 0.716763, 0.00971013, 0.0942, 2.36953),
              (500, 11.121483, 0.00971013, 0.9747, 0.0801453)]

# torchcaffe's solver (glog lines, iter/s field) and training.py's seg tests (">>>").
OURS = '''\
I1202 14:00:00.000000  4242 solver.py:360] Solving voc-fcn8s
I1202 14:00:00.000100  4242 solver.py:361] Learning Rate Policy: fixed
I1202 14:00:01.000000  4242 solver.py:538] Iteration 0 (0 iter/s, 1s/2 iters), loss = 300000
I1202 14:00:01.000001  4242 solver.py:561]     Train net output #0: loss = 300000 (* 1 = 3e+05 loss)
I1202 14:00:01.000002  4242 solver.py:593] Iteration 0, lr = 1e-10
I1202 14:00:03.500000  4242 solver.py:538] Iteration 2 (0.8 iter/s, 2.5s/2 iters), loss = 250000
I1202 14:00:03.500001  4242 solver.py:561]     Train net output #0: loss = 250000 (* 1 = 2.5e5 loss)
I1202 14:00:03.500002  4242 solver.py:593] Iteration 2, lr = 1e-10
>>> 2026-12-02 14:00:05.000000 Begin seg tests
>>> 2026-12-02 14:00:06.250000 Iteration 4 loss 123456.5
>>> 2026-12-02 14:00:06.250000 Iteration 4 overall accuracy 0.75
>>> 2026-12-02 14:00:06.250000 Iteration 4 mean accuracy 0.5
>>> 2026-12-02 14:00:06.250000 Iteration 4 mean IU 0.375
>>> 2026-12-02 14:00:06.250000 Iteration 4 fwavacc 0.625
>>> 2026-12-02 14:00:06.250000 Iteration 4 per-class IU
  background 0.75
'''


def rows_as_tuples(rows, names):
    return [tuple(r[n] for n in names) for r in rows]


def test_real_caffe_log_gives_caffes_train_and_test_rows():
    train, test = parse_log.parse_log(FIXTURE)
    assert [list(r) for r in train] == [['NumIters', 'Seconds', 'LearningRate', 'loss']] * 5
    got = rows_as_tuples(train, ['NumIters', 'Seconds', 'LearningRate', 'loss'])
    assert got == [pytest.approx(r, abs=1e-9) for r in CAFFE_TRAIN]
    got = rows_as_tuples(test, ['NumIters', 'Seconds', 'LearningRate', 'accuracy', 'loss'])
    assert got == [pytest.approx(r, abs=1e-9) for r in CAFFE_TEST]


def test_glog_dates_take_the_header_year_and_step_over_new_year():
    lines = open(FIXTURE).read().splitlines()
    # Without the header (a log from stderr), a given year is used; the step over
    # midnight on New Year's Eve still counts 11 seconds, not minus a year.
    train, test = parse_log.parse_lines(lines[3:], year=2015)
    assert test[1]['Seconds'] == pytest.approx(11.121483)


def test_our_solver_lines_and_seg_test_lines_give_both_tables():
    train, test = parse_log.parse_lines(OURS.splitlines(), year=2026)
    assert rows_as_tuples(train, ['NumIters', 'Seconds', 'LearningRate', 'loss']) == [
        (0, 1.000001, 1e-10, 300000.0), (2, 3.500001, 1e-10, 250000.0)]
    assert test == [{'NumIters': 4, 'Seconds': 6.25, 'LearningRate': 1e-10, 'loss': 123456.5,
                     'overall accuracy': 0.75, 'mean accuracy': 0.5, 'mean IU': 0.375,
                     'fwavacc': 0.625}]


def test_a_log_without_iterations_gives_empty_tables():
    assert parse_log.parse_lines(['I1202 14:00:00.000000  1 x.py:1] hello'], 2026) == ([], [])


def test_cli_writes_train_and_test_csv_named_after_the_log(tmp_path):
    assert parse_log.main([FIXTURE, str(tmp_path)]) == 0
    train = (tmp_path / 'caffe_lenet_glog.log.train').read_text().splitlines()
    test = (tmp_path / 'caffe_lenet_glog.log.test').read_text().splitlines()
    assert train[0] == 'NumIters,Seconds,LearningRate,loss'
    assert train[2] == '100,2.662972,0.01,0.213893'
    assert len(train) == 6
    assert test == ['NumIters,Seconds,LearningRate,accuracy,loss',
                    '0,0.716763,0.00971013,0.0942,2.36953',
                    '500,11.121483,0.00971013,0.9747,0.0801453']
    assert parse_log.main([FIXTURE, str(tmp_path), '--delimiter', ';']) == 0
    assert (tmp_path / 'caffe_lenet_glog.log.test').read_text().splitlines()[0] == \
        'NumIters;Seconds;LearningRate;accuracy;loss'


def test_nan_learning_rate_of_a_lone_row_stays_nan():
    lines = ['I0101 00:00:00.000000 1 s.cpp:1] Solving x',
             'I0101 00:00:01.000000 1 s.cpp:2] Iteration 0, Testing net (#0)',
             'I0101 00:00:02.000000 1 s.cpp:3]     Test net output #0: accuracy = 0.5']
    _, test = parse_log.parse_lines(lines, 2020)
    assert len(test) == 1 and math.isnan(test[0]['LearningRate'])  # Caffe's script drops it


def test_parse_log_cli_names_a_missing_log(tmp_path, capsys):
    assert parse_log.main([str(tmp_path / 'none.log'), str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith('error: ') and 'none.log not found' in err and '\n' not in err


def test_plot_writes_a_png_of_the_curves(tmp_path):
    png = tmp_path / 'curve.png'
    assert plot_training_log.main([str(png), FIXTURE]) == 0
    data = png.read_bytes()
    assert data[:8] == b'\x89PNG\r\n\x1a\n'
    from PIL import Image
    with Image.open(png) as im:
        assert im.size == (640, 720)  # 8 x 9 inches at 80 dpi
    # loss (train), lr, accuracy and loss (test)
    assert plot_training_log.plot_logs([FIXTURE], str(png)) == 4


def test_plot_refuses_a_log_with_nothing_to_plot(tmp_path, capsys):
    empty = tmp_path / 'empty.log'
    empty.write_text('I0101 00:00:00.000000 1 s.cpp:1] Solving x\n')
    assert plot_training_log.main([str(tmp_path / 'c.png'), str(empty)]) == 2
    assert 'no train or test outputs to plot' in capsys.readouterr().err
    assert not (tmp_path / 'c.png').exists()


def test_training_with_plot_leaves_its_log_and_curve_beside_the_snapshots(tmp_path, capsys):
    """training.py --plot (every solve.py): solver lines and seg-test lines in one log."""
    import sys
    import training
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sys.path.insert(0, os.path.join(root, 'data'))
    import make_demo_data
    from voc_tree import make_voc_tree
    from nets import voc, write
    make_voc_tree(tmp_path, num_train=3, num_val=2, seed=1)
    model = tmp_path / 'model'
    nets = voc.stage_nets('fcn32s', classes=len(make_demo_data.CLASSES), width=1 / 16)
    write.write_nets({k: v for k, v in nets.items() if k != 'deploy'}, str(model))
    (model / 'solver.prototxt').write_text(
        'train_net: "train.prototxt"\ntest_net: "val.prototxt"\ntest_iter: 2\n'
        'test_interval: 999999999\ndisplay: 1\nlr_policy: "fixed"\nbase_lr: 1e-6\n'
        'momentum: 0.9\nmax_iter: 2\nsnapshot: 2\nsnapshot_prefix: "snapshot/train"\n'
        'test_initialization: false\n')
    assert training.main(str(model), None, ['--test-every', '1', '--max-iter', '2',
                                            '--plot']) == 0
    assert 'Iteration 2 mean IU' in capsys.readouterr().out  # stdout still gets the lines
    train, test = parse_log.parse_log(str(model / 'snapshot' / 'train.log'))
    assert [r['NumIters'] for r in train] == [0, 1]
    assert [r['NumIters'] for r in test] == [1, 2]
    assert {'loss', 'overall accuracy', 'mean IU', 'fwavacc'} <= set(test[0])
    png = (model / 'snapshot' / 'train_curve.png').read_bytes()
    assert png[:8] == b'\x89PNG\r\n\x1a\n'


def test_nan_outputs_are_kept_and_garbled_values_skipped():
    lines = ['I0101 00:00:00.000000 1 s.cpp:1] Solving x',
             'I0101 00:00:01.000000 1 s.cpp:2] Iteration 0, loss = nan',
             'I0101 00:00:01.000000 1 s.cpp:3]     Train net output #0: loss = nan',
             'I0101 00:00:01.000000 1 s.cpp:3]     Train net output #1: acc = e-',
             'I0101 00:00:02.000000 1 s.cpp:2] Iteration 5, loss = 1',
             'I0101 00:00:02.000000 1 s.cpp:3]     Train net output #0: loss = -inf']
    train, _ = parse_log.parse_lines(lines, 2020)
    assert [r['NumIters'] for r in train] == [0, 5]
    assert math.isnan(train[0]['loss']) and train[1]['loss'] == -math.inf
    assert 'acc' not in train[0]
