"""The two record types every other module speaks: one labelled image, and a dataset's three splits.

They are plain dataclasses (no torch, no pydantic) so that readers, the manifest, loaders and the
evaluation can share them without import cost, and so a ``Sample`` can be hashed and compared.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Sample:
    """One image: its absolute path, identity and camera.

    ``pid`` is the identity as the dataset names it (Market-1501: ``0`` are distractors, which stay
    in the gallery as negatives); ``camid`` is the camera as parsed from the file name, 1-based for
    Market-1501 and VeRi-776. Both stay raw here: the contiguous training labels a classifier needs
    are derived once, in the manifest, so evaluation always compares real identities.
    """

    path: str
    pid: int
    camid: int


@dataclass
class DatasetSplits:
    """A dataset as read from disk: ``train``, ``query`` and ``gallery`` lists of samples, sorted by file name.

    ``format`` and ``root`` (absolute) record where the splits came from, so that
    :func:`reid.data.manifest.build_manifest` needs nothing else; both are optional for splits
    assembled by hand (tests, custom tools). ``notes`` are remarks for the user about what the reader
    did (junk images dropped, how folder names were mapped to ids), printed by ``reid prepare``;
    ``warnings`` are things that look wrong but need not be (e.g. implausible camera labels).

    ``has_cameras`` is False for data without camera ids (VehicleID, a ``folder`` dataset read with
    ``data.cameras=none``): every ``camid`` is then :data:`NO_CAMERA` and the evaluation drops the
    same-camera rule by itself. ``protocol`` names how query and gallery are scored: ``standard``
    (the fixed split, Market-1501 rules) or ``vehicleid`` (query and gallery are pooled and
    re-drawn, one random gallery image per identity, averaged over ``eval.gallery_draws``).
    """

    name: str
    train: list[Sample]
    query: list[Sample]
    gallery: list[Sample]
    format: str = ""
    root: str = ""
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    has_cameras: bool = True
    protocol: str = "standard"

    def split(self, name: str) -> list[Sample]:
        """The split called ``name`` (``train``, ``query`` or ``gallery``)."""
        if name not in SPLIT_NAMES:
            raise KeyError(f"unknown split {name!r}; expected one of {', '.join(SPLIT_NAMES)}")
        return getattr(self, name)


SPLIT_NAMES: tuple[str, ...] = ("train", "query", "gallery")
NO_CAMERA = -1  # the camid of every sample of a dataset without camera ids
