"""The package raises its own error family: no bare ValueError/TypeError anywhere in lookalike/."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import lookalike
from lookalike.errors import ArgumentError, LookalikeError

PACKAGE = Path(lookalike.__file__).resolve().parent
BARE = re.compile(r"\braise\s+(ValueError|TypeError)\b")


def test_no_bare_value_or_type_errors_in_the_package():
    # No exceptions are allowed: argument errors use ArgumentError (a LookalikeError and a ValueError, so code
    # catching ValueError keeps working); a future programming-error case must be added here with its reason.
    found = [f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}"
             for path in sorted(PACKAGE.rglob("*.py"))
             for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if BARE.search(line)]
    assert found == []


def test_the_scan_sees_a_bare_raise(tmp_path):
    assert BARE.search('        raise ValueError(f"x")') and BARE.search("raise TypeError")
    assert not BARE.search("raise ArgumentError(...)") and not BARE.search("except ValueError:")


def test_argument_errors_are_lookalike_errors_with_where_and_fix():
    from lookalike.losses.triplet import TripletLoss
    from lookalike.miners.memory_bank import MemoryBankMiner

    with pytest.raises(ArgumentError, match=r"triplet loss: margin must be >= 0.*criterion\.args\.margin") as info:
        TripletLoss(margin=-1)
    assert isinstance(info.value, LookalikeError) and isinstance(info.value, ValueError)
    with pytest.raises(LookalikeError, match=r"unknown reduction 'meen' \(did you mean 'mean'\?\)"):
        TripletLoss(reduction="meen")
    with pytest.raises(LookalikeError, match=r"MemoryBankMiner: tri_expand_k must be >= 1.*criterion\.args\.miner"):
        MemoryBankMiner(bank_size_in_batches=1, tri_expand_k=0)
    with pytest.raises(LookalikeError, match="one embedding vector per image"):
        TripletLoss()(torch.zeros(2, 3, 1), torch.zeros(2, 3, 1), torch.zeros(2, 3, 1))


def test_pictures_and_image_cache_errors():
    from lookalike.data.images import DecodedImageCache
    from lookalike.errors import ConfigError
    from lookalike.pipelines.pictures import per_query_for

    with pytest.raises(ConfigError, match=r"no per-query values.*'OVERALL/cmc/1'.*log_images: false"):
        per_query_for({}, "OVERALL/cmc/1")
    with pytest.raises(ArgumentError, match="2 paths but 1 bboxes"):
        DecodedImageCache(["a.png", "b.png"], [None])
