"""The HTTP client webhook deliveries use: checked, pinned connections.

Checking a URL when an endpoint is registered is not enough: the name can
resolve to another address later (DNS rebinding), and a redirect can point
anywhere. So every new connection is checked where it is made:

1. the host is resolved once per new connection by :class:`CheckedResolver`
   (aiohttp's resolver seam; IP literals are checked before the request);
2. the connection is refused, before any socket is opened, if any resolved
   address is not public (:func:`covey.webhooks._targets.is_public`) and
   private targets are not allowed;
3. aiohttp connects to the addresses the resolver returned, so the socket goes
   where the check looked; TLS still verifies the certificate against the URL's
   host name.

Keep-alive connections are reused without a new check: they were checked when
opened. The client never follows redirects and ignores proxy settings in the
environment (a proxy would make the connection, not covey).

Why aiohttp and not httpx: on the machines covey is measured on, an httpx
request costs 1.5-3 ms of CPU (its pool and h11 in pure Python) against about
0.3 ms for aiohttp's C parser and pool; at a thousand deliveries a second per
pair of runners that is the difference between fitting in two cores and not.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import yarl
from aiohttp.abc import AbstractResolver, ResolveResult

from covey.core import Reason, WebhookError
from covey.webhooks._targets import Resolver, ip_literal, is_public, system_resolver

#: how much of a receiver's answer is read (the rest is dropped with its connection)
MAX_READ = 64 * 1024
#: URLs kept parsed and checked (the endpoints'); beyond, the cache starts over
MAX_URLS = 10_000


def refused(host: str, address: str) -> WebhookError:
    return WebhookError(f"webhook target {host} resolves to {address}, not a public address",
                        reason=Reason.WEBHOOK_TARGET_REFUSED, host=host, address=address)


class CheckedResolver(AbstractResolver):
    """Resolves a host and refuses it unless every address is public (or allowed)."""

    def __init__(self, *, allow_private: bool, resolver: Resolver | None = None) -> None:
        self._allow_private = allow_private
        self._resolve = resolver or system_resolver
        self.asked = 0

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        self.asked += 1
        addresses = await self._resolve(host, port)
        if not addresses:
            raise OSError(f"{host} did not resolve to any address")
        results: list[ResolveResult] = []
        for text in addresses:
            address = ip_literal(text)
            if address is None:
                raise OSError(f"{host} resolved to {text!r}, not an IP address")
            if not self._allow_private and not is_public(address):
                raise refused(host, str(address))
            results.append(ResolveResult(
                hostname=host, host=str(address), port=port,
                family=socket.AF_INET6 if address.version == 6 else socket.AF_INET,
                proto=0, flags=socket.AI_NUMERICHOST))
        return results

    async def close(self) -> None:
        return None


@dataclass(frozen=True)
class Answer:
    """What a receiver answered: its status, headers and the start of its body."""

    status: int
    headers: Mapping[str, str]  # names in lower case
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")


class WebhookClient:
    """POSTs webhook bodies through checked, pinned, pooled connections.

    Args:
        allow_private: connect to loopback, private and link-local addresses too.
        resolver: resolves a host to IP address strings (tests); ``getaddrinfo``
            when omitted.
        limit: connections open at once, all hosts together.
        keepalive: seconds an idle connection is kept for reuse.
        verify: an SSL context to verify certificates with (default: the
            system's trust store), or ``False`` (tests only).
    """

    def __init__(self, *, allow_private: bool = False, resolver: Resolver | None = None,
                 limit: int = 1000, keepalive: float = 30.0,
                 verify: ssl.SSLContext | bool = True) -> None:
        self._allow_private = allow_private
        self.resolver = CheckedResolver(allow_private=allow_private, resolver=resolver)
        self._limit = limit
        self._keepalive = keepalive
        self._verify = verify
        self._session: aiohttp.ClientSession | None = None
        self._urls: dict[str, yarl.URL] = {}

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            ssl_option: Any = self._verify if isinstance(self._verify, ssl.SSLContext) \
                else (None if self._verify else False)
            connector = aiohttp.TCPConnector(
                resolver=self.resolver, use_dns_cache=False, limit=self._limit,
                limit_per_host=0, keepalive_timeout=self._keepalive, ssl=ssl_option)
            self._session = aiohttp.ClientSession(
                connector=connector, trust_env=False, auto_decompress=False,
                skip_auto_headers=("User-Agent", "Content-Type"))
        return self._session

    async def post(self, url: str, body: bytes, headers: Mapping[str, str], *,
                   timeout: float) -> Answer:
        """POST ``body``; the answer, whatever its status (redirects are not followed).

        Raises:
            WebhookError: ``webhook_target_refused``: the address is not allowed
                (nothing was sent).
            TimeoutError: no full answer within ``timeout`` seconds.
            aiohttp.ClientError, OSError: the connection failed.
        """
        target = self._urls.get(url)
        if target is None:
            target = yarl.URL(url)
            host = target.raw_host or ""  # what aiohttp connects to (normalised)
            literal = ip_literal(host)
            if literal is not None and not self._allow_private and not is_public(literal):
                raise refused(host, str(literal))
            if len(self._urls) >= MAX_URLS:
                self._urls.clear()
            self._urls[url] = target  # checked: parsed and checked once per URL
        async with asyncio.timeout(timeout):
            async with self._open().post(target, data=body, headers=headers,
                                         allow_redirects=False) as response:
                chunks: list[bytes] = []
                size = 0
                while size < MAX_READ:
                    chunk = await response.content.read(MAX_READ - size)
                    if not chunk:
                        break
                    chunks.append(chunk)
                    size += len(chunk)
                return Answer(response.status,
                              {k.lower(): v for k, v in response.headers.items()},
                              b"".join(chunks))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def make_client(*, allow_private: bool = False, resolver: Resolver | None = None,
                **options: Any) -> WebhookClient:
    """A :class:`WebhookClient` (the options are its keyword arguments)."""
    return WebhookClient(allow_private=allow_private, resolver=resolver, **options)
