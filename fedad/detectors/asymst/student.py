"""The student: a residual encoder-decoder of its own (not the teacher's EfficientNet:
the asymmetry the abstract names), randomly initialised, mapping an image to the teacher's
level maps of its *clean* version (DeSTSeg's denoising student). A priori (the abstract is
silent): four residual levels (strides 4, 8, 16, 32; ``width`` doubling) and a decoder
from the stride-32 code up to strides 16, 8, 4 with *no* skip connections, so a defect
that the code cannot represent is not copied to the output; BatchNorm throughout (FedBN
keeps it local). ~1.9 M parameters at ``width`` 32."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class Residual(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or 1x1 strided) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True), nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
            nn.BatchNorm2d(cout))
        self.skip = (nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.skip(x))


class Student(nn.Module):
    """``forward(images)``: maps with ``out_channels`` (the teacher's, finest first) at
    strides 4, 8, 16 (for ``len(out_channels) == 3``)."""

    def __init__(self, out_channels: tuple[int, ...], width: int = 32) -> None:
        super().__init__()
        w = width
        self.stem = nn.Sequential(_conv_bn(3, w, 2), Residual(w, w, 2))  # stride 4
        self.down = nn.ModuleList([Residual(w * 2**i, w * 2 ** (i + 1), 2)
                                   for i in range(len(out_channels))])  # 8, 16, 32
        top = w * 2 ** len(out_channels)
        self.up = nn.ModuleList()
        self.out = nn.ModuleList()
        cin = top
        for i in reversed(range(len(out_channels))):  # stride 16, 8, 4
            cout = w * 2**i
            self.up.append(Residual(cin, cout))
            self.out.append(nn.Conv2d(cout, out_channels[i], 1))
            cin = cout
        # a per-site bias of the finest output (DBE's PRBM; zero unless exchange=dbe sets it)
        self.register_buffer("shift", torch.zeros(out_channels[0]))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # a student saved before the bias existed has none: it was zero
        state_dict.setdefault(prefix + "shift", torch.zeros_like(self.shift))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(images)
        sizes = [x.shape[-2:]]
        for block in self.down:
            x = block(x)
            sizes.append(x.shape[-2:])
        outs = []
        for j, (block, head) in enumerate(zip(self.up, self.out, strict=True)):
            size = sizes[len(self.down) - 1 - j]
            x = block(F.interpolate(x, size=size, mode="bilinear", align_corners=False))
            outs.append(head(x))
        outs[-1] = outs[-1] + self.shift[None, :, None, None]  # the finest (stride 4)
        return outs[::-1]
