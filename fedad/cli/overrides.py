"""One compose path for every command: Hydra's, over ``conf/`` (the groups ``method=``,
``dataset=``, ``partition=``, ``backbone=``, ``variant=`` and dotted ``key=value``
overrides), onto the typed :class:`~fedad.config.schema.RunConfig`, then checked
(:func:`fedad.detectors.registry.check`) before anything starts. ``fedad-sim`` composes the
same way (``@hydra.main`` over the same folder and schema)."""

from __future__ import annotations

from collections.abc import Sequence

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from fedad.config.flat import migrated_override, to_flat
from fedad.config.ranges import unknown_key
from fedad.config.schema import RunConfig
from fedad.errors import ConfigError
from fedad.federation.compose import check


def compose(overrides: Sequence[str] = (), base: RunConfig | None = None) -> RunConfig:
    """The config of ``overrides`` such as ``variant=switches dataset=mtd
    dataset.root=/abs/mtd train.local_epochs=3``: a :class:`~fedad.cli.sim.SimConfig`
    when ``base`` is one (what ``fedad-sim`` launches), else a plain ``RunConfig``.
    With a ``base`` config that is not a fresh default, the dotted overrides refine it
    (no groups: they would reset what it already holds).

    Raises:
        ConfigError: naming the override that is unknown or has the wrong type, or a
            choice field set to a value it does not allow (with the values it allows).
    """
    from fedad.cli.sim_config import PROJECT, SimConfig, run_config_of

    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
    overrides = [migrated_override(o) for o in overrides]  # train.reduce= -> feddymem.
    check_keys(overrides)
    fresh = base is None or base == type(base)()
    if not fresh:
        return check(_refine(base, overrides))
    if GlobalHydra.instance().is_initialized():  # e.g. called inside a Hydra app
        GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(PROJECT / "conf"), version_base=None):
            sim = OmegaConf.to_object(hydra_compose("config", overrides=list(overrides)))
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(f"overrides {' '.join(overrides)}: {_reason(exc)}") from exc
    assert isinstance(sim, SimConfig)
    return check(sim if isinstance(base, SimConfig) else run_config_of(sim))


GROUPS = ("method", "dataset", "partition", "backbone", "variant")  # the folders in conf/


def known_keys() -> set[str]:
    """Every key an override may set: the run config's fields (``fedad-sim``'s included),
    dotted, and the config groups of ``conf/``."""
    from fedad.cli.sim_config import SimConfig

    return {*to_flat(SimConfig()), *GROUPS}


def check_keys(overrides: Sequence[str]) -> None:
    """Refuse overrides of keys the config does not have, with the key meant (``+key=``
    too: the schema is closed, so Hydra's advice to append would start a default run);
    Hydra's own keys (``hydra.*``, ``hydra/...``) pass, and so do a section's keys
    (``+sections.<name>.<key>``): the composed check reads them with the dataclass that
    section's code declares and names any key it does not have.

    Raises:
        ConfigError: one line per unknown key.
    """
    known, bad = known_keys(), []
    heads = {k.split(".", 1)[0] for k in known}  # the schema's own sections
    for item in overrides:
        key = item.split("=", 1)[0].lstrip("+~")
        if key.startswith(("hydra.", "hydra/", "sections.")) or key == "hydra":
            continue
        line = unknown_key(key, known)
        if (line and "." in key and "did you mean" not in line
                and key.split(".", 1)[0] not in heads):  # perhaps a plug-in section's key
            line = (f"{key} is not a config key; a section declared beside a detector's "
                    f"code (detector=anomalib's, a plug-in's) is set as "
                    f"+sections.{key}=... (fedad-sim --cfg job lists every other key)")
        if line:
            bad.append(line)
    if bad:
        raise ConfigError("; ".join(bad))


def _reason(exc: BaseException) -> str:
    """Hydra's message without its hints about ``+key`` (the schema is closed) and the
    search path, with the cause (e.g. the type a value failed to convert to)."""
    lines = [ln for ln in str(exc).splitlines()
             if ln.strip() and not ln.startswith(("To append", "Config search path"))
             and not ln.startswith("\tprovider")]
    text = " ".join(ln.strip() for ln in lines)
    cause = exc.__cause__
    if cause is not None and str(cause).splitlines():
        text += f" ({str(cause).splitlines()[0]})"
    return text


def _refine(base: RunConfig, overrides: Sequence[str]) -> RunConfig:
    cfg = OmegaConf.structured(base)
    for item in overrides:
        try:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([item]))
        except OmegaConfBaseException as exc:
            raise ConfigError(f"override {item!r}: {exc.msg if hasattr(exc, 'msg') else exc}"
                              ) from exc
    return OmegaConf.to_object(cfg)
