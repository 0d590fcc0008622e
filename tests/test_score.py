"""FCN metrics against confusion matrices worked out by hand."""
import numpy as np
import pytest

from score import fast_hist, seg_metrics


def test_fast_hist_counts_gt_rows_against_prediction_columns_and_skips_void():
    gt = np.array([[0, 0, 1], [2, 255, 1]])
    pred = np.array([[0, 1, 1], [2, 2, 0]])
    hist = fast_hist(gt, pred, 3)
    expected = np.array([[1, 1, 0],
                         [1, 1, 0],
                         [0, 0, 1]])
    np.testing.assert_array_equal(hist, expected)


def test_metrics_match_hand_computed_values():
    # gt class 0: 3 px (2 right, 1 predicted as class 1); class 1: 1 px (right);
    # class 2: neither in the ground truth nor predicted, so its IU is undefined.
    hist = np.array([[2, 1, 0],
                     [0, 1, 0],
                     [0, 0, 0]])
    m = seg_metrics(hist)
    assert m['overall_acc'] == pytest.approx(3 / 4)
    assert m['mean_acc'] == pytest.approx((2 / 3 + 1) / 2)
    # IU0 = 2 / (3 + 2 - 2) = 2/3 ; IU1 = 1 / (1 + 2 - 1) = 1/2 ; IU2 undefined
    assert m['mean_iu'] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert m['fwavacc'] == pytest.approx(3 / 4 * 2 / 3 + 1 / 4 * 1 / 2)
    assert np.isnan(m['iu'][2])


def test_class_predicted_but_absent_from_ground_truth_has_zero_iu():
    hist = np.array([[1, 1],
                     [0, 0]])
    m = seg_metrics(hist)
    np.testing.assert_allclose(m['iu'], [0.5, 0.0])
    assert m['mean_iu'] == pytest.approx(0.25)
    assert m['mean_acc'] == pytest.approx(0.5)
