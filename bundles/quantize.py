"""Per-token int8 quantization of an exported encoder (pai's default int8 recipe).

onnxruntime's dynamic quantization gives a whole batch one activation scale. Transformer
encoders carry a few hidden channels (MiniLM: 99, 63, 157, …) whose values are 10 to 20 times
the others, so with one scale the ordinary channels get a handful of levels, and a text's
vector depends on the texts it was batched with. On the synthetic CRM set that costs
retrieval: recall@10 against fp32 was 0.89. This rewrite quantizes instead:

* weights: int8, symmetric, one scale per output column (as onnxruntime's per-channel);
* activations: int8, symmetric, one scale per token (row), computed in the graph, so a
  text's vector no longer depends on its batch;
* the ``outliers`` input channels with the largest calibration magnitudes stay in fp32: they
  are zeroed before quantizing and multiplied by their fp32 weight rows in a small side MatMul
  (the decomposition of LLM.int8());
* MatMuls named in ``keep_fp32`` stay entirely in fp32 (the accuracy gate's ladder).

Only standard ONNX operators are used (MatMulInteger, ReduceMax, Round, Cast, Gather), so
any onnxruntime reads the result. The activations are fed to MatMulInteger as uint8 with a
zero point of 128 (values 1…255): the u8·s8 kernels are the fast ones on x86 with VNNI and on
ARM. Without VNNI (``avx2``, ``avx512``) the u8·s8 instruction can saturate its int16 pairs,
so the weights are stored as uint8 with a zero point of 128 instead (the same grid, the
u8·u8 kernel, which widens first).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

#: Input channels per MatMul input kept in fp32 (MiniLM has 2 to 4 that matter).
DEFAULT_OUTLIERS = 4
#: ISAs whose u8·s8 integer kernels do not saturate.
_U8S8_SAFE = ("avx512_vnni", "arm64")
_PREFIX = "pai_pt"


def _weight_matmuls(graph: Any, keep: Collection[str]) -> list[Any]:
    """MatMuls whose second input is a 2-D fp32 weight matrix: the ones worth quantizing."""
    from onnx import TensorProto

    weights = {
        i.name for i in graph.initializer if len(i.dims) == 2 and i.data_type == TensorProto.FLOAT
    }
    return [
        n
        for n in graph.node
        if n.op_type == "MatMul" and n.input[1] in weights and n.name not in keep
    ]


def channel_maxima(
    model_path: Path, inputs: Sequence[str], feeds: Sequence[dict[str, npt.NDArray[Any]]]
) -> dict[str, npt.NDArray[np.float32]]:
    """Largest |value| of each channel of each tensor in ``inputs`` over the real (unpadded)
    tokens of ``feeds``: which channels are outliers."""
    import onnx
    import onnxruntime as ort

    probe = onnx.load(str(model_path))
    for name in inputs:
        probe.graph.output.append(
            onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
        )
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    wanted = {i.name for i in session.get_inputs()}
    maxima: dict[str, npt.NDArray[np.float32]] = {}
    for feed in feeds:
        real = feed["attention_mask"].astype(bool)
        outputs = session.run(list(inputs), {k: v for k, v in feed.items() if k in wanted})
        for name, value in zip(inputs, outputs, strict=True):
            array = np.abs(np.asarray(value))
            # (batch, tokens, channels) keeps only real tokens; a graph that flattened the
            # batch before its MatMuls has padded tokens in its rows, which only widens maxima.
            rows = array[real] if array.shape[:2] == real.shape else array
            peak = rows.reshape(-1, array.shape[-1]).max(axis=0).astype(np.float32)
            maxima[name] = np.maximum(maxima[name], peak) if name in maxima else peak
    return maxima


class _Graph:
    """Small helpers over an ONNX graph being rewritten in place."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.graph = model.graph
        self.count = 0

    def const(self, name: str, value: npt.NDArray[Any]) -> str:
        from onnx import numpy_helper

        self.graph.initializer.append(numpy_helper.from_array(value, name))
        return name

    def node(self, op: str, inputs: list[str], output: str, **attrs: Any) -> Any:
        from onnx import helper

        self.count += 1
        return helper.make_node(op, inputs, [output], name=f"{_PREFIX}/{op}_{self.count}", **attrs)

    def insert_before(self, anchor: Any, nodes: list[Any]) -> None:
        at = list(self.graph.node).index(anchor)
        for offset, node in enumerate(nodes):
            self.graph.node.insert(at + offset, node)

    def replace(self, old: Any, nodes: list[Any]) -> None:
        at = list(self.graph.node).index(old)
        self.graph.node.remove(old)
        for offset, node in enumerate(nodes):
            self.graph.node.insert(at + offset, node)

    def drop_unused_initializers(self) -> None:
        used = {i for n in self.graph.node for i in n.input}
        keep = [i for i in self.graph.initializer if i.name in used]
        del self.graph.initializer[:]
        self.graph.initializer.extend(keep)


