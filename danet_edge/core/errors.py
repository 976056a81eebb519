"""Exception types of danet-edge.

The library raises only these (plus programming errors); ``danet_edge.cli`` turns them into one line
on stderr and the exit code of the class (the table in docs/cli.md, "Exit codes"):

====  ===============================================================================
0     success
1     a check failed (``CheckFailed``: thresholds not met)
2     usage: unknown or conflicting options (``ConfigError``; also Typer's own usage errors)
3     bad input: data, image, checkpoint, manifest or calibration files (``DataError``,
      ``CheckpointError``, ``ManifestError``, ``CalibrationError``)
4     a missing optional package (``MissingDependencyError``: tensorrt, a CUDA API...)
5     a stage that ran and failed (``ExportError``, ``EngineError``, ``TrainingError``); a write the
      file system refused (``StorageError``: no space left, quota exceeded)
130   interrupted (Ctrl-C)
====  ===============================================================================
"""

from __future__ import annotations


class DanetEdgeError(Exception):
    """Base class: a problem the user can fix (bad input, missing file, missing package)."""

    exit_code = 2


class ConfigError(DanetEdgeError):
    """Options that are invalid or contradict each other."""


class DataError(DanetEdgeError):
    """A data set, image, mask or video that is missing, unreadable or inconsistent."""

    exit_code = 3


class TrainingError(DanetEdgeError):
    """A training run that cannot go on (loss not finite...)."""

    exit_code = 5


class CheckpointError(DanetEdgeError):
    """A checkpoint that is missing, unsafe, malformed or does not fit the model."""

    exit_code = 3


class ExportError(DanetEdgeError):
    """An export that failed or produced a graph that does not meet its contract."""

    exit_code = 5


class CompatibilityError(ExportError):
    """A graph that breaks a TensorRT ONNX-parser rule (names the node and the rule)."""


class PrecisionError(ExportError):
    """A graph or engine whose precision is not what was asked."""


class CalibrationError(DanetEdgeError):
    """Calibration data that is missing, empty, unreadable or inconsistent."""

    exit_code = 3


class MissingDependencyError(DanetEdgeError):
    """An optional package (tensorrt, pycuda, cuda-python, modelopt...) is not installed."""

    exit_code = 4


class EngineError(DanetEdgeError):
    """A TensorRT engine that cannot be built or loaded here (wrong GPU, wrong version...)."""

    exit_code = 5


class ManifestError(DanetEdgeError):
    """An artifact's manifest that is missing, malformed or does not match the artifact."""

    exit_code = 3


class StorageError(DanetEdgeError):
    """A write the file system refused: no space left on the device, a quota, a file-size limit.

    The message names the file and the free space (``core.utils.storage_error``); the temporary file of the
    write is gone and the file it would have replaced is unchanged."""

    exit_code = 5


class RunLocked(ConfigError):
    """An output folder another danet-edge run is writing into (``core.runfolder.run_lock``)."""


class CheckFailed(DanetEdgeError):
    """An accuracy check whose thresholds were not met."""

    exit_code = 1


class Interrupted(KeyboardInterrupt):
    """Ctrl-C inside a stage, with a message saying what was kept (``interrupted after epoch 3: runs/x/last.pt``).

    Still a ``KeyboardInterrupt`` (``except Exception`` does not swallow it); the CLI prints the message as
    its one line and exits 130.
    """

    exit_code = 130
