"""The embedding engine: one code path for the bundle builder and the daemon.

A model folder (the layout documented in docs/formats/bundle-spec.md, "Model folder") holds
``model.onnx``, ``tokenizer.json`` and ``pai-model.json``. The engine tokenizes with the Rust
``tokenizers`` fast tokenizer, runs an onnxruntime session and pools the last hidden state
(mean or CLS, as ``pai-model.json`` says), L2-normalising when it says so.

Texts are sorted by token length and cut into runs so that a run pads only to its own longest
member: short CRM notes next to long ones would otherwise pay for the long ones' padding. Where
to cut is chosen by :func:`plan_runs`, which weighs the padding a cut saves against the fixed
cost of one more onnxruntime run (on the CPU a run costs about as much as 16 tokens; a
fixed-size split of 32 random CRM sentences computes half again as many tokens as needed).
The CUDA execution provider is used when onnxruntime-gpu sees a GPU; the CPU provider is the
default, and the only one tested on machines without a GPU.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from pai.errors import NotFoundError, PaiError, UsageError

MODEL_CONFIG = "pai-model.json"
MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
MODEL_FORMAT = "pai-model/1"
DEFAULT_BATCH_SIZE = 32
#: The fixed cost of one onnxruntime run (session call, input arrays, pooling) in tokens'
#: worth of compute: measured on the int8 MiniLM on a CPU core as about 1.1 ms per run
#: against 80 us per token. On CUDA a run's launch cost dwarfs padding, so runs stay full.
RUN_COST_TOKENS_CPU = 16
RUN_COST_TOKENS_CUDA = 1 << 20

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"

Embeddings = npt.NDArray[np.float32]


class ModelError(PaiError):
    """A model folder is missing a file, or its files are unreadable or inconsistent."""

    code = "model"


class InputTooLongError(UsageError):
    """A text is longer than the model's maximum length and truncation was not allowed."""

    code = "input-too-long"


class InvalidTokensError(UsageError):
    """Token ids given directly are outside the model's vocabulary or empty."""

    code = "invalid-tokens"


class ProviderError(PaiError):
    """An execution provider was asked for that this onnxruntime cannot give."""

    code = "provider"


@dataclass(frozen=True)
class ModelConfig:
    """What ``pai-model.json`` says about a model; the rest of the document is kept in ``raw``."""

    name: str
    version: str
    dtype: str
    pooling: str
    normalize: bool
    max_length: int
    dimension: int
    raw: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def read(cls, model_dir: Path) -> ModelConfig:
        path = model_dir / MODEL_CONFIG
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise NotFoundError(
                f"{model_dir} is not a model folder: {MODEL_CONFIG} is missing",
                hint="build models with `pai bundle build`",
            ) from None
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot read {path}: {exc}") from None
        return cls.from_dict(raw, where=str(path))

    @classmethod
    def from_dict(cls, raw: Any, *, where: str) -> ModelConfig:
        if not isinstance(raw, dict) or raw.get("format") != MODEL_FORMAT:
            raise ModelError(f"{where} is not a {MODEL_FORMAT} document")
        try:
            config = cls(
                name=str(raw["name"]),
                version=str(raw["version"]),
                dtype=str(raw["dtype"]),
                pooling=str(raw["pooling"]),
                normalize=bool(raw["normalize"]),
                max_length=int(raw["max_length"]),
                dimension=int(raw["dimension"]),
                raw=raw,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"{where} lacks or has a bad field: {exc}") from None
        if config.pooling not in ("mean", "cls"):
            raise ModelError(f"{where}: pooling must be mean or cls, not {config.pooling!r}")
        if config.max_length < 2 or config.dimension < 1:
            raise ModelError(f"{where}: max_length and dimension must be positive")
        return config


def available_providers() -> list[str]:
    """Execution providers this onnxruntime build offers, in pai's order of preference."""
    import onnxruntime as ort

    have = set(ort.get_available_providers())
    return [p for p in (CUDA, CPU) if p in have]


