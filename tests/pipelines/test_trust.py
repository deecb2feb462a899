"""The config trust model: a run folder's config never makes lookalike import code it does not know."""

from __future__ import annotations

import textwrap
import uuid
from pathlib import Path

import pytest

from lookalike.errors import ConfigError
from lookalike.pipelines import commands
from lookalike.pipelines.config import load_config, resolve_config
from lookalike.pipelines.runs import save_config
from lookalike.pipelines.trust import TRUST_ENV, env_allows, foreign_imports


def _run_folder(tmp_path: Path, **blocks) -> Path:
    """A run folder (as a training run leaves it) whose config names ``blocks``."""
    run = tmp_path / "shared_run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"")  # never read: the config is refused first
    raw = {"extractor": {"name": "small_cnn", "args": {}}, "dataset_root": None, **blocks}
    save_config(resolve_config(raw), run / "config.yaml")
    return run


@pytest.fixture
def planted_module(tmp_path, monkeypatch) -> tuple[str, Path]:
    """A module that leaves a marker file when it is imported (stands for code that would run)."""
    marker = tmp_path / "imported.marker"
    module = f"planted_{uuid.uuid4().hex[:8]}"  # a fresh name per test: a module is imported once per process
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / f"{module}.py").write_text(textwrap.dedent(f"""\
        from pathlib import Path
        Path({str(marker)!r}).write_text("ran")
        from lookalike.models import SmallCNNExtractor as Net
        """))
    monkeypatch.syspath_prepend(str(tmp_path / "mods"))
    return f"{module}:Net", marker


def test_foreign_imports_lists_import_paths_not_registered_names():
    cfg = {"extractor": {"name": "my.pkg:Net", "args": {}}, "sampler": "balance",
           "criterion": {"name": "triplet_with_miner", "args": {"miner": "evil:Miner"}},
           "optimizer": {"name": "adamw", "args": {}}}
    assert list(foreign_imports(cfg)) == [("extractor.name", "my.pkg:Net"), ("criterion.args.miner.name", "evil:Miner")]


def test_allow_list_matches_modules_and_package_prefixes():
    env = {TRUST_ENV: "my_pkg, other.models"}
    assert env_allows("my_pkg:Net", env) and env_allows("my_pkg.sub.mod:Net", env)
    assert env_allows("other.models:X", env) and not env_allows("other:X", env)
    assert not env_allows("my_pkgx:Net", env) and not env_allows("os:system", {})
    assert env_allows("os:system", {TRUST_ENV: "*"})


def test_a_run_folder_naming_os_system_is_refused_and_nothing_runs(tmp_path, capsys):
    marker = tmp_path / "pwned"
    run = _run_folder(tmp_path, extractor={"name": "os:system", "args": {"command": f"touch {marker}"}})
    assert commands.main(["validate", str(run)]) == 2
    err = capsys.readouterr().err
    assert "extractor.name: os:system" in err and "--trust-config" in err and TRUST_ENV in err
    assert "Traceback" not in err
    assert not marker.exists(), "the config's command ran"


def test_a_run_folder_naming_a_foreign_module_is_not_imported(tmp_path, planted_module, monkeypatch):
    path, marker = planted_module
    run = _run_folder(tmp_path, extractor={"name": path, "args": {}})
    monkeypatch.delenv(TRUST_ENV, raising=False)
    with pytest.raises(ConfigError, match="names code outside lookalike's registries"):
        load_config(run, pipeline="validate")
    with pytest.raises(ConfigError, match="was written by a lookalike run"):  # resume reads the same config
        from lookalike.pipelines import train

        train(None, [], resume=run)
    copied = tmp_path / "copy.yaml"  # the run's config copied elsewhere is still a run's config
    copied.write_text((run / "config.yaml").read_text())
    with pytest.raises(ConfigError, match="--trust-config"):
        load_config(copied, pipeline="validate")
    assert not marker.exists()


@pytest.mark.parametrize("how", ["flag", "env", "command_line"])
def test_the_user_can_vouch_for_a_run_folder(tmp_path, planted_module, monkeypatch, how):
    path, marker = planted_module
    run = _run_folder(tmp_path, extractor={"name": path, "args": {}})
    monkeypatch.delenv(TRUST_ENV, raising=False)
    overrides: list[str] = []
    kwargs = {}
    if how == "flag":
        kwargs["trust_config"] = True
    elif how == "env":
        monkeypatch.setenv(TRUST_ENV, path.partition(":")[0])
    else:
        overrides.append(f"extractor.name={path}")
    cfg, _ = load_config(run, overrides, pipeline="validate", **kwargs)
    assert cfg["extractor"]["name"] == path and marker.read_text() == "ran"


def test_the_users_own_files_and_dicts_may_name_their_code(tmp_path, planted_module):
    path, marker = planted_module
    own = tmp_path / "mine.yaml"
    own.write_text(f"extractor: {{name: '{path}', args: {{}}}}\n")
    load_config(own, pipeline="predict")
    assert marker.exists()
    load_config({"extractor": {"name": path, "args": {}}}, pipeline="predict")


def test_cli_trust_config_flag_reaches_the_pipeline(tmp_path, planted_module, capsys):
    path, marker = planted_module
    run = _run_folder(tmp_path, extractor={"name": path, "args": {}})
    assert commands.main(["predict", str(run), "predict_source=" + str(tmp_path / "none")]) == 2
    assert "--trust-config" in capsys.readouterr().err and not marker.exists()
    assert commands.main(["predict", str(run), "--trust-config", "predict_source=" + str(tmp_path / "none")]) == 2
    assert "--trust-config" not in capsys.readouterr().err  # got past the trust check (the source is missing)
    assert marker.exists()
