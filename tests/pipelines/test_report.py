"""The curves drawn from a run's history: training logs and OVERALL metrics, not per-group ones or counts."""

from __future__ import annotations

from lookalike.pipelines.report import curve_series, plot_history


def test_curves_keep_overall_metrics_and_training_logs_only(tmp_path):
    history = {
        "0": {"val": {"OVERALL/cmc/1": 0.2, "OVERALL/n_queries": 10.0, "Flags/cmc/1": 0.5}},
        "1": {"train": {"loss": 3.0, "train/margin": 0.3}},
        "2": {"train": {"loss": 2.0, "train/margin": 0.5},
              "val": {"OVERALL/cmc/1": 0.4, "OVERALL/n_queries": 10.0, "OVERALL/n_queries_without_relevant": 0.0}},
        "best": {"epoch": 2},
    }
    series = curve_series(history)
    assert series == {"OVERALL/cmc/1": ([0, 2], [0.2, 0.4]), "loss": ([1, 2], [3.0, 2.0]),
                      "train/margin": ([1, 2], [0.3, 0.5])}
    path = plot_history(history, tmp_path / "curves.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_curves_no_picture(tmp_path):
    assert plot_history({"best": {"epoch": 1}, "0": {"val": {"Flags/cmc/1": 0.5}}}, tmp_path / "c.png") is None
    assert not (tmp_path / "c.png").exists()
