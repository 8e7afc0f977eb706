"""Configuration: the typed schema (:mod:`.schema`, one dataclass per concern, composed into
``RunConfig``; each method's section beside its code), choice fields (:mod:`.fields`), a
plug-in's sections (:mod:`.sections`) and the flat form for Flower's run config and
``pyproject.toml`` (:mod:`.flat`)."""
