"""What travels between sites and server and how the server combines it: one module per
exchange, their one list in :mod:`.registry` and their config sections in :mod:`.config`.
Nothing is imported here, so the config sections load without the exchanges."""
