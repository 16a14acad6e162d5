"""HTTP transport (FastAPI): parse, validate, call the services, map errors. No torch here.

``build_http_app`` assembles the app: the native routes below, generation (``generation.py``), KServe
V2 (``kserve.py``), error handlers (``errors.py``) and middleware (``middleware.py``).
"""

from __future__ import annotations

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from rewardserve.api import routing
from rewardserve.api.auth import Authenticator
from rewardserve.api.http.cancel import unless_disconnected
from rewardserve.api.http.deps import RuntimeDep
from rewardserve.api.http.errors import install_error_handlers
from rewardserve.api.http.generation import router as generation_router
from rewardserve.api.http.kserve import router as kserve_router
from rewardserve.api.http.middleware import Authenticate, BodyReader, RequestMetrics
from rewardserve.api.schemas import (
    CompareRequest,
    CompareResponse,
    GeneratorCard,
    GetRewardRequest,
    GetRewardResponse,
    ModelCard,
    ModelList,
    RewardRequest,
    ScoreRequest,
    ScoreResponse,
    reward_answer,
)
from rewardserve.errors import InputError
from rewardserve.runtime import Runtime
from rewardserve.scoring.advantages import apply_advantages
from rewardserve.scoring.types import ScoreInput

router = APIRouter()


@router.get("/metrics")
async def metrics(runtime: RuntimeDep) -> Response:
    return Response(runtime.metrics.render(), media_type=CONTENT_TYPE_LATEST)


@router.get("/health/live")
async def live(runtime: RuntimeDep) -> JSONResponse:
    # Fails only when the process cannot recover (engine or batcher dead) and is exiting anyway.
    if runtime.live:
        return JSONResponse({"status": "live"})
    return JSONResponse({"status": "failed"}, status_code=503)


@router.get("/health/ready")
async def ready(runtime: RuntimeDep) -> JSONResponse:
    status = runtime.status
    return JSONResponse({"status": status}, status_code=200 if status == "ready" else 503)


@router.get("/v1/models")
async def models(runtime: RuntimeDep) -> ModelList:
    # Every registry entry (models, PRMs, ensembles, composites, functions, judges) with its kind,
    # then the policy.
    registry = runtime.require_registry()
    cards: list[ModelCard | GeneratorCard] = [ModelCard.of(c) for c in registry.cards()]
    if runtime.generation is not None:
        cards.append(GeneratorCard.of(runtime.generation.info()))
    return ModelList(data=cards)


@router.post("/v1/score")
async def score(body: ScoreRequest, request: Request, runtime: RuntimeDep) -> ScoreResponse:
    inputs = [i.to_input() for i in body.inputs]
    opts = routing.options(truncate=body.truncate, reduce=body.reduce, step_reduce=body.step_reduce)
    work = routing.score(runtime, body.model, inputs, opts)
    source, results = await unless_disconnected(request, work)
    if body.advantage is not None:
        results = apply_advantages(inputs, results, body.advantage)
    return ScoreResponse.build(source.name, results)


@router.post("/v1/compare")
async def compare(body: CompareRequest, request: Request, runtime: RuntimeDep) -> CompareResponse:
    # Bradley-Terry: P(a > b) = sigmoid(r_a - r_b); both sides scored in one call (same batches).
    pairs = [p.to_inputs() for p in body.pairs]
    opts = routing.options(truncate=body.truncate, reduce=body.reduce, step_reduce=body.step_reduce)
    work = routing.compare(runtime, body.model, pairs, opts)
    source, results = await unless_disconnected(request, work)
    return CompareResponse(
        model=source.name,
        probabilities=[r.probability for r in results],
        margins=[r.margin for r in results],
    )


@router.post("/get_reward")
async def get_reward(body: GetRewardRequest, request: Request, runtime: RuntimeDep) -> GetRewardResponse:
    # OpenRLHF's remote reward protocol: query is the full rendered text, scored as given.
    return await _get_reward(body, body.model, request, runtime)


