"""Training crops of images with the matching crops of their feature targets."""

from __future__ import annotations

import torch


def aligned_crops(images: torch.Tensor, targets: torch.Tensor, size: int, count: int,
                  generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` random ``size`` x ``size`` crops of ``images`` ``(N, 3, H, W)`` and the same
    regions of ``targets`` ``(N, C, H / r, W / r)``: offsets on the target grid (multiples
    of ``r``), ``size`` rounded down to a multiple of ``r`` and to the image, each crop
    flipped at random both ways (image and target alike)."""
    n, _, h, w = images.shape
    r = h // targets.shape[-2]
    size = max(r, min(size, h, w) // r * r)
    cells = size // r
    gh, gw = targets.shape[-2:]
    idx = torch.randint(0, n, (count,), generator=generator)
    ys = torch.randint(0, gh - cells + 1, (count,), generator=generator)
    xs = torch.randint(0, gw - cells + 1, (count,), generator=generator)
    flips = torch.rand(count, 2, generator=generator) < 0.5
    out_x, out_f = [], []
    for i, y, x, f in zip(idx.tolist(), ys.tolist(), xs.tolist(), flips.tolist(), strict=True):
        c = images[i, :, y * r:y * r + size, x * r:x * r + size]
        t = targets[i, :, y:y + cells, x:x + cells]
        dims = [d for d, flip in zip((1, 2), f, strict=True) if flip]
        out_x.append(c.flip(dims) if dims else c)
        out_f.append(t.flip(dims) if dims else t)
    return torch.stack(out_x), torch.stack(out_f)
