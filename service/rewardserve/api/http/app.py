"""HTTP transport (FastAPI): parse, validate, call the services, map errors. No torch here.

``build_http_app`` assembles the app: the native routes below, generation (``generation.py``), KServe
V2 (``kserve.py``), error handlers (``errors.py``) and middleware (``middleware.py``).
"""

from __future__ import annotations

from fastapi import APIRouter, FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from rewardserve.api.http.deps import RuntimeDep
from rewardserve.api.http.errors import install_error_handlers
from rewardserve.api.http.generation import router as generation_router
from rewardserve.api.http.kserve import router as kserve_router
from rewardserve.api.http.middleware import BodyLimit, RequestMetrics
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
    SourceCard,
    reward_answer,
)
from rewardserve.errors import InputError
from rewardserve.runtime import Runtime
from rewardserve.scoring.advantages import apply_advantages
from rewardserve.scoring.types import ScoreInput, ScoreOptions
from rewardserve.sources.base import compare as compare_pairs

router = APIRouter()


@router.get("/metrics")
async def metrics(runtime: RuntimeDep) -> Response:
    return Response(runtime.metrics.render(), media_type=CONTENT_TYPE_LATEST)


@router.get("/health/live")
async def live() -> dict[str, str]:
    return {"status": "live"}


@router.get("/health/ready")
async def ready(runtime: RuntimeDep) -> JSONResponse:
    if runtime.ready:
        return JSONResponse({"status": "ready"})
    status = "draining" if runtime.draining else ("failed" if runtime.load_error else "loading")
    return JSONResponse({"status": status}, status_code=503)


@router.get("/v1/models")
async def models(runtime: RuntimeDep) -> ModelList:
    cards: list[ModelCard | SourceCard | GeneratorCard]
    if runtime.registry is not None:  # every entry with its kind: models, functions, judges, ...
        runtime.source()  # NotReady while draining, as for one model
        cards = [SourceCard(**c) for c in runtime.registry.cards()]
    else:
        cards = [ModelCard.of(m) for m in runtime.require_scoring().models()]
    if runtime.generation is not None:
        cards.append(GeneratorCard.of(runtime.generation.info()))
    return ModelList(data=cards)


@router.post("/v1/score")
async def score(body: ScoreRequest, runtime: RuntimeDep) -> ScoreResponse:
    source = runtime.source(body.model)
    inputs = [i.to_input() for i in body.inputs]
    results = await source.score(inputs, ScoreOptions(truncate=body.truncate)) if inputs else []
    if body.advantage is not None:
        results = apply_advantages(inputs, results, body.advantage)
    return ScoreResponse.build(source.name, results)


@router.post("/v1/compare")
async def compare(body: CompareRequest, runtime: RuntimeDep) -> CompareResponse:
    # Bradley-Terry: P(a > b) = sigmoid(r_a - r_b); both sides scored in one call (same batches).
    source = runtime.source(body.model)
    pairs = [p.to_inputs() for p in body.pairs]
    results = await compare_pairs(source, pairs, ScoreOptions(truncate=body.truncate)) if pairs else []
    return CompareResponse(
        model=source.name,
        probabilities=[r.probability for r in results],
        margins=[r.margin for r in results],
    )


@router.post("/get_reward")
async def get_reward(body: GetRewardRequest, runtime: RuntimeDep) -> GetRewardResponse:
    # OpenRLHF's remote reward protocol: query is the full rendered text, scored as given.
    source = runtime.source(getattr(body, "model", None))
    if body.prompts is not None and body.prompts and len(body.prompts) != len(body.query):
        raise InputError(f"prompts has {len(body.prompts)} items but query has {len(body.query)}")
    if body.labels is not None and body.labels and len(body.labels) != len(body.query):
        raise InputError(f"labels has {len(body.labels)} items but query has {len(body.query)}")
    labels = body.labels or [None] * len(body.query)
    inputs = [ScoreInput(text=q, label=label) for q, label in zip(body.query, labels, strict=True)]
    # Truncated rather than refused when too long, as OpenRLHF's own serve_rm does: a 422 in the
    # middle of a training run would stop the run for one long sample.
    results = await source.score(inputs, ScoreOptions(truncate=True)) if inputs else []
    # OpenRLHF needs a float for every sample: a masked one is 0.0 and flagged in extra_logs.mask
    # (1.0), so a trainer can drop it instead of learning from a fake 0.
    rewards = [r.score if r.score is not None else 0.0 for r in results]
    logs = {
        "reward_tokens": [float(r.tokens) for r in results],
        "mask": [float(r.mask) for r in results],
    }
    return GetRewardResponse(rewards=rewards, scores=rewards, extra_logs=logs)


@router.post("/v1/reward")
async def reward(body: RewardRequest, runtime: RuntimeDep) -> dict[str, object]:
    # slime's remote reward call (--rm-url .../v1/reward --reward-key reward): one sample.
    return await _reward(body, None, runtime)


@router.post("/v1/reward/{name}")
async def reward_named(name: str, body: RewardRequest, runtime: RuntimeDep) -> dict[str, object]:
    # The entry in the path, since slime's body has no room for it.
    return await _reward(body, name, runtime)


async def _reward(body: RewardRequest, name: str | None, runtime: Runtime) -> dict[str, object]:
    source = runtime.source(name)
    (result,) = await source.score([body.to_input()], ScoreOptions(truncate=True))
    return reward_answer(result)


def build_http_app(runtime: Runtime) -> FastAPI:
    """The HTTP app over ``runtime``'s services (lifecycle is owned by app.py, not by FastAPI)."""
    app = FastAPI(title="rewardserve", version="0.1.0", docs_url="/docs", redoc_url=None)
    app.state.runtime = runtime  # read by deps.get_runtime, the one way handlers reach services
    install_error_handlers(app)
    app.include_router(router)  # health, metrics, /v1/models, /v1/score, /v1/compare, /get_reward
    app.include_router(generation_router)  # /v1/generate, /v1/rollout, /v1/generator/weights
    app.include_router(kserve_router)  # KServe V2 / Open Inference Protocol under /v2
    app.add_middleware(BodyLimit, max_bytes=runtime.settings.max_body_bytes)
    # Outermost, so a 413 from BodyLimit is counted too.
    app.add_middleware(RequestMetrics, metrics=runtime.metrics)
    return app
