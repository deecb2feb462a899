"""`predict` and `index` on several processes (2 CPU processes, gloo) write the store one process writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from lookalike.index import SearchIndex
from lookalike.pipelines import predict
from lookalike.pipelines.indexing import index
from lookalike.pipelines.sharding import shard_rows
from lookalike.store import EmbeddingsStore

from tests.pipelines.test_pipelines import _free_port, run_two_processes


def test_shards_are_contiguous_runs_of_whole_batches():
    assert [shard_rows(23, 5, 2, r) for r in range(2)] == [range(0, 15), range(15, 23)]  # 5 batches: 3 + 2
    assert [shard_rows(10, 5, 3, r) for r in range(3)] == [range(0, 5), range(5, 10), range(10, 10)]
    for n, bs, world in [(0, 4, 2), (1, 4, 3), (80, 7, 2), (81, 7, 4), (64, 8, 8)]:
        shards = [shard_rows(n, bs, world, r) for r in range(world)]
        assert [i for s in shards for i in s] == list(range(n))  # every row once, in order
        assert all(s.start % bs == 0 for s in shards if len(s))  # each shard starts on a batch boundary


@pytest.fixture(scope="module")
def source(dataset, tmp_path_factory) -> Path:
    """The synthetic dataset's images as a CSV, with an unreadable file in the middle."""
    folder = tmp_path_factory.mktemp("source")
    (folder / "broken.png").write_bytes(b"not an image")
    paths = [str(dataset / p) for p in pd.read_csv(dataset / "df.csv")["path"]]
    paths.insert(30, str(folder / "broken.png"))
    pd.DataFrame({"path": paths, "id": [f"item{i:03d}" for i in range(len(paths))]}).to_csv(
        folder / "source.csv", index=False)
    return folder / "source.csv"


@pytest.fixture
def one_thread():
    """The reference runs with the threads of each of the 2 processes (Lightning gives each CPU process
    cores / processes threads): float sums split over another number of threads may round differently."""
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    yield
    torch.set_num_threads(threads)


def _assert_same_store(one: Path, sharded: Path) -> None:
    a, b = EmbeddingsStore.load(one), EmbeddingsStore.load(sharded)
    assert np.array_equal(a.embeddings, b.embeddings)  # bit-equal: each process embeds the batches of one device
    pd.testing.assert_frame_equal(a.manifest, b.manifest)


def test_predict_on_two_processes_writes_the_one_process_store(trained, source, tmp_path, one_thread):
    common = [f"predict_source={source}", "accelerator=cpu", f"output_dir={tmp_path}", "bs_val=7",
              "progress_bar=false"]
    one = predict(trained["run_dir"], common + ["run_name=one"])
    # the command users run: Lightning's launcher starts the second process (it re-runs the command)
    proc = subprocess.run([sys.executable, "-m", "lookalike", "predict", str(trained["run_dir"]), *common,
                           "run_name=two", "devices=2", "strategy=ddp"],
                          capture_output=True, text=True, timeout=240, env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = tmp_path / "two"
    _assert_same_store(one, two)
    assert len(EmbeddingsStore.load(two)) == 80 and "item030" not in EmbeddingsStore.load(two).ids
    failed = pd.read_csv(two / "failed.csv")  # the unreadable item is still reported, once
    assert failed["id"].tolist() == ["item030"] and failed["path"].str.endswith("broken.png").all()
    assert proc.stdout.count("80 embeddings of dimension") == 1  # rank 0 alone writes and reports


INDEX_SCRIPT = """
import os, sys
from lookalike.pipelines.indexing import index
os.environ["MASTER_PORT"] = sys.argv[1]
print("INDEXED " + str(index(sys.argv[2], sys.argv[3:])), flush=True)
"""


def test_index_on_two_externally_launched_processes_equals_one_process(trained, source, tmp_path,
                                                                           one_thread):
    """Launched like torchrun does (RANK, WORLD_SIZE, ... in the environment), rank 1 returns rank 0's folder."""
    common = [f"source={source}", "accelerator=cpu", "bs_val=7", "progress_bar=false"]
    with pytest.warns(UserWarning, match="could not be read"):
        one = index(trained["run_dir"], common + [f"index_dir={tmp_path / 'one'}"])
    script = tmp_path / "index_two.py"
    script.write_text(INDEX_SCRIPT)
    port = _free_port()
    args = [str(script), str(port), str(trained["run_dir"]), *common, f"index_dir={tmp_path / 'two'}", "devices=2",
            "strategy=ddp"]
    for out in run_two_processes(args, port, timeout=240):
        assert f"INDEXED {tmp_path / 'two'}" in out
    a, b = SearchIndex.load(one), SearchIndex.load(tmp_path / "two")
    assert a.ids == b.ids and len(a) == 80
    assert np.array_equal(a.embeddings, b.embeddings)
    assert pd.read_csv(tmp_path / "two" / "failed.csv")["id"].tolist() == ["item030"]
    info = json.loads((tmp_path / "two" / "index.json").read_text())
    assert info["model"]["checkpoint_sha256"] == json.loads((one / "index.json").read_text())["model"][
        "checkpoint_sha256"]


class _PeerFailed:
    """Rank 0 of two, whose peer (rank 1) failed: what the collectives would report."""

    rank, world_size, is_main = 0, 2, True

    def all_gather(self, value):
        return [value, "RuntimeError: out of memory"]

    def gather(self, value):  # pragma: no cover - must not be reached
        raise AssertionError("rank 0 waited for the failed rank's shard")


def test_an_error_on_another_rank_stops_this_rank_with_its_message():
    from lookalike.errors import LookalikeError
    from lookalike.inference import Embedder, text_source
    from lookalike.pipelines.sharding import embed_sharded

    embedder = Embedder(lambda batch: np.zeros((len(batch), 2), np.float32), None, batch_size=2)
    source = text_source(["a", "b", "c", "d"])
    embedder.embed_source = lambda part, progress=False: None  # this rank's part went fine
    with pytest.raises(LookalikeError, match="embedding failed on rank 1, so rank 0 stops too: RuntimeError: out of"):
        embed_sharded(embedder, source, _PeerFailed())
