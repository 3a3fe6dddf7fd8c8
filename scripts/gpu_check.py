"""One-shot GPU self-test for a node with the `gpu` extra: run it once, read the summary.

    python scripts/gpu_check.py [--model MODEL_DIR] [--require-gpu] [--json]

Checks, each PASS / FAIL / SKIP (SKIP = the piece is not installed or there is no GPU):

1. pynvml sees the GPUs (name, memory, driver, utilisation);
2. onnxruntime offers the CUDA execution provider;
3. the embedding engine on CUDA matches the CPU (cosine >= 0.99 per text) and really runs on
   CUDA; uses MODEL_DIR (a pai model folder, e.g. ``models/minilm`` of an installed bundle)
   or, without one, a small ONNX model and tokenizer made here from scratch;
4. FAISS on the GPU returns the CPU's neighbours (flat inner product, 20k x 384 vectors);
5. `pai doctor --json` runs and reports the same GPUs.

Exit 0 when nothing FAILed (with --require-gpu, a SKIP of a GPU piece counts as FAIL).
Runs in well under five minutes; needs no network.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TEXTS = [
    f"customer {i} asked about the renewal quote and invoice number {i * 7}" for i in range(64)
]


class Skip(Exception):
    """The check cannot run here (piece not installed, no GPU)."""


def check_nvml() -> str:
    from pai.inference.gpu import gpu_readings, nvml_status

    gpus = gpu_readings()
    if not gpus:
        raise Skip(nvml_status() if nvml_status() != "ok" else "NVML sees no GPU")
    return "; ".join(
        f"#{g['index']} {g['name']} {g['memory_used'] >> 20}/{g['memory_total'] >> 20} MiB "
        f"util {g['utilization']}% driver {g['driver']}"
        for g in gpus
    )


def check_providers() -> str:
    import onnxruntime as ort

    providers = ort.get_available_providers()
    if CUDA not in providers:
        raise Skip(f"onnxruntime {ort.__version__} has no CUDA provider ({', '.join(providers)})")
    return f"onnxruntime {ort.__version__}: {', '.join(providers)}"


def make_model(folder: Path) -> Path:
    """A tiny BERT-shaped ONNX graph (embedding, projection, tanh) with a WordLevel tokenizer."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from tokenizers.trainers import WordLevelTrainer

    folder.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(
        TEXTS, WordLevelTrainer(special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]"])
    )
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))],
    )
    tok.save(str(folder / "tokenizer.json"))
    vocab, hidden = tok.get_vocab_size(), 64
    rng = np.random.default_rng(0)
    table = numpy_helper.from_array(rng.standard_normal((vocab, hidden)).astype("float32"), "E")
    weight = numpy_helper.from_array(rng.standard_normal((hidden, hidden)).astype("float32"), "W")
    nodes = [
        helper.make_node("Gather", ["E", "input_ids"], ["emb"]),
        helper.make_node("MatMul", ["emb", "W"], ["proj"]),
        helper.make_node("Tanh", ["proj"], ["last_hidden_state"]),
    ]
    graph = helper.make_graph(
        nodes,
        "gpu-check",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["b", "t"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["b", "t"]),
        ],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["b", "t", hidden])],
        initializer=[table, weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(folder / "model.onnx"))
    doc = {
        "format": "pai-model/1",
        "name": "gpu-check",
        "version": "0",
        "dtype": "fp32",
        "pooling": "mean",
        "normalize": True,
        "max_length": 64,
        "dimension": hidden,
        "pad_token_id": 0,
    }
    (folder / "pai-model.json").write_text(json.dumps(doc))
    return folder


