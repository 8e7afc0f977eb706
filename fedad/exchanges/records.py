"""What an exchange sends and receives, without Flower: named sets of arrays
(:data:`Records`, one Flower ``ArrayRecord`` each) and the conversions between a module's
tensors and the arrays that travel. The engine's messages (:mod:`fedad.federation.records`)
carry them."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

Arrays = dict[str, np.ndarray]
Records = dict[str, Arrays]  # record name -> its arrays


def tensors(arrays: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Arrays as tensors (sharing memory where numpy allows)."""
    return {k: torch.from_numpy(np.array(v, copy=True)) for k, v in arrays.items()}


def arrays(state: Mapping[str, torch.Tensor]) -> Arrays:
    """Tensors as contiguous numpy arrays, copies on the CPU (never views of a live
    module's parameters, which training would change under the receiver)."""
    return {k: np.array(v.detach().cpu().numpy(), copy=True, order="C")
            for k, v in state.items()}
