"""The README's main command: every net regenerates, validates and round-trips."""
import demo


def test_demo_validates_every_net_and_round_trips_weights(tmp_path, capsys):
    assert demo.main(['--out', str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert 'DIFFERS' not in out and 'MISMATCH' not in out
    # The real VOC image is 500 rows x 334 columns: the score map comes out that size.
    assert out.count('score 1x21x500x334') == 12
    assert 'score_pool4c [5], score_pool3c [9], score [31]' in out
    assert (tmp_path / 'voc-fcn8s' / 'train.prototxt').exists()
    assert (tmp_path / 'fcn8s-narrow.caffemodel.h5').exists()
