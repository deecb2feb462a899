"""Pairwise re-ranking: a pairwise model re-scores each query's first ``top_n`` retrieved items.

The model (``lookalike.models.pairwise``) sees both items of a pair together, so it can learn what a distance
between two embeddings cannot (OML's ``PairwiseReranker``). Each item is encoded once (``model.encode``: the
embedding itself, or backbone feature maps of its image), then all (query, candidate) pairs go through
``model.score`` in chunks of ``batch_size`` pairs: memory is bounded and no Python loop runs over queries.

Ordering rule: the pair score is ``p = P(different | pair) = sigmoid(-logit)``; with ``blend = w`` the new score
of a candidate is ``(1 - w) * p + w * d`` (``d`` its search distance; ``w = 0``, the default, is OML's rule:
the pair score replaces the distance). The first ``top_n`` items are sorted by it (ties keep the search order),
items beyond ``top_n`` keep their order after them; their distances are scaled down when needed so that each
row stays ascending (`lookalike.postprocess.reorder.reorder_top`).
"""

from __future__ import annotations

import warnings
from typing import Any

import pandas as pd
import torch
from torch import Tensor

from lookalike.errors import LookalikeError
from lookalike.postprocess.reorder import check_top_n, reorder_top
from lookalike.retrieval.results import RetrievalResults

__all__ = ["PairwiseReranker", "pairwise_reranker"]


