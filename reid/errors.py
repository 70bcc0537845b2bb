"""Error types that carry a message meant for the user (what is wrong and how to fix it)."""

from __future__ import annotations


class ReidError(RuntimeError):
    """Base of every expected failure; the CLI prints its message without a traceback."""


class DatasetError(ReidError):
    """A dataset root that is missing, empty, in the wrong layout, or holds unparsable files."""


class CorruptImageError(DatasetError):
    """An image that cannot be decoded; the message names its path."""


class CheckpointError(ReidError):
    """A checkpoint that is missing, needs pickle, or belongs to another model."""


class NonFiniteLossError(ReidError):
    """Training produced NaN/Inf; the message names the step and the last finite loss values."""


class TrackingError(ReidError):
    """The MLflow tracking URI cannot be reached or written."""


class EvaluationError(ReidError):
    """The protocol cannot be applied (e.g. no query has a cross-camera match)."""


class PeerLostError(RuntimeError):
    """A process of a distributed run lost its connection to the others (a node or worker died or was
    stopped). Not a user error: ``last.pt`` holds the last completed epoch and ``--resume`` continues."""


class WriteError(ReidError):
    """An output (checkpoint, export, metrics, manifest, record) that the file system refused to write;
    the message names the path and the reason. The previous file, if any, is left as it was."""


class DiskFullError(WriteError):
    """No space left (or a quota reached) while writing an output: the message names the path, the free
    space and roughly what was needed."""
