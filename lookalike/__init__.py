"""lookalike: metric learning for images, from a labelled CSV to embeddings and honest retrieval metrics."""

from lookalike.errors import LookalikeError

__version__ = "0.1.0"
__all__ = ["LookalikeError", "__version__"]
