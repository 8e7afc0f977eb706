"""The JSON sidecar of an exported scorer (``scorer.json`` next to ``scorer.onnx``): what an
inspection line needs besides the graph to feed it and read its outputs.

    {"format": "fedad-onnx-scorer", "format_version": 1, "fedad_version": "0.1.0",
     "detector": "patchcore", "site": 0, "image_size": 224,
     "input": {"name": "images", "shape": ["N", 3, 224, 224], "dtype": "float32",
               "range": [0, 1], "channels": "RGB", "normalised_inside": true},
     "mean": [...], "std": [...], "threshold": 31.2 (or null),
     "outputs": {"map": ["N", 224, 224], "score": ["N"], "decision": ["N"]},
     "opset": 17, "exporter": "torchscript", "bank_chunk": 4096, ...}
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

import fedad
from fedad.federation.predict import SiteScorer

FORMAT = "fedad-onnx-scorer"
FORMAT_VERSION = 1


def sidecar_path(model: str | Path) -> Path:
    """``scorer.onnx`` -> ``scorer.json``."""
    return Path(model).with_suffix(".json")


def sidecar(scorer: SiteScorer, site: int, model: Path, opset: int, chunk: int,
            exporter: str, input_name: str, outputs: tuple[str, ...]) -> dict:
    """The sidecar's content for ``scorer`` (site ``site``) exported to ``model``."""
    s = int(scorer.cfg.dataset.scored_size())
    shapes = {"map": ["N", s, s], "score": ["N"], "decision": ["N"]}
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "fedad_version": fedad.__version__,
        "model": model.name,
        "detector": scorer.cfg.detector,
        "exchange": scorer.cfg.exchange,
        "site": int(site),
        "backbone": scorer.info.get("name"),
        "image_size": s,
        "input": {"name": input_name, "shape": ["N", 3, s, s], "dtype": "float32",
                  "range": [0.0, 1.0], "channels": "RGB", "layout": "NCHW",
                  "normalised_inside": True,
                  "resize": "to image_size x image_size, bilinear (antialiased), as "
                            "fedad-predict does"},
        "mean": [float(v) for v in scorer.info["mean"]],
        "std": [float(v) for v in scorer.info["std"]],
        "threshold": None if scorer.threshold is None else float(scorer.threshold),
        "decision": ("score > threshold" if scorer.threshold is not None else
                     "always false: the site has no threshold (calibration.holdout=0)"),
        "outputs": {name: {"shape": shapes[name],
                           "dtype": "bool" if name == "decision" else "float32"}
                    for name in outputs},
        "opset": int(opset),
        "exporter": exporter,
        "bank_chunk": int(chunk),
        "torch_version": torch.__version__,
    }


def write_sidecar(path: Path, scorer: SiteScorer, site: int, model: Path, **kwargs) -> dict:
    """Write :func:`sidecar` to ``path``; return it."""
    meta = sidecar(scorer, site, model, **kwargs)
    path.write_text(json.dumps(meta, indent=2) + "\n")
    return meta
