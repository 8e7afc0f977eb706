"""A feature-inversion decoder: what an honest-but-curious server could turn an upload back
into. It maps one frozen-backbone feature row to the image patch around its position, and
is trained on public images only (the embedded texture photos), never a site's.

Pure pieces: :func:`position_patches` cuts the patch of every feature position out of an
image; :class:`PatchDecoder` is the network; :func:`train_decoder` fits it;
:func:`nearest_patches` and :func:`patch_similarity` score decoded patches against a site's
true ones (PSNR, SSIM of the nearest true patch in pixel space).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from skimage.metrics import structural_similarity
from torch import nn

from fedad.progress import progress

PATCH = 16  # pixels on a side of a decoded patch (two strides of PatchCore's grid)


def position_patches(images: torch.Tensor, grid: int, size: int = PATCH) -> torch.Tensor:
    """``(N, H*W, 3, size, size)`` patches of ``images`` ``(N, 3, S, S)`` (pixels in
    ``[0, 1]``), one per position of an ``H = W = grid`` feature map, centred on the
    position (stride ``S / grid``; reflect padding at the border), row-major like
    :func:`~fedad.components.rows.patch_rows`."""
    n, _, s, _ = images.shape
    stride = s // grid
    if stride * grid != s or size < stride or (size - stride) % 2:
        raise ValueError(f"position_patches: a {grid}x{grid} grid on {s}px images needs a "
                         f"patch size >= the stride {stride} of the same parity")
    pad = (size - stride) // 2
    x = F.pad(images, (pad, pad, pad, pad), mode="reflect")
    cols = F.unfold(x, size, stride=stride)  # (N, 3*size*size, grid*grid)
    return cols.transpose(1, 2).reshape(n, grid * grid, 3, size, size)


class PatchDecoder(nn.Module):
    """A feature row ``(B, C)`` to an RGB patch ``(B, 3, size, size)`` in ``[0, 1]``: an
    MLP of two hidden layers on the row standardised by the public features' statistics."""

    def __init__(self, channels: int, size: int = PATCH, hidden: int = 1024) -> None:
        super().__init__()
        self.size = size
        self.register_buffer("shift", torch.zeros(channels))
        self.register_buffer("scale", torch.ones(channels))
        self.net = nn.Sequential(nn.Linear(channels, hidden), nn.GELU(),
                                 nn.Linear(hidden, hidden), nn.GELU(),
                                 nn.Linear(hidden, 3 * size * size))

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        out = self.net((rows - self.shift) / self.scale)
        return torch.sigmoid(out).view(-1, 3, self.size, self.size)


def train_decoder(rows: torch.Tensor, patches: torch.Tensor, steps: int = 3000,
                  batch: int = 512, lr: float = 1e-3, seed: int = 0,
                  hidden: int = 1024) -> PatchDecoder:
    """A :class:`PatchDecoder` fitted by mean squared error on ``rows`` ``(M, C)`` and
    their ``patches`` ``(M, 3, s, s)`` (public images only), Adam, cosine-decayed."""
    torch.manual_seed(seed)
    rows, patches = rows.float(), patches.float()
    dec = PatchDecoder(rows.shape[1], patches.shape[-1], hidden)
    dec.shift.copy_(rows.mean(dim=0))
    dec.scale.copy_(rows.std(dim=0).clamp_min(1e-6))
    opt = torch.optim.Adam(dec.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    g = torch.Generator().manual_seed(seed)
    for _ in progress(range(steps), steps, "decoder training steps"):
        pick = torch.randint(0, rows.shape[0], (batch,), generator=g)
        loss = F.mse_loss(dec(rows[pick]), patches[pick])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return dec.eval()


@torch.no_grad()
def decode(decoder: PatchDecoder, rows: torch.Tensor, batch: int = 4096) -> torch.Tensor:
    """Decoded patches of ``rows`` ``(M, C)``."""
    return torch.cat([decoder(rows[a:a + batch].float()) for a in range(0, len(rows), batch)])


@torch.no_grad()
def nearest_patches(queries: torch.Tensor, truth: torch.Tensor,
                    chunk: int = 1024) -> torch.Tensor:
    """Index into ``truth`` ``(T, 3, s, s)`` of the nearest (pixel L2) true patch of each
    of ``queries`` ``(Q, 3, s, s)``."""
    t = truth.reshape(len(truth), -1).float()
    q = queries.reshape(len(queries), -1).float()
    return torch.cat([torch.cdist(q[a:a + chunk], t).argmin(dim=1)
                      for a in range(0, len(q), chunk)])


def patch_similarity(a: torch.Tensor, b: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """PSNR (dB, pixels in ``[0, 1]``) and SSIM (7 x 7 windows, over RGB) of each pair of
    patches ``a[i]``, ``b[i]`` ``(M, 3, s, s)``."""
    x = a.detach().float().clamp(0, 1).numpy()
    y = b.detach().float().clamp(0, 1).numpy()
    mse = ((x - y) ** 2).reshape(len(x), -1).mean(axis=1)
    psnr = 10 * np.log10(1.0 / np.maximum(mse, 1e-10))
    ssim = np.array([structural_similarity(u, v, data_range=1.0, channel_axis=0, win_size=7)
                     for u, v in zip(x, y, strict=True)])
    return psnr, ssim