@router.post("/get_reward/{name}")
async def get_reward_named(
    name: str, body: GetRewardRequest, request: Request, runtime: RuntimeDep
) -> GetRewardResponse:
    # The same, for clients that cannot add a field to the body (OpenRLHF's remote_rm_url).
    if body.model is not None and body.model != name:
        raise InputError(f'the path names model {name!r} but the body says "model": {body.model!r}')
    return await _get_reward(body, name, request, runtime)


async def _get_reward(
    body: GetRewardRequest, model: str | None, request: Request, runtime: Runtime
) -> GetRewardResponse:
    if body.prompts is not None and body.prompts and len(body.prompts) != len(body.query):
        raise InputError(f"prompts has {len(body.prompts)} items but query has {len(body.query)}")
    if body.labels is not None and body.labels and len(body.labels) != len(body.query):
        raise InputError(f"labels has {len(body.labels)} items but query has {len(body.query)}")
    labels = body.labels or [None] * len(body.query)
    inputs = [ScoreInput(text=q, label=label) for q, label in zip(body.query, labels, strict=True)]
    # Truncated rather than refused when too long, as OpenRLHF's own serve_rm does: a 422 in the
    # middle of a training run would stop the run for one long sample.
    work = routing.score(runtime, model, inputs, routing.options(truncate=True))
    _, results = await unless_disconnected(request, work)
    # OpenRLHF needs a float for every sample: a masked one is 0.0 and flagged in extra_logs.mask
    # (1.0), so a trainer can drop it instead of learning from a fake 0.
    rewards = [r.score if r.score is not None else 0.0 for r in results]
    logs = {
        "reward_tokens": [float(r.tokens) for r in results],
        "mask": [float(r.mask) for r in results],
    }
    return GetRewardResponse(rewards=rewards, scores=rewards, extra_logs=logs)


@router.post("/v1/reward")
async def reward(body: RewardRequest, request: Request, runtime: RuntimeDep) -> dict[str, object]:
    # slime's remote reward call (--rm-url .../v1/reward --reward-key reward): one sample.
    return await _reward(body, None, request, runtime)


@router.post("/v1/reward/{name}")
async def reward_named(
    name: str, body: RewardRequest, request: Request, runtime: RuntimeDep
) -> dict[str, object]:
    # The entry in the path, since slime's body has no room for it.
    return await _reward(body, name, request, runtime)


async def _reward(
    body: RewardRequest, name: str | None, request: Request, runtime: Runtime
) -> dict[str, object]:
    work = routing.score(runtime, name, [body.to_input()], routing.options(truncate=True))
    _, (result,) = await unless_disconnected(request, work)
    return reward_answer(result)


def build_http_app(runtime: Runtime) -> FastAPI:
    """The HTTP app over ``runtime``'s services (lifecycle is owned by app.py, not by FastAPI)."""
    app = FastAPI(title="rewardserve", version="0.1.0", docs_url="/docs", redoc_url=None)
    app.state.runtime = runtime  # read by deps.get_runtime, the one way handlers reach services
    install_error_handlers(app)
    app.include_router(router)  # health, metrics, /v1/models, /v1/score, /v1/compare, /get_reward
    app.include_router(generation_router)  # /v1/generate, /v1/rollout, /v1/generator/weights
    app.include_router(kserve_router)  # KServe V2 / Open Inference Protocol under /v2
    settings = runtime.settings
    # Added innermost first: metrics see every answer, then keys are checked before a body is read.
    app.add_middleware(
        BodyReader,
        max_bytes=settings.max_body_bytes,
        timeout_s=settings.request_read_timeout_s,
        max_depth=settings.max_json_depth,
        max_header_bytes=settings.max_header_bytes,
    )
    app.add_middleware(Authenticate, authenticator=Authenticator(settings))
    app.add_middleware(RequestMetrics, metrics=runtime.metrics)
    return app
