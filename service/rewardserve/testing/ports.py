"""A loopback TCP port that was free a moment ago, for tests and benchmarks that start servers."""

from __future__ import annotations

import socket


def free_port() -> int:
    """Bind port 0 on 127.0.0.1, read the port the kernel chose, close it again. Until something binds
    it, connecting to it is refused, which tests of unreachable servers rely on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port
