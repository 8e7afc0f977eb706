"""The personalised multivariate regression RowFed studies: client ``m`` holds
``Y_m = X_m B_m + E_m`` (``X_m`` ``(n_m, p)``, ``B_m`` ``(p, q)``) and its loss is
``f_m(B) = ||Y_m - X_m B||_F^2 / (2 n_m)``."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np


@dataclass
class Client:
    """One client's data."""

    x: np.ndarray  # (n, p)
    y: np.ndarray  # (n, q)

    def __post_init__(self) -> None:
        if self.x.ndim != 2 or self.y.ndim != 2 or len(self.x) != len(self.y):
            raise ValueError(f"a client needs x (n, p) and y (n, q) with the same n; got "
                             f"{self.x.shape} and {self.y.shape}")

    @property
    def n(self) -> int:
        return len(self.x)

    def loss(self, b: np.ndarray) -> float:
        r = self.y - self.x @ b
        return float((r * r).sum() / (2 * self.n))

    def grad(self, b: np.ndarray) -> np.ndarray:
        """``grad f_m(B) = X^T (X B - Y) / n``."""
        return self.x.T @ (self.x @ b - self.y) / self.n

    @cached_property
    def gram(self) -> tuple[np.ndarray, np.ndarray]:
        """``(X^T X / n, X^T Y / n)``: the gradient is ``gram[0] @ B - gram[1]``."""
        return self.x.T @ self.x / self.n, self.x.T @ self.y / self.n

    def lipschitz(self) -> float:
        """The gradient's Lipschitz constant, ``||X||_2^2 / n`` (computed once)."""
        return self._lipschitz

    @cached_property
    def _lipschitz(self) -> float:
        return float(np.linalg.norm(self.x, 2) ** 2 / self.n)
