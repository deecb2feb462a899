"""The pairwise training pipeline (``lookalike train-pairwise <config>``): a re-ranker learned on the hard pairs of
a trained extractor run.

Steps: embed the rows pairs are mined from (the train labels the run held out with ``holdout_labels``, else its
training labels: ``mine_from``) and the validation split (``lookalike.inference.Embedder``, once); mine pairs from
every mined item's top-n (chunked exact search; its true positives there and its hardest negatives); train the
pairwise model (``embedding_mlp`` on the embeddings, or ``image_siamese`` on the frozen trunk's feature maps,
computed once) with binary cross-entropy; validate with `PairwiseReranker` inside `EmbeddingMetrics` every
``valid_period`` epochs and at the end. Checkpoints (``last.ckpt`` every epoch, ``best.ckpt`` by
``metric_for_checkpointing``), ``history.json`` and ``metrics.json`` are written atomically; ``resume=True``
continues from ``last.ckpt`` (weights, optimizer, epoch, training clock); ``max_minutes`` bounds the training
time. The config schema lives here (`PAIRWISE_SCHEMA`), read with the loading helpers of ``config.py``.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

from lookalike.errors import CheckpointError, ConfigError, suggest
from lookalike.io import atomic_path, write_json_atomic

__all__ = ["PAIRWISE_SCHEMA", "load_pairwise_config", "train_pairwise", "embed_splits", "mine_pairs", "mining_split",
           "recorded_held_out"]

#: key -> (accepted python types, default, meaning); REQUIRED keys have default ``...``
PAIRWISE_SCHEMA: dict[str, tuple[tuple[type, ...], Any, str]] = {
    "extractor_run": ((str,), ..., "folder of a trained `lookalike train` run (its config.yaml and checkpoints)"),
    "checkpoint": ((str, type(None)), None, "extractor weights; null = the run's best.ckpt (else last.ckpt)"),
    "pairwise_model": ((dict, str), {"name": "embedding_mlp",
                                     "args": {"hidden_dims": [256], "dropout": 0.1, "residual": True}},
                       "the pairwise model block: embedding_mlp (in_features inferred) or image_siamese (the "
                       "extractor's frozen trunk)"),
    "mine_from": ((str,), "auto", "labels the pairs are mined from: holdout (the train labels the extractor run "
                  "held out, `holdout_labels`), train (the labels it trained on: pairs it already separates, which "
                  "rarely transfer), auto = holdout when the run has one, else train"),
    "mine_top_n": ((int,), 20, "pairs are mined from each train item's top this-many retrieved items"),
    "n_negatives": ((int,), 5, "hardest negatives kept per train item (the first non-matching items)"),
    "top_n": ((int,), 20, "validation re-ranks each query's top this-many items"),
    "blend": ((int, float), 0.0, "weight of the search distance in the re-ranking score (0 = pair score only)"),
    "optimizer": ((dict, str), {"name": "adam", "args": {"lr": 1.0e-3, "weight_decay": 1.0e-5}},
                  "optimizer block (registry names of `lookalike registry optimizer`)"),
    "bs_pairs": ((int,), 512, "pairs per training batch"),
    "max_epochs": ((int,), 20, "passes over the mined pairs"),
    "max_minutes": ((int, float, type(None)), None, "training-time budget in minutes (validation excluded)"),
    "valid_period": ((int,), 5, "validate every this many epochs (and after the last)"),
    "metric_for_checkpointing": ((str,), "OVERALL/cmc/1", "metric that picks best.ckpt (larger is better)"),
    "seed": ((int,), 0, "seed of the weights and the pair order"),
    "accelerator": ((str,), "auto", "cpu, gpu, mps or auto (embedding and training)"),
    "bs_val": ((int,), 256, "images per embedding batch"),
    "logger": ((dict, str, type(None)), {"name": "csv", "args": {}}, "Lightning logger block; null = none"),
    "output_dir": ((str, type(None)), None, "folder of pairwise runs; null = <extractor_run>/pairwise"),
    "run_name": ((str, type(None)), None, "run folder name; null = a timestamp"),
}


def _block(value: Any) -> Any:
    return {"name": value, "args": {}} if isinstance(value, str) else value


def load_pairwise_config(config: Mapping | str | Path, overrides: Iterable[str] = ()) -> tuple[dict, Any]:
    """Defaults + config + ``key=value`` overrides, checked against `PAIRWISE_SCHEMA` (one error, every problem)."""
    from lookalike.pipelines.config import apply_overrides, read_config

    source = read_config(config)
    cfg = {k: copy.deepcopy(d) for k, (_, d, _) in PAIRWISE_SCHEMA.items() if d is not ...}
    cfg.update(copy.deepcopy(source.raw))
    for key in ("pairwise_model", "optimizer", "logger"):
        cfg[key] = _block(cfg.get(key))
    apply_overrides(cfg, list(overrides))
    errors = []
    for key in cfg:
        if key not in PAIRWISE_SCHEMA:
            errors.append(f"{key}: unknown key{suggest(key, PAIRWISE_SCHEMA)}; keys: docs/pipelines.md "
                          "(train-pairwise).")
    for key, (types_, default, doc) in PAIRWISE_SCHEMA.items():
        if key not in cfg:
            errors.append(f"{key}: required key missing ({doc}).")
            continue
        value = cfg[key] = _block(cfg[key]) if key in ("pairwise_model", "optimizer", "logger") else cfg[key]
        if isinstance(value, bool) or not isinstance(value, types_):
            errors.append(f"{key}: expected {' | '.join(t.__name__ for t in types_)}, got {value!r}.")
        elif isinstance(value, int) and key in ("mine_top_n", "top_n", "bs_pairs", "max_epochs", "valid_period",
                                                "bs_val") and value < 1:
            errors.append(f"{key}: must be >= 1, got {value}.")
    typed = all(k in cfg and not isinstance(cfg[k], bool) and isinstance(cfg[k], PAIRWISE_SCHEMA[k][0])
                for k in ("n_negatives", "blend", "pairwise_model", "extractor_run"))
    if typed:
        if cfg["n_negatives"] < 0:
            errors.append(f"n_negatives: must be >= 0, got {cfg['n_negatives']}.")
        if not 0.0 <= float(cfg["blend"]) <= 1.0:
            errors.append(f"blend: must be in [0, 1], got {cfg['blend']}.")
        if cfg.get("mine_from") not in ("auto", "holdout", "train"):
            errors.append(f"mine_from: expected auto, holdout or train, got {cfg.get('mine_from')!r}.")
        name = cfg["pairwise_model"].get("name")
        if name not in ("embedding_mlp", "image_siamese"):
            from lookalike.models.pairwise import PAIRWISE_MODELS

            errors.append(f"pairwise_model.name: unknown pairwise model {name!r}{suggest(str(name), PAIRWISE_MODELS)}"
                          "; use embedding_mlp or image_siamese.")
        elif name == "image_siamese" and (cfg["pairwise_model"].get("args") or {}).get("freeze_trunk") is False:
            errors.append("pairwise_model.args.freeze_trunk: train-pairwise trains image_siamese on the feature maps "
                          "of the extractor's frozen trunk, computed once; remove freeze_trunk: false.")
        run = Path(cfg["extractor_run"]).expanduser()
        if not (run / "config.yaml").is_file():
            errors.append(f"extractor_run: {str(run)!r} is not a run folder (no config.yaml); give the folder "
                          "of a finished `lookalike train` run.")
    if errors:
        raise ConfigError(f"config {source.origin} has {len(errors)} problem(s):\n  - " + "\n  - ".join(errors))
    return cfg, source


def _extractor_config(cfg: Mapping) -> dict:
    from lookalike.pipelines.config import load_config

    run = Path(cfg["extractor_run"]).expanduser()
    base, _ = load_config(run, [], pipeline="validate")
    from lookalike.pipelines.loading import refuse_texts

    refuse_texts(base, "train-pairwise")
    ckpt = cfg["checkpoint"]
    if ckpt is None:
        best, last = run / "checkpoints" / "best.ckpt", run / "checkpoints" / "last.ckpt"
        ckpt = best if best.is_file() else last
        if not Path(ckpt).is_file():
            raise CheckpointError(f"extractor_run: {run} has no checkpoints/best.ckpt or last.ckpt; train it "
                                  "first or set checkpoint.")
    base["checkpoint"] = str(ckpt)
    base["accelerator"] = cfg["accelerator"]
    return base


def mining_split(base: Mapping, mine_from: str) -> str:
    """``holdout`` or ``train``: where the pairs come from (``auto``: the run's held-out labels when it has them)."""
    if mine_from == "auto":
        return "holdout" if float(base.get("holdout_labels") or 0.0) > 0 else "train"
    return mine_from


def recorded_held_out(run: str | Path) -> list[int] | None:
    """The held-out labels a run recorded when it trained (``holdout_labels.json``), else None."""
    from lookalike.pipelines.loading import HELD_OUT_FILE

    path = Path(run).expanduser() / HELD_OUT_FILE
    return [int(x) for x in json.loads(path.read_text())["labels"]] if path.is_file() else None


def embed_splits(base: Mapping, batch_size: int, mine_from: str = "auto",
                 recorded: Iterable[int] | None = None) -> dict[str, dict]:
    """Embeddings, labels and query/gallery flags of the validation split and of the rows pairs are mined from
    (``"train"`` key: the run's held-out train labels or its training labels, `mining_split`), by the inference
    layer. ``recorded``: the held-out labels the run recorded; drawing others (the CSV or the seed changed since
    training) is an error, since those rows may be labels the extractor trained on."""
    import numpy as np

    from lookalike.data import schema
    from lookalike.inference import image_source
    from lookalike.pipelines import loading
    from lookalike.pipelines.embedders import embedder_for

    table = loading.load_table(base)
    origin = str(loading.dataset_root(base) / base["csv"])
    embedder = embedder_for(base)  # the extractor run's model and validation transforms, as predict uses
    embedder.batch_size = int(batch_size)
    out = {}
    held_out = mining_split(base, mine_from) == "holdout"
    for split in ("train", "validation"):
        part = (loading.train_rows(table, base, origin, held_out=held_out) if split == "train"
                else loading.split_table(table, split, origin))
        if split == "train" and held_out and recorded is not None and set(part[schema.LABEL]) != set(recorded):
            raise ConfigError(f"{origin}: the held-out labels drawn now differ from the ones the extractor run "
                              f"recorded in {loading.HELD_OUT_FILE} (the CSV or the seed changed since it trained), "
                              "so some mined rows could be labels it trained on; use the run's data and seed.")
        done = embedder.embed_source(image_source(part), progress=False)
        if done.failed:
            raise ConfigError(f"{origin}: {len(done.failed)} {split} image(s) could not be read, first: "
                              f"{done.failed[0][1]}.")
        item = {"embeddings": done.embeddings, "labels": part[schema.LABEL].to_numpy(np.int64), "table": part}
        if split == "validation":
            item["is_query"] = part[schema.IS_QUERY].to_numpy(bool)
            item["is_gallery"] = part[schema.IS_GALLERY].to_numpy(bool)
        out[split] = item
    return out


def mine_pairs(embeddings, labels, top_n: int, n_negatives: int, distance: str = "cosine"):
    """Pairs ``(a, b, same)`` from every item's top ``top_n`` (chunked exact search, self excluded): every
    same-label item found there, and the first ``n_negatives`` other-label items (the hardest)."""
    import torch

    from lookalike.retrieval import RetrievalResults

    n = len(labels)
    flags = torch.ones(n, dtype=torch.bool)
    res = RetrievalResults.from_embeddings(torch.tensor(embeddings), torch.tensor(labels), flags, flags,
                                           k=min(top_n, n - 1), distance=distance)
    ids, rel = res.retrieved_ids, res.is_relevant
    valid = ids >= 0
    negative = valid & ~rel
    hardest = negative & (torch.cumsum(negative.long(), dim=1) <= n_negatives)
    keep = (valid & rel) | hardest
    a = torch.arange(n)[:, None].expand_as(ids)[keep]
    return a, ids[keep], rel[keep].float()


def _metrics(val: Mapping, postprocessor=None) -> dict:
    import torch

    from lookalike.metrics import EmbeddingMetrics

    metrics = EmbeddingMetrics(cmc_top_k=(1, 5), precision_top_k=(5,), map_top_k=(5,), postprocessor=postprocessor)
    n = len(val["labels"])
    metrics.update(torch.tensor(val["embeddings"]), torch.tensor(val["labels"]), torch.tensor(val["is_query"]),
                   torch.tensor(val["is_gallery"]), torch.arange(n))
    return metrics.compute()


def _flat(results: Mapping) -> dict[str, float]:
    from lookalike.pipelines.lightning_parts import flatten_metrics

    return {k: v for k, v in flatten_metrics(results).items() if k.startswith("OVERALL/")}


def train_pairwise(config: Mapping | str | Path, overrides: Iterable[str] = (), *, resume: bool = False,
                   splits: Mapping | None = None) -> dict:
    """Train a pairwise re-ranker on a trained extractor run (see the module docstring). ``resume``: continue the
    run named by ``run_name`` from its ``checkpoints/last.ckpt``. Returns ``{"run_dir", "base_metrics",
    "metrics" (re-ranked, last validation), "best_checkpoint", "best_score", "train_seconds"}``."""
    import torch

    from lookalike.inference import resolve_device
    from lookalike.models.pairwise import build_pairwise_model, save_pairwise_model
    from lookalike.pipelines import builders
    from lookalike.pipelines.embedders import embedder_for
    from lookalike.pipelines.runs import new_run_dir, save_config
    from lookalike.postprocess import PairwiseReranker

    cfg, _ = load_pairwise_config(config, overrides)
    if resume and not cfg["run_name"]:
        raise ConfigError("resume needs run_name: the pairwise run folder to continue.")
    base = _extractor_config(cfg)
    out_root = cfg["output_dir"] or str(Path(cfg["extractor_run"]).expanduser() / "pairwise")
    if resume:  # the run being continued: its own folder, which new_run_dir rightly refuses to reuse
        run_dir = (Path(out_root).expanduser() / cfg["run_name"]).resolve()
    else:
        run_dir = new_run_dir({"output_dir": out_root, "run_name": cfg["run_name"]})
    ckpt_dir = run_dir / "checkpoints"
    last_path, best_path = ckpt_dir / "last.ckpt", ckpt_dir / "best.ckpt"
    if resume and not last_path.is_file():
        raise CheckpointError(f"resume: {last_path} does not exist, so there is nothing to continue; start the "
                              "run without resume.")
    save_config(cfg, run_dir / "config.yaml")
    torch.manual_seed(cfg["seed"])

    t0 = time.perf_counter()
    splits = splits if splits is not None else embed_splits(base, cfg["bs_val"], cfg["mine_from"],
                                                            recorded_held_out(cfg["extractor_run"]))
    train, val = splits["train"], splits["validation"]
    feat_dim = int(train["embeddings"].shape[1])
    a, b, y = mine_pairs(train["embeddings"], train["labels"], cfg["mine_top_n"], cfg["n_negatives"])
    if not len(y) or y.min() == y.max():
        raise ConfigError(f"mining found {int(y.sum())} positive and {int(len(y) - y.sum())} negative pairs in the "
                          f"top-n of the {mining_split(base, cfg['mine_from'])} rows ({len(train['labels'])} items); "
                          "both kinds are needed: raise mine_top_n and n_negatives, or hold out more labels "
                          "(holdout_labels) when the mined rows are few.")
    device = resolve_device(cfg["accelerator"])
    spec = {"name": cfg["pairwise_model"]["name"], "args": dict(cfg["pairwise_model"].get("args") or {}),
            "feat_dim": feat_dim}
    images = spec["name"] == "image_siamese"
    if images:  # the trunk of the run's extractor, its maps of the mined rows computed once
        embedder = embedder_for(base)
        model = build_pairwise_model(spec["name"], spec["args"], extractor=embedder.model).to(device)
        x, encode = _trunk_maps(model, embedder, train["table"], cfg["bs_val"]), model.encode_maps
        # validation encodes the images as the cached maps were: same transforms and precision
        rerank_inputs = {"images": val["table"], "transform": embedder.transform,
                         "precision": str(embedder.precision)}
    else:
        model = build_pairwise_model(spec["name"], spec["args"], feat_dim=feat_dim).to(device)
        x, encode, rerank_inputs = torch.tensor(train["embeddings"]), model.encode, {}
    embed_seconds = time.perf_counter() - t0
    optimizer = builders.build_optimizer({"optimizer": cfg["optimizer"]}, model.parameters())
    pos_weight = (len(y) - y.sum()) / y.sum()
    state = {"epoch": 0, "train_seconds": 0.0, "best_score": None, "history": {}}
    if resume:
        saved = torch.load(last_path, map_location="cpu", weights_only=True)
        model.load_state_dict({k[len("model."):]: v for k, v in saved["state_dict"].items()})
        optimizer.load_state_dict(saved["optimizer"])
        state = json.loads(saved["progress"])
    logger = builders.build_logger({"logger": cfg["logger"]}, run_dir)
    base_metrics = _metrics(val)
    budget = None if cfg["max_minutes"] is None else 60.0 * cfg["max_minutes"]
    key = cfg["metric_for_checkpointing"]
    reranked = None

    def validate(epoch: int) -> dict:
        model.eval()
        reranker = PairwiseReranker(model, top_n=cfg["top_n"], blend=float(cfg["blend"]), device=str(device),
                                    **rerank_inputs)
        t = time.perf_counter()
        results = _metrics(val, reranker)
        flat = _flat(results)
        flat["validation_seconds"] = time.perf_counter() - t
        state["history"].setdefault(str(epoch), {})["val"] = flat
        if logger:
            logger.log_metrics({f"val/{k}": v for k, v in flat.items()}, step=epoch)
        score = flat.get(key)
        if score is None:
            raise ConfigError(f"metric_for_checkpointing: {key!r} is not computed; use e.g. OVERALL/cmc/1.")
        if state["best_score"] is None or score > state["best_score"]:
            state["best_score"] = score
            save_pairwise_model(model, spec, best_path)
        return results

    while state["epoch"] < cfg["max_epochs"] and (budget is None or state["train_seconds"] < budget):
        epoch = state["epoch"]
        model.train()
        generator = torch.Generator().manual_seed(cfg["seed"] * 1000 + epoch)
        order = torch.randperm(len(y), generator=generator)
        total, started = 0.0, time.perf_counter()
        for s in range(0, len(order), cfg["bs_pairs"]):
            batch = order[s:s + cfg["bs_pairs"]]
            logits = model.score(encode(x[a[batch]].to(device)), encode(x[b[batch]].to(device)))
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y[batch].to(device),
                                                                        pos_weight=pos_weight.to(device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(batch)
            if budget is not None and state["train_seconds"] + time.perf_counter() - started >= budget:
                break
        state["train_seconds"] += time.perf_counter() - started
        state["history"].setdefault(str(epoch), {})["train"] = {"loss": total / len(y)}
        if logger:
            logger.log_metrics({"train/loss": total / len(y)}, step=epoch)
        state["epoch"] = epoch + 1
        spent = budget is not None and state["train_seconds"] >= budget
        if (epoch + 1) % cfg["valid_period"] == 0 or state["epoch"] == cfg["max_epochs"] or spent:
            reranked = validate(epoch)
        _save_last(last_path, model, optimizer, spec, state)
        write_json_atomic(run_dir / "history.json", state["history"])
    if reranked is None:  # resumed after the last epoch, or nothing left to train: validate what we have
        reranked = validate(max(0, state["epoch"] - 1))
        write_json_atomic(run_dir / "history.json", state["history"])
    if logger:
        logger.save()
    write_json_atomic(run_dir / "metrics.json", {
        "extractor_checkpoint": base["checkpoint"], "pairs": {"total": len(y), "positive": int(y.sum())},
        "embed_seconds": embed_seconds, "train_seconds": state["train_seconds"],
        "base": base_metrics, "reranked": reranked})
    b1, r1 = _flat(base_metrics).get(key), _flat(reranked).get(key)
    print(f"pairwise re-ranking (top_n={cfg['top_n']}): {key} {b1:.4f} -> {r1:.4f}; "
          f"{len(y)} pairs, {state['train_seconds']:.1f} s of training; {run_dir}")
    return {"run_dir": run_dir, "base_metrics": base_metrics, "metrics": reranked,
            "best_checkpoint": best_path if best_path.is_file() else None, "best_score": state["best_score"],
            "train_seconds": state["train_seconds"]}


def _trunk_maps(model, embedder, table, batch_size: int):
    """The frozen trunk's feature maps of every row of ``table`` (the run's validation transforms), once."""
    import torch

    from lookalike.inference import Embedder, image_source

    maps = Embedder(model.trunk, embedder.transform, device=embedder.device, precision=embedder.precision,
                    batch_size=batch_size)
    done = maps.embed_source(image_source(table), progress=False)
    if done.failed:
        raise ConfigError(f"{len(done.failed)} image(s) of the mined rows could not be read, first: "
                          f"{done.failed[0][1]}.")
    return torch.from_numpy(done.embeddings)


def _save_last(path: Path, model, optimizer, spec: Mapping, state: Mapping) -> None:
    import torch

    payload = {"state_dict": {f"model.{k}": v.detach().cpu() for k, v in model.state_dict().items()},
               "optimizer": optimizer.state_dict(), "pairwise_model": json.dumps(dict(spec)),
               "progress": json.dumps(dict(state))}
    with atomic_path(path, suffix=".tmp") as tmp:
        torch.save(payload, tmp)
