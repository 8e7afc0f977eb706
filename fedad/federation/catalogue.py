"""The docs' tables of what each built-in detector declares and what each exchange and
refinement requires, written from the declarations themselves
(:mod:`fedad.detectors.capabilities`); ``tests/test_docs_tables.py`` keeps
``docs/development.md`` equal to :func:`capability_tables`."""

from __future__ import annotations

from fedad.detectors.capabilities import Family, capabilities, describe, missing
from fedad.detectors.registry import DETECTORS, detector_class
from fedad.exchanges.registry import EXCHANGES, exchange_class
from fedad.refinements.registry import NONE, REFINEMENTS, refinement_class

BUILT_IN = "fedad."  # plug-ins registered at run time are not the docs' business


def _built_in(table: dict[str, str]) -> list[str]:
    return [name for name, target in table.items() if target.startswith(BUILT_IN)]


def capability_tables() -> str:
    """Markdown: the requirements of every exchange and refinement, then every detector's
    capabilities and what can federate and refine it."""
    exchanges, refinements = _built_in(EXCHANGES), _built_in(REFINEMENTS)
    lines = ["| exchange / refinement | requires of the detector |", "|---|---|"]
    for name in exchanges:
        req = exchange_class(name).requires
        lines.append(f"| exchange={name} | "
                     + ("; ".join(describe(c) for c in req) or "nothing") + " |")
    for name in refinements:
        req = refinement_class(name).requires
        lines.append(f"| refine={name} | " + "; ".join(describe(c) for c in req) + " |")
    lines += ["", "| detector | declares | exchanges | refine |", "|---|---|---|---|"]
    for name in _built_in(DETECTORS):
        cls = detector_class(name)
        declared = ", ".join(c.__name__ for c in capabilities(cls))
        by = ", ".join(e for e in exchanges if not missing(cls, exchange_class(e).requires))
        if issubclass(cls, Family):
            by = "its member's (the rows below it)"
        refine = ", ".join([NONE, *(r for r in refinements
                                    if not missing(cls, refinement_class(r).requires))])
        lines.append(f"| {name} | {declared} | {by} | {refine} |")
    return "\n".join(lines) + "\n"
