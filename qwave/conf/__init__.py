"""Hydra configuration files of the ``qwave`` commands (package data)."""
