"""Blob: pycaffe's data/diff arrays, shapes and reshape, and the host-mirror sync logic."""
import numpy as np
import pytest
import torch

from torchcaffe import blob as blob_module
from torchcaffe.blob import Blob, BlobVec
from torchcaffe.errors import CaffeError


@pytest.fixture
def mirrored(monkeypatch):
    """Make every device look like an accelerator: CPU tensors get host mirrors."""
    monkeypatch.setattr(blob_module, 'needs_mirror', lambda dev: True)
    for key in blob_module.copy_counts:
        monkeypatch.setitem(blob_module.copy_counts, key, 0)
    return blob_module.copy_counts


def mirrored_blob(shape):
    b = Blob(shape)
    b._to(torch.device('cpu'))
    return b


# ---- shapes -------------------------------------------------------------------------

def test_legacy_accessors_pad_missing_axes_with_one():
    b = Blob((2, 3))
    assert (b.num, b.channels, b.height, b.width, b.count) == (2, 3, 1, 1, 6)
    b = Blob((2, 3, 4, 5))
    assert (b.num, b.channels, b.height, b.width, b.count) == (2, 3, 4, 5, 120)
    assert Blob(()).count == 1 and Blob(()).data.shape == ()


def test_legacy_accessors_refuse_more_than_four_axes():
    with pytest.raises(CaffeError, match='at most 4 axes'):
        Blob((1, 2, 3, 4, 5)).num


def test_reshape_keeps_values_for_the_same_count_and_zeros_otherwise():
    b = Blob((2, 3))
    b.data[...] = np.arange(6).reshape(2, 3)
    b.reshape(3, 2)
    assert b.shape == (3, 2)
    np.testing.assert_array_equal(b.data, np.arange(6).reshape(3, 2))
    b.reshape((1, 4, 2))  # a tuple works too
    assert b.shape == (1, 4, 2) and not b.data.any()
    assert b.diff.shape == (1, 4, 2) and not b.diff.any()


def test_reshape_rejects_negative_dimensions():
    with pytest.raises(CaffeError, match='non-negative'):
        Blob((1,)).reshape(2, -1)


# ---- arrays are views ---------------------------------------------------------------

def test_data_writes_of_every_kind_reach_the_tensor():
    b = Blob((2, 3))
    b.data[...] = 1
    b.data[0, 1] = 5
    b.data.flat = np.arange(6)
    b.data[1] += 10
    np.testing.assert_array_equal(b.data_tensor().numpy(),
                                  [[0, 1, 2], [13, 14, 15]])
    assert b.data.dtype == np.float32


def test_diff_starts_at_zero_and_is_a_view():
    b = Blob((4,))
    assert b.diff.tolist() == [0, 0, 0, 0]
    b.diff[2] = 7
    assert b.diff_tensor().tolist() == [0, 0, 7, 0]


def test_blobvec_add_blob_appends_zero_blobs():
    vec = BlobVec()
    vec.add_blob(2, 3)
    vec.add_blob(5)
    assert [b.shape for b in vec] == [(2, 3), (5,)]
    assert not vec[0].data.any()


# ---- host mirrors (the CUDA logic, exercised on the CPU) ---------------------------

def test_mirror_copies_to_host_once_until_the_device_changes(mirrored):
    b = mirrored_blob((3,))
    b._data.set(torch.tensor([1.0, 2.0, 3.0]))
    assert mirrored['to_host'] == 0
    first = b.data
    second = b.data
    assert mirrored['to_host'] == 1 and first is second
    assert first.tolist() == [1, 2, 3]
    b._data.set(torch.tensor([4.0, 5.0, 6.0]))  # a new forward result
    assert b.data.tolist() == [4, 5, 6] and mirrored['to_host'] == 2


def test_mirror_host_writes_reach_the_device_when_it_next_needs_them(mirrored):
    b = mirrored_blob((2,))
    b._data.set(torch.zeros(2))
    b.data[...] = [7, 8]
    assert mirrored['to_device'] == 0  # nothing moves until the device side is needed
    assert b.data_tensor().tolist() == [7, 8]
    assert mirrored['to_device'] == 1
    b.data_tensor()
    assert mirrored['to_device'] == 1  # synced: no second copy


def test_mirror_host_is_not_a_view_of_the_device_tensor(mirrored):
    b = mirrored_blob((2,))
    t = torch.zeros(2)
    b._data.set(t)
    b.data[...] = 3
    assert t.tolist() == [0, 0]  # like device memory: only a sync changes it
    b.data_tensor()
    assert t.tolist() == [3, 3]


def test_mirror_set_data_writes_the_host_without_reading_the_device(mirrored):
    b = mirrored_blob((2, 2))
    b._data.set(torch.ones(2, 2))
    b.set_data(np.full((2, 2), 5.0))
    assert mirrored['to_host'] == 0
    assert b.data_tensor().tolist() == [[5, 5], [5, 5]]


def test_mirror_mutable_tensor_marks_the_host_stale(mirrored):
    b = mirrored_blob((2,))
    b.data[...] = 1
    b.mutable_data_tensor().add_(1)
    assert b.data.tolist() == [2, 2]


def test_moving_a_blob_carries_unsynced_host_writes(mirrored):
    b = mirrored_blob((2,))
    b.data[...] = [1, 2]
    b._to(torch.device('cpu'), torch.float64)
    assert b.data_tensor().dtype == torch.float64
    assert b.data.tolist() == [1, 2]
