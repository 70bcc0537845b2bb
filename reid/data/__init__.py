"""Datasets, the manifest, image decoding and the input pipeline.

Only the dependency-free record types are re-exported here; import the rest from their modules
(``reid.data.datasets``, ``reid.data.manifest``, ``reid.data.images``, ``reid.data.synthetic``, ...)
so that importing ``reid.data`` never pulls in torch.
"""

from reid.data.samples import DatasetSplits, Sample

__all__ = ["DatasetSplits", "Sample"]
