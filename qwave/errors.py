"""User-facing errors: one sentence a user can act on; the CLI prints them without a traceback."""


class QwaveError(Exception):
    """Base class of every error qwave raises for a user mistake."""


class DataError(QwaveError):
    """A table, column or value in the user's data is unusable."""


class ConfigError(QwaveError):
    """An option or value in the configuration is invalid."""


class FormatError(QwaveError):
    """A quantization format cannot be applied to the given tensor or name."""


class ArtifactError(QwaveError):
    """A saved model directory is missing, incomplete or inconsistent."""