def _preload_cuda_libraries(ort: Any) -> None:
    """Load CUDA/cuDNN from the nvidia-* wheels when that is where they are installed.

    onnxruntime-gpu's CUDA provider links against libcudart, cuBLAS and cuDNN; on nodes that
    carry them as pip wheels (the `gpu` extra) rather than a system CUDA, they are only found
    after ``preload_dlls``. With a system CUDA this is a no-op.
    """
    preload = getattr(ort, "preload_dlls", None)
    if preload is not None:
        with contextlib.suppress(Exception):
            preload()


def default_providers() -> list[str]:
    """CUDA first when onnxruntime-gpu is installed and sees a GPU, then the CPU."""
    from pai.inference.gpu import gpu_count

    have = available_providers()
    if CUDA in have and gpu_count() > 0:
        return [CUDA, CPU]
    return [CPU]


def plan_runs(lengths: Sequence[int], max_size: int, run_cost: int) -> list[int]:
    """Where to cut ascending token ``lengths`` into runs of at most ``max_size`` inputs.

    Returns the end offset of each run. Minimises the tokens computed (each run pads to its
    last, longest member) plus ``run_cost`` per run, by dynamic programming over the cut
    points: O(len(lengths) * max_size), a few milliseconds for thousands of inputs, against
    seconds of inference. Equal lengths give full runs; a spread gives more, tighter runs.
    """
    n = len(lengths)
    size = max(1, max_size)
    best = [0] * (n + 1)
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        width = lengths[j - 1]
        lowest, arg = -1, 0
        for i in range(max(0, j - size), j):
            cost = best[i] + (j - i) * width
            if lowest < 0 or cost < lowest:
                lowest, arg = cost, i
        best[j] = lowest + run_cost
        cut[j] = arg
    ends: list[int] = []
    j = n
    while j > 0:
        ends.append(j)
        j = cut[j]
    return ends[::-1]


