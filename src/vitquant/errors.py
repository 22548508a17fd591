"""User-facing errors. Library code raises these (never ``assert``) for bad input."""


class VitQuantError(Exception):
    """Base class for every error caused by user input or environment (files, data, options)."""


class ConfigError(VitQuantError, ValueError):
    """An impossible or unsupported option: bit width, scheme name, model name."""


class WidthError(ConfigError):
    """A quantizer asked for more bits than its format supports: ``what`` (the format's name) supports
    at most ``widest``."""

    def __init__(self, message: str, what: str, widest: int) -> None:
        super().__init__(message)
        self.what, self.widest = what, widest


class DataError(VitQuantError):
    """Missing, unreadable or too-small image folders and label files."""


class WeightsError(VitQuantError):
    """Weights that cannot be found, downloaded or loaded into the model."""


class NumericalError(VitQuantError):
    """NaN/inf where finite values are required (calibration activations, logits)."""


class ModelFileError(VitQuantError):
    """A quantized model file (.vqm) that cannot be written, or is missing, truncated, corrupted or foreign."""


class ReportError(VitQuantError):
    """A report or results file (JSON) that is missing, unreadable, or not the report asked for."""


class DtypeError(VitQuantError, TypeError):
    """A tensor of the wrong kind, e.g. floats given to a kernel that takes integers."""


class RangeError(VitQuantError, ValueError):
    """Integers outside a declared bound, or a computation whose result could leave the range its
    arithmetic holds exactly."""


class NotIntegerError(ConfigError):
    """A number format with no exact integer form (``Quantizer.to_integer`` on it)."""


class CheckpointError(VitQuantError):
    """A training checkpoint that is missing, unreadable, corrupted, or written by a different run
    (another model, calibration, configuration or number of processes)."""
