"""ONNX export: every extractor family exports and passes the parity check on real images; the batch axis is
dynamic; metadata round-trips; bad inputs end in one clear message and leave no file behind."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from lookalike.data.transforms import IMAGENET_MEAN, IMAGENET_STD, get_transforms
from lookalike.export import (ExportError, MissingPackageError, OnnxModel, ParityError, metadata_path,
                              onnx_embedder, parity_path, read_metadata, to_onnx)
from lookalike.export.onnx_export import default_parity_source
from lookalike.inference import Embedder
from lookalike.models import ResNetExtractor, SmallCNNExtractor, TimmExtractor, ViTExtractor
from lookalike.models.base import Extractor
from lookalike.models.extractors import _ViTBackbone

SIZE = 32
STATS = {"mean": IMAGENET_MEAN, "std": IMAGENET_STD}


def tiny_cnn(**kw) -> SmallCNNExtractor:
    torch.manual_seed(0)
    return SmallCNNExtractor((8, 16), embedding_dim=8, **kw)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """One tiny CNN exported with the default exporter (shared by the tests that only read the file)."""
    model = tiny_cnn(pooling="gem")
    path = to_onnx(model, tmp_path_factory.mktemp("onnx") / "cnn.onnx", image_size=SIZE, parity_samples=24,
                   source={"checkpoint": "x.ckpt"}, verbose=False, **STATS)
    return model.eval(), path


def test_export_writes_the_model_its_metadata_and_a_passing_parity_report(exported):
    model, path = exported
    assert sorted(p.name for p in path.parent.iterdir()) == ["cnn.json", "cnn.onnx", "cnn.parity.json"]
    meta = read_metadata(path)
    assert (meta.image_size, meta.mean, meta.std, meta.feat_dim) == (SIZE, list(IMAGENET_MEAN), list(IMAGENET_STD), 8)
    assert meta.l2_normalised is True and meta.exporter == "dynamo" and meta.opset >= 18
    assert meta.source == {"checkpoint": "x.ckpt"}
    assert json.loads(metadata_path(path).read_text()) == meta.to_dict()  # the JSON beside = the file's own
    report = json.loads(parity_path(path).read_text())
    assert report["passed"] and report["n_images"] == 24 and report["top5_agreement"] == 1.0
    assert report["max_abs_diff"] < 1e-5 and report["min_cosine"] > 0.99999


def test_torch_and_onnx_embedders_agree_on_real_images(exported):
    """The onnx embedder rebuilds the val preset from the metadata: same inputs, same embeddings."""
    model, path = exported
    source = default_parity_source()
    torch_side = Embedder(model, get_transforms("val", SIZE), device="cpu").embed_source(source)
    onnx_side = onnx_embedder(path, batch_size=33).embed_source(source)
    assert onnx_side.rows.tolist() == torch_side.rows.tolist() and len(torch_side.rows) > 100
    np.testing.assert_allclose(onnx_side.embeddings, torch_side.embeddings, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(onnx_side.embeddings, axis=1), 1.0, atol=1e-5)  # L2 norm inside


def test_batch_axis_is_dynamic(exported):
    model, path = exported
    onnx_model = OnnxModel(path, threads=1)
    assert onnx_model.input_shape[0] == "batch" and onnx_model.feat_dim == 8
    x = torch.randn(7, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1)) * 3
    with torch.no_grad():
        ref = model(x).numpy()
    np.testing.assert_allclose(onnx_model(x), ref, atol=1e-5)
    np.testing.assert_allclose(onnx_model(x[:1]), ref[:1], atol=1e-5)
    with pytest.raises(ExportError, match=r"takes batches of shape \(B, 3, 32, 32\), got \(2, 3, 64, 64\)"):
        onnx_model(torch.zeros(2, 3, 64, 64))


def _tiny_vit() -> Extractor:
    """The ViT family (torchvision VisionTransformer behind ViTExtractor's backbone) at a tiny width."""
    torch.manual_seed(0)
    net = torchvision.models.VisionTransformer(image_size=SIZE, patch_size=16, num_layers=1, num_heads=2,
                                               hidden_dim=16, mlp_dim=32)
    return Extractor(_ViTBackbone(net, SIZE), 16, embedding_dim=8)


FAMILIES = {
    "small_cnn": lambda: tiny_cnn(),
    "resnet": lambda: ResNetExtractor("resnet18", embedding_dim=16, pooling="gem"),
    "vit": _tiny_vit,
    "timm_cnn": lambda: TimmExtractor("test_efficientnet"),
    "timm_vit": lambda: TimmExtractor("test_vit", img_size=SIZE, embedding_dim=8, normalise=False),
}


@pytest.mark.parametrize("family", FAMILIES)
def test_every_extractor_family_exports_and_passes_parity(family, tmp_path):
    from lookalike.pipelines.registry import EXTRACTORS_REGISTRY

    # text extractors are refused by export with one message (tests/pipelines/test_texts_pipelines.py)
    image_names = {n for n in EXTRACTORS_REGISTRY.names()
                   if not EXTRACTORS_REGISTRY.entry(n).target.endswith(":TextExtractor")}
    assert image_names <= {f.split("_")[0] if f.startswith("timm") else f for f in FAMILIES}
    torch.manual_seed(0)
    model = FAMILIES[family]()
    path = to_onnx(model, tmp_path / "m.onnx", image_size=SIZE, parity_samples=16, verbose=False, **STATS)
    report = json.loads(parity_path(path).read_text())
    assert report["passed"], report["problems"]
    assert read_metadata(path).l2_normalised is model.normalise


def test_a_vit_built_for_another_size_is_refused_before_export(tmp_path):
    vit = ViTExtractor("vit_b_32", image_size=64)
    with pytest.raises(ExportError, match="built for 64x64 images but got 32x32"):
        to_onnx(vit, tmp_path / "vit.onnx", image_size=SIZE, **STATS)
    assert not any(tmp_path.iterdir())


def test_torchscript_exporter_and_an_older_opset(tmp_path):
    path = to_onnx(tiny_cnn(normalise=False), tmp_path / "ts.onnx", image_size=SIZE, opset=17,
                   exporter="torchscript", parity_samples=8, verbose=False, **STATS)
    meta = read_metadata(path)
    assert (meta.exporter, meta.opset, meta.l2_normalised) == ("torchscript", 17, False)
    with pytest.raises(ExportError, match="dynamo exporter writes opset 18 or newer; for an older opset use "
                                          "exporter=torchscript"):
        to_onnx(tiny_cnn(), tmp_path / "old.onnx", image_size=SIZE, opset=13, **STATS)


class _Drifts(nn.Module):
    """Torch and the exported graph differ: a stand-in for a transform mismatch or a broken op."""

    def forward(self, x):
        return torch.nn.functional.normalize(x.mean(dim=(2, 3)), dim=1)


def test_parity_failure_raises_keeps_the_previous_file_and_reports(tmp_path, exported):
    _, good = exported
    target = tmp_path / "m.onnx"
    target.write_bytes(good.read_bytes())
    before = target.read_bytes()
    # the torch side sees a transform without normalisation, the file records ImageNet normalisation
    with pytest.raises(ParityError, match=r"min cosine similarity .* < 0.99999.*not written to"):
        to_onnx(_Drifts(), target, image_size=SIZE, transform=get_transforms("to_tensor", SIZE), parity_samples=16,
                verbose=False, **STATS)
    assert target.read_bytes() == before
    report = json.loads(parity_path(target).read_text())
    assert report["passed"] is False and report["problems"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.parity.json"]  # no temporary left


def test_unwritable_outputs_fail_before_any_work(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(ExportError, match="cannot create the folder"):
        to_onnx(tiny_cnn(), blocker / "m.onnx", image_size=SIZE, **STATS)
    with pytest.raises(ExportError, match="is a folder; give a file name"):
        to_onnx(tiny_cnn(), tmp_path, image_size=SIZE, **STATS)
    with pytest.raises(ExportError, match="must end in .onnx"):
        to_onnx(tiny_cnn(), tmp_path / "m.pt", image_size=SIZE, **STATS)


def test_a_failing_write_leaves_no_half_written_file(tmp_path, monkeypatch):
    import contextlib

    import lookalike.export.onnx_export as mod

    real = mod.atomic_path

    @contextlib.contextmanager
    def disk_full(path, suffix=""):
        with real(path, suffix) as tmp:  # the real temporary file, then the disk fills up
            tmp.write_bytes(b"half")
            raise OSError(28, "No space left on device")
            yield tmp

    monkeypatch.setattr(mod, "atomic_path", disk_full)
    with pytest.raises(ExportError, match="writing failed \\(No space left on device\\); nothing was replaced"):
        to_onnx(tiny_cnn(), tmp_path / "m.onnx", image_size=SIZE, parity_samples=4, verbose=False, **STATS)
    assert not (tmp_path / "m.onnx").exists() and not (tmp_path / "m.json").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["m.parity.json"]


@pytest.mark.parametrize("package", ["onnx", "onnxruntime", "onnxscript"])
def test_a_missing_package_is_one_line_naming_the_extra(package, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, package, None)  # makes `import package` fail
    with pytest.raises(MissingPackageError) as info:
        to_onnx(tiny_cnn(), tmp_path / "m.onnx", image_size=SIZE, **STATS)
    message = str(info.value)  # (onnxscript needs onnx: without onnx both are named)
    assert message.startswith(f"ONNX export needs {package!r}") and "\n" not in message
    assert message.endswith('not installed: pip install "lookalike[onnx]"')
    assert not any(tmp_path.iterdir())


def test_runtime_without_onnxruntime_names_the_extra(exported, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(MissingPackageError, match=r'pip install "lookalike\[onnx\]"'):
        onnx_embedder(exported[1])


def test_bad_arguments_are_refused_clearly(tmp_path):
    with pytest.raises(ExportError, match="unknown exporter 'dynamic'"):
        to_onnx(tiny_cnn(), tmp_path / "m.onnx", image_size=SIZE, exporter="dynamic", **STATS)
    with pytest.raises(ExportError, match="mean must be 3 numbers"):
        to_onnx(tiny_cnn(), tmp_path / "m.onnx", image_size=SIZE, mean=(0.5,), std=IMAGENET_STD)
    with pytest.raises(ExportError, match=r"returns tuple"):
        to_onnx(_TwoOutputs(), tmp_path / "m.onnx", image_size=SIZE, **STATS)
    assert not any(tmp_path.iterdir())


class _TwoOutputs(nn.Module):
    def forward(self, x):
        return x.mean(dim=(2, 3)), x.amax(dim=(2, 3))


def test_an_embed_from_extractor_exports_its_embedding_without_the_projection(tmp_path):
    torch.manual_seed(0)
    model = TimmExtractor("test_efficientnet", embedding_dim=8, embed_from="backbone.net.blocks.1")
    assert model.feat_dim != model.training_dim == 8
    path = to_onnx(model, tmp_path / "m.onnx", image_size=SIZE, parity_samples=16, verbose=False, **STATS)
    report = json.loads(parity_path(path).read_text())
    assert report["passed"], report["problems"]
    images = torch.randn(3, 3, SIZE, SIZE)
    served = np.asarray(OnnxModel(path, threads=1)(images))
    with torch.no_grad():
        expected = model.eval()(images).numpy()
    assert served.shape == (3, model.feat_dim) and read_metadata(path).feat_dim == model.feat_dim
    np.testing.assert_allclose(served, expected, atol=1e-5)  # the stage's pooled output, not the 8-d head


def test_a_declared_feat_dim_that_is_not_the_output_is_refused(tmp_path):
    model = tiny_cnn()
    model._feat_dim += 1
    with pytest.raises(ExportError, match="declares feat_dim=.* but returns"):
        to_onnx(model, tmp_path / "m.onnx", image_size=SIZE, verbose=False, **STATS)
    assert not (tmp_path / "m.onnx").exists()