def _special_tokens(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The ids the tokenizer's post-processor puts before and after the content ([CLS], [SEP]).

    Learned from the tokenizer itself so that token arrays sent by clients get the same
    framing as text would, whatever the model family.
    """
    bare = tokenizer.encode("hello", add_special_tokens=False).ids
    full = tokenizer.encode("hello", add_special_tokens=True).ids
    for start in range(len(full) - len(bare) + 1):
        if full[start : start + len(bare)] == bare:
            return list(full[:start]), list(full[start + len(bare) :])
    return [], []


class EmbeddingEngine:
    """A loaded model: tokenizer, onnxruntime session and pooling settings."""

    def __init__(
        self,
        model_dir: Path,
        config: ModelConfig,
        session: Any,
        tokenizer: Any,
        counter: Any,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> None:
        self.model_dir = model_dir
        self.config = config
        self._session = session
        self._tokenizer = tokenizer
        self._counter = counter
        self.batch_size = batch_size
        self._inputs = {i.name for i in session.get_inputs()}
        outputs = [o.name for o in session.get_outputs()]
        self._output = "last_hidden_state" if "last_hidden_state" in outputs else outputs[0]
        self._prefix, self._suffix = _special_tokens(counter)
        self._vocab_size = int(tokenizer.get_vocab_size(with_added_tokens=True))
        self._pad_id = int(config.raw.get("pad_token_id", 0))
        on_cuda = CUDA in session.get_providers()
        self._run_cost = RUN_COST_TOKENS_CUDA if on_cuda else RUN_COST_TOKENS_CPU

    @classmethod
    def load(
        cls,
        model_dir: Path,
        *,
        providers: list[str] | None = None,
        threads: int = 0,
        spinning: bool = True,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> EmbeddingEngine:
        """Open the model folder; ``providers`` defaults to CUDA when present, else CPU.

        Raises NotFoundError or ModelError for a bad folder, ProviderError for a provider this
        onnxruntime lacks.
        """
        import onnxruntime as ort
        from tokenizers import Tokenizer

        model_dir = Path(model_dir)
        config = ModelConfig.read(model_dir)
        for needed in (MODEL_FILE, TOKENIZER_FILE):
            if not (model_dir / needed).is_file():
                raise ModelError(f"model folder {model_dir} lacks {needed}")
        chosen = list(providers) if providers else default_providers()
        missing = [p for p in chosen if p not in ort.get_available_providers()]
        if missing:
            raise ProviderError(
                f"onnxruntime here has no {', '.join(missing)}",
                hint="install the `gpu` extra on a GPU node, or use the CPU provider",
            )
        try:
            tokenizer = Tokenizer.from_file(str(model_dir / TOKENIZER_FILE))
            counter = Tokenizer.from_str(tokenizer.to_str())
        except Exception as exc:
            raise ModelError(f"cannot load {model_dir / TOKENIZER_FILE}: {exc}") from None
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_length=config.max_length)
        counter.no_padding()
        counter.no_truncation()
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads
        if not spinning:  # a daemon shares the cores with its event loop: idle threads sleep
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        if CUDA in chosen:
            _preload_cuda_libraries(ort)
        try:
            session = ort.InferenceSession(
                str(model_dir / MODEL_FILE), sess_options=options, providers=chosen
            )
        except Exception as exc:
            raise ModelError(f"onnxruntime cannot load {model_dir / MODEL_FILE}: {exc}") from None
        if providers and CUDA in chosen and CUDA not in session.get_providers():
            # onnxruntime falls back to the CPU silently when CUDA libraries fail to load;
            # an operator who asked for the GPU must hear about it.
            raise ProviderError(
                "the CUDA execution provider failed to load (CUDA or cuDNN libraries missing?)",
                hint="check `pai doctor`, or serve with --device cpu",
            )
        return cls(model_dir, config, session, tokenizer, counter, batch_size=batch_size)

    # -- what the daemon and the bundle reports show ---------------------------------------
    @property
    def name(self) -> str:
        return self.config.name

    @property
    def version(self) -> str:
        return self.config.version

    @property
    def dimension(self) -> int:
        return self.config.dimension

    @property
    def max_length(self) -> int:
        return self.config.max_length

    @property
    def providers(self) -> list[str]:
        return list(self._session.get_providers())

    # -- tokens ----------------------------------------------------------------------------
    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens each text would take, special tokens included, before any truncation."""
        return [len(e.ids) for e in self._counter.encode_batch(list(texts))]

    def tokenize(self, texts: Sequence[str], *, truncate: bool = True) -> list[list[int]]:
        """Token ids per text, truncated at ``max_length`` (or refused when ``truncate`` is off)."""
        encodings = self._tokenizer.encode_batch(list(texts))
        if not truncate:
            for index, enc in enumerate(encodings):
                if enc.overflowing:
                    total = self.count_tokens([texts[index]])[0]
                    raise InputTooLongError(
                        f"input {index} has {total} tokens; {self.name} takes at most "
                        f"{self.max_length}",
                        hint="shorten it or allow truncation",
                    )
        return [list(e.ids) for e in encodings]

    def encode(self, text: str) -> list[int]:
        """Content token ids of ``text`` without special tokens (for chunking)."""
        return list(self._counter.encode(text, add_special_tokens=False).ids)

    def spans(self, text: str) -> list[tuple[int, int]]:
        """Character (start, end) of each content token of ``text``, for token-aware chunking."""
        return [
            (int(a), int(b))
            for a, b in self._counter.encode(text, add_special_tokens=False).offsets
        ]

    # -- embeddings ------------------------------------------------------------------------
    def embed(self, texts: Sequence[str], *, truncate: bool = True) -> Embeddings:
        """Embeddings of ``texts`` as float32 (n, dimension), in input order."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        return self._embed_ids(self.tokenize(texts, truncate=truncate))

    def embed_counted(self, texts: Sequence[str]) -> tuple[Embeddings, list[int]]:
        """Embeddings of ``texts`` (truncated at ``max_length``) and each text's token count
        before truncation, from one tokenizer pass: the daemon needs both for every request
        (``usage`` and the over-long check), and tokenizing twice cost it about 1 % of its CPU.
        """
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32), []
        full = [e.ids for e in self._counter.encode_batch(list(texts))]
        counts = [len(ids) for ids in full]
        # Truncation keeps the leading special tokens and the content that fits, then the
        # trailing special tokens: what the truncating tokenizer produces.
        keep, tail = self.max_length - len(self._suffix), len(self._suffix)
        ids = [i if len(i) <= self.max_length else i[:keep] + i[len(i) - tail :] for i in full]
        return self._embed_ids(ids), counts

    def embed_tokens(
        self, token_ids: Sequence[Sequence[int]], *, truncate: bool = True
    ) -> Embeddings:
        """Embeddings of pre-tokenized content (the OpenAI API's token-array input).

        The ids are this model's vocabulary ids without special tokens; the engine frames
        them with the model's own ([CLS] ... [SEP] for BERT) exactly as for text.
        """
        room = self.max_length - len(self._prefix) - len(self._suffix)
        framed: list[list[int]] = []
        for index, ids in enumerate(token_ids):
            content = [int(i) for i in ids]
            if not content:
                raise InvalidTokensError(f"token array {index} is empty")
            bad = [i for i in content if i < 0 or i >= self._vocab_size]
            if bad:
                raise InvalidTokensError(
                    f"token array {index} has id {bad[0]} outside the vocabulary "
                    f"(0..{self._vocab_size - 1}) of {self.name}"
                )
            if len(content) > room:
                if not truncate:
                    total = len(content) + self.max_length - room
                    raise InputTooLongError(
                        f"token array {index} has {total} tokens; "
                        f"{self.name} takes at most {self.max_length}"
                    )
                content = content[:room]
            framed.append([*self._prefix, *content, *self._suffix])
        if not framed:
            return np.zeros((0, self.dimension), dtype=np.float32)
        return self._embed_ids(framed)

    def _embed_ids(self, ids: list[list[int]]) -> Embeddings:
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        out = np.empty((len(ids), self.dimension), dtype=np.float32)
        start = 0
        for end in plan_runs([len(ids[i]) for i in order], self.batch_size, self._run_cost):
            chunk = order[start:end]
            out[chunk] = self._run([ids[i] for i in chunk])
            start = end
        return out

    def feeds(self, texts: Sequence[str]) -> list[dict[str, npt.NDArray[np.int64]]]:
        """The graph inputs the engine would feed for ``texts`` (batched by length, with
        ``attention_mask`` always present): what int8 calibration runs the fp32 graph on."""
        ids = self.tokenize(texts)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        return [
            self._feed([ids[i] for i in order[start : start + self.batch_size]])
            for start in range(0, len(order), self.batch_size)
        ]

    def _feed(self, batch: list[list[int]]) -> dict[str, npt.NDArray[np.int64]]:
        width = max(len(ids) for ids in batch)
        input_ids = np.full((len(batch), width), self._pad_id, dtype=np.int64)
        mask = np.zeros((len(batch), width), dtype=np.int64)
        for row, ids in enumerate(batch):
            input_ids[row, : len(ids)] = ids
            mask[row, : len(ids)] = 1
        return {
            "input_ids": input_ids,
            "attention_mask": mask,
            "token_type_ids": np.zeros_like(input_ids),
        }

    def _run(self, batch: list[list[int]]) -> Embeddings:
        full = self._feed(batch)
        mask = full["attention_mask"]
        feed = {k: v for k, v in full.items() if k in self._inputs}
        hidden = np.asarray(self._session.run([self._output], feed)[0], dtype=np.float32)
        if hidden.ndim == 2:  # a graph that already pools
            pooled = hidden
        elif self.config.pooling == "cls":
            pooled = hidden[:, 0, :]
        else:
            weights = mask[:, :, None].astype(np.float32)
            pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        if pooled.shape[1] != self.dimension:
            raise ModelError(
                f"{self.name} produced {pooled.shape[1]}-dimensional vectors; "
                f"{MODEL_CONFIG} says {self.dimension}"
            )
        if self.config.normalize:
            norms = np.linalg.norm(pooled, axis=1, keepdims=True)
            pooled = pooled / np.clip(norms, 1e-12, None)
        return pooled.astype(np.float32, copy=False)
