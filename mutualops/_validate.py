"""Argument checks shared by the Python wrappers: errors name the argument."""

import numbers

import torch


def check_tensor(x, name):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")


# What the kernels are compiled for: float8 is floating point too, but has no kernel.
KERNEL_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_float(x, name):
    check_tensor(x, name)
    if x.dtype not in KERNEL_FLOATS:
        raise TypeError(f"{name} must be a floating-point tensor (float16, bfloat16, float32 or float64), got {x.dtype}")


def check_boxes(x, name, ranks=(2,)):
    """Floating-point boxes whose last dimension holds (x1, y1, x2, y2)."""
    check_float(x, name)
    if x.dim() not in ranks or x.shape[-1] != 4:
        shapes = " or ".join("[" + ", ".join(["B", "N", "4"][3 - r :]) + "]" for r in ranks)
        raise ValueError(f"{name} must have shape {shapes}, got {list(x.shape)}")


def check_index(t, name, shape, device):
    """Ids or indices: an integer tensor (not bool) of `shape` on `device`. None passes."""
    if t is None:
        return
    check_tensor(t, name)
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor, got {t.dtype}")
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {list(shape)}, got {list(t.shape)}")
    if t.device != device:
        raise ValueError(f"{name} must be on {device}, got {t.device}")


def check_same(a, b, name_a, name_b, dtype=True):
    if a.device != b.device:
        raise ValueError(f"{name_a} and {name_b} must be on the same device, got {a.device} and {b.device}")
    if dtype and a.dtype != b.dtype:
        raise TypeError(f"{name_a} and {name_b} must have the same dtype, got {a.dtype} and {b.dtype}")


def check_choice(value, name, choices):
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")


def as_int(value, name):
    """value as a Python int (NumPy integers too); bool and non-integers are a TypeError naming the argument."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    return int(value)


def as_float(value, name):
    """value as a Python float (NumPy scalars too); bool and non-numbers (None included) are a TypeError naming
    the argument."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    return float(value)


def unit_interval(value, name):
    """value as a float in [0, 1] (thresholds, alpha); NaN is out of range."""
    value = as_float(value, name)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")
    return value


def promote(*tensors):
    """The tensors (None passes through) in their common floating dtype, as torch's type promotion picks it:
    under autocast a half-precision head output meets float32 boxes, and the ops compute in the wider type."""
    present = [t for t in tensors if t is not None]
    dtype = present[0].dtype
    for t in present[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return tuple(t.to(dtype) if t is not None else None for t in tensors)


def kept_size(boxes, scores, name="boxes"):
    """The data-dependent length of an NMS fake kernel's output. Plain meta tensors (not torch.compile's fake
    ones) have no values to count, and a CPU tensor meeting a meta one is a device error: both name the
    argument instead of torch's message about running operators on meta tensors."""
    from torch._subclasses.fake_tensor import FakeTensor

    check_same(boxes, scores, name, "scores", dtype=False)
    if not isinstance(boxes, FakeTensor):
        raise ValueError(f"{name} is a meta tensor: the number of kept boxes depends on values it does not hold")
    return torch.library.get_ctx().new_dynamic_size()

