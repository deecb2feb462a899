"""Build a search backend from a short spec string: ``"exact"``, ``"exact-fp32"``, ``"exact-bf16"`` or ``"faiss:<factory>"``."""

from __future__ import annotations

from typing import Any

from lookalike.errors import LookalikeError
from lookalike.retrieval.base import SearchBackend, check_distance
from lookalike.retrieval.exact import ExactSearch
from lookalike.retrieval.faiss_search import FaissSearch

__all__ = ["make_backend", "BACKEND_SPECS"]

BACKEND_SPECS = ("exact", "exact-fp32", "exact-bf16", "faiss:<factory string>")


def make_backend(
    spec: str | SearchBackend,
    distance: str = "cosine",
    *,
    query_chunk_size: int | None = None,
    gallery_chunk_size: int | None = None,
    **faiss_options: Any,
) -> SearchBackend:
    """A backend for ``spec``: ``"exact"`` (screening precision picked per search: bf16 on CPUs with bf16 matmul
    units and large searches, else fp32; the results are the same), ``"exact-fp32"`` / ``"exact-bf16"`` (forced),
    ``"faiss:HNSW32"`` / ``"faiss:IVF1024,Flat"`` / ``"faiss:Flat"`` (any faiss factory string), or a ready
    `SearchBackend` (returned as is; its distance must equal ``distance``). Chunk sizes apply to exact search,
    ``faiss_options`` (``nprobe``, ``efSearch``, ``use_gpu``, ...) to faiss.
    """
    distance = check_distance(distance)
    if not isinstance(spec, str):
        if not callable(getattr(spec, "search", None)):
            raise LookalikeError(
                f"backend must be a spec string ({', '.join(BACKEND_SPECS)}) or an object with a search() method, "
                f"got {type(spec).__name__}."
            )
        own = getattr(spec, "distance", distance)
        if own != distance:
            raise LookalikeError(
                f"The backend searches with distance {own!r} but distance={distance!r} was asked: pass the same "
                "distance to both."
            )
        return spec
    name = spec.strip()
    chunks = {}
    if query_chunk_size is not None:
        chunks["query_chunk_size"] = query_chunk_size
    if gallery_chunk_size is not None:
        chunks["gallery_chunk_size"] = gallery_chunk_size
    if name in ("exact", "exact-fp32", "exact-bf16"):
        if faiss_options:
            raise LookalikeError(f"Options {sorted(faiss_options)} apply to faiss backends only, not {name!r}.")
        precision = {"exact": "auto", "exact-fp32": "fp32", "exact-bf16": "bf16"}[name]
        return ExactSearch(distance, precision=precision, **chunks)
    if name.lower().startswith("faiss:"):
        factory = name.split(":", 1)[1].strip()
        if not factory:
            raise LookalikeError("faiss backend needs a factory string after 'faiss:', e.g. 'faiss:HNSW32'.")
        return FaissSearch(factory, distance, **faiss_options)
    raise LookalikeError(
        f"Unknown search backend {spec!r}; valid choices: {', '.join(map(repr, BACKEND_SPECS))} "
        "(e.g. 'faiss:HNSW32', 'faiss:IVF1024,Flat')."
    )
