"""What keeps the server answering under load and abuse: a body-size and body-time limit, and a bounded queue.

Only the framework-neutral pieces live here (plain ASGI and asyncio), so they can be tested on their own.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any, TypeVar

T = TypeVar("T")
Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class ServeError(Exception):
    """A request the server refuses: an HTTP status and one message that says what to do."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


async def _send_json(send: Send, status: int, message: str) -> None:
    body = json.dumps({"detail": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class BodyLimit:
    """ASGI middleware: a request body over ``max_bytes``, or slower to arrive than ``timeout`` seconds, is refused.

    A declared Content-Length over the limit is answered 413 before a byte is read; a chunked body is counted
    as it arrives, so neither form can make the server hold more than the limit. uvicorn has no timeout for
    a body that trickles in, so one is kept here (408), or a few slow clients could hold every connection.
    """

    def __init__(self, app: Callable[..., Awaitable[None]], max_bytes: int, timeout: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout = timeout

    def _too_large(self) -> str:
        return (f"the request body is over the server's limit of {self.max_bytes / 2**20:g} MiB; send a smaller "
                "image or start the server with a larger --max-upload-mb")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await _send_json(send, 413, self._too_large())
            return
        deadline = time.monotonic() + self.timeout
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            try:
                message = await asyncio.wait_for(receive(), max(deadline - time.monotonic(), 0.001))
            except asyncio.TimeoutError:
                raise ServeError(408, f"the request body did not arrive within {self.timeout:g} s (--timeout); "
                                      "send it at once") from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise ServeError(413, self._too_large())
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, watched_send)
        except ServeError as e:  # raised while the app read the body; nothing has been answered yet
            if started:
                raise
            await _send_json(send, e.status, e.message)


class _Expired(Exception):
    """A queued call whose request timed out before its turn."""


class InferenceQueue:
    """Model calls one at a time on a thread of their own, with at most ``capacity`` more requests waiting.

    One call at a time because the backends already use every core for one image (more would only thrash);
    the event loop meanwhile keeps accepting, refusing and answering. A request takes its place before its body
    is read, so at most ``capacity + 1`` bodies are held at once; one beyond gets 503 at once rather than a place
    in an unbounded line. One not answered within ``timeout`` gets 504. A call cannot be interrupted once it
    runs, so it keeps its place until it ends (the queue never overcommits), and a call whose request has already
    timed out is skipped when its turn comes.

    >>> async with queue.place() as run:     # 503 here when full
    ...     data = await read_body()
    ...     answer = await run(predict, data)  # 504 after ``timeout``
    """

    def __init__(self, capacity: int, timeout: float) -> None:
        self.capacity = capacity
        self.timeout = timeout
        self.pending = 0  # requests holding a place (reading, waiting or running); touched on the loop's thread only
        self.finished = 0
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pixelwise-model")

    def stats(self) -> dict[str, int]:
        return {"pending": self.pending, "capacity": self.capacity + 1, "finished": self.finished}

    @asynccontextmanager
    async def place(self) -> AsyncIterator[Callable[..., Awaitable[Any]]]:
        """A place in the queue for one request; yields ``run(fn, *args)``, which calls ``fn`` on the model thread."""
        if self.pending > self.capacity:
            raise ServeError(503, f"the server is busy: {self.pending} requests are already running or waiting "
                                  f"(--queue {self.capacity}); retry shortly", {"Retry-After": "1"})
        self.pending += 1
        handed = False

        async def run(fn: Callable[..., T], *args: Any) -> T:
            nonlocal handed
            handed = True  # from here the call releases the place when it ends
            deadline = time.monotonic() + self.timeout

            def call() -> T:
                if time.monotonic() > deadline:  # its client has been answered 504 already: spare the model
                    raise _Expired
                return fn(*args)

            future = asyncio.get_running_loop().run_in_executor(self._executor, call)
            future.add_done_callback(self._done)
            try:
                return await asyncio.wait_for(asyncio.shield(future), self.timeout)
            except asyncio.TimeoutError:
                raise ServeError(504, f"the model did not answer within {self.timeout:g} s (--timeout); the server "
                                      "is busy or the image is very large: retry, send a smaller image, or raise "
                                      "--timeout") from None

        try:
            yield run
        finally:
            if not handed:  # refused before reaching the model (a bad body, say)
                self.pending -= 1

    def _done(self, future: asyncio.Future[Any]) -> None:
        self.pending -= 1
        self.finished += 1
        if not future.cancelled():
            future.exception()  # retrieved, so a call whose request timed out logs no "never retrieved" warning

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
