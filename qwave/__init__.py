"""qwave: quantized classifiers over frozen embeddings, measured from the packed artifact."""

__version__ = "0.1.0"
