"""Trainer options: a bf16 precision on a CPU without bf16 units trains in fp32 (emulated bf16 is far slower)."""

import pytest

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
