"""gRPC transport (grpc.aio): ``GrpcServer`` serves the native, KServe V2 and generation services."""

from rewardserve.api.grpc.server import GrpcServer

__all__ = ["GrpcServer"]
