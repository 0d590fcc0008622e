"""Suite-wide settings.

The nets in the tests are tiny; on a small shared machine torch's intra-op thread pool
costs far more than it saves on them (about 50x on 2 cores), so the suite runs on one
thread. Benchmarks set their own thread counts.
"""
import torch

torch.set_num_threads(1)
