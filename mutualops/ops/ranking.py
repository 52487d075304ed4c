"""The ranking family (docs/method.md, section 2.4): ranks and Spearman's rho within ragged groups.

Semantics are scipy's: `rank` is `scipy.stats.rankdata` per group (1-based),
`spearman` is `scipy.stats.spearmanr` per group (NaN for fewer than 2 elements
or a constant input). A group holding a NaN gets NaN ranks and a NaN rho.
Ranks are float64 for every tie method, so that NaN can propagate.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._validate import check_choice, check_float, check_index

TIES = ("average", "min", "max", "dense", "ordinal")


def _check_values(x, name):
    check_float(x, name)
    if x.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {list(x.shape)}")


def rank(x: Tensor, groups: Tensor | None = None, ties: str = "average") -> Tensor:
    """Ranks of x within each group, as ``scipy.stats.rankdata`` gives them per group (1-based).

    Args:
        x (Tensor[N]): values, floating point.
        groups (Tensor[N], optional): a non-negative integer group id per element, in any order; None means
            one group.
        ties (str): ``"average"``, ``"min"``, ``"max"``, ``"dense"`` or ``"ordinal"``, as in scipy.

    Returns:
        Tensor[N] (float64): the ranks; NaN for every element of a group that holds a NaN.

    Raises:
        TypeError: x not floating point, or groups not integer.
        ValueError: shapes or devices that do not match, a negative group id, or an unknown tie method.
    """
    _check_values(x, "x")
    check_index(groups, "groups", x.shape, x.device)
    check_choice(ties, "ties", TIES)
    return torch.ops.mutualops.rank(x, groups, ties)


def spearman(x: Tensor, y: Tensor, groups: Tensor | None = None, num_groups: int | None = None) -> Tensor:
    """Spearman's rho of x and y within each group, as ``scipy.stats.spearmanr`` gives it per group.

    Args:
        x (Tensor[N]): values, floating point.
        y (Tensor[N]): values paired with x, floating point, same device.
        groups (Tensor[N], optional): a non-negative integer group id per element; None means one group.
        num_groups (int, optional): the number of groups (default: max(groups) + 1); give it for a static
            output size.

    Returns:
        Tensor[num_groups] (float64): rho per group; NaN for a group with fewer than 2 elements, a constant
        input or a NaN.

    Raises:
        TypeError: x or y not floating point, groups not integer, or num_groups not an int.
        ValueError: shapes or devices that do not match, a negative group id, or a group id beyond num_groups.
    """
    _check_values(x, "x")
    _check_values(y, "y")
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same length, got {x.shape[0]} and {y.shape[0]}")
    if x.device != y.device:
        raise ValueError(f"x and y must be on the same device, got {x.device} and {y.device}")
    check_index(groups, "groups", x.shape, x.device)
    if num_groups is not None and (not isinstance(num_groups, int) or num_groups < 0):
        raise ValueError(f"num_groups must be a non-negative int, got {num_groups!r}")
    return torch.ops.mutualops.spearman(x, y, groups, num_groups)


@torch.library.register_fake("mutualops::rank")
def _rank_fake(x, groups, ties="average"):
    return x.new_empty(x.shape, dtype=torch.float64)


@torch.library.register_fake("mutualops::spearman")
def _spearman_fake(x, y, groups, num_groups=None):
    if groups is None:
        size = 1
    elif num_groups is not None:
        size = num_groups
    else:
        size = torch.library.get_ctx().new_dynamic_size()
    return x.new_empty((size,), dtype=torch.float64)
