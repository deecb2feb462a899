"""Export of trained extractors to ONNX, with a parity check against torch, and onnxruntime inference.

``to_onnx`` writes the file (dynamic batch axis; input size and normalisation recorded inside it and in a JSON
beside it) after torch and onnxruntime agree on real images; ``OnnxModel`` runs it as the ``model`` of an
``Embedder``; ``onnx_embedder`` builds that Embedder with the recorded preprocessing. Needs the optional
packages of ``lookalike[onnx]`` (onnx, onnxruntime, onnxscript), imported only when used. Guide:
docs/export.md.
"""

from lookalike.export.errors import ExportError, MissingPackageError, ParityError
from lookalike.export.metadata import OnnxMetadata, metadata_path, parity_path, preprocess_transform
from lookalike.export.onnx_export import EXPORTERS, to_onnx
from lookalike.export.parity import TOLERANCES, ParityReport, check_parity, compare_embeddings
from lookalike.export.runtime import OnnxModel, onnx_embedder, read_metadata

__all__ = [
    "EXPORTERS",
    "ExportError",
    "MissingPackageError",
    "OnnxMetadata",
    "OnnxModel",
    "ParityError",
    "ParityReport",
    "TOLERANCES",
    "check_parity",
    "compare_embeddings",
    "metadata_path",
    "onnx_embedder",
    "parity_path",
    "preprocess_transform",
    "read_metadata",
    "to_onnx",
]
