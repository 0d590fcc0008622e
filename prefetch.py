"""Moved to :mod:`torchcaffe.prefetch` (Caffe's data layers use it too); re-exported
here so that ``from prefetch import Prefetcher`` keeps working."""
from torchcaffe.prefetch import Prefetcher, _prefetch_worker  # noqa: F401

__all__ = ['Prefetcher']
