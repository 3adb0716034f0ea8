"""Webhook targets: URL checks, the public-address rule and the checked, pinned client."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import AsyncIterator, Iterable
from typing import Any

import httpcore
import httpx
import pytest
import trustme

from covey.core import ClusterError, Reason, WebhookError
from covey.webhooks._targets import MAX_URL_BYTES, check_url, is_public, system_resolver
from covey.webhooks._transport import WebhookTransport, make_client

from .._waiting import until

# ---------------------------------------------------------------- helpers


class _HttpServer:
    """A tiny keep-alive HTTP/1.1 responder on 127.0.0.1 that counts connections."""

    def __init__(self, *, status: int = 200, headers: Iterable[tuple[str, str]] = (),
                 tls: ssl.SSLContext | None = None) -> None:
        self.status = status
        self.headers = list(headers)
        self.tls = tls
        self.connections = 0
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        self._open: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._open.add(writer)
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
                first, *lines = head.split("\r\n")
                method, path, _ = first.split(" ", 2)
                headers = {k.strip().lower(): v.strip()
                           for k, v in (line.split(":", 1) for line in lines if line)}
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                self.requests.append((method, path, headers, body))
                extra = "".join(f"{k}: {v}\r\n" for k, v in self.headers)
                writer.write(f"HTTP/1.1 {self.status} X\r\n{extra}"
                             "Content-Length: 2\r\n\r\nok".encode("latin-1"))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()
            self._open.discard(writer)

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._open):
            writer.close()
        await until(lambda: not self._open)
        await self._server.wait_closed()


class _FakeResolver:
    """Answers from a table (one answer list per call, the last one repeating)."""

    def __init__(self, table: dict[str, list[list[str]]]) -> None:
        self.table = table
        self.calls: list[tuple[str, int]] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append((host, port))
        answers = self.table[host]
        return answers[min(len(self.calls) - 1, len(answers) - 1)]


@pytest.fixture
async def server() -> AsyncIterator[_HttpServer]:
    srv = _HttpServer()
    await srv.start()
    yield srv
    await srv.close()


@pytest.fixture
def connects(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records every host the transport opens a socket to (below the check)."""
    seen: list[str] = []
    original = httpcore.AnyIOBackend.connect_tcp

    async def recording(self: httpcore.AnyIOBackend, host: str, port: int,
                        *args: Any, **kwargs: Any) -> httpcore.AsyncNetworkStream:
        seen.append(host)
        return await original(self, host, port, *args, **kwargs)

    monkeypatch.setattr(httpcore.AnyIOBackend, "connect_tcp", recording)
    return seen


# ---------------------------------------------------------------- the client


@pytest.mark.parametrize(("host", "address"), [
    ("127.0.0.1", "127.0.0.1"),
    ("2130706433", "127.0.0.1"),
    ("127.1", "127.0.0.1"),
    ("[::ffff:127.0.0.1]", "::ffff:7f00:1"),
])
async def test_strict_client_refuses_loopback_literal_without_connecting(
        server: _HttpServer, connects: list[str], host: str, address: str) -> None:
    url = f"http://{host}:{server.port}/hook"
    async with make_client() as client:
        with pytest.raises(WebhookError) as caught:
            await client.post(url, content=b"{}")
    assert caught.value.reason is Reason.WEBHOOK_TARGET_REFUSED
    assert caught.value.details["address"] == address
    assert caught.value.details["url"] == url
    assert connects == []
    assert server.connections == 0


async def test_strict_client_refuses_a_name_that_resolves_to_loopback(
        server: _HttpServer) -> None:
    async with make_client() as client:
        with pytest.raises(WebhookError) as caught:
            await client.post(f"http://localhost:{server.port}/", content=b"{}")
    assert caught.value.reason is Reason.WEBHOOK_TARGET_REFUSED
    assert caught.value.details["host"] == "localhost"
    assert not is_public(ipaddress.ip_address(caught.value.details["address"]))
    assert server.connections == 0


