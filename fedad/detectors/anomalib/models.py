"""Which anomalib image models fedad federates, what each one's state is (so which exchange
fits it), and the ones it refuses with the reason (anomalib 2.7).

A site trains a model by calling anomalib's own ``training_step`` (its loss) and stepping
the optimiser of its own ``configure_optimizers`` (SCAFFOLD replaces it by plain SGD, as
for every fedad detector), a fixed number of steps a round, in fedad's loop rather than
a Lightning ``Trainer``: the weight exchanges change every optimiser step (FedProx's
proximal term, SCAFFOLD's correction, FedBN's local layers), which a ``Trainer`` would
own. So models whose training needs a ``Trainer`` (manual optimisation, or reading
``self.trainer``) are refused for now (:data:`REFUSED`).
"""

from __future__ import annotations

from dataclasses import dataclass

from fedad.components.training import OptimSpec

TRAINED, GAUSSIAN, BANK = "trained", "gaussian", "bank"


@dataclass(frozen=True)
class ModelSpec:
    """One anomalib model: its class (``module:Class``), its kind (``trained``: a network
    whose weights travel; ``gaussian``: PaDiM's statistics; ``bank``: PatchCore's memory
    bank), the state-dict prefix of the part it trains and that part's optimiser as
    anomalib's ``configure_optimizers`` builds it (name, rate, weight decay: the declared
    spec, checked against anomalib's in the tests; what actually steps is anomalib's own
    optimiser object). The init arguments fedad sets are each member's ``defaults``."""

    cls: str
    kind: str
    part: str = ""
    optim: OptimSpec | None = None


MODELS: dict[str, ModelSpec] = {
    # Wang et al. 2021 (STFPM): the student trains, the pre-trained teacher is frozen
    "stfpm": ModelSpec("anomalib.models.image.stfpm.lightning_model:Stfpm", TRAINED,
                       part="student_model.", optim=OptimSpec("sgd", 0.4, 0.001)),
    # Zavrtanik et al. 2021 (DRAEM): no backbone; reconstructive + discriminative networks
    "draem": ModelSpec("anomalib.models.image.draem.lightning_model:Draem", TRAINED,
                       part="", optim=OptimSpec("adam", 1e-4)),
    # FRE (Ndiour et al. 2023): a linear autoencoder on one frozen layer's features
    "fre": ModelSpec("anomalib.models.image.fre.lightning_model:Fre", TRAINED,
                     part="fre_model.", optim=OptimSpec("adam", 1e-3)),
    "padim": ModelSpec("anomalib.models.image.padim.lightning_model:Padim", GAUSSIAN),
    "patchcore": ModelSpec("anomalib.models.image.patchcore.lightning_model:Patchcore", BANK),
}

# models fedad does not run yet, and why (compose refuses them with this text)
REFUSED: dict[str, str] = {
    "efficient_ad": "it needs its pre-trained PDN teacher weights and ImageNette, which "
                    "anomalib downloads at run time; fedad runs offline (a local teacher "
                    "file is not wired yet)",
    "dinomaly": "it needs DINOv2 ViT weights, which anomalib downloads at run time; fedad "
                "runs offline (no local DINOv2 file is wired yet)",
    "cflow": "it trains by Lightning's manual optimisation (self.optimizers()), which "
             "needs a Trainer; fedad steps the optimiser itself",
    "ganomaly": "it trains by Lightning's manual optimisation, which needs a Trainer",
    "dsr": "it trains by Lightning's manual optimisation and reads self.trainer",
    "glass": "it trains by Lightning's manual optimisation and reads self.trainer",
    "supersimplenet": "its learning-rate schedule reads self.trainer.max_epochs",
    "uninet": "its schedule reads self.trainer.max_epochs and max_steps",
    "cfa": "it initialises its memory from self.trainer.datamodule",
    "reverse_distillation": "its decoder is built for ResNet backbones only, whose ImageNet "
                            "weights fedad has no offline copy of (pass one with "
                            "backbone.name=resnet18 backbone.weights=/path/to/file; not "
                            "wired yet)",
    "fastflow": "it supports ResNet, CaiT and DeiT backbones only (no offline weights)",
}

# a trained model's optimiser steps per site by budget (sections.anomalib.steps=0); cpu:
# fedad's a priori size for a 2-core MTD row; paper: the publication's schedule at
# MVTec's ~250 training images of a category (STFPM: 100 epochs of batch 32 = 800 steps;
# DRAEM: 700 epochs of batch 8 = 22,000 steps; FRE gives none we could read: anomalib's
# example of 220 epochs of batch 32 = 1,760)
STEPS: dict[str, dict[str, int]] = {
    "cpu": {"stfpm": 400, "draem": 400, "fre": 400},
    "paper": {"stfpm": 800, "draem": 22000, "fre": 1760},
}


def spec_of(model: str) -> ModelSpec:
    """The spec of ``model``.

    Raises:
        ConfigError: a model fedad refuses (with why) or does not know (listing those it
            runs).
    """
    from fedad.errors import ConfigError

    if model in MODELS:
        return MODELS[model]
    if model in REFUSED:
        raise ConfigError(f"sections.anomalib.model={model}: not supported yet: "
                          f"{REFUSED[model]}. Supported: {', '.join(MODELS)}")
    raise ConfigError(f"sections.anomalib.model must be one of {', '.join(MODELS)} "
                      f"(refused for now: {', '.join(REFUSED)}), got {model!r}")
