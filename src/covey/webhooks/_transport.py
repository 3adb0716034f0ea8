"""The HTTP client webhook deliveries use: checked, pinned connections.

Checking a URL when an endpoint is registered is not enough: the name can
resolve to another address later (DNS rebinding), and a redirect can point
anywhere. So every new connection is checked where it is made, below httpx, in
an httpcore network backend:

1. resolve the host once (IP literals are not resolved);
2. refuse the connection, before any socket is opened, if any resolved address
   is not public (:func:`covey.webhooks._targets.is_public`) and private
   targets are not allowed;
3. connect to the checked address itself, so the socket goes where the check
   looked; TLS still verifies the certificate against the URL's host name,
   because httpcore starts TLS with the origin's host after connecting.

Keep-alive connections are reused without a new check: they were checked when
opened. The client never follows redirects and ignores proxy settings in the
environment (a proxy would make the connection, not covey).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import httpcore
import httpx

from covey.core import Reason, WebhookError
from covey.webhooks._targets import Resolver, ip_literal, is_public, system_resolver

# httpcore's errors and the httpx errors a caller of httpx expects instead.
# Sorted so that the first match is the most specific class.
_ERRORS: list[tuple[type[Exception], type[httpx.HTTPError]]] = sorted(
    [
        (httpcore.TimeoutException, httpx.TimeoutException),
        (httpcore.ConnectTimeout, httpx.ConnectTimeout),
        (httpcore.ReadTimeout, httpx.ReadTimeout),
        (httpcore.WriteTimeout, httpx.WriteTimeout),
        (httpcore.PoolTimeout, httpx.PoolTimeout),
        (httpcore.NetworkError, httpx.NetworkError),
        (httpcore.ConnectError, httpx.ConnectError),
        (httpcore.ReadError, httpx.ReadError),
        (httpcore.WriteError, httpx.WriteError),
        (httpcore.ProxyError, httpx.ProxyError),
        (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
        (httpcore.ProtocolError, httpx.ProtocolError),
        (httpcore.LocalProtocolError, httpx.LocalProtocolError),
        (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    ],
    key=lambda pair: -len(pair[0].__mro__),
)


@contextmanager
def _httpx_errors() -> Iterator[None]:
    """Re-raise httpcore errors as httpx ones; let everything else (WebhookError) through."""
    try:
        yield
    except Exception as exc:
        mapped = next((to for from_, to in _ERRORS if isinstance(exc, from_)), None)
        if mapped is None:
            raise
        raise mapped(str(exc)) from exc


class _PinnedBackend(httpcore.AsyncNetworkBackend):
    """Resolves and checks each new connection's host, then connects by IP."""

    def __init__(self, *, allow_private: bool, resolver: Resolver) -> None:
        self._allow_private = allow_private
        self._resolver = resolver
        self._inner = httpcore.AnyIOBackend()

    async def _resolve(self, host: str, port: int, timeout: float | None) -> list[str]:
        literal = ip_literal(host)  # IPv6 comes without brackets from httpcore
        if literal is not None:
            # Canonical form: "127.1" is connected to as "127.0.0.1", the address checked.
            return [str(literal)]
        try:
            async with asyncio.timeout(timeout):
                addresses = await self._resolver(host, port)
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"resolving {host} timed out") from None
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        if not addresses:
            raise httpcore.ConnectError(f"{host} resolved to no address")
        return addresses

    def _check(self, host: str, addresses: list[str]) -> None:
        for text in addresses:
            address = ip_literal(text)
            if address is None:
                raise httpcore.ConnectError(f"{host} resolved to {text!r}, not an address")
            if not self._allow_private and not is_public(address):
                raise WebhookError(
                    f"webhook target {host} resolves to {address}, not a public address",
                    reason=Reason.WEBHOOK_TARGET_REFUSED, host=host, address=str(address))

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        addresses = await self._resolve(host, port, timeout)
        self._check(host, addresses)  # all of them, before any socket exists
        failure: Exception | None = None
        for address in addresses:
            remaining = None if deadline is None else max(deadline - loop.time(), 0.0)
            try:
                return await self._inner.connect_tcp(
                    address, port, timeout=remaining, local_address=local_address,
                    socket_options=socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc  # try the next checked address, as getaddrinfo users do
        assert failure is not None  # addresses is never empty
        raise failure

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.UnsupportedProtocol("webhooks are not sent over unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class _ResponseStream(httpx.AsyncByteStream):
    def __init__(self, stream: Any) -> None:
        self._stream = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _httpx_errors():
            async for part in self._stream:
                yield part

    async def aclose(self) -> None:
        if hasattr(self._stream, "aclose"):
            await self._stream.aclose()


class WebhookTransport(httpx.AsyncBaseTransport):
    """An httpx transport whose connections go only to checked addresses.

    Args:
        allow_private: allow loopback, private, link-local and metadata
            addresses (tests, internal deployments). Off by default.
        resolver: resolves ``(host, port)`` to address strings; the system
            resolver by default.
        max_connections: the most connections open at once.
        max_keepalive: the most idle connections kept for reuse.
        keepalive_expiry: seconds an idle connection is kept.
        verify: ``True`` (certifi's CA bundle), ``False`` (no verification) or
            an ``ssl.SSLContext``.

    A refused target raises :class:`~covey.core.WebhookError` with reason
    ``webhook_target_refused`` and ``details`` ``url``, ``host`` and ``address``
    from ``client.send``/``client.post``; network failures raise httpx errors.
    """

    def __init__(self, *, allow_private: bool = False, resolver: Resolver | None = None,
                 max_connections: int = 200, max_keepalive: int = 100,
                 keepalive_expiry: float = 30.0,
                 verify: ssl.SSLContext | bool = True) -> None:
        backend = _PinnedBackend(allow_private=allow_private,
                                 resolver=resolver or system_resolver)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(verify=verify, trust_env=False),
            max_connections=max_connections,
            max_keepalive_connections=max_keepalive,
            keepalive_expiry=keepalive_expiry,
            network_backend=backend,
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` over a checked connection (httpx calls this)."""
        assert isinstance(request.stream, httpx.AsyncByteStream)
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(scheme=request.url.raw_scheme, host=request.url.raw_host,
                             port=request.url.port, target=request.url.raw_path),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        try:
            with _httpx_errors():
                response = await self._pool.handle_async_request(core_request)
        except WebhookError as exc:
            exc.details.setdefault("url", str(request.url))  # the backend sees only host
            raise
        return httpx.Response(status_code=response.status, headers=response.headers,
                              stream=_ResponseStream(response.stream),
                              extensions=response.extensions)

    async def aclose(self) -> None:
        """Close every pooled connection."""
        await self._pool.aclose()


def make_client(*, allow_private: bool = False, resolver: Resolver | None = None,
                timeout: float = 15.0, **transport_options: Any) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` for webhook deliveries.

    It sends through a :class:`WebhookTransport`, never follows redirects (a 3xx
    is returned as the response) and ignores proxy and certificate settings in
    the environment.

    Args:
        allow_private: allow non-public targets (see :class:`WebhookTransport`).
        resolver: the host name resolver; the system resolver by default.
        timeout: seconds for each of connect, read, write and pool waits.
        **transport_options: passed on to :class:`WebhookTransport`
            (``max_connections``, ``max_keepalive``, ``keepalive_expiry``,
            ``verify``).

    Returns:
        The client; close it with ``await client.aclose()`` or ``async with``.
    """
    transport = WebhookTransport(allow_private=allow_private, resolver=resolver,
                                 **transport_options)
    return httpx.AsyncClient(transport=transport, follow_redirects=False, timeout=timeout,
                             trust_env=False)