class PairwiseReranker:
    """Re-orders each query's first ``top_n`` retrieved items by a pairwise model's scores.

    ``model``: a `lookalike.models.pairwise.PairwiseModel` (``encode``, ``score``, ``input_kind``). A model on
    embeddings uses the embeddings the metrics pass in. A model on images (``input_kind == "images"``) needs
    ``images``: a table with a ``path`` column (and optional bbox columns) whose row ``i`` is dataset index
    ``i`` (the validation table the metrics' ``indices`` refer to), and the model's ``transform``; the images
    of the queries and of their candidates are encoded once each through `lookalike.inference.Embedder`.
    ``blend``: weight of the search distance in the new score (see the module docstring). ``batch_size``:
    pairs scored at once. ``device`` / ``precision``: where and how the model runs.
    """

    def __init__(self, model: torch.nn.Module, top_n: int = 5, blend: float = 0.0, batch_size: int = 16384,
                 images: pd.DataFrame | None = None, transform: Any = None, device: str = "cpu",
                 precision: str = "32", image_batch_size: int = 128) -> None:
        if not all(callable(getattr(model, name, None)) for name in ("encode", "score")):
            raise LookalikeError("PairwiseReranker: model must have encode(x) and score(a, b) methods "
                                 "(a lookalike.models.pairwise model).")
        self.top_n = check_top_n(top_n, "PairwiseReranker")
        if not 0.0 <= float(blend) <= 1.0:
            raise LookalikeError(f"PairwiseReranker: blend must be in [0, 1], got {blend!r}.")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise LookalikeError(f"PairwiseReranker: batch_size must be a positive integer, got {batch_size!r}.")
        self.kind = getattr(model, "input_kind", "embeddings")
        if self.kind == "images" and images is None:
            raise LookalikeError("PairwiseReranker: this model compares images, so it needs `images` (the "
                                 "validation table with a path column, row i = dataset index i) and `transform`.")
        from lookalike.inference import resolve_device

        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.blend, self.batch_size, self.precision = float(blend), batch_size, precision
        self.images, self.transform, self.image_batch_size = images, transform, int(image_batch_size)

    def __repr__(self) -> str:
        return f"PairwiseReranker({type(self.model).__name__}, top_n={self.top_n}, blend={self.blend:g})"

    @torch.no_grad()
    def __call__(self, results: RetrievalResults, query_embeddings: Tensor, gallery_embeddings: Tensor,
                 distance: str = "cosine") -> RetrievalResults:
        """The same results with the first ``top_n`` columns of every row re-ordered by the pair scores."""
        if len(query_embeddings) != results.n_queries or len(gallery_embeddings) != results.n_gallery:
            raise LookalikeError(
                f"PairwiseReranker: got {len(query_embeddings)} query and {len(gallery_embeddings)} gallery "
                f"embeddings for results of {results.n_queries} queries and {results.n_gallery} gallery items.")
        top = min(self.top_n, results.k)
        ids = results.retrieved_ids[:, :top]
        valid = ids >= 0
        pair_q = torch.arange(results.n_queries)[:, None].expand_as(ids)[valid]
        pair_g = ids[valid]
        if self.kind == "images":
            features, unreadable, q_rows, g_rows = self._image_features(results, pair_q, pair_g)
            p_different = self.score_pairs(features, features, q_rows, g_rows)
            p_different[unreadable[q_rows] | unreadable[g_rows]] = 1.0
        else:
            fq, fg = self._encode(query_embeddings), self._encode(gallery_embeddings)
            p_different = self.score_pairs(fq, fg, pair_q, pair_g)
        scores = torch.full(ids.shape, float("inf"))
        combined = (1.0 - self.blend) * p_different
        if self.blend:
            combined = combined + self.blend * results.distances[:, :top][valid].double()
        scores[valid] = combined.float()
        return reorder_top(results, scores)

    def score_pairs(self, fa: Tensor, fb: Tensor, rows_a: Tensor, rows_b: Tensor) -> Tensor:
        """P(different) (float64) of the pairs ``(fa[rows_a[i]], fb[rows_b[i]])``, ``batch_size`` pairs at once."""
        from lookalike.inference import autocast_for

        out = torch.empty(len(rows_a), dtype=torch.float64)
        for s in range(0, len(rows_a), self.batch_size):
            a = fa[rows_a[s:s + self.batch_size]].to(self.device)
            b = fb[rows_b[s:s + self.batch_size]].to(self.device)
            with autocast_for(self.device, self.precision):
                logits = self.model.score(a, b)
            out[s:s + self.batch_size] = torch.sigmoid(-logits.double()).cpu()
        return out

    def _encode(self, x: Tensor) -> Tensor:
        from lookalike.inference import autocast_for

        parts = []
        for s in range(0, len(x), self.batch_size):
            with autocast_for(self.device, self.precision):
                parts.append(self.model.encode(x[s:s + self.batch_size].float().to(self.device)).float())
        return torch.cat(parts) if parts else x.float()

    def _image_features(self, results: RetrievalResults, pair_q: Tensor,
                        pair_g: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Encoded images of every item some pair needs (each once), which of them could not be read, and each
        pair's two rows among them."""
        from lookalike.inference import Embedder, image_source

        dataset_ids = torch.cat([results.query_ids[pair_q], results.gallery_ids[pair_g]])
        unique, inverse = torch.unique(dataset_ids, return_inverse=True)
        n_rows = len(self.images)
        if len(unique) and (int(unique.min()) < 0 or int(unique.max()) >= n_rows):
            raise LookalikeError(f"PairwiseReranker: the results name dataset index {int(unique.max())} but "
                                 f"`images` has {n_rows} rows; pass the table the metrics' indices refer to.")
        table = self.images.iloc[unique.numpy()].reset_index(drop=True)
        embedder = Embedder(self.model.encode, self.transform, device=self.device, precision=self.precision,
                            batch_size=self.image_batch_size)
        embedder.device = self.device  # a bound method is not an nn.Module: place the batches ourselves
        done = embedder.embed_source(image_source(table))
        shape = done.embeddings.shape[1:]
        features = torch.zeros((len(unique), *shape), dtype=torch.float32)
        features[torch.from_numpy(done.rows)] = torch.from_numpy(done.embeddings)
        if done.failed:
            shown = "; ".join(f"{table['path'].iloc[r]}: {e}" for r, e in done.failed[:3])
            warnings.warn(f"PairwiseReranker: {len(done.failed)} image(s) could not be read; their pairs keep "
                          f"the score 'different' (1.0): {shown}", stacklevel=3)
        unreadable = torch.zeros(len(unique), dtype=torch.bool)
        unreadable[[r for r, _ in done.failed]] = True
        p = len(pair_q)
        return features, unreadable, inverse[:p], inverse[p:]


def pairwise_reranker(checkpoint: str, top_n: int = 5, blend: float = 0.0, batch_size: int = 16384,
                      device: str = "cpu", precision: str = "32") -> PairwiseReranker:
    """A `PairwiseReranker` with the embedding pairwise model saved by ``lookalike train-pairwise`` in
    ``checkpoint`` (its best.ckpt or pairwise.pt): the ``postprocessor`` block of the validate / train configs,
    ``{name: pairwise, args: {checkpoint: runs/x/pairwise/checkpoints/best.ckpt, top_n: 20}}``."""
    from lookalike.models.pairwise import load_pairwise_model, saved_pairwise_spec

    if saved_pairwise_spec(checkpoint).get("name") == "image_siamese":
        raise LookalikeError(f"postprocessor pairwise: {checkpoint} holds an image pairwise model, which needs the "
                             "images of the validation set; validate it with lookalike train-pairwise (its "
                             "validation re-ranks with the images) or build PairwiseReranker(model, images=...) "
                             "in Python.")
    model = load_pairwise_model(checkpoint)
    return PairwiseReranker(model, top_n=top_n, blend=blend, batch_size=batch_size, device=device,
                            precision=precision)
