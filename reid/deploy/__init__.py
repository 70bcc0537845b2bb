"""Using a trained model: export (ONNX / TorchScript) with a parity check, embedding, extraction, search.

Modules, each with one job:

* :mod:`reid.deploy.contract`: the preprocessing contract an exported file carries in its metadata,
  and the compatibility check between a model and an extracted gallery.
* :mod:`reid.deploy.embedder`: ``load_model(path)`` -> an embedder for a checkpoint, an ONNX file or a
  TorchScript file, with the evaluation's preprocessing (``reid.load_model`` is this function).
* :mod:`reid.deploy.export`: the inference-only module, the exporters and the parity check.
* :mod:`reid.deploy.inputs`: image lists from folders, list files and manifest splits.
* :mod:`reid.deploy.gallery`: the ``.npz`` feature file and the chunked top-k search.
* :mod:`reid.deploy.quantize`: the int8 export's calibration, quantisation and its measured cost.
* :mod:`reid.deploy.index`: the FAISS gallery index (exact or approximate) of ``reid index``.
* :mod:`reid.deploy.registry`: logging an export to its MLflow run and the Model Registry.

Nothing here is imported by ``import reid``; onnx/onnxruntime/faiss are imported only where needed (the
``export`` extra installs the first two, ``deploy`` all three).
"""
