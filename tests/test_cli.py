"""The `lookalike` command's front door: exit codes, summaries and one-paragraph errors, no traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lookalike.cli import build_parser, main
from lookalike.data import example_dataset_root
from tests.conftest import good_rows, write_dataset


def test_check_data_ok(dataset_root, capsys):
    assert main(["check-data", str(dataset_root)]) == 0
    out = capsys.readouterr().out
    assert "dataset OK" in out and "validation: 6 items, 3 labels" in out and "categories: 2" in out


def test_check_data_example_dataset(capsys):
    assert main(["check-data", str(example_dataset_root()), "--decode"]) == 0
    out = capsys.readouterr().out
    assert "train: 465 items, 120 labels" in out and "validation: 305 items, 80 labels" in out


def test_check_data_problem_exits_2_with_message(tmp_path, capsys):
    rows = good_rows()
    rows[0]["split"] = "test"
    rows[3]["label"] = "x"
    root = write_dataset(tmp_path / "ds", rows)
    assert main(["check-data", str(root)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err
    assert err.startswith("error: dataset") and "2 problems" in err and "'test'" in err and "CSV line 5" in err
    assert "Traceback" not in err


def test_check_data_csv_and_decode_options(tmp_path, capsys):
    root = write_dataset(tmp_path / "ds", good_rows(), csv="mine.csv")
    assert main(["check-data", str(root)]) == 2
    assert "mine.csv" in capsys.readouterr().err
    assert main(["check-data", str(root), "--csv", "mine.csv"]) == 0
    (root / "img/0_0.png").write_bytes(b"broken")
    assert main(["check-data", str(root), "--csv", "mine.csv", "--images", "exists"]) == 0
    assert main(["check-data", str(root), "--csv", "mine.csv", "--decode"]) == 2
    assert "cannot be decoded" in capsys.readouterr().err
    assert main(["check-data", str(root), "--csv", "mine.csv"]) == 2  # the default "quick" check finds it too
    err = capsys.readouterr().err
    assert "cannot be decoded" in err and "0_0.png" in err


def test_check_data_images_and_pixel_limit(dataset_root, capsys):
    assert main(["check-data", str(dataset_root)]) == 0
    out = capsys.readouterr().out
    assert "images: 12 files read" in out and "largest 16 x 12; pixel limit 50,000,000" in out
    assert main(["check-data", str(dataset_root), "--max-pixels", "100"]) == 2
    err = capsys.readouterr().err
    assert "12 image(s) have more pixels than the limit of 100" in err and "--max-pixels" in err
    assert main(["check-data", str(dataset_root), "--max-pixels", "0"]) == 0
    assert "pixel limit none" in capsys.readouterr().out


def test_check_data_drop_flag(tmp_path, capsys):
    rows = good_rows()
    rows.append({"label": 50, "path": "img/x.png", "split": "validation", "is_query": "True", "is_gallery": "True",
                 "category": "odd"})
    root = write_dataset(tmp_path / "ds", rows)
    assert main(["check-data", str(root)]) == 2
    assert main(["check-data", str(root), "--drop-queries-without-gallery"]) == 0
    out = capsys.readouterr().out
    assert "queries: 6   gallery: 7" in out and "warning: 1 queries" in out


def test_pipeline_subcommands_are_wired():
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    assert {"check-data", "train", "validate", "predict", "registry"} <= set(commands)


def test_missing_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2 and "usage" in capsys.readouterr().err


def test_python_dash_m_runs_the_cli(dataset_root):
    done = subprocess.run([sys.executable, "-m", "lookalike", "check-data", str(dataset_root / "nope")],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "is not a folder" in done.stderr and "Traceback" not in done.stderr


def test_overrides_may_follow_an_option():
    from lookalike.pipelines.commands import parse_args

    args = parse_args(build_parser(), ["train", "cfg.yaml", "--resume", "runs/a", "max_epochs=2", "seed=1"])
    assert args.items == ["cfg.yaml", "max_epochs=2", "seed=1"] and args.resume == "runs/a"
    args = parse_args(build_parser(), ["validate", "runs/a", "--trust-config", "bs_val=8"])
    assert args.items == ["runs/a", "bs_val=8"] and args.trust_config
    with pytest.raises(SystemExit):
        parse_args(build_parser(), ["train", "cfg.yaml", "--resume", "runs/a", "--bogus"])


def test_search_items_with_an_equals_sign_that_are_no_option_are_queries():
    from lookalike.errors import ConfigError
    from lookalike.pipelines.commands import _options

    allowed = {"top_k": 5, "format": "table"}
    queries, opts = _options(["1+1=2", "a = b", "photos/x=1.png", "top_k=3", ".hidden=1"], allowed, "search")
    assert queries == ["1+1=2", "a = b", "photos/x=1.png", ".hidden=1"] and opts["top_k"] == 3
    with pytest.raises(ConfigError, match="unknown option 'topk'.*did you mean 'top_k'"):
        _options(["topk=3"], allowed, "search")
