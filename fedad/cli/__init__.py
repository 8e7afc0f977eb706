"""The face of fedad: command-line entry points that compose configs and launch runs."""