@pytest.mark.parametrize("host", ["127.0.0.1", "127.1", "localhost"])
async def test_allow_private_delivers(server: _HttpServer, host: str) -> None:
    async with make_client(allow_private=True) as client:
        response = await client.post(f"http://{host}:{server.port}/hook", content=b'{"a":1}')
    assert response.status_code == 200
    assert [(m, p, b) for m, p, _, b in server.requests] == [("POST", "/hook", b'{"a":1}')]


async def test_a_name_resolving_to_metadata_is_refused(connects: list[str]) -> None:
    resolver = _FakeResolver({"metadata.example": [["169.254.169.254"]]})
    async with make_client(resolver=resolver) as client:
        with pytest.raises(WebhookError) as caught:
            await client.post("http://metadata.example/latest", content=b"")
    assert caught.value.reason is Reason.WEBHOOK_TARGET_REFUSED
    assert caught.value.details["address"] == "169.254.169.254"
    assert caught.value.details["host"] == "metadata.example"
    assert resolver.calls == [("metadata.example", 80)]
    assert connects == []


async def test_one_private_address_among_public_ones_refuses_the_name(
        connects: list[str]) -> None:
    resolver = _FakeResolver({"mixed.example": [["93.184.216.34", "10.0.0.1"]]})
    async with make_client(resolver=resolver) as client:
        with pytest.raises(WebhookError) as caught:
            await client.post("https://mixed.example/", content=b"")
    assert caught.value.details["address"] == "10.0.0.1"
    assert connects == []  # not even the public address was tried


async def test_connects_to_the_checked_address_and_tries_the_next_one(
        server: _HttpServer, connects: list[str]) -> None:
    # 127.0.0.2 is loopback too but nothing listens there: refused, next address.
    resolver = _FakeResolver({"hooks.example": [["127.0.0.2", "127.0.0.1"]]})
    async with make_client(allow_private=True, resolver=resolver) as client:
        response = await client.post(f"http://hooks.example:{server.port}/", content=b"x")
    assert response.status_code == 200
    assert connects == ["127.0.0.2", "127.0.0.1"]  # by IP, never by name
    assert server.requests[0][2]["host"] == f"hooks.example:{server.port}"


async def test_keepalive_connection_is_reused_not_resolved_again(
        server: _HttpServer, connects: list[str]) -> None:
    # A rebinding resolver: the second answer would lead elsewhere.
    resolver = _FakeResolver({"hooks.example": [["127.0.0.1"], ["192.0.2.1"]]})
    url = f"http://hooks.example:{server.port}/"
    async with make_client(allow_private=True, resolver=resolver, timeout=5.0) as client:
        first = await client.post(url, content=b"1")
        second = await client.post(url, content=b"2")
    assert (first.status_code, second.status_code) == (200, 200)
    assert resolver.calls == [("hooks.example", server.port)]
    assert connects == ["127.0.0.1"]
    assert server.connections == 1
    assert [b for *_, b in server.requests] == [b"1", b"2"]


async def test_redirect_to_metadata_is_returned_not_followed(connects: list[str]) -> None:
    srv = _HttpServer(status=302,
                      headers=[("Location", "http://169.254.169.254/latest/meta-data")])
    await srv.start()
    try:
        async with make_client(allow_private=True) as client:
            response = await client.post(f"http://127.0.0.1:{srv.port}/", content=b"")
    finally:
        await srv.close()
    assert response.status_code == 302
    assert connects == ["127.0.0.1"]


async def test_resolution_failure_is_an_httpx_connect_error() -> None:
    async def failing(host: str, port: int) -> list[str]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    async def empty(host: str, port: int) -> list[str]:
        return []

    for resolver in (failing, empty):
        async with make_client(resolver=resolver) as client:
            with pytest.raises(httpx.ConnectError):
                await client.get("http://nowhere.example/")


async def test_proxy_settings_in_the_environment_are_ignored(
        server: _HttpServer, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "all_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")  # discard port: a proxy would fail
    async with make_client(allow_private=True) as client:
        response = await client.get(f"http://127.0.0.1:{server.port}/")
    assert response.status_code == 200


async def test_system_resolver_resolves_localhost_to_loopback() -> None:
    addresses = await system_resolver("localhost", 80)
    assert addresses
    assert all(ipaddress.ip_address(a).is_loopback for a in addresses)