def _opset(model: Any) -> int:
    return max(int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx"))


def quantize_per_token(
    fp32_model: Path,
    out_model: Path,
    feeds: Sequence[dict[str, npt.NDArray[Any]]],
    *,
    isa: str,
    keep_fp32: Collection[str] = (),
    outliers: int = DEFAULT_OUTLIERS,
) -> dict[str, Any]:
    """Rewrite ``fp32_model`` into ``out_model``; returns what the manifest records.

    ``feeds`` are tokenized calibration batches (they only choose the outlier channels).
    ``keep_fp32`` names MatMul nodes to leave in fp32.
    """
    import onnx
    from onnx import TensorProto, numpy_helper

    model = onnx.load(str(fp32_model))
    g = _Graph(model)
    matmuls = _weight_matmuls(model.graph, set(keep_fp32))
    inputs = sorted({n.input[0] for n in matmuls})
    maxima = channel_maxima(fp32_model, inputs, feeds) if outliers else {}
    weights = {i.name: i for i in model.graph.initializer}
    u8_weights = isa not in _U8S8_SAFE

    g.const(f"{_PREFIX}/127", np.array(127, dtype=np.float32))
    g.const(f"{_PREFIX}/128", np.array(128, dtype=np.float32))
    g.const(f"{_PREFIX}/tiny", np.array(1e-12, dtype=np.float32))
    g.const(f"{_PREFIX}/zp", np.array(128, dtype=np.uint8))
    reduce_attrs: dict[str, Any] = {"keepdims": 1}
    reduce_inputs: list[str] = []
    if _opset(model) >= 18:  # axes became an input in opset 18
        reduce_inputs = [g.const(f"{_PREFIX}/axes", np.array([-1], dtype=np.int64))]
    else:
        reduce_attrs["axes"] = [-1]

    for number, tensor in enumerate(inputs):
        users = [n for n in matmuls if n.input[0] == tensor]
        p = f"{_PREFIX}/in{number}"
        prologue: list[Any] = []
        quantized_source = tensor
        channels: npt.NDArray[np.int64] = np.zeros(0, dtype=np.int64)
        if outliers:
            peak = maxima[tensor]
            channels = np.sort(np.argsort(-peak, kind="stable")[:outliers]).astype(np.int64)
            mask = np.ones(peak.shape, dtype=np.float32)
            mask[channels] = 0.0
            prologue += [
                g.node("Mul", [tensor, g.const(f"{p}/mask", mask)], f"{p}/inliers"),
                g.node("Gather", [tensor, g.const(f"{p}/channels", channels)], f"{p}/outliers",
                       axis=-1),
            ]  # fmt: skip
            quantized_source = f"{p}/inliers"
        prologue += [
            g.node("Abs", [quantized_source], f"{p}/abs"),
            g.node("ReduceMax", [f"{p}/abs", *reduce_inputs], f"{p}/amax", **reduce_attrs),
            g.node("Max", [f"{p}/amax", f"{_PREFIX}/tiny"], f"{p}/amax1"),
            g.node("Div", [f"{p}/amax1", f"{_PREFIX}/127"], f"{p}/scale"),
            g.node("Div", [quantized_source, f"{p}/scale"], f"{p}/scaled"),
            g.node("Round", [f"{p}/scaled"], f"{p}/rounded"),
            g.node("Add", [f"{p}/rounded", f"{_PREFIX}/128"], f"{p}/shifted"),
            g.node("Cast", [f"{p}/shifted"], f"{p}/q", to=TensorProto.UINT8),
        ]
        g.insert_before(min(users, key=lambda n: list(model.graph.node).index(n)), prologue)
        for user in users:
            w = numpy_helper.to_array(weights[user.input[1]]).astype(np.float32)
            column_scale = (np.maximum(np.abs(w).max(axis=0), 1e-12) / 127).astype(np.float32)
            wq = np.clip(np.round(w / column_scale), -127, 127)
            stem = f"{p}/{user.input[1]}"
            integer_inputs = [f"{p}/q"]
            if u8_weights:
                integer_inputs += [
                    g.const(f"{stem}/q", (wq + 128).astype(np.uint8)),
                    f"{_PREFIX}/zp",
                    f"{_PREFIX}/zp",
                ]
            else:
                integer_inputs += [g.const(f"{stem}/q", wq.astype(np.int8)), f"{_PREFIX}/zp"]
            result = user.output[0]
            main = f"{stem}/main" if outliers else result
            body = [
                g.node("MatMulInteger", integer_inputs, f"{stem}/acc"),
                g.node("Cast", [f"{stem}/acc"], f"{stem}/accf", to=TensorProto.FLOAT),
                g.node("Mul", [f"{stem}/accf", f"{p}/scale"], f"{stem}/rows"),
                g.node("Mul", [f"{stem}/rows", g.const(f"{stem}/scale", column_scale)], main),
            ]
            if outliers:
                side = g.const(f"{stem}/outlier_rows", np.ascontiguousarray(w[channels, :]))
                body += [
                    g.node("MatMul", [f"{p}/outliers", side], f"{stem}/side"),
                    g.node("Add", [main, f"{stem}/side"], result),
                ]
            g.replace(user, body)
    g.drop_unused_initializers()
    onnx.checker.check_model(model)
    onnx.save(model, str(out_model))
    return {
        "method": "per-token",
        "isa": isa,
        "weights": "uint8-zp128" if u8_weights else "int8",
        "weight_scale": "per-output-channel",
        "activations": "per-token-symmetric",
        "outlier_channels": outliers,
        "calibration_batches": len(feeds),
        "fp32_nodes": sorted(keep_fp32),
    }
