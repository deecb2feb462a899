"""The Lightning Trainer options and warning filters shared by the train and validate pipelines."""

from __future__ import annotations

import sys
import warnings
from typing import Any, Mapping

import torch

from lookalike.inference import runnable_precision

__all__ = ["quiet_lightning", "trainer_kwargs", "several_devices", "several_processes"]


def quiet_lightning() -> None:
    """Hide Lightning notices that are noise for our pipelines (we set these options on purpose)."""
    for pattern in (
        r".*does not have many workers.*",
        r".*Checkpoint directory .* exists and is not empty.*",
        r".*The number of training batches .* is smaller than the logging interval.*",
        r".*`isinstance\(treespec, LeafSpec\)` is deprecated.*",
        r".*LeafSpec.*",
        r".*when logging on epoch level in distributed setting.*",  # our metrics are already gathered
    ):
        warnings.filterwarnings("ignore", message=pattern)


def trainer_kwargs(cfg: Mapping) -> dict[str, Any]:
    """Trainer options shared by train and validate."""
    precision = cfg["precision"]
    if precision in (32, "32"):
        precision = "32-true"
    elif precision in (64, "64"):
        precision = "64-true"
    elif precision == 16:
        precision = "16-mixed"
    on_cpu = cfg["accelerator"] == "cpu" or (
        cfg["accelerator"] == "auto" and not torch.cuda.is_available() and not torch.backends.mps.is_available())
    if on_cpu and runnable_precision(torch.device("cpu"), precision) != precision:
        print(f"precision: {precision} runs as 32-true here: this CPU has no bf16 units (AMX / AVX512-BF16), "
              "and emulated bf16 is several times slower than fp32", file=sys.stderr)
        precision = "32-true"
    return {
        "accelerator": cfg["accelerator"],
        "devices": cfg["devices"],
        "num_nodes": cfg.get("num_nodes", 1),
        "strategy": cfg["strategy"],
        "precision": precision,
        "enable_progress_bar": cfg["progress_bar"],
        "use_distributed_sampler": False,  # our samplers split batches per rank themselves
        "num_sanity_val_steps": 0,
        "enable_model_summary": cfg["progress_bar"],
    }


def several_devices(devices: Any) -> bool:
    """Whether a ``devices`` value (a count, a list of ids, a numeric string, a string of ids such as "0,1", -1 or
    auto) names more than one."""
    if isinstance(devices, list):
        return len(devices) > 1
    if isinstance(devices, str) and "," in devices:  # Lightning's device ids: "0,1" is two devices, "1," one
        return sum(1 for part in devices.split(",") if part.strip()) > 1
    if isinstance(devices, int):
        return devices > 1 or devices == -1
    if isinstance(devices, str) and devices.strip().lstrip("-").isdigit():
        return several_devices(int(devices))
    if devices == "auto":
        import torch

        return torch.cuda.device_count() > 1
    return False


def several_processes(cfg: Mapping) -> bool:
    """Whether the config runs more than one process: several devices per node, or several nodes."""
    return several_devices(cfg["devices"]) or int(cfg.get("num_nodes", 1)) > 1
