"""Run folders shared by the pipelines: naming, the DDP hand-over of the folder to child processes, the folder a
job writes into, the run's default checkpoint, and the resolved config saved into the folder."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Iterable, Mapping

from lookalike.errors import CheckpointError, ConfigError
from lookalike.io import write_text_atomic
from lookalike.pipelines.config import yaml_dump
from lookalike.pipelines.trust import RUN_CONFIG_HEADER

__all__ = ["RUN_DIR_ENV", "launched_rank", "new_run_dir", "resume_target", "save_config", "output_folder",
           "default_checkpoint", "extractor_identity"]

#: set by the main process so that DDP child processes (which re-run the script) use the same run folder
RUN_DIR_ENV = "LOOKALIKE_RUN_DIR"


def _env_int(name: str) -> int | None:
    value = os.environ.get(name, "")
    return int(value) if value.isdigit() else None


def launched_rank() -> int:
    """0 for the main process (or a single process), > 0 for every other process of a distributed run.

    The global rank where the launcher gives it (``RANK``: torchrun and Lightning's children; ``SLURM_PROCID``:
    srun), else a positive number for a process other than the first of node 0 (Lightning's multi-node variables
    ``NODE_RANK`` and ``LOCAL_RANK``, each node launched by hand)."""
    rank = _env_int("RANK")
    if rank is not None:
        return rank
    node, local = _env_int("NODE_RANK") or _env_int("GROUP_RANK") or 0, _env_int("LOCAL_RANK") or 0
    if node or local:
        return node * max(1, _env_int("LOCAL_WORLD_SIZE") or 1) + local
    return _env_int("SLURM_PROCID") or 0


def _timestamp() -> str:
    return time.strftime("%Y-%m-%d_%H-%M-%S")


def _holds_training_run(folder: Path) -> bool:
    ckpts = folder / "checkpoints"
    return ckpts.is_dir() and any(ckpts.iterdir())


def _holds_files(folder: Path) -> bool:
    return folder.is_dir() and any(folder.iterdir())


def new_run_dir(cfg: Mapping, prefix: str = "", *, fresh: bool = True) -> Path:
    """``output_dir/run_name`` (or a new timestamped folder). A named folder that already holds something is
    never written over silently: a training run's folder is refused (``fresh``: train; else validate / predict,
    which must not replace a run's config or metrics), other results only with ``overwrite: true``."""
    if launched_rank() > 0:  # rank 0 picked (and checked) the folder
        if os.environ.get(RUN_DIR_ENV):
            return Path(os.environ[RUN_DIR_ENV])
        if cfg.get("run_name"):
            return (Path(cfg["output_dir"]).expanduser() / cfg["run_name"]).resolve()
    base = Path(cfg["output_dir"]).expanduser()
    if cfg.get("run_name"):
        run_dir = base / cfg["run_name"]
        if _holds_training_run(run_dir):
            hint = (f"continue it with --resume {run_dir}, or pick another run_name (or null for a timestamp)"
                    if fresh else f"its own results go inside it: run on the folder itself ({run_dir}) without "
                                  "output_dir / run_name, or pick another run_name")
            raise ConfigError(f"run_name: the folder {run_dir} already holds a run (its checkpoints folder is not "
                              f"empty); {hint}.")
        if _holds_files(run_dir) and not cfg.get("overwrite"):
            raise ConfigError(f"run_name: the folder {run_dir} already holds results; pick another run_name (or "
                              "null for a new timestamped folder), or set overwrite=true to replace them.")
    else:
        name = f"{prefix}{_timestamp()}"
        run_dir = base / name
        n = 1
        while run_dir.exists():
            n += 1
            run_dir = base / f"{name}_{n}"
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir.resolve()


def resume_target(resume: str | Path) -> tuple[Path, Path]:
    """(run folder, checkpoint) for ``--resume``: a run folder (its checkpoints/last.ckpt) or a .ckpt file."""
    path = Path(resume).expanduser()
    if path.is_file():
        run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
        return run_dir.resolve(), path.resolve()
    if path.is_dir():
        ckpt = path / "checkpoints" / "last.ckpt"
        if not ckpt.is_file():
            raise CheckpointError(
                f"--resume {path}: no checkpoints/last.ckpt in this folder, so there is nothing to resume (the "
                "run stopped before its first epoch ended, or this is not a run folder); start the run again "
                "without --resume."
            )
        return path.resolve(), ckpt.resolve()
    raise CheckpointError(f"--resume {path}: no such run folder or checkpoint file.")


def save_config(cfg: Mapping, path: Path) -> Path:
    """The full resolved config (defaults filled, overrides applied), written atomically."""
    header = f"{RUN_CONFIG_HEADER}; re-run with: lookalike train <this file>\n"
    return write_text_atomic(path, header + yaml_dump(dict(cfg)))


def output_folder(cfg: dict, source, kind: str, overrides: Iterable[str] = ()) -> Path:
    """``<run folder>/<kind>`` when the config came from a run folder (and output_dir / run_name are not
    overridden), else a new run folder for this job inside output_dir. An earlier result is never replaced:
    the next free ``<kind>_2``, ``<kind>_3``, ... is used, or for a named folder see ``new_run_dir``."""
    if launched_rank() > 0 and os.environ.get(RUN_DIR_ENV):
        return Path(os.environ[RUN_DIR_ENV])  # DDP: the folder rank 0 picked
    overridden = {o.partition("=")[0].strip() for o in overrides}
    if source.run_dir is not None and not overridden & {"output_dir", "run_name"}:
        folder = Path(source.run_dir) / kind
        n = 1
        while _holds_files(folder):
            n += 1
            folder = Path(source.run_dir) / f"{kind}_{n}"
        folder.mkdir(parents=True, exist_ok=True)
        return folder.resolve()
    return new_run_dir(cfg, prefix=f"{kind}_", fresh=False)


def default_checkpoint(cfg: dict, source) -> None:
    """Sets ``cfg['checkpoint']`` to the run's ``checkpoints/best.ckpt`` when the config came from a run folder
    and names none; warns when the extractor runs with its own initial weights."""
    if cfg["checkpoint"] is None and source.run_dir is not None:
        cfg["checkpoint"] = str(Path(source.run_dir) / "checkpoints" / "best.ckpt")
    if cfg["checkpoint"] is None:
        import warnings

        warnings.warn("checkpoint is null: using the extractor as built (its own `weights` argument or a random "
                      "initialisation).", stacklevel=3)


def extractor_identity(cfg: Mapping) -> dict:
    """What made a set of embeddings: the extractor block, the checkpoint file and its SHA-256, image size and
    validation transforms (saved beside embeddings and indexes, checked when they are loaded)."""
    from lookalike.io import sha256_file

    identity = {"extractor": dict(cfg["extractor"]), "checkpoint": cfg.get("checkpoint"), "checkpoint_sha256": None,
                "image_size": cfg.get("image_size"), "transforms": dict(cfg.get("transforms_val") or {})}
    ckpt = cfg.get("checkpoint")
    if ckpt and Path(ckpt).is_file():
        identity["checkpoint"] = str(Path(ckpt).resolve())
        identity["checkpoint_sha256"] = sha256_file(ckpt)
    return identity
