"""Pixel-level refinements of a detector's maps: one folder per refinement, their one list in
:mod:`.registry`. Nothing is imported here, so a refinement's config section loads without
the engine."""
