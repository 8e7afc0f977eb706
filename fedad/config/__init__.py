"""Configuration: the typed schema (:mod:`.schema`, one dataclass per concern, composed into
``RunConfig``) and its flat form for Flower's run config and ``pyproject.toml``
(:mod:`.flat`)."""
