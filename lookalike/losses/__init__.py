"""Criteria: ``criterion(features, labels) -> loss`` with mining or a classification head inside."""

from lookalike.losses.arcface import ArcFaceLoss, ArcFaceLossWithMLP
from lookalike.losses.triplet import TripletLoss, TripletLossWithMiner

__all__ = ["ArcFaceLoss", "ArcFaceLossWithMLP", "TripletLoss", "TripletLossWithMiner"]
