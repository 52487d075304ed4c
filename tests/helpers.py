"""Shared test helpers: devices, dtypes and input generators."""

import pytest
import torch

import mutualops

HAS_CUDA = torch.cuda.is_available() and "cuda" in mutualops.build_info()["backends"]

# Every op test runs on each device; CUDA cases skip cleanly without a GPU and
# carry the `cuda` mark so that `make gpu-check` can select them.
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")]),
]
FLOAT_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def random_boxes(n, *, batch=None, scale=100.0, min_size=1.0, generator=None, dtype=torch.float32, device="cpu"):
    """Valid xyxy boxes (x2 > x1, y2 > y1) with corners in [0, scale)."""
    shape = (n,) if batch is None else (batch, n)
    xy = torch.rand(*shape, 2, generator=generator, dtype=torch.float64) * scale
    wh = torch.rand(*shape, 2, generator=generator, dtype=torch.float64) * scale / 2 + min_size
    return torch.cat([xy, xy + wh], dim=-1).to(dtype=dtype, device=device)
