"""Trainer options: a bf16 precision on a CPU without bf16 units trains in fp32 (emulated bf16 is far slower)."""

import pytest
import torch

import lookalike.retrieval.bounds as bounds
from lookalike.pipelines.trainer import trainer_kwargs

CFG = {"accelerator": "cpu", "devices": 1, "strategy": "auto", "progress_bar": False}


@pytest.mark.parametrize("native, expected", [(False, "32-true"), (True, "bf16-mixed")])
def test_bf16_on_cpu_follows_the_hardware(monkeypatch, capsys, native, expected):
    monkeypatch.setattr(bounds, "native_bf16_matmul", lambda: native)
    assert trainer_kwargs({**CFG, "precision": "bf16-mixed"})["precision"] == expected
    assert ("no bf16 units" in capsys.readouterr().err) is (not native)


def test_other_precisions_are_kept(monkeypatch):
    monkeypatch.setattr(bounds, "native_bf16_matmul", lambda: False)
    assert trainer_kwargs({**CFG, "precision": 32})["precision"] == "32-true"
    assert trainer_kwargs({**CFG, "precision": "64-true"})["precision"] == "64-true"


def test_backbone_lr_gives_the_backbone_its_own_group_and_the_scheduler_scales_both():
    from lookalike.losses import ArcFaceLoss
    from lookalike.models.extractors import SmallCNNExtractor
    from lookalike.pipelines.lightning_parts import ExtractorModule

    extractor = SmallCNNExtractor((4, 8), embedding_dim=6)
    criterion = ArcFaceLoss(6, 3)
    module = ExtractorModule(extractor, criterion, backbone=extractor.backbone, backbone_lr=1e-5,
                             optimizer_factory=lambda params: torch.optim.SGD(params, lr=0.1),
                             scheduler_factory=lambda opt: torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.5))
    config = module.configure_optimizers()
    backbone_group, rest_group = config["optimizer"].param_groups
    assert {id(p) for p in backbone_group["params"]} == {id(p) for p in extractor.backbone.parameters()}
    rest = {id(p) for p in rest_group["params"]}
    assert rest == {id(p) for p in extractor.parameters()} - {id(p) for p in extractor.backbone.parameters()} | {
        id(p) for p in criterion.parameters()}
    assert (backbone_group["lr"], rest_group["lr"]) == (1e-5, 0.1)
    config["optimizer"].step()
    config["lr_scheduler"].step()
    assert (backbone_group["lr"], rest_group["lr"]) == (0.5e-5, 0.05)


def test_without_backbone_lr_there_is_one_group():
    from lookalike.models.extractors import SmallCNNExtractor
    from lookalike.pipelines.lightning_parts import ExtractorModule

    extractor = SmallCNNExtractor((4, 8), embedding_dim=6)
    module = ExtractorModule(extractor, None, optimizer_factory=lambda params: torch.optim.SGD(params, lr=0.1))
    assert len(module.configure_optimizers().param_groups) == 1


def test_a_scheduler_that_overrides_backbone_lr_is_refused():
    # one_cycle with a scalar max_lr sets every group's lr alike: the backbone would train at the head's rate
    from lookalike.errors import ConfigError
    from lookalike.pipelines.builders import build_scheduler

    backbone, head = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)

    def optimizer():
        return torch.optim.SGD([{"params": backbone.parameters(), "lr": 1e-5}, {"params": head.parameters()}], lr=0.1)

    def cfg(max_lr):
        return {"backbone_lr": 1e-5, "scheduler": {"name": "one_cycle", "args": {"max_lr": max_lr, "total_steps": 10},
                                                   "interval": "step", "frequency": 1}}

    with pytest.raises(ConfigError, match="backbone_lr"):
        build_scheduler(cfg(0.1), optimizer())
    opt = optimizer()
    build_scheduler(cfg([1e-4, 0.1]), opt)  # one max_lr per group: kept
    assert [group["max_lr"] for group in opt.param_groups] == [1e-4, 0.1]
    opt = optimizer()
    build_scheduler({**cfg(0.1), "scheduler": {"name": "cosine", "args": {"T_max": 5}, "interval": "epoch",
                                                "frequency": 1}}, opt)
    assert [group["lr"] for group in opt.param_groups] == [1e-5, 0.1]


def test_the_logged_lr_is_the_optimizers_and_the_backbones_is_logged_apart(monkeypatch):
    from lookalike.losses import ArcFaceLoss
    from lookalike.models.extractors import SmallCNNExtractor
    from lookalike.pipelines.lightning_parts import ExtractorModule

    extractor = SmallCNNExtractor((4, 8), embedding_dim=6)
    module = ExtractorModule(extractor, ArcFaceLoss(6, 3), backbone=extractor.backbone, backbone_lr=1e-5,
                             optimizer_factory=lambda params: torch.optim.SGD(params, lr=0.1))
    optimizer = module.configure_optimizers()
    logged = {}
    monkeypatch.setattr(module, "optimizers", lambda use_pl_optimizer=True: optimizer)
    monkeypatch.setattr(module, "log", lambda name, value, **kw: logged.__setitem__(name, float(value.detach()) if isinstance(value, torch.Tensor) else float(value)))
    module.training_step({"input": torch.randn(4, 3, 16, 16), "label": torch.tensor([0, 1, 2, 0])}, 0)
    assert (logged["lr"], logged["lr_backbone"]) == (0.1, 1e-5)


@pytest.mark.parametrize("devices, several", [(1, False), (2, True), (-1, True), ("2", True), ("1", False),
                                              ([0], False), ([0, 1], True), ("0,1", True), ("1,", False),
                                              (" 0 , 1 ", True)])
def test_several_devices_reads_every_form_lightning_takes(devices, several):
    from lookalike.pipelines.trainer import several_devices

    assert several_devices(devices) is several
