"""Layer 1: the dataset CSV format and its checks, datasets of item dicts, images, transforms, samplers."""

from pathlib import Path

from lookalike.data.datasets import ImageDataset, train_and_validation_datasets
from lookalike.data.samplers import BalanceSampler, CategoryBalanceSampler, DistinctCategoryBalanceSampler
from lookalike.data.transforms import get_transforms
from lookalike.data.validation import DatasetSummary, check_dataset, format_summary, load_dataset_table

__all__ = [
    "BalanceSampler",
    "CategoryBalanceSampler",
    "DatasetSummary",
    "DistinctCategoryBalanceSampler",
    "ImageDataset",
    "check_dataset",
    "example_dataset_root",
    "format_summary",
    "get_transforms",
    "load_dataset_table",
    "train_and_validation_datasets",
]


def example_dataset_root() -> Path:
    """The built-in example dataset (about 200 emoji labels, 64x64 images) shipped inside the package."""
    return Path(__file__).resolve().parent.parent / "assets" / "emoji_mini"