def check_engine(model_dir: Path | None) -> str:
    import numpy as np
    import onnxruntime as ort

    from pai.inference.engine import EmbeddingEngine

    if CUDA not in ort.get_available_providers():
        raise Skip("no CUDA execution provider")
    if model_dir is None:
        model_dir = make_model(Path(tempfile.mkdtemp(prefix="pai-gpu-check-")) / "model")
    cpu = EmbeddingEngine.load(model_dir, providers=[CPU])
    gpu = EmbeddingEngine.load(model_dir, providers=[CUDA, CPU])
    if gpu.providers[0] != CUDA:
        raise AssertionError(f"session fell back to {gpu.providers}")
    a, b = cpu.embed(TEXTS), gpu.embed(TEXTS)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    started = time.perf_counter()
    for _ in range(10):
        gpu.embed(TEXTS)
    rate = 10 * len(TEXTS) / (time.perf_counter() - started)
    if cos.min() < 0.99:
        raise AssertionError(f"CUDA vs CPU cosine min {cos.min():.4f} < 0.99")
    return f"{model_dir.name}: cosine min {cos.min():.5f} mean {cos.mean():.5f}; {rate:.0f} texts/s"


def check_faiss() -> str:
    import numpy as np

    try:
        import faiss
    except ImportError as exc:
        raise Skip("faiss is not installed") from exc
    gpus = int(getattr(faiss, "get_num_gpus", lambda: 0)())
    if not gpus or not hasattr(faiss, "StandardGpuResources"):
        raise Skip(f"faiss {faiss.__version__} is a CPU build or sees no GPU")
    rng = np.random.default_rng(1)
    base = rng.standard_normal((20_000, 384)).astype("float32")
    faiss.normalize_L2(base)
    queries = base[:200] + 0.01 * rng.standard_normal((200, 384)).astype("float32")
    cpu = faiss.IndexFlatIP(384)
    cpu.add(base)
    resources = faiss.StandardGpuResources()
    gpu = faiss.index_cpu_to_gpu(resources, 0, cpu)
    _, want = cpu.search(queries, 10)
    _, got = gpu.search(queries, 10)
    overlap = np.mean([len(set(w) & set(g)) / 10 for w, g in zip(want, got, strict=True)])
    if overlap < 0.99:
        raise AssertionError(f"GPU top-10 overlap with CPU {overlap:.3f} < 0.99")
    return f"faiss {faiss.__version__}, {gpus} GPU(s): top-10 overlap {overlap:.3f}"


def check_doctor() -> str:
    out = subprocess.run(
        [sys.executable, "-m", "pai.cli", "doctor", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if out.returncode != 0:
        raise AssertionError(f"pai doctor exited {out.returncode}: {out.stderr.strip()}")
    report = json.loads(out.stdout)
    names = [g["name"] for g in report["gpus"]]
    missing = report["missing"]
    return (
        f"GPUs {names or 'none'}; providers {report['onnxruntime'].get('providers')}; "
        f"missing: {missing or 'nothing'}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="A pai model folder to compare CUDA vs CPU.")
    parser.add_argument("--require-gpu", action="store_true", help="Treat SKIP as FAIL.")
    parser.add_argument("--json", action="store_true", help="Print the results as JSON.")
    args = parser.parse_args()
    checks: list[tuple[str, Callable[[], str]]] = [
        ("pynvml", check_nvml),
        ("onnxruntime CUDA provider", check_providers),
        ("engine CUDA vs CPU", lambda: check_engine(args.model)),
        ("faiss GPU", check_faiss),
        ("pai doctor --json", check_doctor),
    ]
    results: list[dict[str, Any]] = []
    for name, check in checks:
        started = time.perf_counter()
        try:
            status, detail = "PASS", check()
        except Skip as exc:
            status, detail = ("FAIL" if args.require_gpu else "SKIP"), str(exc)
        except Exception as exc:  # a failed check is reported, the others still run
            status, detail = "FAIL", f"{type(exc).__name__}: {exc}"
        results.append(
            {
                "check": name,
                "status": status,
                "detail": detail,
                "seconds": round(time.perf_counter() - started, 2),
            }
        )
        if not args.json:
            print(f"{status:4}  {name:28} {detail}", flush=True)
    failed = [r for r in results if r["status"] == "FAIL"]
    if args.json:
        print(json.dumps({"ok": not failed, "results": results}, indent=2))
    else:
        print(
            "\nGPU CHECK: "
            + ("FAIL" if failed else "PASS")
            + f" ({sum(r['status'] == 'PASS' for r in results)} passed, "
            f"{sum(r['status'] == 'SKIP' for r in results)} skipped, {len(failed)} failed)"
        )
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
