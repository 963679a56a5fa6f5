"""What the equivalence tests share: a model's parameter gradients, and their comparison to a reference run."""
from __future__ import annotations

import torch


def param_grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of every parameter gradient the last backward produced, by parameter name."""
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_same_gradients(want: dict[str, torch.Tensor], got: dict[str, torch.Tensor], min_params: int) -> None:
    """The same parameters got a gradient (more than ``min_params``), each equal to 1e-5 absolute / 1e-4 relative."""
    assert got.keys() == want.keys() and len(want) > min_params
    for name, g in want.items():
        assert torch.allclose(got[name], g, atol=1e-5, rtol=1e-4), name
