"""The benchmark scripts' own arithmetic: what a peak probe times must be the product it claims."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from throughput import _gemm_routes  # noqa: E402


def test_every_gemm_route_is_the_same_size_of_product():
    n = 64
    torch.manual_seed(0)
    routes = _gemm_routes(torch.device("cpu"), torch.float32, n)
    assert set(routes) == {"mm", "conv1x1"}
    mm = routes["mm"]()
    conv = routes["conv1x1"]()
    # mm is a @ b; the 1x1 convolution over n pixels computes (a @ b.T) laid out as (1, n, 32, n/32):
    # both are n x n x n products, so both take 2 n^3 FLOPs.
    assert mm.shape == (n, n)
    assert conv.shape == (1, n, 32, n // 32)
    torch.manual_seed(0)
    a = torch.randn(n, n)
    b = torch.randn(n, n)
    torch.testing.assert_close(mm, a @ b)
    torch.testing.assert_close(conv.reshape(n, n).t(), a @ b.t(), rtol=1e-4, atol=1e-4)
