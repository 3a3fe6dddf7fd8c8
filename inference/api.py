"""Request and response shapes of the HTTP API (OpenAI-compatible where OpenAI has one).

Parsing is strict about what it uses and lenient about what it does not: unknown fields are
accepted and ignored, as OpenAI clients send extras (``user``, ``extra_body`` ...). Every
failure is an :class:`ApiError` rendered as ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

import numpy as np


class ApiError(Exception):
    """An error answer: HTTP status plus OpenAI's error object."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


def parse_json(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "the request body is not valid JSON", code="invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object", code="invalid_json")
    return body


@dataclass(frozen=True)
class EmbeddingRequest:
    model: str
    texts: list[str] | None
    tokens: list[list[int]] | None
    encoding: str
    dimensions: int | None
    truncate: bool

    @property
    def count(self) -> int:
        return len(self.texts) if self.texts is not None else len(self.tokens or [])


def _is_token_array(value: Any) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(t, int) and not isinstance(t, bool) for t in value)
    )


def parse_embedding_request(body: dict[str, Any], max_inputs: int) -> EmbeddingRequest:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "'model' is required", param="model", code="missing_model")
    raw = body.get("input")
    texts: list[str] | None = None
    tokens: list[list[int]] | None = None
    if isinstance(raw, str):
        texts = [raw]
    elif isinstance(raw, list) and _is_token_array(raw):
        tokens = [list(raw)]
    elif isinstance(raw, list) and raw and all(isinstance(x, str) for x in raw):
        texts = list(raw)
    elif isinstance(raw, list) and raw and all(_is_token_array(x) for x in raw):
        tokens = [list(x) for x in raw]
    else:
        raise ApiError(
            400,
            "'input' must be a string, a list of strings, or token arrays",
            param="input",
            code="invalid_input",
        )
    count = len(texts) if texts is not None else len(tokens or [])
    if count > max_inputs:
        raise ApiError(
            400, f"at most {max_inputs} inputs per request", param="input", code="too_many_inputs"
        )
    if texts is not None and any(not t for t in texts):
        raise ApiError(400, "inputs must not be empty strings", param="input", code="empty_input")
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise ApiError(
            400,
            "'encoding_format' must be 'float' or 'base64'",
            param="encoding_format",
            code="invalid_encoding_format",
        )
    dimensions = body.get("dimensions")
    if dimensions is not None and (
        not isinstance(dimensions, int) or isinstance(dimensions, bool) or dimensions < 1
    ):
        raise ApiError(400, "'dimensions' must be a positive integer", param="dimensions")
    truncate = body.get("truncate", False)
    if not isinstance(truncate, bool):
        raise ApiError(400, "'truncate' must be true or false", param="truncate")
    return EmbeddingRequest(model, texts, tokens, encoding, dimensions, truncate)


def encode_vector(vector: np.ndarray, encoding: str) -> list[float] | str:
    if encoding == "base64":
        return base64.b64encode(vector.astype("<f4", copy=False).tobytes()).decode("ascii")
    return [float(x) for x in vector.tolist()]


def embeddings_response(
    vectors: np.ndarray, encoding: str, model: str, tokens: int
) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": encode_vector(v, encoding)}
            for i, v in enumerate(vectors)
        ],
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


@dataclass(frozen=True)
class SearchRequest:
    query: str | None
    vector: list[float] | None
    k: int
    filters: dict[str, Any]


def parse_search_request(body: dict[str, Any]) -> SearchRequest:
    query = body.get("query")
    vector = body.get("vector")
    if (query is None) == (vector is None):
        raise ApiError(400, "give exactly one of 'query' (text) or 'vector'", param="query")
    if query is not None and (not isinstance(query, str) or not query):
        raise ApiError(400, "'query' must be a non-empty string", param="query")
    if vector is not None and (
        not isinstance(vector, list)
        or not vector
        or not all(isinstance(x, int | float) and not isinstance(x, bool) for x in vector)
    ):
        raise ApiError(400, "'vector' must be a list of numbers", param="vector")
    k = body.get("k", 10)
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= 1000:
        raise ApiError(400, "'k' must be an integer from 1 to 1000", param="k")
    filters = body.get("filters", body.get("filter", {}))
    if filters is None:
        filters = {}
    if not isinstance(filters, dict):
        raise ApiError(400, "'filters' must be an object of field: value", param="filters")
    if "tenant" in filters:
        raise ApiError(
            400,
            "the tenant comes from the token, not from filters",
            param="filters",
            code="tenant_in_body",
        )
    return SearchRequest(query, vector, k, filters)
