"""The one upload validator: every array that reaches a server (a memory bank, a coreset,
Gaussian statistics, model weights) is checked here before anything is combined.

Each check raises :class:`~fedad.errors.BankError` naming who sent the upload and which
array is wrong, so a server can leave that client out of the round and say why.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from fedad.errors import BankError


def require_keys(upload: Mapping[str, object], keys: Sequence[str], who: str) -> None:
    """Raise naming ``who`` unless ``upload`` has exactly ``keys``."""
    if not isinstance(upload, Mapping):
        raise BankError(f"{who}: upload is a {type(upload).__name__}, not a mapping of arrays")
    missing = [k for k in keys if k not in upload]
    extra = [k for k in upload if k not in keys]
    if missing or extra:
        raise BankError(f"{who}: upload has arrays {sorted(upload)}, expected {sorted(keys)}"
                        + (f" (missing {missing[:5]})" if missing else "")
                        + (f" (unexpected {extra[:5]})" if extra else ""))


def check_array(value: object, who: str, key: str, ndim: int | None = None,
                shape: Sequence[int | None] | None = None, kind: str = "f",
                max_elements: int | None = None, finite: bool = True,
                allow_empty: bool = False) -> np.ndarray:
    """One uploaded array, checked: an ``ndarray`` (or tensor) of dtype kind ``kind`` (``f``
    float, ``i`` integer), ``ndim`` dimensions, ``shape`` (``None`` entries are free), at
    most ``max_elements`` values, all finite.

    Raises:
        BankError: naming ``who`` and ``key``.
    """
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if not isinstance(value, np.ndarray):
        raise BankError(f"{who}: '{key}' is a {type(value).__name__}, not an array")
    if value.dtype.kind not in kind:
        raise BankError(f"{who}: '{key}' has dtype {value.dtype}, expected "
                        + {"f": "floating point", "i": "integer"}.get(kind, kind))
    want = len(shape) if shape is not None else ndim
    if want is not None and value.ndim != want:
        raise BankError(f"{who}: '{key}' has shape {value.shape}, expected {want} dimensions"
                        + (f" {tuple(shape)}" if shape is not None else ""))
    if shape is not None and any(s is not None and s != v for s, v in zip(shape, value.shape,
                                                                          strict=True)):
        free = tuple("*" if s is None else s for s in shape)
        raise BankError(f"{who}: '{key}' has shape {value.shape}, expected {free}")
    if value.size == 0 and not allow_empty:
        raise BankError(f"{who}: '{key}' is empty")
    if max_elements is not None and value.size > max_elements:
        raise BankError(f"{who}: '{key}' has {value.size} values, more than the bound "
                        f"{max_elements}")
    if finite and value.dtype.kind == "f":
        bad = int(value.size - np.count_nonzero(np.isfinite(value)))
        if bad:
            raise BankError(f"{who}: '{key}' holds {bad} non-finite values (NaN or inf)")
    return value


def check_bank(value: object, who: str, shape: Sequence[int | None],
               key: str = "bank") -> torch.Tensor:
    """A bank of rows (``(H, W, C)``, ``(M, C)``, ...) of ``shape``, checked as
    :func:`check_array` does, as a float32 tensor."""
    bank = check_array(value, who, key, shape=shape, kind="f")
    with np.errstate(over="ignore"):
        bank32 = np.ascontiguousarray(bank, dtype=np.float32)
    if not np.isfinite(bank32).all():  # e.g. float64 values beyond float32's range
        raise BankError(f"{who}: '{key}' overflows float32")
    return torch.from_numpy(bank32)


def check_state(state: Mapping[str, object], who: str,
                reference: Mapping[str, Sequence[int]] | None = None,
                what: str = "weights") -> dict[str, np.ndarray]:
    """Uploaded tensors (model weights, a control variate): exactly ``reference``'s keys
    with its shapes (``None``: any keys and shapes), floating point, finite.

    Raises:
        BankError: naming ``who``, ``what`` and the first tensor that is wrong.
    """
    if not isinstance(state, Mapping):
        raise BankError(f"{who}: {what} are a {type(state).__name__}, not a mapping")
    if reference is not None:
        missing = sorted(set(reference) - set(state))
        extra = sorted(set(state) - set(reference))
        if missing or extra:
            raise BankError(f"{who}: {what}: keys differ from the global model (missing "
                            f"{missing[:3]}, unexpected {extra[:3]})")
    out = {}
    for name, value in state.items():
        shape = None if reference is None else tuple(reference[name])
        out[name] = check_array(value, who, f"{what}[{name}]", shape=shape, allow_empty=True)
    return out
