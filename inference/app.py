"""The ASGI application: routes, auth, rate limits, cache, logs, metrics and audit per request.

Every API request goes through :meth:`Daemon.handle`, which owns the cross-cutting work in one
place: verify the token, check the scope and the rate limit, pin the current generation, run
the route, and then (whatever happened) write one JSON log line, the metrics and one audit
event. Routes only parse, compute and shape their answer.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
import time
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import IO, Any

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from pai.errors import PaiError
from pai.inference import registry
from pai.inference.api import (
    ApiError,
    EmbeddingRequest,
    embeddings_response,
    parse_embedding_request,
    parse_json,
    parse_search_request,
)
from pai.inference.auditing import RequestAuditor
from pai.inference.auth import AuthError, Principal, TokenVerifier, load_trusted_keys
from pai.inference.batcher import Draining, InputTooLong, QueueFull
from pai.inference.cache import EmbeddingCache, input_hash
from pai.inference.config import ServeConfig
from pai.inference.metrics import Metrics
from pai.inference.ratelimit import RateLimiter, retry_headers
from pai.inference.routing import UnknownModelError, resolve
from pai.settings import Paths

ANONYMOUS = Principal("anonymous", "default", frozenset({"embed", "search", "admin"}), "-")
MAX_AUDITED_HASHES = 32


@dataclass
class Outcome:
    """What one request did, filled in as it goes and logged/audited at the end."""

    route: str
    action: str
    principal: Principal | None = None
    model: str = ""
    items: int = 0
    hashes: list[str] = field(default_factory=list)
    status: int = 200
    error: str | None = None


Handler = Callable[[Request, Principal, Outcome, registry.Generation], Awaitable[Response]]


class Daemon:
    """The state one `pai serve` process keeps between requests."""

    def __init__(self, p: Paths, config: ServeConfig, *, log: IO[str] | None = None) -> None:
        self.paths = p
        self.config = config
        self.metrics = Metrics()
        self.cache = EmbeddingCache(config.cache_entries)
        self.limiter = RateLimiter(config.rate_limit_rps, config.rate_limit_burst)
        self.verifier = self._verifier(config)
        self.auditor = RequestAuditor(
            p, enabled=config.audit, flush_interval=config.audit_flush_ms / 1000.0
        )
        self.log = log or sys.stderr
        self.generation: registry.Generation | None = None
        self.ready = False
        self.draining = False
        self._reload_lock = asyncio.Lock()
        self._retiring: set[asyncio.Task[None]] = set()
        self._generations = 0
        self.on_ready: Callable[[], None] | None = None
        self.after_reload: Callable[[], None] | None = None
        #: Components loaded before the event loop started, so load errors reach the CLI.
        self.preloaded: registry.Loaded | None = None

    def _verifier(self, config: ServeConfig) -> TokenVerifier:
        keys = load_trusted_keys(self.paths, allow_hs256=config.allow_hs256)
        return TokenVerifier(
            keys,
            audience=config.jwt_audience,
            issuer=config.jwt_issuer,
            leeway=config.jwt_leeway_s,
        )

    # ----------------------------------------------------------------- lifecycle

    async def startup(self) -> None:
        if self.preloaded is not None:
            self._generations += 1
            gen = registry.assemble(self._generations, self.config, self.metrics, self.preloaded)
            self.preloaded = None
            await registry.start(gen)
        else:
            gen = await self._load(list(self.config.bundles))
        self.generation = gen
        self.ready = True
        self.auditor.lifecycle("serve.start", resource="serve", details=self._describe(gen))
        if self.on_ready is not None:
            self.on_ready()

    async def _load(self, sources: list[str]) -> registry.Generation:
        loop = asyncio.get_running_loop()
        loaded = await loop.run_in_executor(
            None, registry.load_components, self.paths, self.config, sources
        )
        self._generations += 1
        gen = registry.assemble(self._generations, self.config, self.metrics, loaded)
        await registry.start(gen)
        return gen

    async def reload(self, sources: list[str] | None = None) -> dict[str, Any]:
        """Load the bundles again (or new ones), swap, and retire the old generation."""
        async with self._reload_lock:
            old = self.generation
            wanted = sources or list(self.config.bundles)
            try:
                gen = await self._load(wanted)
            except PaiError as exc:
                self.metrics.reloads.labels("failed").inc()
                self.auditor.lifecycle(
                    "serve.reload",
                    resource="serve",
                    outcome="failed",
                    details={"error": exc.code},
                )
                raise
            self.config = self.config.with_overrides(bundles=tuple(wanted))
            self.verifier = self._verifier(self.config)
            self.generation = gen
            self.metrics.reloads.labels("ok").inc()
            self.auditor.lifecycle("serve.reload", resource="serve", details=self._describe(gen))
            if old is not None:
                task = asyncio.get_running_loop().create_task(old.close())
                self._retiring.add(task)
                task.add_done_callback(self._retiring.discard)
            if self.after_reload is not None:
                self.after_reload()
            return gen.describe()

    async def shutdown(self) -> None:
        self.draining = True
        self.ready = False
        for task in list(self._retiring):
            await task
        if self.generation is not None:
            await self.generation.close()
            self.auditor.lifecycle(
                "serve.stop", resource="serve", details=self._describe(self.generation)
            )
        await asyncio.get_running_loop().run_in_executor(None, self.auditor.close)

    @staticmethod
    def _describe(gen: registry.Generation) -> dict[str, Any]:
        return {
            "generation": gen.number,
            "models": sorted(gen.models),
            "indexes": sorted(gen.indexes),
            "bundles": [f"{b.get('name')}@{b.get('version')}" for b in gen.bundles],
        }

    # ----------------------------------------------------------------- request pipeline

    async def handle(
        self, request: Request, route: str, action: str, scope: str, handler: Handler
    ) -> Response:
        started = time.perf_counter()
        outcome = Outcome(route, action)
        gen: registry.Generation | None = None
        try:
            if self.generation is None or self.draining:
                raise ApiError(
                    503, "the daemon is not ready", type="server_error", code="not_ready"
                )
            principal = self._authenticate(request)
            outcome.principal = principal
            if scope:
                principal.require(scope)
            wait = self.limiter.acquire(principal.subject)
            if wait > 0:
                self.metrics.rejected.labels("rate_limit").inc()
                raise ApiError(
                    429,
                    "rate limit exceeded for this subject",
                    type="rate_limit_error",
                    code="rate_limited",
                    headers=retry_headers(wait),
                )
            gen = self.generation
            gen.inflight += 1
            response = await handler(request, principal, outcome, gen)
        except AuthError as exc:
            outcome.status, outcome.error = exc.status, exc.code
            kind = "authentication_error" if exc.status == 401 else "permission_error"
            response = _error(ApiError(exc.status, exc.message, type=kind, code=exc.code))
            if exc.status == 401:
                response.headers["WWW-Authenticate"] = 'Bearer error="invalid_token"'
        except ApiError as exc:
            outcome.status, outcome.error = exc.status, exc.code or exc.type
            response = _error(exc)
        except Exception as exc:  # a bug or a model failure: a 500 in OpenAI's shape, logged
            outcome.status, outcome.error = 500, type(exc).__name__
            response = _error(ApiError(500, "internal error", type="server_error", code="internal"))
        finally:
            if gen is not None:
                gen.release()
        outcome.status = response.status_code
        self._finish(outcome, time.perf_counter() - started)
        return response

    def _authenticate(self, request: Request) -> Principal:
        if not self.config.auth:
            return ANONYMOUS
        return self.verifier.verify(request.headers.get("authorization"))

    def _finish(self, outcome: Outcome, seconds: float) -> None:
        principal = outcome.principal
        self.metrics.request(outcome.route, outcome.model, outcome.status, seconds)
        line = {
            "time": round(time.time(), 3),
            "route": outcome.route,
            "status": outcome.status,
            "latency_ms": round(seconds * 1000, 3),
            "model": outcome.model or None,
            "subject": principal.subject if principal else None,
            "tenant": principal.tenant if principal else None,
            "items": outcome.items,
            "error": outcome.error,
        }
        self.log.write(json.dumps(line) + "\n")
        self.log.flush()
        result = (
            "ok"
            if outcome.status < 400
            else ("denied" if outcome.status in (401, 403, 429) else "failed")
        )
        details: dict[str, Any] = {
            "route": outcome.route,
            "status": outcome.status,
            "tenant": principal.tenant if principal else None,
            "model_version": outcome.model or None,
            "items": outcome.items,
            "input_sha256": outcome.hashes[:MAX_AUDITED_HASHES],
        }
        if len(outcome.hashes) > MAX_AUDITED_HASHES:
            joined = "".join(outcome.hashes).encode()
            details["inputs_sha256"] = hashlib.sha256(joined).hexdigest()
        if outcome.error:
            details["error"] = outcome.error
        self.auditor.add(
            outcome.action,
            resource=f"model:{outcome.model}" if outcome.model else outcome.route,
            outcome=result,
            actor=principal.subject if principal else "anonymous",
            details=details,
        )

    # ----------------------------------------------------------------- routes

    def _resolve(self, gen: registry.Generation, requested: str, subject: str) -> str:
        try:
            return resolve(
                requested,
                subject,
                versions=gen.models,
                latest=gen.latest,
                aliases=self.config.aliases,
            )
        except UnknownModelError:
            raise ApiError(
                404,
                f"the model {requested!r} does not exist",
                param="model",
                code="model_not_found",
            ) from None

    async def embeddings(
        self, request: Request, principal: Principal, outcome: Outcome, gen: registry.Generation
    ) -> Response:
        body = parse_json(await request.body())
        req = parse_embedding_request(body, self.config.max_inputs)
        model_id = self._resolve(gen, req.model, principal.subject)
        outcome.model = model_id
        outcome.items = req.count
        slot = gen.models[model_id]
        if req.dimensions is not None and req.dimensions != slot.engine.dimension:
            raise ApiError(
                400,
                f"model {model_id} makes {slot.engine.dimension}-dimensional embeddings and "
                f"cannot shorten them to {req.dimensions}",
                param="dimensions",
                code="unsupported_dimensions",
            )
        vectors, tokens = await self._embed(slot, req, outcome)
        return _json(embeddings_response(vectors, req.encoding, model_id, tokens))

    async def _embed(
        self, slot: registry.ModelSlot, req: EmbeddingRequest, outcome: Outcome
    ) -> tuple[np.ndarray, int]:
        items: list[str] | list[list[int]] = (
            req.texts if req.texts is not None else (req.tokens or [])
        )
        outcome.hashes = [input_hash(item) for item in items]
        if req.tokens is not None:
            result = await self._guard(slot.batcher.run_tokens(req.tokens))
            return result.vectors, result.tokens
        texts = req.texts or []
        limit = slot.engine.max_length
        vectors: dict[int, np.ndarray] = {}
        counts: dict[int, int] = {}
        missing: list[int] = []
        for i, digest in enumerate(outcome.hashes):
            hit = self.cache.get(slot.id, digest)
            if hit is None:
                missing.append(i)
                continue
            if hit[1] > limit and not req.truncate:
                raise ApiError(
                    400,
                    str(InputTooLong(i, hit[1], limit))
                    + '; send shorter input or set "truncate": true',
                    param="input",
                    code="context_length_exceeded",
                )
            vectors[i], counts[i] = hit
        self.metrics.cache_hits.inc(len(vectors))
        self.metrics.cache_misses.inc(len(missing))
        if missing:
            result = await self._guard(
                slot.batcher.embed([texts[i] for i in missing], truncate=req.truncate)
            )
            for j, i in enumerate(missing):
                vectors[i], counts[i] = result.vectors[j], result.counts[j]
                self.cache.put(slot.id, outcome.hashes[i], vectors[i], counts[i])
        return np.stack([vectors[i] for i in range(len(texts))]), sum(counts.values())

    async def _guard(self, work: Awaitable[Any]) -> Any:
        """Map batcher outcomes to HTTP answers and apply the per-request timeout."""
        try:
            return await asyncio.wait_for(work, self.config.request_timeout_s)
        except QueueFull as exc:
            self.metrics.rejected.labels("queue_full").inc()
            raise ApiError(
                429,
                "the server is busy; retry later",
                type="rate_limit_error",
                code="queue_full",
                headers=retry_headers(exc.retry_after / 2),
            ) from None
        except Draining:
            raise ApiError(
                503, "the daemon is shutting down", type="server_error", code="draining"
            ) from None
        except InputTooLong as exc:
            raise ApiError(
                400,
                f'{exc}; send shorter input or set "truncate": true',
                param="input",
                code="context_length_exceeded",
            ) from None
        except TimeoutError:
            raise ApiError(
                504, "the request timed out in the queue", type="server_error", code="timeout"
            ) from None

    async def search(
        self, request: Request, principal: Principal, outcome: Outcome, gen: registry.Generation
    ) -> Response:
        name = request.path_params["name"]
        slot = gen.indexes.get(name)
        if slot is None:
            raise ApiError(404, f"the index {name!r} does not exist", code="index_not_found")
        req = parse_search_request(parse_json(await request.body()))
        outcome.items = 1
        outcome.model = slot.model
        if req.query is not None:
            model = gen.models[slot.model]
            outcome.hashes = [input_hash(req.query)]
            cached = self.cache.get(model.id, outcome.hashes[0])
            if cached is None:
                result = await self._guard(model.batcher.embed([req.query], truncate=True))
                cached = (result.vectors[0], result.counts[0])
                self.cache.put(model.id, outcome.hashes[0], *cached)
            vector = np.asarray(cached[0], dtype=np.float32)[None, :]
        else:
            vector = np.asarray(req.vector, dtype=np.float32)[None, :]
            outcome.hashes = [hashlib.sha256(vector.tobytes()).hexdigest()]
        try:
            rows = await slot.batcher.search(vector[0], req.k, principal.tenant, req.filters)
        except PaiError as exc:
            raise ApiError(400, exc.message, param="filters", code=exc.code) from None
        hits = [_hit(row) for row in rows]
        return _json({"object": "list", "index": name, "model": slot.model, "data": hits})

    async def models(
        self, request: Request, principal: Principal, outcome: Outcome, gen: registry.Generation
    ) -> Response:
        data = [
            {
                "id": model_id,
                "object": "model",
                "created": 0,
                "owned_by": "pai",
                "dimension": slot.engine.dimension,
                "max_length": slot.engine.max_length,
            }
            for model_id, slot in sorted(gen.models.items())
        ]
        data += [
            {"id": name, "object": "model", "created": 0, "owned_by": "pai", "alias_of": target}
            for name, target in sorted(gen.latest.items())
        ]
        data += [
            {"id": alias, "object": "model", "created": 0, "owned_by": "pai", "alias_of": targets}
            for alias, targets in sorted(self.config.aliases.items())
        ]
        return _json({"object": "list", "data": data})

    async def admin_reload(
        self, request: Request, principal: Principal, outcome: Outcome, gen: registry.Generation
    ) -> Response:
        raw = await request.body()
        body = parse_json(raw) if raw.strip() else {}
        sources = body.get("bundles")
        if sources is not None and (
            not isinstance(sources, list) or not all(isinstance(s, str) for s in sources)
        ):
            raise ApiError(400, "'bundles' must be a list of paths", param="bundles")
        gen.release()  # the reload waits for in-flight requests; this one must not count
        try:
            described = await self.reload(sources)
        except PaiError as exc:
            raise ApiError(400, exc.diagnostics(), code=exc.code) from None
        finally:
            gen.inflight += 1
        return _json({"ok": True, **described})


def _hit(row: Any) -> dict[str, Any]:
    """A hit as JSON; the tenant is the caller's own and is not repeated."""
    if hasattr(row, "as_dict"):
        row = row.as_dict()
    if isinstance(row, dict):
        return {k: v for k, v in row.items() if k != "tenant"}
    if hasattr(row, "__dataclass_fields__"):
        return {k: getattr(row, k) for k in row.__dataclass_fields__ if k != "tenant"}
    return dict(row)


