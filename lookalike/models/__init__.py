"""Layer 2: extractors (images -> embeddings), safe checkpoints, and the model zoo."""

from lookalike.models.base import Extractor
from lookalike.models.checkpoints import load_into, load_weights, save_weights
from lookalike.models.extractors import SmallCNNExtractor, TimmExtractor, ResNetExtractor, ViTExtractor
from lookalike.models.pooling import GeM
from lookalike.models.zoo import ZooEntry, download_checkpoint, from_zoo

__all__ = [
    "Extractor",
    "GeM",
    "ResNetExtractor",
    "SmallCNNExtractor",
    "TimmExtractor",
    "ViTExtractor",
    "ZooEntry",
    "download_checkpoint",
    "from_zoo",
    "load_into",
    "load_weights",
    "save_weights",
]