async def test_system_resolver_keeps_the_first_of_repeated_addresses(
        monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[tuple[str, int, int]] = []

    async def getaddrinfo(host: str, port: int, *, type: int = 0) -> list[Any]:
        asked.append((host, port, type))
        v4, v6 = socket.AF_INET, socket.AF_INET6
        return [(v6, type, 6, "", ("2001:db8::1", port, 0, 0)),
                (v4, type, 6, "", ("192.0.2.7", port)),
                (v6, type, 6, "", ("2001:db8::1", port, 0, 0))]

    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", getaddrinfo)
    assert await system_resolver("hooks.example", 443) == ["2001:db8::1", "192.0.2.7"]
    assert asked == [("hooks.example", 443, socket.SOCK_STREAM)]


# ---------------------------------------------------------------- TLS


_X509_V_ERR_HOSTNAME_MISMATCH = 62  # OpenSSL's verify code for a certificate of another name


def _tls_server_context(ca: trustme.CA, name: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(name).configure_cert(ctx)
    return ctx


def _trusting(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


async def test_https_verifies_the_url_host_while_connecting_by_ip(
        connects: list[str]) -> None:
    ca = trustme.CA()
    srv = _HttpServer(tls=_tls_server_context(ca, "hooks.example"))
    await srv.start()
    resolver = _FakeResolver({"hooks.example": [["127.0.0.1"]]})
    try:
        async with make_client(allow_private=True, resolver=resolver,
                               verify=_trusting(ca)) as client:
            response = await client.post(f"https://hooks.example:{srv.port}/", content=b"x")
    finally:
        await srv.close()
    assert response.status_code == 200
    assert connects == ["127.0.0.1"]


async def test_https_refuses_a_certificate_for_another_name() -> None:
    ca = trustme.CA()
    srv = _HttpServer(tls=_tls_server_context(ca, "other.example"))
    await srv.start()
    resolver = _FakeResolver({"hooks.example": [["127.0.0.1"]]})
    try:
        async with make_client(allow_private=True, resolver=resolver,
                               verify=_trusting(ca)) as client:
            with pytest.raises(httpx.ConnectError) as caught:
                await client.get(f"https://hooks.example:{srv.port}/")
    finally:
        await srv.close()
    assert srv.requests == []
    cause: BaseException | None = caught.value
    while cause is not None and not isinstance(cause, ssl.SSLCertVerificationError):
        # httpcore's pool re-raises "from None", so its cause is only the context now
        cause = cause.__cause__ or cause.__context__
    assert isinstance(cause, ssl.SSLCertVerificationError)
    assert cause.verify_code == _X509_V_ERR_HOSTNAME_MISMATCH


async def test_transport_can_be_used_directly() -> None:
    transport = WebhookTransport(resolver=_FakeResolver({"x.example": [["10.1.2.3"]]}))
    async with httpx.AsyncClient(transport=transport) as client:
        with pytest.raises(WebhookError) as caught:
            await client.get("http://x.example/")
    assert caught.value.reason is Reason.WEBHOOK_TARGET_REFUSED


# ---------------------------------------------------------------- check_url

GOOD_URLS = [
    "https://example.com/hooks",
    "http://example.com:8080/a/b?c=d&e=f",
    "HTTPS://Example.COM/Path",
    "https://8.8.8.8/",
    "https://[2606:4700:4700::1111]:443/x",
    "https://bücher.example/",
    "https://example.com:65535/",
    "https://example.com/" + "a" * (MAX_URL_BYTES - len("https://example.com/")),
]


@pytest.mark.parametrize("url", GOOD_URLS)
def test_check_url_returns_good_urls_unchanged(url: str) -> None:
    assert check_url(url, allow_private=False) is url


BAD_URLS: list[object] = [
    42, None, b"https://example.com/",
    "https://example.com/" + "a" * (MAX_URL_BYTES - len("https://example.com/") + 1),
    "ftp://example.com/", "file:///etc/passwd", "javascript:alert(1)", "example.com/path",
    "http:///path", "https://:443/",
    "https://user:secret@example.com/", "https://user@example.com/",
    "https://example.com/#frag", "https://example.com/#",
    "https://exa mple.com/", " https://example.com/", "https://example.com/\n",
    "https://example.com/\x00", "https://example.com/\t", "https://exam\u200bple.com/",
    "https://example.com:0/", "https://example.com:65536/", "https://example.com:http/",
    "https://[::1/",
]


@pytest.mark.parametrize("url", BAD_URLS)
def test_check_url_refuses_malformed_urls_as_invalid_argument(url: object) -> None:
    with pytest.raises(ClusterError) as caught:
        check_url(url, allow_private=True)
    assert not isinstance(caught.value, WebhookError)
    assert caught.value.reason is Reason.INVALID_ARGUMENT
    assert caught.value.details["field"] == "url"


PRIVATE_LITERALS = [
    ("http://127.0.0.1/", "127.0.0.1"),
    ("http://2130706433/", "127.0.0.1"),
    ("http://0x7f.1/", "127.0.0.1"),
    ("http://127.1:8080/", "127.0.0.1"),
    ("http://017700000001/", "127.0.0.1"),
    ("http://0.0.0.0/", "0.0.0.0"),
    ("http://10.0.0.1/", "10.0.0.1"),
    ("http://169.254.169.254/latest/meta-data", "169.254.169.254"),
    ("http://100.100.100.200/", "100.100.100.200"),
    ("http://[::1]:8080/", "::1"),
    ("http://[::ffff:127.0.0.1]/", "::ffff:7f00:1"),
    ("http://[fd00:ec2::254]/", "fd00:ec2::254"),
]


@pytest.mark.parametrize(("url", "address"), PRIVATE_LITERALS)
def test_check_url_refuses_private_ip_literals(url: str, address: str) -> None:
    with pytest.raises(WebhookError) as caught:
        check_url(url, allow_private=False)
    assert caught.value.reason is Reason.WEBHOOK_TARGET_REFUSED
    assert caught.value.details == {"url": url, "address": address}
    assert check_url(url, allow_private=True) is url


def test_check_url_leaves_names_to_the_transport() -> None:
    # Names are resolved (and checked) per connection, not at registration.
    assert check_url("http://localhost:8080/", allow_private=False) == "http://localhost:8080/"


# ---------------------------------------------------------------- is_public

IS_PUBLIC = [
    ("8.8.8.8", True),
    ("93.184.216.34", True),
    ("1.1.1.1", True),
    ("2606:4700:4700::1111", True),
    ("2a00:1450:4001:80b::200e", True),
    ("::ffff:8.8.8.8", True),  # mapped public IPv4
    ("64:ff9b::808:808", True),  # NAT64 of 8.8.8.8
    ("2002:808:808::1", True),  # 6to4 of 8.8.8.8
    ("127.0.0.1", False),
    ("127.255.255.254", False),
    ("10.0.0.1", False),
    ("172.16.0.1", False),
    ("172.31.255.255", False),
    ("192.168.1.1", False),
    ("169.254.169.254", False),
    ("169.254.1.1", False),
    ("100.64.0.1", False),
    ("100.100.100.200", False),
    ("0.0.0.0", False),
    ("0.1.2.3", False),
    ("255.255.255.255", False),
    ("224.0.0.1", False),
    ("239.255.255.250", False),
    ("240.0.0.1", False),
    ("192.0.0.192", False),
    ("192.0.2.1", False),
    ("198.18.0.1", False),
    ("::1", False),
    ("::", False),
    ("fc00::1", False),
    ("fd00:ec2::254", False),
    ("fe80::1", False),
    ("fe80::1%eth0", False),
    ("fec0::1", False),
    ("ff02::1", False),
    ("ff0e::1", False),
    ("2001:db8::1", False),
    ("::ffff:127.0.0.1", False),
    ("::ffff:169.254.169.254", False),
    ("::ffff:10.0.0.1", False),
    ("64:ff9b::7f00:1", False),
    ("64:ff9b::a9fe:a9fe", False),
    ("2002:7f00:1::", False),
    ("2002:a00:1::1", False),
    ("::127.0.0.1", False),
    ("::10.0.0.1", False),
]


@pytest.mark.parametrize(("address", "public"), IS_PUBLIC)
def test_is_public(address: str, public: bool) -> None:
    assert is_public(ipaddress.ip_address(address)) is public
