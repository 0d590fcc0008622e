"""Caffe's fillers: exact values for the deterministic ones, fans and ranges for the
random ones, reproducibility with a generator."""
import math

import numpy as np
import pytest
import torch

from torchcaffe import caffe_pb2
from torchcaffe.errors import CaffeError
from torchcaffe.fillers import fill, fan_in_out, bilinear_kernel, known_fillers


def filler(**fields):
    return caffe_pb2.FillerParameter(**fields)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_default_filler_is_constant_zero():
    t = torch.ones(3, 4)
    fill(t, caffe_pb2.FillerParameter())
    assert torch.all(t == 0)
    fill(t, filler(type='constant', value=2.5))
    assert torch.all(t == 2.5)


def test_uniform_stays_in_range():
    t = fill(torch.empty(5000, dtype=torch.float64), filler(type='uniform', min=-2, max=3), gen())
    assert t.min() >= -2 and t.max() < 3
    assert t.mean().item() == pytest.approx(0.5, abs=0.1)


def test_gaussian_mean_and_std():
    t = fill(torch.empty(20000, dtype=torch.float64), filler(type='gaussian', mean=1, std=0.5), gen())
    assert t.mean().item() == pytest.approx(1, abs=0.02)
    assert t.std().item() == pytest.approx(0.5, rel=0.03)


def test_sparse_gaussian_keeps_sparse_over_num_outputs():
    t = fill(torch.empty(50, 400, dtype=torch.float64), filler(type='gaussian', sparse=10), gen())
    assert (t != 0).double().mean().item() == pytest.approx(10 / 50, abs=0.02)


def test_fans_follow_caffe_num_and_channels():
    assert fan_in_out((64, 3, 3, 3)) == (27, 576)
    assert fan_in_out((10, 20)) == (20, 10)
    assert fan_in_out((7,)) == (1, 7)


@pytest.mark.parametrize('norm, n', [('FAN_IN', 3 * 5 * 5), ('FAN_OUT', 8 * 5 * 5),
                                     ('AVERAGE', (75 + 200) / 2)])
def test_xavier_bound_uses_the_chosen_fan(norm, n):
    p = filler(type='xavier', variance_norm=getattr(caffe_pb2.FillerParameter, norm))
    t = fill(torch.empty(8, 3, 5, 5, dtype=torch.float64), p, gen())
    bound = math.sqrt(3 / n)
    assert t.abs().max() <= bound and t.abs().max() > 0.95 * bound


@pytest.mark.parametrize('norm, n', [('FAN_IN', 300), ('FAN_OUT', 100), ('AVERAGE', 200)])
def test_msra_std_uses_the_chosen_fan(norm, n):
    p = filler(type='msra', variance_norm=getattr(caffe_pb2.FillerParameter, norm))
    t = fill(torch.empty(100, 300, dtype=torch.float64), p, gen())
    assert t.std().item() == pytest.approx(math.sqrt(2 / n), rel=0.03)


def test_positive_unitball_rows_sum_to_one():
    t = fill(torch.empty(4, 2, 3), filler(type='positive_unitball'), gen())
    assert torch.all(t >= 0)
    assert torch.allclose(t.reshape(4, -1).sum(1), torch.ones(4))


def test_bilinear_kernel_4_by_hand():
    # f = 2, c = 3/4: profile 1 - |x/2 - 3/4| = 1/4, 3/4, 3/4, 1/4
    t = fill(torch.empty(2, 3, 4, 4), filler(type='bilinear'))
    profile = torch.tensor([0.25, 0.75, 0.75, 0.25])
    expected = torch.outer(profile, profile)
    for n in range(2):
        for c in range(3):
            assert torch.equal(t[n, c], expected)


def test_bilinear_kernel_64_by_hand():
    # FCN-32s upscore: f = 32, c = 63/64, so 1 - |x/32 - 63/64| is 1/64 at both ends
    # and 63/64 at the two centre taps.
    k = bilinear_kernel(64)
    assert k.shape == (64, 64)
    assert k[0, 0] == np.float32(1 / 64) ** 2
    assert k[31, 32] == np.float32(63 / 64) ** 2
    assert k[0, 31] == np.float32(1 / 64) * np.float32(63 / 64)
    assert k[16, 16] == np.float32(1 - abs(16 / 32 - 63 / 64)) ** 2
    np.testing.assert_array_equal(k, k[::-1, ::-1])
    assert k.sum() == pytest.approx(32 * 32)    # each input spreads over stride^2 outputs


def test_bilinear_odd_kernel_by_hand():
    # K = 5: f = 3, c = (6 - 1 - 1) / 6 = 2/3: profile 1/3, 2/3, 1, 2/3, 1/3
    np.testing.assert_allclose(bilinear_kernel(5)[2], [1 / 3, 2 / 3, 1, 2 / 3, 1 / 3], rtol=1e-6)


def test_bilinear_needs_square_4d_blobs():
    with pytest.raises(CaffeError, match="square"):
        fill(torch.empty(1, 1, 4, 3), filler(type='bilinear'))
    with pytest.raises(CaffeError, match="4-axis"):
        fill(torch.empty(4, 4), filler(type='bilinear'))


def test_unknown_filler_and_sparse_misuse():
    with pytest.raises(CaffeError, match="unknown filler type 'orthogonal'.*xavier"):
        fill(torch.empty(2), filler(type='orthogonal'))
    with pytest.raises(CaffeError, match="sparse"):
        fill(torch.empty(2), filler(type='uniform', sparse=1))
    assert 'msra' in known_fillers() and 'bilinear' in known_fillers()


def test_random_fillers_are_reproducible_with_a_generator():
    p = filler(type='gaussian', std=0.01)
    a = fill(torch.empty(10), p, gen(3))
    b = fill(torch.empty(10), p, gen(3))
    c = fill(torch.empty(10), p, gen(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
