"""A site's scorer as a standalone ONNX model (``fedad-export``): the frozen backbone, the
detector's torch scoring path against the global summary, and the site's threshold, in one
graph an inspection line runs with onnxruntime alone (no fedad, no faiss, no Flower).

* :mod:`fedad.export.module`: :class:`~fedad.export.module.ScorerModule`, the scorer as one
  ``nn.Module`` (images in ``[0, 1]`` -> map, score, decision; normalisation inside);
* :mod:`fedad.export.onnx_export`: :func:`~fedad.export.onnx_export.export_site`, a run
  folder's site -> ``scorer.onnx`` + ``scorer.json``;
* :mod:`fedad.export.sidecar`: the JSON sidecar;
* :mod:`fedad.export.runtime`: onnxruntime scoring and the check against PyTorch.

Core code: nothing here imports Flower.
"""

from fedad.export.module import ScorerModule, require_torch_score
from fedad.export.onnx_export import ExportResult, export_module, export_site, scorer_module

__all__ = ["ExportResult", "ScorerModule", "export_module", "export_site",
           "require_torch_score", "scorer_module"]
