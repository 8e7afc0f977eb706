"""The exchanges' config sections (``rowfed``, ``scaffold``, ``fedphp``, ``apple``, ``dbe``),
read into :class:`fedad.config.schema.RunConfig`. Plain dataclasses (layer 0 of the
package: they import only fedad.config and the core's RowFed settings)."""

from __future__ import annotations

from dataclasses import dataclass, field

from fedad.config.fields import choice
from fedad.rowfed.config import RowFedSettings


@dataclass
class RowFedExchangeConfig(RowFedSettings):
    """``exchange=rowfed``: RowFed's sparse row-wise fusion (``fedad/rowfed/``)
    personalising one matrix of a detector's module, its rows the matrix's input channels
    (the matrix the detector declares by default, FedDyMem's projection: row ``j`` is input
    channel ``j``'s weights to every output); every other weight is averaged as FedAvg
    does. Each site ``m`` trains with ``rho (M - 1) / 2 ||B_m - U_m||^2`` added (``U_m``:
    its own target from the server's fusion variables and duals) and the sparsity prox
    after every step; the server keeps every site's last ``B_m`` and updates the fusion
    variables of every pair. Participation: ``train.participation``; steps and rounds:
    ``train.*``."""

    # the module's matrix (C_out, C_in[, 1, 1]); "": the one the detector declares
    # (RowMatrix: FedDyMem's projection.conv.weight)
    param: str = ""


@dataclass
class ScaffoldConfig:
    """``exchange=scaffold``: SCAFFOLD's option II control update assumes plain SGD steps
    (Karimireddy et al., 2020, Alg. 1), so every part of the detector's module trains with
    SGD (no momentum) at this section's learning rate, whatever optimiser the detector
    uses otherwise (an Adam rate is far too small for SGD: asymst trained nothing at 1e-3).

    ``lr`` is fixed a priori at 0.01, the plain-SGD local rate of the FL libraries'
    examples (Flower's and PFLlib's use 0.005-0.1); ``part_lr`` overrides it per part of
    the module (``"<part>=<lr>"``, the part names the detector declares, e.g.
    ``["ddpm=0.05"]`` for asymst). Choose on the validation split, not the test set."""

    lr: float = 0.01
    part_lr: list[str] = field(default_factory=list)


@dataclass
class FedPHPConfig:
    """``exchange=fedphp``: FedPHP (Li et al., ECML PKDD 2021, "Federated Personalization
    with Inherited Private Models"; read from PFLlib's ``clientphp``). Each site keeps an
    inherited private model; a round trains the received global model with
    ``(1 - lam) * task + lam * MMD(rep(local), rep(private))`` and then inherits it,
    ``private <- (1 - mu_t) * local + mu_t * private`` with ``mu_t = mu * t / T``. The
    local model is uploaded (FedAvg); a site scores with its private model. Values not given
    by the reference code's defaults are fixed here a priori."""

    lam: float = 0.5  # weight of the representation MMD (PFLlib's default 1.0 drops the task)
    mu: float = 0.9  # how much of the private model is inherited at the last round
    rows: int = 256  # representation rows (positions) drawn per step for the MMD
    # which model a site scores with: its private one (the paper's personalised model) or
    # the local one it just trained from the global (PFLlib's evaluation)
    score_with: str = choice("private", "local")


@dataclass
class APPLEConfig:
    """``exchange=apple``: APPLE (Luo and Wu, IJCAI 2022, "Adapt to Adaptation: Learning
    Personalization for Cross-Silo Federated Learning"; read from PFLlib's
    ``clientapple``). The server relays every site's core model; site ``i``'s personalised
    model is ``sum_j p_ij core_j``; after each backward its own core moves by
    ``-lr M p_ii grad`` and ``p_ij`` by ``-dr_lr (mean(grad * core_j) + lam_t mu (p_ij -
    p0_j))``, ``p0`` the sites' shares of the training images, ``lam_t`` a cosine from 1
    to 0 over the first ``decay`` (APPLE's L) of the rounds. A priori values (PFLlib's
    defaults, 0 for ``dr_lr`` and ``mu``, would leave ``p`` fixed)."""

    dr_lr: float = 0.01  # step of the directed relationship vector p
    mu: float = 0.1  # pull of p towards p0
    decay: float = 0.2  # L: the fraction of the rounds over which lam_t decays to 0


@dataclass
class DBEConfig:
    """``exchange=dbe``: DBE (Zhang et al., NeurIPS 2023, "Eliminating Domain Bias for
    Federated Learning in Representation Space"; read from PFLlib's ``clientdbe``). FedAvg
    of the module, plus at each site a personalised representation bias (the module's
    ``shift``, trained by SGD at ``train.lr``, never uploaded) and a mean regulariser
    ``kl_weight * mean(0.5 (m - g)^2)`` pulling the running mean ``m`` of the site's
    representation (channel means, momentum ``momentum``) to the server's ``g``, the
    image-weighted mean of the sites' last running means. Round 1 trains without either
    (no ``g`` yet), as DBE's initialisation period."""

    momentum: float = 0.1  # PFLlib's default
    kl_weight: float = 1.0  # a priori (PFLlib's default 0 turns the regulariser off)
