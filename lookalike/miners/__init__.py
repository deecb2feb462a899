"""Triplet miners: ``miner(features, labels) -> (anchors, positives, negatives)`` tensors of shape (n, dim)."""

from lookalike.miners.all_triplets import AllTripletsMiner
from lookalike.miners.base import InBatchTripletMiner, TripletMiner
from lookalike.miners.cluster import HardClusterMiner
from lookalike.miners.distances import paired_euclidean, pairwise_euclidean, safe_sqrt
from lookalike.miners.hard import HardTripletsMiner, NHardTripletsMiner
from lookalike.miners.memory_bank import MemoryBankMiner

__all__ = [
    "AllTripletsMiner",
    "HardClusterMiner",
    "HardTripletsMiner",
    "InBatchTripletMiner",
    "MemoryBankMiner",
    "NHardTripletsMiner",
    "TripletMiner",
    "paired_euclidean",
    "pairwise_euclidean",
    "safe_sqrt",
]
