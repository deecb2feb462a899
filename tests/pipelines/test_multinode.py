"""Two nodes simulated on loopback: two processes started the way each node of a cluster starts one (Lightning's
multi-node variables MASTER_ADDR, MASTER_PORT, NODE_RANK, WORLD_SIZE; `num_nodes: 2`, `devices: 1`, gloo) train
and validate to what one process reaches on the same global batches (the reference of the DDP test)."""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch

from lookalike.errors import ConfigError
from lookalike.pipelines import train, validate

from tests.pipelines.conftest import TRIPLET, tiny
from tests.pipelines.test_pipelines import DDP_TRAIN_SCRIPT, _ddp_overrides, _free_port, run_two_processes


def test_two_nodes_on_loopback_train_and_validate_like_one_process(dataset, tmp_path):
    name = "triplet"  # triplet loss + hard miner, freeze_backbone_epochs: 1 (a frozen epoch, then a trained one)
    overrides, reference = _ddp_overrides(name, dataset, tmp_path, "nodes")
    overrides.append("valid_period=1")
    script = tmp_path / "train_nodes.py"
    script.write_text(DDP_TRAIN_SCRIPT)
    port = _free_port()
    cases = json.dumps([(name, overrides + ["num_nodes=2", "devices=1", "strategy=ddp"])])
    def node_env(node: int, port: int) -> dict:  # no RANK / LOCAL_RANK: a "node" knows only its NODE_RANK
        env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "SLURM_PROCID")}
        env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), NODE_RANK=str(node), WORLD_SIZE="2",
                   PYTHONPATH=os.pathsep.join(sys.path))
        return env

    for out in run_two_processes([str(script), cases, str(port + 1)], port, timeout=300, env_for=node_env):
        assert "TRAINED triplet" in out, out[-2000:]

    one_overrides, _ = _ddp_overrides(name, dataset, tmp_path, "one")
    single = train(name, one_overrides + ["valid_period=1"] + [f"{k}={v}" for k, v in reference.items()])
    nodes, one = tmp_path / "nodes", single["run_dir"]
    a = torch.load(nodes / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(one / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 2
    for key, value in b["state_dict"].items():
        if not key.endswith(("running_mean", "running_var", "num_batches_tracked")):  # per-rank BN statistics
            assert torch.allclose(a["state_dict"][key], value, rtol=1e-4, atol=1e-4), key
    # training logs: means over both nodes' batches, as one process logs them
    history_nodes = json.loads((nodes / "history.json").read_text())
    history_one = json.loads((one / "history.json").read_text())
    assert set(history_nodes) == set(history_one) == {"1", "2"}
    for epoch in ("1", "2"):
        assert history_nodes[epoch]["train"] == pytest.approx(history_one[epoch]["train"], rel=1e-4, abs=1e-5)
    assert history_one["2"]["train"]["loss"] > 0
    # validation gathered from both nodes: after the frozen epoch (BatchNorm statistics untouched) it equals one
    # process's; after the trained epoch BatchNorm's running statistics differ by design (one process updates
    # them with each half of the global batch in turn), so it equals one process validating the saved model
    assert history_nodes["1"]["val"] == pytest.approx(history_one["1"]["val"], abs=1e-6)
    again = validate(nodes, ["accelerator=cpu", "num_nodes=1", "strategy=auto", f"output_dir={tmp_path}",
                             "run_name=again", f"checkpoint={nodes / 'checkpoints' / 'last.ckpt'}",
                             "progress_bar=false"])
    assert history_nodes["2"]["val"] == pytest.approx(again["metrics_flat"], abs=1e-6)


def test_several_nodes_need_a_run_name(dataset, tmp_path):
    with pytest.raises(ConfigError, match="run_name: a run on several nodes needs a run_name"):
        train(TRIPLET, tiny(dataset, tmp_path, num_nodes=2))
