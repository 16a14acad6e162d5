"""gRPC transport: one grpc.aio server in the process's event loop, over the same Runtime as HTTP.

It serves the native API (``rewardserve.v1.RewardService``, native.py), KServe V2
(``inference.GRPCInferenceService``, kserve.py), generation (generation.py), ``grpc.health.v1`` and
server reflection. Handlers raise the core's exceptions; ``status.ErrorInterceptor`` maps them to
status codes through the same table as HTTP (api/errors.classify), so no handler formats an error
and no traceback or path ever reaches a client.

Lifecycle (driven by app.py): ``start`` binds and listens with health NOT_SERVING; ``set_serving``
once the model is warm; ``begin_drain`` on SIGTERM flips health to NOT_SERVING for good (new work
then gets UNAVAILABLE from the Runtime) and ends open streams once their in-flight messages are
answered; ``stop`` closes the listener, letting in-flight RPCs finish within a grace period.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import grpc.aio
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection, reflection_pb2

from rewardserve._proto.inference import grpc_service_pb2 as kserve_pb2
from rewardserve._proto.inference import grpc_service_pb2_grpc as kserve_grpc
from rewardserve._proto.rewardserve.v1 import generation_pb2, generation_pb2_grpc, reward_pb2, reward_pb2_grpc
from rewardserve.api.auth import Authenticator
from rewardserve.api.grpc.auth import AuthInterceptor
from rewardserve.api.grpc.generation import GenerationServicer
from rewardserve.api.grpc.kserve import KServeServicer
from rewardserve.api.grpc.metrics import RequestMetricsInterceptor
from rewardserve.api.grpc.native import RewardServicer
from rewardserve.api.grpc.status import ErrorInterceptor
from rewardserve.config import Settings
from rewardserve.runtime import Runtime

NATIVE_SERVICE = reward_pb2.DESCRIPTOR.services_by_name["RewardService"].full_name
KSERVE_SERVICE = kserve_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
# Served with or without --generator (without, its methods answer NOT_FOUND, as HTTP answers 404).
GENERATION_SERVICE = generation_pb2.DESCRIPTOR.services_by_name["GenerationService"].full_name
SERVICES = (NATIVE_SERVICE, KSERVE_SERVICE, GENERATION_SERVICE)


def _reflection_pool() -> descriptor_pool.DescriptorPool:
    """One pool holding every served file. Our KServe file lives in a private pool (see
    protos/generate.py), so reflection cannot use the default one."""
    pool = descriptor_pool.DescriptorPool()
    added: set[str] = set()

    def add(file: Any) -> None:
        if file.name in added:
            return
        for dependency in file.dependencies:
            add(dependency)
        proto = descriptor_pb2.FileDescriptorProto()
        file.CopyToProto(proto)
        pool.AddSerializedFile(proto.SerializeToString())
        added.add(file.name)

    for file in (health_pb2, reflection_pb2, reward_pb2, kserve_pb2, generation_pb2):
        add(file.DESCRIPTOR)
    return pool


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS credentials from --tls-cert/--tls-key (client certificates required with --tls-client-ca),
    or None for a plain listener."""
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    ca = settings.tls_client_ca.read_bytes() if settings.tls_client_ca is not None else None
    return grpc.ssl_server_credentials(
        [(settings.tls_key.read_bytes(), settings.tls_cert.read_bytes())],
        root_certificates=ca,
        require_client_auth=ca is not None,
    )


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class GrpcServer:
    """The gRPC side of RewardServer; see the module docstring for the lifecycle."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.port = 0
        self.health = HealthServicer()
        self.draining = asyncio.Event()  # streams watch it to wind down
        self._server: grpc.aio.Server | None = None

    async def start(self) -> int:
        """Bind ``host:grpc_port`` and start serving (health NOT_SERVING until ``set_serving``)."""
        settings = self.runtime.settings
        limit = settings.grpc_max_message_bytes
        server = grpc.aio.server(
            # Metrics first: the outermost layer sees the status after the others mapped it; keys are
            # checked before any handler runs.
            interceptors=[
                RequestMetricsInterceptor(self.runtime.metrics),
                AuthInterceptor(Authenticator(settings)),
                ErrorInterceptor(SERVICES),
            ],
            # Over it, new calls get RESOURCE_EXHAUSTED at once instead of queueing without bound.
            maximum_concurrent_rpcs=settings.grpc_max_concurrent_rpcs,
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
                # gRPC sets SO_REUSEPORT by default, so a second server on a taken port would bind
                # silently and share its traffic; fail loudly instead, as the HTTP side does.
                ("grpc.so_reuseport", 0),
            ],
        )
        # The generated registration functions carry no type hints.
        native = RewardServicer(self.runtime, self.draining)
        reward_pb2_grpc.add_RewardServiceServicer_to_server(native, server)  # type: ignore[no-untyped-call]
        kserve = KServeServicer(self.runtime)
        kserve_grpc.add_GRPCInferenceServiceServicer_to_server(kserve, server)  # type: ignore[no-untyped-call]
        generation = GenerationServicer(self.runtime)
        generation_pb2_grpc.add_GenerationServiceServicer_to_server(generation, server)  # type: ignore[no-untyped-call]
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        health_name = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
        names = (*SERVICES, health_name, reflection.SERVICE_NAME)
        reflection.enable_server_reflection(names, server, pool=_reflection_pool())
        for service in ("", *SERVICES):
            await self.health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
        address = _address(settings.host, settings.grpc_port)
        try:
            credentials = server_credentials(settings)
            if credentials is None:
                self.port = server.add_insecure_port(address)
            else:  # TLS only: no plain listener is left on the port
                self.port = server.add_secure_port(address, credentials)
        except RuntimeError as exc:
            raise OSError(
                f"gRPC cannot listen on {address} ({exc}); is the port taken? Choose another with "
                "--grpc-port (0 picks a free one)"
            ) from None
        await server.start()
        self._server = server
        return self.port

    async def set_serving(self) -> None:
        """Health SERVING for "" and every service (ignored once draining began)."""
        for service in ("", *SERVICES):
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)

    async def set_not_serving(self) -> None:
        """Health NOT_SERVING for "" and every service (the watchdog: a forward is stuck)."""
        for service in ("", *SERVICES):
            await self.health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)

    async def begin_drain(self) -> None:
        """Health NOT_SERVING from now on; open streams stop taking messages."""
        self.draining.set()
        await self.health.enter_graceful_shutdown()

    async def stop(self, grace: float) -> None:
        """Refuse new RPCs; in-flight ones get ``grace`` seconds to finish, then are cancelled."""
        if self._server is not None:
            await self._server.stop(grace)