def _json(data: dict[str, Any]) -> Response:
    return Response(json.dumps(data, separators=(",", ":")).encode(), media_type="application/json")


def _error(exc: ApiError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


def build_app(daemon: Daemon) -> Starlette:
    """The Starlette app; the lifespan loads the bundles before the port serves requests."""

    def api(route: str, action: str, scope: str, handler: Handler) -> Callable[..., Any]:
        async def endpoint(request: Request) -> Response:
            return await daemon.handle(request, route, action, scope, handler)

        return endpoint

    async def healthz(request: Request) -> Response:
        return _json({"status": "ok"})

    async def readyz(request: Request) -> Response:
        if daemon.ready and not daemon.draining and daemon.generation is not None:
            return _json({"status": "ready", **daemon.generation.describe()})
        return JSONResponse({"status": "not ready"}, status_code=503)

    async def metrics(request: Request) -> Response:
        depths = daemon.generation.queue_depths() if daemon.generation else {}
        return Response(daemon.metrics.render(depths), media_type="text/plain; version=0.0.4")

    @asynccontextmanager
    async def lifespan(app: Starlette) -> Any:
        await daemon.startup()
        try:
            yield
        finally:
            await daemon.shutdown()

    routes = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/v1/models", api("/v1/models", "serve.models", "", daemon.models), methods=["GET"]),
        Route(
            "/v1/embeddings",
            api("/v1/embeddings", "serve.embeddings", "embed", daemon.embeddings),
            methods=["POST"],
        ),
        Route(
            "/v1/indexes/{name}/search",
            api("/v1/indexes/search", "serve.search", "search", daemon.search),
            methods=["POST"],
        ),
        Route(
            "/admin/reload",
            api("/admin/reload", "serve.reload", "admin", daemon.admin_reload),
            methods=["POST"],
        ),
    ]
    return Starlette(routes=routes, lifespan=lifespan)
