"""uvicorn settings for the service: a deadline for a request's headers.

uvicorn waits for a new connection's request headers without a time limit, so clients that open
connections and send nothing (or a byte a second) would hold them forever. The h11 protocol
below closes a connection whose next request's headers have not arrived `header_timeout`
seconds after it opened (or after its previous response); the body has its own deadline in
the app (`BodyLimit`).
"""

from __future__ import annotations

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

DEFAULT_READ_TIMEOUT_S = 15.0


def header_deadline_protocol(header_timeout: float) -> type[H11Protocol]:
    """An h11 protocol class that closes connections whose request headers are late."""

    class HeaderDeadline(H11Protocol):
        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._deadline.cancel()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if getattr(self, "_deadline", None) is not None:
                self._deadline.cancel()
            self._deadline = self.loop.call_later(header_timeout, self._expire, self.cycle)

        def _expire(self, cycle_then) -> None:
            if self.cycle is cycle_then and not self.transport.is_closing():
                self.transport.close()  # no new request's headers since the timer started

    return HeaderDeadline


def uvicorn_config(app, host: str, port: int, **kwargs) -> uvicorn.Config:
    """uvicorn.Config for `app` with the header deadline of its `state.read_timeout_s`."""
    timeout = getattr(app.state, "read_timeout_s", DEFAULT_READ_TIMEOUT_S)
    return uvicorn.Config(app, host=host, port=port, http=header_deadline_protocol(timeout),
                          timeout_keep_alive=5, **kwargs)
