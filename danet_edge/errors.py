"""Exception types of danet-edge.

The library raises only these (plus programming errors); ``danet_edge.cli`` turns them
into one line on stderr and a non-zero exit code.
"""

from __future__ import annotations


class DanetEdgeError(Exception):
    """Base class: a problem the user can fix (bad input, missing file, missing package)."""

    exit_code = 2


class ConfigError(DanetEdgeError):
    """Options that are invalid or contradict each other."""


class DataError(DanetEdgeError):
    """A data set, image, mask or video that is missing, unreadable or inconsistent."""


class TrainingError(DanetEdgeError):
    """A training run that cannot go on (loss not finite...)."""


class CheckpointError(DanetEdgeError):
    """A checkpoint that is missing, unsafe, malformed or does not fit the model."""


class ExportError(DanetEdgeError):
    """An export that failed or produced a graph that does not meet its contract."""


class CompatibilityError(ExportError):
    """A graph that breaks a TensorRT ONNX-parser rule (names the node and the rule)."""


class PrecisionError(ExportError):
    """A graph or engine whose precision is not what was asked."""


class CalibrationError(DanetEdgeError):
    """Calibration data that is missing, empty, unreadable or inconsistent."""


class MissingDependencyError(DanetEdgeError):
    """An optional package (tensorrt, pycuda, cuda-python, modelopt...) is not installed."""


class EngineError(DanetEdgeError):
    """A TensorRT engine that cannot be built or loaded here (wrong GPU, wrong version...)."""


class ManifestError(DanetEdgeError):
    """An artifact's manifest that is missing, malformed or does not match the artifact."""


class CheckFailed(DanetEdgeError):
    """An accuracy check whose thresholds were not met."""

    exit_code = 1
