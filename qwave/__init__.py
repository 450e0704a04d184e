"""qwave: quantized classifiers over frozen embeddings, measured from the packed artifact."""

__version__ = "0.1.0"

__all__ = ["__version__", "load", "save"]


def __getattr__(name: str):
    """``qwave.save`` (an artifact) / ``qwave.load`` (a ``qwave.deploy.Classifier``), imported on first use so
    ``import qwave`` stays light."""
    if name == "save":
        from qwave import artifact

        return artifact.save
    if name == "load":
        from qwave import deploy

        return deploy.load
    raise AttributeError(f"module 'qwave' has no attribute {name!r}")
