"""qwave: quantized classifiers over frozen embeddings, measured from the packed artifact."""

__version__ = "0.1.0"

__all__ = ["__version__", "load", "save"]


def __getattr__(name: str):
    """``qwave.save`` / ``qwave.load`` (imported on first use, so ``import qwave`` stays light)."""
    if name in ("save", "load"):
        from qwave import artifact

        return getattr(artifact, name)
    raise AttributeError(f"module 'qwave' has no attribute {name!r}")
