"""``lookalike dedup``: groups of near-duplicate images (within a distance threshold, grouped transitively) of a
folder or CSV embedded by a run's model, or of an index's own items. The threshold is given, or read off the
run's validation split at a false match rate (the FNMR@FMR machinery). Writes ``duplicates.csv`` (group, id,
path, distance to the group's first item) and ``duplicates.png`` (the largest groups)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping

from lookalike.errors import ConfigError, DatasetError
from lookalike.io import atomic_path

__all__ = ["dedup", "threshold_at_fmr", "DEDUP_OPTIONS"]

DEDUP_OPTIONS = ("source", "threshold", "fmr", "out")
#: groups and members per group shown in the picture
SHOWN_GROUPS, SHOWN_MEMBERS = 6, 7


def threshold_at_fmr(cfg: Mapping, fmr: float, embedder) -> tuple[float, str]:
    """The distance at which the validation split of the config's dataset has false match rate ``fmr``, and
    a sentence saying where it came from."""
    from lookalike.data import schema
    from lookalike.inference import image_source
    from lookalike.metrics import fmr_thresholds
    from lookalike.pipelines import loading

    if isinstance(fmr, bool) or not isinstance(fmr, (int, float)) or not 0 < fmr <= 1:
        raise ConfigError(f"fmr: a false match rate in (0, 1], e.g. 0.001, got {fmr!r}.")
    root = loading.dataset_root(cfg)
    origin = str(root / cfg["csv"])
    val = loading.split_table(loading.load_table(cfg), schema.SPLIT_VALIDATION, origin)
    embedded = embedder.embed_source(image_source(val, root=root))
    rows = val.iloc[embedded.rows.tolist()]
    sequences = rows[schema.SEQUENCE].tolist() if schema.SEQUENCE in rows.columns else None
    distance = (cfg.get("metric_args") or {}).get("distance", "cosine")
    found = fmr_thresholds(embedded.embeddings, rows[schema.LABEL].to_numpy(), rows[schema.IS_QUERY].to_numpy(),
                           rows[schema.IS_GALLERY].to_numpy(), [float(fmr)], sequences=sequences,
                           distance=distance)[float(fmr)]
    if found is None:
        raise DatasetError(f"fmr={fmr}: the validation split of {origin} has no positive or no negative pair, so "
                           "no threshold can be read off it; give threshold=D instead.")
    where = (f"the {distance} distance at which FMR = {fmr:g} on the validation split of {origin} "
             f"({found['n_negative']} negative pairs; FNMR there {found['fnmr']:.4f})")
    return float(found["threshold"]), where


def dedup(target: str | Path, overrides: Iterable[str] = ()) -> Path:
    """Near-duplicate groups; ``target`` is a run folder or config (then ``source=`` is required) or an index
    folder (``source=`` optional: without it, the indexed items themselves). Options: ``threshold=D`` or
    ``fmr=F``, ``out=DIR``; other overrides are config keys. Returns the output folder."""
    import pandas as pd

    from lookalike.index import read_info
    from lookalike.index.dedup import near_duplicate_groups
    from lookalike.inference import image_source
    from lookalike.pipelines.config import load_config
    from lookalike.pipelines.embedders import embedder_for
    from lookalike.pipelines.indexing import _check_unique_ids, model_config, split_own_options
    from lookalike.pipelines.prediction import manifest_of
    from lookalike.pipelines.runs import default_checkpoint, output_folder

    own, overrides = split_own_options(overrides, DEDUP_OPTIONS)
    if (own.get("threshold") is None) == (own.get("fmr") is None):
        raise ConfigError("dedup: give exactly one of threshold=D (a distance, e.g. threshold=0.05) or fmr=F (the "
                          "false match rate on the run's validation split, e.g. fmr=0.001).")
    folder = Path(target).expanduser()
    index_dir = folder.resolve() if (folder / "index.json").is_file() else None
    embedder = index = None
    if index_dir is not None:
        from lookalike.index import SearchIndex

        info = read_info(index_dir)
        saved = model_config(index_dir, info)
        if saved is None and (own.get("source") is not None or own.get("fmr") is not None):
            raise ConfigError(f"index {index_dir} has no model in its index.json: it can only group its own items "
                              "with threshold=D.")
        cfg = load_config(saved, overrides, pipeline="predict")[0] if saved is not None else None
        if info.get("holds_texts"):
            raise ConfigError(f"dedup works on images only, and the index {index_dir} holds texts.")
        out = Path(str(own["out"])).expanduser() if own.get("out") else index_dir / "dedup"
        distance = info["distance"]
        if own.get("source") is None:
            index = SearchIndex.load(index_dir)
    else:
        cfg, source = load_config(str(target), overrides, pipeline="predict")
        from lookalike.pipelines.loading import refuse_texts

        refuse_texts(cfg, "dedup")  # its pictures and FMR threshold read images
        default_checkpoint(cfg, source)
        if own.get("source") is None:
            raise ConfigError("dedup: source=<folder or CSV> is required with a run folder or config (or give an "
                              "index folder to group its own items).")
        out = (Path(str(own["out"])).expanduser() if own.get("out")
               else output_folder(cfg, source, "dedup", overrides))
        distance = (cfg.get("metric_args") or {}).get("distance", "cosine")
    if cfg is not None and (own.get("source") is not None or own.get("fmr") is not None):
        embedder = embedder_for(cfg)

    if own.get("fmr") is not None:
        threshold, where = threshold_at_fmr(cfg, own["fmr"], embedder)
    else:
        threshold, where = own["threshold"], "given on the command line"
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
            raise ConfigError(f"threshold: a distance (a number), got {threshold!r}.")
        threshold = float(threshold)
    print(f"threshold {threshold:.6g}: {where}")

    if index is not None:
        embeddings, manifest, origin = index.embeddings, index.manifest, str(index_dir)
    else:
        images = image_source(str(own["source"]))
        _check_unique_ids(images)
        embedded = embedder.embed_source(images, progress=cfg["progress_bar"])
        for row, message in embedded.failed:
            print(f"warning: {images.ids[row]} could not be read ({message}); skipped")
        embeddings, manifest, origin = embedded.embeddings, manifest_of(images, embedded.rows.tolist()), images.origin
    groups = near_duplicate_groups(embeddings, threshold, distance=distance)
    rows = manifest.iloc[groups["position"].to_numpy()]
    table = pd.DataFrame({"group": groups["group"].to_numpy(), "id": rows["id"].to_numpy(),
                          "path": rows["path"].to_numpy() if "path" in rows else None,
                          "distance": groups["distance"].to_numpy()})
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "duplicates.csv", suffix=".csv") as tmp:
        table.to_csv(tmp, index=False)
    picture = _picture(table, out / "duplicates.png")
    n_groups = int(table["group"].nunique())
    print(f"{n_groups} group(s) of near duplicates, {len(table)} of {len(manifest)} images of {origin} -> "
          f"{out / 'duplicates.csv'}" + (f" (largest groups: {picture})" if picture else ""))
    return out


def _picture(table, path: Path) -> Path | None:
    """The largest groups, one row each: the first item, then its duplicates with their distances."""
    if len(table) == 0 or table["path"].isna().all():
        path.unlink(missing_ok=True)
        return None
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from lookalike.viz import plot_retrieval

    shown = [g for _, g in table.groupby("group", sort=True)][:SHOWN_GROUPS]
    firsts = [g["path"].iloc[0] for g in shown]
    members = [g["path"].iloc[1:1 + SHOWN_MEMBERS].tolist() for g in shown]
    distances = [g["distance"].iloc[1:1 + SHOWN_MEMBERS].tolist() for g in shown]
    figure = plot_retrieval(firsts, members, [[True] * len(m) for m in members], distances=distances,
                            query_titles=[f"group {int(g['group'].iloc[0])} ({len(g)} items)" for g in shown])
    figure.suptitle("near-duplicate groups: the first item (black), then its duplicates with their distance",
                    fontsize=8)
    with atomic_path(path, suffix=".png") as tmp:
        figure.savefig(tmp, dpi=80, format="png")
    plt.close(figure)
    return path
