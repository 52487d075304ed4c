"""Loads the compiled ops, with a clear error when they do not match the running torch."""

import torch

_REBUILD = "rebuild it with `pip install --no-build-isolation .` (or `make test`) against this torch"


def _release(version):
    return version.split("+")[0]


def load():
    try:
        from . import _build_info
    except ImportError as e:
        raise ImportError(f"mutualops has not been built: {_REBUILD}") from e
    if _release(_build_info.TORCH_VERSION) != _release(torch.__version__):
        raise ImportError(
            f"mutualops was built against torch {_build_info.TORCH_VERSION} but torch "
            f"{torch.__version__} is installed; {_REBUILD}"
        )
    if _build_info.WITH_CUDA and torch.version.cuda is None:
        raise ImportError(f"mutualops was built with CUDA kernels but this torch is CPU-only; {_REBUILD}")
    try:
        from . import _C  # noqa: F401  (registers the ops)
    except ImportError as e:
        raise ImportError(f"mutualops' compiled library failed to load ({e}); {_REBUILD}") from e
    return _build_info


def has_backend(key):
    """True when the compiled library registered kernels for dispatch key `key` (CPU, CUDA)."""
    return torch._C._dispatch_has_kernel_for_dispatch_key("mutualops::box_iou", key)
