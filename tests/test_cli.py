"""The `lookalike` command's front door: exit codes and one-line errors, no traceback."""

from __future__ import annotations

import subprocess
import sys

from lookalike.cli import main
from tests.conftest import good_rows, write_dataset


def test_check_data_ok(dataset_root, capsys):
    assert main(["check-data", str(dataset_root)]) == 0
    out = capsys.readouterr().out
    assert "dataset OK" in out and "validation: 6 items, 3 labels" in out


def test_check_data_problem_exits_2_with_message(tmp_path, capsys):
    rows = good_rows()
    rows[0]["split"] = "test"
    root = write_dataset(tmp_path / "ds", rows)
    assert main(["check-data", str(root)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: dataset") and "'test'" in err and "Traceback" not in err


def test_check_data_drop_flag(tmp_path, capsys):
    rows = good_rows()
    rows.append({"label": 50, "path": "img/x.png", "split": "validation", "is_query": "True", "is_gallery": "True",
                 "category": "odd"})
    root = write_dataset(tmp_path / "ds", rows)
    assert main(["check-data", str(root)]) == 2
    assert main(["check-data", str(root), "--drop-queries-without-gallery"]) == 0
    assert "warning: 1 queries" in capsys.readouterr().out


def test_python_dash_m_runs_the_cli(dataset_root):
    done = subprocess.run([sys.executable, "-m", "lookalike", "check-data", str(dataset_root / "nope")],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "is not a folder" in done.stderr and "Traceback" not in done.stderr
