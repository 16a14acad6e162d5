"""API keys on every HTTP route and gRPC method, guarded weight reloads, TLS and mutual TLS on both
doors (README "Security"). Real servers over a tiny reward model; routes and RPCs are enumerated from
the app and the service descriptors, so a new one is covered the day it is added."""

from __future__ import annotations

import logging
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from starlette.routing import Route

from rewardserve._proto.inference import grpc_service_pb2 as kserve_pb2
from rewardserve._proto.rewardserve.v1 import generation_pb2, reward_pb2
from rewardserve.api.auth import ADMIN_HTTP_PATHS, OPEN_HTTP_PATHS
from rewardserve.api.http import build_http_app
from rewardserve.app import RewardServer, load_scoring
from rewardserve.client import AsyncRewardClient, AuthError
from rewardserve.config import Settings
from rewardserve.generation.types import GeneratorInfo
from rewardserve.metrics import Metrics
from rewardserve.testing.certs import CertFiles, make_certs

pytestmark = pytest.mark.asyncio

SCORING_KEY = "scoring-key-0123456789abcdef"
ADMIN_KEY = "admin-key-0123456789abcdef"
WRONG_KEY = "wrong-key-0123456789abcdef"


class FakeGeneration:
    """A GenerationService stand-in for the weights route: records reloads, counts versions."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.name = "policy"
        self.weights_version = 0
        self.reloaded: list[Path] = []
        self.in_flight = 0

    async def reload_weights(self, path: Path) -> int:
        self.reloaded.append(path)
        self.weights_version += 1
        return self.weights_version

    def info(self) -> GeneratorInfo:
        return GeneratorInfo(
            "policy", "llama", "LlamaForCausalLM", 64, "float32", "cpu", 1, self.weights_version, True
        )

    async def wait_idle(self, timeout: float) -> bool:
        return True

    async def close(self) -> None:
        pass


async def _start(settings: Settings, *, with_generator: bool = False) -> RewardServer:
    metrics = Metrics()
    scoring = await load_scoring(settings, metrics)
    generation: Any = FakeGeneration(metrics) if with_generator else None
    server = RewardServer(settings, metrics=metrics, scoring=scoring, generation=generation)
    await server.start()
    return server


def _keyed(tiny_llama: Path, **extra: Any) -> Settings:
    return Settings(
        model=tiny_llama,
        port=0,
        max_input_tokens=256,
        api_keys=[SCORING_KEY],
        admin_keys=[ADMIN_KEY],
        **extra,
    )


@pytest.fixture
async def keyed(tiny_llama: Path, tmp_path: Path) -> AsyncIterator[RewardServer]:
    (tmp_path / "root" / "ckpt").mkdir(parents=True)
    settings = _keyed(tiny_llama, weights_root=tmp_path / "root", generator=tmp_path / "policy")
    srv = await _start(settings, with_generator=True)
    yield srv
    await srv.stop()


def _http_routes(server: RewardServer) -> list[tuple[str, str]]:
    """(method, concrete path) for every route of the app, path parameters filled in."""
    out = []
    for route in build_http_app(server.runtime).routes:
        assert isinstance(route, Route)
        path = route.path.replace("{name}", "default").replace("{version}", "1")
        out.extend((method, path) for method in sorted(route.methods or ()) if method != "HEAD")
    return out


def _bearer(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


async def test_every_http_route_needs_a_key(keyed: RewardServer) -> None:
    routes = _http_routes(keyed)
    assert len(routes) > 20 and ("POST", "/v1/score") in routes and ("GET", "/docs") in routes
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{keyed.http_port}", timeout=30) as c:
        for method, path in routes:
            for headers in (
                {},
                _bearer(WRONG_KEY),
                {"Authorization": SCORING_KEY},
                {"Authorization": "Basic x"},
            ):
                r = await c.request(method, path, headers=headers)
                if path in OPEN_HTTP_PATHS or path == "/metrics":
                    assert r.status_code not in (401, 403), (method, path)
                    continue
                assert r.status_code == 401, (method, path, headers, r.text)
                assert r.json()["type"] == "auth" and r.headers["www-authenticate"] == "Bearer"
            scoring = await c.request(method, path, headers=_bearer(SCORING_KEY))
            admin = await c.request(method, path, headers=_bearer(ADMIN_KEY))
            if path in ADMIN_HTTP_PATHS:
                assert scoring.status_code == 403 and scoring.json()["type"] == "forbidden", path
            else:
                assert scoring.status_code not in (401, 403), (method, path, scoring.text)
            assert admin.status_code not in (401, 403), (method, path, admin.text)
        ok = await c.post("/v1/score", json={"inputs": [{"text": "hi"}]}, headers=_bearer(SCORING_KEY))
        assert ok.status_code == 200 and len(ok.json()["scores"]) == 1


async def test_metrics_auth_closes_metrics(tiny_llama: Path) -> None:
    srv = await _start(_keyed(tiny_llama, metrics_auth=True))
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{srv.http_port}") as c:
            assert (await c.get("/metrics")).status_code == 401
            assert (await c.get("/metrics", headers=_bearer(SCORING_KEY))).status_code == 200
            assert (await c.get("/health/live")).status_code == 200
    finally:
        await srv.stop()


def _grpc_methods() -> list[tuple[str, bool, bool]]:
    """(path, client streaming, server streaming) of every method of every served service."""
    out = []
    for file in (reward_pb2, kserve_pb2, generation_pb2):
        for service in file.DESCRIPTOR.services_by_name.values():
            for m in service.methods:
                out.append((f"/{service.full_name}/{m.name}", m.client_streaming, m.server_streaming))
    return out


async def _grpc_code(
    channel: grpc.aio.Channel, method: tuple[str, bool, bool], key: str | None
) -> grpc.StatusCode:
    path, client_streaming, server_streaming = method
    metadata = (("authorization", f"Bearer {key}"),) if key else ()
    try:
        if client_streaming and server_streaming:
            call = channel.stream_stream(path)(iter([b""]), metadata=metadata, timeout=30)
            async for _ in call:
                pass
        elif server_streaming:
            async for _ in channel.unary_stream(path)(b"", metadata=metadata, timeout=30):
                pass
        else:
            await channel.unary_unary(path)(b"", metadata=metadata, timeout=30)
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def test_every_grpc_method_needs_a_key(keyed: RewardServer) -> None:
    methods = _grpc_methods()
    assert len(methods) >= 12
    async with grpc.aio.insecure_channel(f"127.0.0.1:{keyed.grpc_port}") as channel:
        for method in methods:
            for key in (None, WRONG_KEY):
                assert await _grpc_code(channel, method, key) == grpc.StatusCode.UNAUTHENTICATED, method
            for key in (SCORING_KEY, ADMIN_KEY):
                code = await _grpc_code(channel, method, key)
                assert code not in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED), (
                    method
                )
        health = health_pb2_grpc.HealthStub(channel)
        answer = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING  # open without a key
        reflection = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
        assert await _grpc_code(channel, (reflection, True, True), None) != grpc.StatusCode.UNAUTHENTICATED


async def test_client_sends_its_key_on_both_doors(keyed: RewardServer) -> None:
    for url in (f"http://127.0.0.1:{keyed.http_port}", f"grpc://127.0.0.1:{keyed.grpc_port}"):
        async with AsyncRewardClient(url, api_key=SCORING_KEY) as rm:
            assert len(await rm.score(["a", "b"])) == 2
        async with AsyncRewardClient(url, api_key=WRONG_KEY) as rm:
            with pytest.raises(AuthError):
                await rm.score(["a"])


# --- weight reloads ---------------------------------------------------------------------------------


async def test_reload_paths_outside_the_root_are_all_one_403(
    keyed: RewardServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "root"
    (tmp_path / "outside").mkdir()
    (root / "escape").symlink_to(tmp_path / "outside")
    (root / "file.safetensors").write_bytes(b"x")
    refused = [
        tmp_path / "outside",  # outside the root
        root / ".." / "outside",  # .. out of it
        root / "escape",  # a symlink out of it
        root / "missing",  # does not exist
        root / "file.safetensors",  # not a directory
        Path("/etc"),
        "relative/path",
        "",
    ]
    gen = keyed.runtime.generation
    assert isinstance(gen, FakeGeneration)
    messages = set()
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{keyed.http_port}", headers=_bearer(ADMIN_KEY)
    ) as c:
        caplog.set_level(logging.INFO, logger="rewardserve")
        for path in refused:
            r = await c.post("/v1/generator/weights", json={"path": str(path)})
            assert r.status_code == (422 if path == "" else 403), (path, r.text)
            if r.status_code == 403:
                assert r.json()["type"] == "forbidden"
                messages.add(r.json()["error"])
                assert str(tmp_path) not in r.text
        assert len(messages) == 1  # one message whatever the filesystem says: nothing to probe
        assert gen.weights_version == 0 and gen.reloaded == []
        r = await c.post("/v1/generator/weights", json={"path": str(root / "ckpt")})
        assert r.status_code == 200 and r.json()["weights_version"] == 1
        assert gen.reloaded == [(root / "ckpt").resolve()]
        r = await c.post(
            "/v1/generator/weights", json={"path": str(root / "ckpt")}, headers=_bearer(SCORING_KEY)
        )
        assert r.status_code == 403 and gen.weights_version == 1
    logged = caplog.text
    assert "refused" in logged and "loaded, version 1" in logged
    assert ADMIN_KEY not in logged and SCORING_KEY not in logged  # a key id, never the key


async def test_reload_without_a_weights_root_is_refused(tiny_llama: Path, tmp_path: Path) -> None:
    (tmp_path / "ckpt").mkdir()
    settings = Settings(model=tiny_llama, port=0, max_input_tokens=256, generator=tmp_path / "policy")
    srv = await _start(settings, with_generator=True)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{srv.http_port}") as c:
            r = await c.post("/v1/generator/weights", json={"path": str(tmp_path / "ckpt")})
            assert r.status_code == 403 and r.json()["type"] == "forbidden"
        gen = srv.runtime.generation
        assert isinstance(gen, FakeGeneration) and gen.weights_version == 0
    finally:
        await srv.stop()


async def test_generator_loads_safetensors_only(tiny_policy: Path) -> None:
    pytest.importorskip("vllm")
    from rewardserve.generation.vllm_engine import engine_args

    assert engine_args(tiny_policy, Settings(generator=tiny_policy)).load_format == "safetensors"


# --- TLS --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertFiles:
    return make_certs(tmp_path_factory.mktemp("certs"))


def _context(certs: CertFiles, *, client_cert: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(certs.ca))
    if client_cert:
        context.load_cert_chain(str(certs.client_cert), str(certs.client_key))
    return context


def _grpc_credentials(certs: CertFiles, *, client_cert: bool) -> grpc.ChannelCredentials:
    if not client_cert:
        return grpc.ssl_channel_credentials(root_certificates=certs.ca.read_bytes())
    return grpc.ssl_channel_credentials(
        certs.ca.read_bytes(), certs.client_key.read_bytes(), certs.client_cert.read_bytes()
    )


async def _grpc_live(target: str, credentials: grpc.ChannelCredentials | None) -> bool:
    channel = (
        grpc.aio.secure_channel(target, credentials) if credentials else grpc.aio.insecure_channel(target)
    )
    async with channel:
        try:
            await channel.unary_unary("/inference.GRPCInferenceService/ServerLive")(b"", timeout=5)
        except grpc.aio.AioRpcError:
            return False
        return True


@pytest.mark.parametrize("mutual", [False, True], ids=["tls", "mtls"])
async def test_tls_on_both_doors(tiny_llama: Path, certs: CertFiles, mutual: bool) -> None:
    settings = Settings(
        model=tiny_llama,
        port=0,
        max_input_tokens=256,
        tls_cert=certs.server_cert,
        tls_key=certs.server_key,
        tls_client_ca=certs.ca if mutual else None,
    )
    srv = await _start(settings)
    https, target = f"https://127.0.0.1:{srv.http_port}", f"127.0.0.1:{srv.grpc_port}"
    try:
        async with httpx.AsyncClient(verify=_context(certs, client_cert=True)) as c:
            assert (await c.get(f"{https}/health/live")).status_code == 200
        async with httpx.AsyncClient() as c:  # no plain listener left on the port
            with pytest.raises(httpx.TransportError):
                await c.get(f"http://127.0.0.1:{srv.http_port}/health/live")
        async with httpx.AsyncClient(verify=_context(certs, client_cert=False)) as c:
            if mutual:  # no client certificate: the handshake (or the first read) fails
                with pytest.raises(httpx.TransportError):
                    await c.get(f"{https}/health/live")
            else:
                assert (await c.get(f"{https}/health/live")).status_code == 200
        assert await _grpc_live(target, _grpc_credentials(certs, client_cert=True))
        assert not await _grpc_live(target, None)
        assert await _grpc_live(target, _grpc_credentials(certs, client_cert=False)) is not mutual
        for url in (https, f"grpcs://127.0.0.1:{srv.grpc_port}"):
            client_files = {"tls_cert": certs.client_cert, "tls_key": certs.client_key} if mutual else {}
            async with AsyncRewardClient(url, tls_ca=certs.ca, **client_files) as rm:
                assert len(await rm.score(["over tls"])) == 1
    finally:
        await srv.stop()
