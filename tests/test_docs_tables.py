"""docs/development.md's capability tables are the declarations themselves
(:func:`fedad.federation.catalogue.capability_tables`), regenerated when they change."""

from __future__ import annotations

from pathlib import Path

from fedad.federation.catalogue import capability_tables

DOC = Path(__file__).resolve().parents[1] / "docs" / "development.md"
START, END = "<!-- capability tables: generated -->\n", "<!-- end of capability tables -->"


def test_the_docs_capability_tables_are_generated_from_the_declarations():
    text = DOC.read_text()
    assert START in text and END in text
    shown = text[text.index(START) + len(START):text.index(END)]
    assert shown == capability_tables(), (
        "docs/development.md's capability tables are stale: paste the output of "
        "python -c 'from fedad.federation.catalogue import capability_tables; "
        "print(capability_tables())'")
    # the table names every built-in detector and what can federate it
    assert ("| asymst | Budgeted, Phased, ShiftedRepresentation, Represents, RowMatrix, "
            "Trainable |") in shown
