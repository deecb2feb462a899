"""Every registry entry builds with its defaults (or the smallest valid arguments) and does one real call.

A new entry without a working default fails here, as timm's tests do for its model registry."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lookalike.pipelines.builders import build_component
from lookalike.pipelines.registry import REGISTRIES

LABELS = np.repeat(np.arange(4), 4)
#: the smallest valid arguments of entries whose defaults are too big for a test or that need a value
SMALL_ARGS = {
    ("extractor", "resnet"): {"arch": "resnet18"},
    ("extractor", "vit"): {"arch": "vit_b_32", "embedding_dim": 8},
    ("extractor", "timm"): {"model_name": "resnet10t"},
    ("sampler", "balance"): {"n_labels": 2, "n_instances": 2},
    ("sampler", "category_balance"): {"n_labels": 2, "n_instances": 2, "n_categories": 1},
    ("sampler", "distinct_category_balance"): {"n_labels": 2, "n_instances": 2, "n_categories": 2},
    ("miner", "memory_bank"): {"bank_size_in_batches": 2},
    ("criterion", "sum"): {"criteria": ["arcface", {"name": "triplet_with_miner", "args": {"miner": "hard_triplets"}}],
                           "weights": [1.0, 0.5]},
    ("scheduler", "step"): {"step_size": 1},
    ("scheduler", "multi_step"): {"milestones": [1]},
    ("scheduler", "exponential"): {"gamma": 0.9},
    ("scheduler", "cosine"): {"T_max": 2},
    ("scheduler", "cosine_warm_restarts"): {"T_0": 2},
    ("scheduler", "one_cycle"): {"max_lr": 0.1, "total_steps": 2},
}
CONTEXT = {
    "image_size": 32, "labels": LABELS, "label2category": {i: f"c{i % 2}" for i in range(4)}, "rank": 0,
    "world_size": 1, "seed": 0, "in_features": 8, "num_classes": 4,
}
CASES = [(block, name) for block in dict.fromkeys(REGISTRIES) if block != "transforms_val"
         for name in REGISTRIES[block].names()]


def _call(block: str, component, tmp_path) -> None:
    """One real call of a built component, checked for the contract of its kind."""
    features = torch.nn.functional.normalize(torch.randn(16, 8), dim=1)
    labels = torch.from_numpy(LABELS)
    if block in ("transforms_train", "transforms_val"):
        from torchvision import tv_tensors

        out = component(tv_tensors.Image(torch.randint(0, 256, (3, 40, 30), dtype=torch.uint8)))
        assert out.shape == (3, 32, 32) and out.dtype == torch.float32 or out.shape[0] == 3
    elif block == "extractor" and getattr(component, "modality", "image") == "text":
        out = component.eval()(component.encode(["hello world", "dog"]))
        assert out.shape == (2, component.feat_dim) and torch.isfinite(out).all()
    elif block == "extractor":
        out = component.eval()(torch.rand(2, 3, 32, 32))
        assert out.shape == (2, component.feat_dim) and torch.isfinite(out).all()
    elif block == "sampler":
        batch = next(iter(component))
        assert len(batch) == len(set(batch)) > 0
    elif block == "criterion":
        loss = component(features.requires_grad_(), labels)
        loss.backward()
        assert loss.ndim == 0 and torch.isfinite(loss)
    elif block == "miner":
        a, p, n = component(features, labels)
        assert a.shape == p.shape == n.shape and a.shape[1] == 8
    elif block == "optimizer":
        param = torch.nn.Parameter(torch.ones(2))
        opt = component
        param.grad = torch.ones(2)
        opt.step()
    elif block == "scheduler":
        component.optimizer.step()
        component.step(0.5) if type(component).__name__ == "ReduceLROnPlateau" else component.step()
    elif block == "logger":
        component.log_metrics({"x": 1.0}, step=0)
        component.finalize("success")
    elif block == "postprocessor":
        from lookalike.retrieval import RetrievalResults

        emb = torch.nn.functional.normalize(torch.randn(12, 8), dim=1)
        lab = torch.arange(12) % 4
        flags = torch.ones(12, dtype=torch.bool)
        results = RetrievalResults.from_embeddings(emb, lab, flags, flags, k=5)
        out = component(results, emb, emb)
        assert out.retrieved_ids.shape == results.retrieved_ids.shape


@pytest.mark.parametrize("block,name", CASES, ids=[f"{b}:{n}" for b, n in CASES])
def test_every_registry_entry_builds_and_runs(block, name, tmp_path, monkeypatch):
    entry = REGISTRIES[block].entry(name)
    if entry.requires:
        pytest.importorskip(entry.requires)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    args = dict(SMALL_ARGS.get((block, name), {}))
    context = dict(CONTEXT)
    if block == "optimizer":
        param = torch.nn.Parameter(torch.ones(2))
        param.grad = torch.ones(2)
        context["params"] = [param]
    if block == "scheduler":
        opt = torch.optim.SGD([torch.nn.Parameter(torch.ones(2))], lr=0.1)
        context["optimizer"] = opt
    if (block, name) == ("extractor", "text_transformer"):  # a tiny local model folder, not the 90 MB package
        from tests.texts_support import make_tiny_text_model

        args["model_path"] = str(make_tiny_text_model(tmp_path / "tiny_bert"))
    if (block, name) == ("postprocessor", "pairwise"):  # needs a saved pairwise model: the smallest there is
        from lookalike.models.pairwise import EmbeddingPairClassifier, save_pairwise_model

        spec = {"name": "embedding_mlp", "args": {"in_features": 8, "hidden_dims": [4]}}
        save_pairwise_model(EmbeddingPairClassifier(8, hidden_dims=[4]), spec, tmp_path / "pairwise.pt")
        args["checkpoint"] = str(tmp_path / "pairwise.pt")
    if block == "logger":
        args.setdefault("save_dir", str(tmp_path))
        if name == "mlflow":
            args["tracking_uri"] = f"file:{tmp_path / 'mlruns'}"
        if name == "wandb":
            args["offline"] = True
    component = build_component(block, {"name": name, "args": args}, **context)
    _call(block, component, tmp_path)
    if block == "logger" and name == "wandb":
        import wandb

        wandb.finish()


def test_a_vit_takes_its_input_size_from_the_config():
    """Defect: `image_size` had to be given twice (config and extractor args) or the first forward failed."""
    from lookalike.pipelines.builders import build_extractor

    cfg = {"extractor": {"name": "vit", "args": {"arch": "vit_b_32", "embedding_dim": 8}}, "image_size": 64,
           "checkpoint": None}
    extractor = build_extractor(cfg)
    assert extractor.eval()(torch.rand(1, 3, 64, 64)).shape == (1, 8)
    cfg["extractor"]["args"]["image_size"] = 96  # an explicit value still wins
    assert build_extractor(cfg).eval()(torch.rand(1, 3, 96, 96)).shape == (1, 8)


def test_optimizers_use_torchs_fused_kernel_unless_the_block_says_otherwise():
    import torch

    from lookalike.pipelines.builders import build_optimizer

    def built(block, precision=32):
        model = torch.nn.Linear(3, 2)
        return build_optimizer({"optimizer": block, "precision": precision}, model.parameters())

    assert built({"name": "adamw", "args": {"lr": 0.1}}).defaults["fused"] is True
    assert built({"name": "sgd", "args": {"lr": 0.1}}).defaults["fused"] is True
    assert not built({"name": "adamw", "args": {"lr": 0.1, "foreach": True}}).defaults["fused"]
    assert not built({"name": "adamw", "args": {"lr": 0.1, "fused": False}}).defaults["fused"]
    assert not built({"name": "adamw", "args": {"lr": 0.1}}, precision="16-mixed").defaults["fused"]
    assert "fused" not in built({"name": "rmsprop", "args": {"lr": 0.1}}).defaults  # torch has no fused RMSprop
    # the fused update is AdamW's update
    torch.manual_seed(0)
    a, b = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    b.load_state_dict(a.state_dict())
    fused = build_optimizer({"optimizer": {"name": "adamw", "args": {"lr": 0.1}}, "precision": 32}, a.parameters())
    loop = torch.optim.AdamW(b.parameters(), lr=0.1, foreach=False)
    x = torch.randn(8, 4)
    for _ in range(3):
        for model, opt in ((a, fused), (b, loop)):
            opt.zero_grad()
            model(x).square().sum().backward()
            opt.step()
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.allclose(p, q, atol=1e-6)
