"""Refinements that wrap a detector's differentiable score at evaluation (one folder per
method; the hook is :class:`fedad.evaluation.differentiable.Refinement`)."""
