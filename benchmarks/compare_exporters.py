"""Evidence for the default exporter: every extractor family of the registry (tiny sizes, plus ResNet-18 at 224
and EfficientNet-Lite0 at 64) exported with torch.onnx's dynamo exporter and with the legacy TorchScript one:
export seconds, and the max abs difference to torch of onnxruntime's output at batch 7 and batch 1 (the trace
batch is 2, so both check the dynamic batch axis). Prints one line per (model, exporter); about 2 minutes.

    .venv/bin/python benchmarks/compare_exporters.py [name ...]

The figures and the choice they support are in docs/export.md.
"""
import time, sys, warnings, io, contextlib, traceback
import torch, numpy as np, onnxruntime as ort
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
from torch import nn
from lookalike.models import ResNetExtractor, SmallCNNExtractor, TimmExtractor, ViTExtractor
from lookalike.models.base import Extractor
from lookalike.models.extractors import _ViTBackbone
import torchvision
warnings.filterwarnings("ignore")
torch.manual_seed(0)
OUT = __import__("pathlib").Path(__import__("tempfile").mkdtemp())

def tiny_vit():
    net = torchvision.models.VisionTransformer(image_size=32, patch_size=16, num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=32)
    return Extractor(_ViTBackbone(net, 32), 16, embedding_dim=8)

models = {
 "small_cnn": (lambda: SmallCNNExtractor((8, 16), embedding_dim=8), 32),
 "small_cnn_gem": (lambda: SmallCNNExtractor((8, 16), embedding_dim=8, pooling="gem"), 32),
 "resnet18": (lambda: ResNetExtractor("resnet18", embedding_dim=16), 64),
 "resnet18_224": (lambda: ResNetExtractor("resnet18", embedding_dim=128), 224),
 "vit_tiny": (tiny_vit, 32),
 "timm_test_vit": (lambda: TimmExtractor("test_vit", img_size=32), 32),
 "timm_test_efficientnet": (lambda: TimmExtractor("test_efficientnet"), 32),
 "timm_test_convnext": (lambda: TimmExtractor("test_convnext", pooling="gem"), 32),
 "timm_lite0": (lambda: TimmExtractor("tf_efficientnet_lite0"), 64),
}
which = sys.argv[1:] or list(models)
for name in which:
    make, size = models[name]
    m = make().eval()
    x = torch.randn(2, 3, size, size)
    x7 = torch.randn(7, 3, size, size)
    with torch.no_grad():
        ref = m(x7).numpy()
    for dynamo in (True, False):
        path = str(OUT / f"{name}_{int(dynamo)}.onnx")
        t = time.perf_counter()
        try:
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
                if dynamo:
                    torch.onnx.export(m, (x,), path, dynamo=True, input_names=["images"], output_names=["embeddings"],
                                      dynamic_shapes=({0: "batch"},), external_data=False)
                else:
                    torch.onnx.export(m, (x,), path, dynamo=False, input_names=["images"], output_names=["embeddings"],
                                      dynamic_axes={"images": {0: "batch"}, "embeddings": {0: "batch"}})
            dt = time.perf_counter() - t
            s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
            out = s.run(None, {"images": x7.numpy()})[0]
            out1 = s.run(None, {"images": x7[:1].numpy()})[0]
            print(f"{name:24s} dynamo={dynamo!s:5s} export {dt:6.2f}s maxdiff b7 {np.abs(out-ref).max():.2e} b1 {np.abs(out1-ref[:1]).max():.2e}", flush=True)
        except Exception as e:
            dt = time.perf_counter() - t
            print(f"{name:24s} dynamo={dynamo!s:5s} FAILED after {dt:.1f}s: {type(e).__name__}: {str(e).splitlines()[0][:200]}", flush=True)
