"""PairwiseReranker: a hand-worked case, a brute-force per-query reference on random data (chunked scoring,
blend), items beyond top_n, image models fed through the inference layer, and its use inside the metrics."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from lookalike.data.images import read_image_array
from lookalike.data.transforms import get_transforms
from lookalike.errors import LookalikeError
from lookalike.metrics import EmbeddingMetrics
from lookalike.models import SmallCNNExtractor
from lookalike.models.pairwise import EmbeddingPairClassifier, ImagePairClassifier, PairwiseModel, conv_trunk
from lookalike.postprocess import PairwiseReranker
from lookalike.retrieval import RetrievalResults


class SecondCoordinate(PairwiseModel):
    """Logit of 'same' = -10 |a_1 - b_1|: the pair model looks at a detail (coordinate 1) the search ignores."""

    def score(self, a, b):
        return -10.0 * (a[:, 1] - b[:, 1]).abs()


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_hand_worked_reorder_of_the_top_n_only():
    # query (1, 0.0); gallery g0 (1, 0.3), g1 (1, 0.1), g2 (1, 0.5), g3 (1, -0.6) under euclidean search:
    # order g1 (0.1), g0 (0.3), g2 (0.5), g3 (0.6). Top 2 re-scored by P(diff) = sigmoid(10 |dy|):
    # g1 sigmoid(1) = 0.731, g0 sigmoid(3) = 0.953: same order, and the scores are scaled below g2's 0.5.
    gallery = torch.tensor([[1.0, 0.3], [1.0, 0.1], [1.0, 0.5], [1.0, -0.6]])
    query = torch.tensor([[1.0, 0.0]])
    emb = torch.cat([query, gallery])
    labels = torch.tensor([0, 0, 1, 1, 0])
    is_query = torch.tensor([True, False, False, False, False])
    results = RetrievalResults.from_embeddings(emb, labels, is_query, ~is_query, k=4, distance="euclidean")
    assert results.retrieved_ids.tolist() == [[1, 0, 2, 3]]
    out = PairwiseReranker(SecondCoordinate(), top_n=2)(results, query, gallery, "euclidean")
    assert out.retrieved_ids.tolist() == [[1, 0, 2, 3]]
    # the top-2 scores (0.731, 0.953) exceed the 3rd distance 0.5: scaled by 0.5 (1 - 1e-6) / 0.953
    scale = 0.5 * (1 - 1e-6) / sigmoid(3)
    assert out.distances[0, :2].tolist() == pytest.approx([sigmoid(1) * scale, sigmoid(3) * scale], rel=1e-5)
    assert out.distances[0, 2:].tolist() == pytest.approx([0.5, 0.6], rel=1e-6)

    # a model that prefers g2 (|dy| = 0.1 from a query at 0.4) over the search's first item g0 (0.1 too)
    query = torch.tensor([[1.2, 0.4]])
    emb = torch.cat([query, gallery])
    results = RetrievalResults.from_embeddings(emb, labels, is_query, ~is_query, k=4, distance="euclidean")
    order = results.retrieved_ids.tolist()[0]
    out = PairwiseReranker(SecondCoordinate(), top_n=4)(results, query, gallery, "euclidean")
    dy = {g: abs(0.4 - float(gallery[g, 1])) for g in order}
    expected = sorted(order, key=lambda g: (round(dy[g], 6), order.index(g)))
    assert out.retrieved_ids.tolist() == [expected]
    assert out.distances[0].tolist() == pytest.approx([sigmoid(10 * dy[g]) for g in expected], rel=1e-5)
    assert out.is_relevant.tolist() == [[bool(labels[1 + g] == 0) for g in expected]]


@pytest.mark.parametrize("blend", [0.0, 0.4])
def test_matches_a_per_query_brute_force_on_random_data(blend):
    torch.manual_seed(1)
    emb = torch.randn(70, 6)
    labels = torch.arange(70) // 5
    flags = torch.ones(70, dtype=torch.bool)
    results = RetrievalResults.from_embeddings(emb, labels, flags, flags, k=12)
    results = results.with_threshold(float(results.distances[:, 9].median()))  # some rows padded
    model = EmbeddingPairClassifier(6, hidden_dims=(8,), dropout=0.0).eval()
    out = PairwiseReranker(model, top_n=7, blend=blend, batch_size=11)(results, emb, emb)
    for q in range(70):
        ids = results.retrieved_ids[q].tolist()
        head = [g for g in ids[:7] if g >= 0]
        with torch.no_grad():
            p = model.predict(emb[[q] * len(head)], emb[head]).double() if head else torch.zeros(0)
        score = (1 - blend) * p + blend * results.distances[q, :len(head)].double()
        order = sorted(range(len(head)), key=lambda j: (float(score[j]), j))
        expected = [head[j] for j in order] + ids[len(head):]
        assert out.retrieved_ids[q].tolist() == expected
    assert torch.equal(out.retrieved_ids < 0, results.retrieved_ids < 0)
    assert bool((out.distances[:, 1:] >= out.distances[:, :-1]).all())
    assert torch.equal(out.retrieved_ids[:, 7:], results.retrieved_ids[:, 7:])


def test_image_model_gets_the_images_through_the_inference_layer(tmp_path):
    from lookalike.data import example_dataset_root

    root = example_dataset_root()
    table = pd.read_csv(root / "df.csv").head(12)
    table["path"] = [str(root / p) for p in table["path"]]
    transform = get_transforms("val", image_size=32)
    trunk, channels = conv_trunk(SmallCNNExtractor((8, 16), embedding_dim=None))
    model = ImagePairClassifier(trunk, channels, channels=8, hidden_dims=(8,), dropout=0.0).eval()
    emb = torch.randn(12, 4)
    labels = torch.tensor(table["label"].to_numpy())
    flags = torch.ones(12, dtype=torch.bool)
    results = RetrievalResults.from_embeddings(emb, labels, flags, flags, k=5)
    out = PairwiseReranker(model, top_n=5, images=table, transform=transform, batch_size=7)(results, emb, emb)

    from torchvision import tv_tensors

    images = torch.stack([transform(tv_tensors.Image(torch.from_numpy(read_image_array(p, None)).permute(2, 0, 1)))
                          .as_subclass(torch.Tensor) for p in table["path"]])
    for q in range(12):
        ids = results.retrieved_ids[q].tolist()
        p = model.predict(images[[q] * 5], images[ids])
        assert out.retrieved_ids[q].tolist() == [ids[j] for j in torch.sort(p, stable=True).indices.tolist()]

    with pytest.raises(LookalikeError, match="images"):
        PairwiseReranker(model)


def test_inside_the_metrics_a_perfect_pair_model_gives_perfect_cmc():
    # labels in coordinate 1 (the model reads it), noise elsewhere (the search sees mostly noise)
    torch.manual_seed(0)
    labels = torch.arange(60) // 3
    emb = torch.randn(60, 5) * 0.3
    emb[:, 1] = labels.float() * 10.0 + emb[:, 1] * 0.01
    emb[:, 0] += 5.0
    flags = torch.ones(60, dtype=torch.bool)
    plain = EmbeddingMetrics(cmc_top_k=(1,))
    plain.update(emb, labels, flags, flags, torch.arange(60))
    base = plain.compute()["OVERALL"]["cmc"][1]
    metrics = EmbeddingMetrics(cmc_top_k=(1,), distance="euclidean",
                               postprocessor=PairwiseReranker(SecondCoordinate(), top_n=60 - 1))
    metrics.update(emb, labels, flags, flags, torch.arange(60))
    assert metrics.compute()["OVERALL"]["cmc"][1] == pytest.approx(1.0)
    assert base < 1.0


def test_bad_arguments_are_refused():
    model = EmbeddingPairClassifier(4)
    with pytest.raises(LookalikeError, match="top_n"):
        PairwiseReranker(model, top_n=0)
    with pytest.raises(LookalikeError, match="blend"):
        PairwiseReranker(model, blend=2.0)
    with pytest.raises(LookalikeError, match="encode"):
        PairwiseReranker(torch.nn.Linear(2, 2))


def test_registry_factory_loads_a_saved_model(tmp_path):
    from lookalike.models.pairwise import save_pairwise_model
    from lookalike.postprocess import pairwise_reranker

    model = EmbeddingPairClassifier(4, hidden_dims=(3,)).eval()
    save_pairwise_model(model, {"name": "embedding_mlp", "args": {"hidden_dims": [3]}, "feat_dim": 4},
                        tmp_path / "p.pt")
    reranker = pairwise_reranker(str(tmp_path / "p.pt"), top_n=3)
    emb = torch.randn(10, 4)
    flags = torch.ones(10, dtype=torch.bool)
    results = RetrievalResults.from_embeddings(emb, torch.arange(10) // 2, flags, flags, k=4)
    direct = PairwiseReranker(model, top_n=3)(results, emb, emb)
    assert reranker(results, emb, emb) == direct
