"""Slow and vanishing clients: a body that does not arrive in time, a client that hangs up.

:class:`BodyTimeoutMiddleware` gives every request ``timeout_s`` seconds, from the moment
its headers arrived, to deliver its whole body. A client that sends headers and then
stalls (or trickles bytes: the deadline is for the whole body, not per chunk) is answered
``408 Request Timeout`` with ``Connection: close``, and uvicorn closes the connection, so
one slow client cannot hold a worker's request slot and memory for ever.

A client that disconnects while its body is being read is not a server error: the request
ends with status 499 ("client closed request", nginx's convention; nobody receives it) and
no error is logged; :func:`serving.errors.install` maps Starlette's ``ClientDisconnect``
the same way for any path that meets it first.
"""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.errors import ClientGone, RequestTimeout


class BodyTimeoutMiddleware:
    """408 for a body not received within ``timeout_s`` of the request's start; 499 when
    the client disconnects while the body is read (see the module docstring)."""

    def __init__(self, app: ASGIApp, timeout_s: float) -> None:
        self.app = app
        self.timeout_s = float(timeout_s)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        body_done = False

        async def guarded_receive() -> Message:
            nonlocal body_done
            if body_done:  # after the body, receive() only waits for a disconnect: no deadline
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0.0))
            except TimeoutError:
                raise RequestTimeout(self.timeout_s) from None
            if message["type"] == "http.disconnect":
                raise ClientGone()
            if not message.get("more_body", False):
                body_done = True
            return message

        await self.app(scope, guarded_receive, send)
