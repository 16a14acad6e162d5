"""HTTP transport (FastAPI): parse, validate, call the services, map errors. No torch here."""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from rewardserve.api.errors import AuthError, classify
from rewardserve.api.http_generation import router as generation_router
from rewardserve.api.http_kserve import router as kserve_router
from rewardserve.api.schemas import (
    CompareRequest,
    CompareResponse,
    GeneratorCard,
    GetRewardRequest,
    GetRewardResponse,
    ModelCard,
    ModelList,
    ScoreRequest,
    ScoreResponse,
)
from rewardserve.errors import InputError, RewardServeError
from rewardserve.metrics import Metrics
from rewardserve.runtime import Runtime
from rewardserve.scoring.batcher import DeadlineExceeded, Draining, Overloaded
from rewardserve.scoring.types import ScoreInput

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def error_response(exc: BaseException) -> JSONResponse:
    info = classify(exc)
    headers = {"Retry-After": str(math.ceil(info.retry_after_s))} if info.retry_after_s else None
    body = {"error": info.message, "type": info.type}
    return JSONResponse(body, status_code=info.http_status, headers=headers)


class BodyLimit:
    """ASGI middleware: 413 for bodies over the limit, before FastAPI parses anything.

    A declared Content-Length is checked up front. A chunked body (no length) is read here, up to the
    limit, then replayed to the app: the JSON parser needs all of it anyway, and an error raised from
    inside the app's receive would be turned into a 400 by FastAPI.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = next((v for k, v in scope.get("headers", []) if k == b"content-length"), None)
        if length is not None:
            if length.isdigit() and int(length) > self.max_bytes:
                await self._reject(scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break  # client went away: let the app see the disconnect
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                await self._reject(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = {"error": f"request body is larger than {self.max_bytes} bytes", "type": "validation"}
        await JSONResponse(body, status_code=413)(scope, receive, send)


# What each refused status means, for rewardserve_rejected_total{reason}.
_REJECTED = {
    401: "auth",
    413: "too_large",
    422: "validation",
    429: "overloaded",
    503: "unavailable",
    504: "timeout",
}


class RequestMetrics:
    """ASGI middleware: count and time every request by endpoint (the route template, so ids in
    paths never become label values) and status code; count refusals by reason."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        t0 = time.perf_counter()

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"
            m = self.metrics
            m.requests.labels("http", endpoint, str(status)).inc()
            m.request_duration.labels("http", endpoint).observe(time.perf_counter() - t0)
            if status in _REJECTED:
                m.rejected.labels(_REJECTED[status]).inc()


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{loc}: {err.get('msg', 'invalid')}" if loc else str(err.get("msg", "invalid")))
    return "; ".join(parts) or "invalid request"


def build_http_app(runtime: Runtime) -> FastAPI:
    """The HTTP app over ``runtime``'s services (lifecycle is owned by app.py, not by FastAPI)."""
    app = FastAPI(title="rewardserve", version="0.1.0", docs_url="/docs", redoc_url=None)
    app.state.runtime = runtime

    @app.exception_handler(RequestValidationError)
    async def _on_validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": _validation_message(exc), "type": "validation"}, status_code=422)

    @app.exception_handler(Exception)
    async def _on_error(_: Request, exc: Exception) -> JSONResponse:
        return error_response(exc)

    # Expected errors also get the handler by class. One registered for plain Exception only runs in
    # Starlette's ServerErrorMiddleware, which re-raises after answering: uvicorn then logs a traceback
    # and closes the keep-alive connection, so a client's next request on it fails (connection reset).
    for expected in (RewardServeError, Overloaded, Draining, DeadlineExceeded, TimeoutError, AuthError):
        app.add_exception_handler(expected, _on_error)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(runtime.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/health/live")
    async def live() -> dict[str, str]:
        return {"status": "live"}

    @app.get("/health/ready")
    async def ready() -> JSONResponse:
        if runtime.ready:
            return JSONResponse({"status": "ready"})
        status = "draining" if runtime.draining else ("failed" if runtime.load_error else "loading")
        return JSONResponse({"status": status}, status_code=503)

    @app.get("/v1/models")
    async def models() -> ModelList:
        scoring = runtime.require_scoring()
        cards: list[ModelCard | GeneratorCard] = [ModelCard.of(m) for m in scoring.models()]
        if runtime.generation is not None:
            cards.append(GeneratorCard.of(runtime.generation.info()))
        return ModelList(data=cards)

    @app.post("/v1/score")
    async def score(body: ScoreRequest) -> ScoreResponse:
        scoring = runtime.require_scoring()
        outputs = await scoring.score(
            [i.to_input() for i in body.inputs], model=body.model, truncate=body.truncate
        )
        return ScoreResponse.build(scoring.name, outputs, scoring.engine.info.objectives)

    @app.post("/v1/compare")
    async def compare(body: CompareRequest) -> CompareResponse:
        # Bradley-Terry: P(a > b) = sigmoid(r_a - r_b); both sides scored in one call (same batches).
        scoring = runtime.require_scoring()
        results = await scoring.compare(
            [p.to_inputs() for p in body.pairs], model=body.model, truncate=body.truncate
        )
        return CompareResponse(
            model=scoring.name,
            probabilities=[r.probability for r in results],
            margins=[r.margin for r in results],
        )

    @app.post("/get_reward")
    async def get_reward(body: GetRewardRequest) -> GetRewardResponse:
        # OpenRLHF's remote reward protocol: query is the full rendered text, scored as given.
        scoring = runtime.require_scoring()
        if body.prompts is not None and body.prompts and len(body.prompts) != len(body.query):
            raise InputError(f"prompts has {len(body.prompts)} items but query has {len(body.query)}")
        # Truncated rather than refused when too long, as OpenRLHF's own serve_rm does: a 422 in the
        # middle of a training run would stop the run for one long sample.
        outputs = await scoring.score([ScoreInput(text=q) for q in body.query], truncate=True)
        rewards = [o.score for o in outputs]
        logs = {"reward_tokens": [float(o.tokens) for o in outputs]}
        return GetRewardResponse(rewards=rewards, scores=rewards, extra_logs=logs)

    app.include_router(generation_router)  # /v1/generate, /v1/rollout, /v1/generator/weights
    app.include_router(kserve_router)  # KServe V2 / Open Inference Protocol under /v2
    app.add_middleware(BodyLimit, max_bytes=runtime.settings.max_body_bytes)
    # Outermost, so a 413 from BodyLimit is counted too.
    app.add_middleware(RequestMetrics, metrics=runtime.metrics)
    return app
