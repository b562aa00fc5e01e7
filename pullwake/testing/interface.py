"""The interface both test servers share, for tests parametrized over them.

This module owns only the :class:`DurableStreamsServer` protocol;
:class:`~pullwake.testing.server.EmbeddedServer` and
:class:`~pullwake.testing.realserver.RealServer` both satisfy it.
"""

from __future__ import annotations

from typing import Any, Protocol

__all__ = ["DurableStreamsServer"]


class DurableStreamsServer(Protocol):
    """What a test may rely on whichever server it runs against."""

    #: ``"embedded"`` or ``"real"``.
    kind: str

    @property
    def url(self) -> str: ...

    @property
    def stream_root(self) -> str: ...

    @property
    def port(self) -> int: ...

    async def start(self) -> str: ...

    async def stop(self) -> None: ...

    async def kill(self) -> None: ...

    async def restart(self, *, graceful: bool = True) -> str: ...

    async def inject_error(self, path: str, **opts: Any) -> None: ...

    async def clear_injected_errors(self) -> None: ...

    async def create_stream(self, path: str, content_type: str = "application/json") -> None: ...

    async def append(self, path: str, value: Any) -> str: ...

    async def read_all(self, path: str) -> list[Any]: ...

    async def tail_offset(self, path: str) -> str: ...

    async def subscription_state(self, sub_id: str) -> dict[str, Any] | None: ...
