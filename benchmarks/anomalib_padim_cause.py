"""Why anomalib's PaDiM and fedad's differ on the same levels (benchmarks/results/
anomalib_models.md): anomalib's PaDiM, centralized on MTD, with one of its two differences
from fedad's changed at a time.

    python benchmarks/anomalib_padim_cause.py --root ../shared/data/mtd MODE

MODE: ``bilinear`` (the coarser level upsampled bilinearly, as fedad's extractor does,
instead of anomalib's nearest neighbour), ``subset`` (fedad's channel subset,
``padim.channel_seed``, instead of the member's), or ``bilinear+subset``. Prints I-AUROC,
P-AUROC and PRO. anomalib's model is patched in this process only.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._resumable import run_row  # noqa: E402
from benchmarks.anomalib_models import row_config  # noqa: E402


def bilinear_embedding(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
    """anomalib's ``PadimModel.generate_embedding`` with bilinear upsampling."""
    emb = features[self.layers[0]]
    for layer in self.layers[1:]:
        up = F.interpolate(features[layer], size=emb.shape[-2:], mode="bilinear",
                           align_corners=False)
        emb = torch.cat((emb, up), 1)
    return torch.index_select(emb, 1, self.idx.to(emb.device))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", required=True)
    p.add_argument("mode", choices=["bilinear", "subset", "bilinear+subset"])
    args = p.parse_args()
    from anomalib.models.image.padim.torch_model import PadimModel

    import fedad.detectors.anomalib.detector as members
    from fedad.detectors.padim.statistics import channel_subset

    if "bilinear" in args.mode:
        PadimModel.generate_embedding = bilinear_embedding
    if "subset" in args.mode:
        init = members.Padim.__init__

        def with_fedads_subset(self, cfg, shape, device="cpu", seed=0):
            init(self, cfg, shape, device, seed)
            m = self.lm.model
            m.idx = torch.from_numpy(channel_subset(m.n_features_original, m.n_features,
                                                    int(cfg.padim.channel_seed)))

        members.Padim.__init__ = with_fedads_subset
    flat = {"dataset.name": "mtd", "dataset.root": str(Path(args.root).resolve()),
            "dataset.image_size": 224}
    cfg = row_config(flat, "anomalib-padim-centralized")
    final = run_row(cfg, Path(tempfile.mkdtemp()) / "run")["final"]["per_client"]["0"]
    print(args.mode, {k: round(final[k], 4) for k in ("i_auroc", "p_auroc", "pro")})


if __name__ == "__main__":
    main()
