"""Webhook targets: URL checks, the public-address rule and the checked, pinned client."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
import trustme

from covey.core import ClusterError, Reason, WebhookError
from covey.webhooks._targets import MAX_URL_BYTES, check_url, is_public, system_resolver
from covey.webhooks._transport import MAX_READ, WebhookClient, make_client

from .._waiting import until

TIMEOUT = 5.0  # for requests that are answered; never reached when the code is right

# ---------------------------------------------------------------- helpers


class _HttpServer:
    """A tiny keep-alive HTTP/1.1 responder on 127.0.0.1 that counts connections.

    With ``answer=False`` it reads requests and never answers.
    """

    def __init__(self, *, status: int = 200, headers: Iterable[tuple[str, str]] = (),
                 body: bytes = b"ok", tls: ssl.SSLContext | None = None,
                 answer: bool = True) -> None:
        self.status = status
        self.headers = list(headers)
        self.body = body
        self.tls = tls
        self.answer = answer
        self.connections = 0
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        self._open: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None
        self.port = 0

    @property
    def open_connections(self) -> int:
        return len(self._open)

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
                if not self.answer:
                    while await reader.read(1024):  # until the client hangs up
                        pass
                    return
                extra = "".join(f"{k}: {v}\r\n" for k, v in self.headers)
                writer.write(f"HTTP/1.1 {self.status} X\r\n{extra}"
                             f"Content-Length: {len(self.body)}\r\n\r\n".encode("latin-1")
                             + self.body)
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


@asynccontextmanager
async def _client(**options: Any) -> AsyncIterator[WebhookClient]:
    client = make_client(**options)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def server() -> AsyncIterator[_HttpServer]:
    srv = _HttpServer()
    await srv.start()
    yield srv
    await srv.close()


@pytest.fixture
async def connects(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records every address the client opens a socket to (below the check).

    aiohttp connects through ``loop.sock_connect`` (aiohappyeyeballs), one call
    per address tried; the positive tests below show the recorder sees them.
    """
    loop = asyncio.get_running_loop()
    seen: list[str] = []
    original = loop.sock_connect

    async def recording(sock: socket.socket, address: Any) -> None:
        seen.append(address[0])
        await original(sock, address)

    monkeypatch.setattr(loop, "sock_connect", recording)
    return seen


# ---------------------------------------------------------------- the client


@pytest.mark.parametrize(("host", "address"), [
    ("127.0.0.1", "127.0.0.1"),
    ("2130706433", "127.0.0.1"),
    ("127.1", "127.0.0.1"),
    ("0x7f.1", "127.0.0.1"),
    ("[::ffff:127.0.0.1]", "::ffff:7f00:1"),
    ("[::1]", "::1"),
])
async def test_strict_client_refuses_loopback_literal_without_connecting(
        server: _HttpServer, connects: list[str], host: str, address: str) -> None:
    async with _client() as client:
        with pytest.raises(WebhookError) as caught:
            await client.post(f"http://{host}:{server.port}/hook", b"{}", {}, timeout=TIMEOUT)
    assert caught.value.reason is Reason.WEBHOOK_TARGET_REFUSED
    assert caught.value.details["address"] == address
    assert connects == []
    assert server.connections == 0


async def test_strict_client_refuses_a_name_that_resolves_to_loopback(
        server: _HttpServer, connects: list[str]) -> None:
    async with _client() as client:
        with pytest.raises(WebhookError) as caught:
            await client.post(f"http://localhost:{server.port}/", b"{}", {}, timeout=TIMEOUT)
        assert client.resolver.asked == 1
    assert caught.value.reason is Reason.WEBHOOK_TARGET_REFUSED
    assert caught.value.details["host"] == "localhost"
    assert not is_public(ipaddress.ip_address(caught.value.details["address"]))
    assert connects == []
    assert server.connections == 0


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_allow_private_delivers(
        server: _HttpServer, connects: list[str], host: str) -> None:
    async with _client(allow_private=True) as client:
        answer = await client.post(f"http://{host}:{server.port}/hook", b'{"a":1}',
                                   {"Content-Type": "application/json"}, timeout=TIMEOUT)
    assert (answer.status, answer.body, answer.text) == (200, b"ok", "ok")
    assert [(m, p, b) for m, p, _, b in server.requests] == [("POST", "/hook", b'{"a":1}')]
    assert server.requests[0][2]["content-type"] == "application/json"
    assert connects[-1] == "127.0.0.1"


@pytest.mark.parametrize("host", ["127.1", "2130706433", "0177.0.0.1"])
async def test_non_canonical_ipv4_literal_is_not_sent_even_when_private_is_allowed(
        server: _HttpServer, host: str) -> None:
    # check_url refuses these forms at registration; the client refuses them too.
    async with _client(allow_private=True) as client:
        with pytest.raises(aiohttp.InvalidURL):
            await client.post(f"http://{host}:{server.port}/", b"", {}, timeout=TIMEOUT)
    assert server.connections == 0


@pytest.mark.parametrize("host", ["\uff11\uff12\uff17.0.0.1", "127\u30020\u30020\u30021"])
async def test_strict_client_refuses_a_literal_written_with_unicode_digits_or_dots(
        server: _HttpServer, host: str) -> None:
    url = f"http://{host}:{server.port}/"
    async with _client() as client:
        with pytest.raises(WebhookError) as caught:
            await client.post(url, b"", {}, timeout=TIMEOUT)
    assert caught.value.reason is Reason.WEBHOOK_TARGET_REFUSED
    assert server.connections == 0


async def test_a_name_resolving_to_metadata_is_refused(connects: list[str]) -> None:
    resolver = _FakeResolver({"metadata.example": [["169.254.169.254"]]})
    async with _client(resolver=resolver) as client:
        with pytest.raises(WebhookError) as caught:
            await client.post("http://metadata.example/latest", b"", {}, timeout=TIMEOUT)
        assert client.resolver.asked == 1
    assert caught.value.reason is Reason.WEBHOOK_TARGET_REFUSED
    assert caught.value.details["address"] == "169.254.169.254"
    assert caught.value.details["host"] == "metadata.example"
    assert resolver.calls == [("metadata.example", 80)]
    assert connects == []


async def test_one_private_address_among_public_ones_refuses_the_name(
        connects: list[str]) -> None:
    resolver = _FakeResolver({"mixed.example": [["93.184.216.34", "10.0.0.1"]]})
    async with _client(resolver=resolver) as client:
        with pytest.raises(WebhookError) as caught:
            await client.post("https://mixed.example/", b"", {}, timeout=TIMEOUT)
    assert caught.value.reason is Reason.WEBHOOK_TARGET_REFUSED
    assert caught.value.details["address"] == "10.0.0.1"
    assert connects == []  # not even the public address was tried


async def test_connects_to_the_checked_address_and_tries_the_next_one(
        server: _HttpServer, connects: list[str]) -> None:
    # 127.0.0.2 is loopback too but nothing listens there: refused, next address.
    resolver = _FakeResolver({"hooks.example": [["127.0.0.2", "127.0.0.1"]]})
    async with _client(allow_private=True, resolver=resolver) as client:
        answer = await client.post(f"http://hooks.example:{server.port}/", b"x", {},
                                   timeout=TIMEOUT)
    assert answer.status == 200
    assert connects == ["127.0.0.2", "127.0.0.1"]  # by IP, never by name
    assert server.requests[0][2]["host"] == f"hooks.example:{server.port}"


async def test_keepalive_connection_is_reused_not_resolved_again(
        server: _HttpServer, connects: list[str]) -> None:
    # A rebinding resolver: the second answer would lead elsewhere.
    resolver = _FakeResolver({"hooks.example": [["127.0.0.1"], ["192.0.2.1"]]})
    url = f"http://hooks.example:{server.port}/"
    async with _client(allow_private=True, resolver=resolver) as client:
        first = await client.post(url, b"1", {}, timeout=TIMEOUT)
        second = await client.post(url, b"2", {}, timeout=TIMEOUT)
        assert client.resolver.asked == 1
    assert (first.status, second.status) == (200, 200)
    assert resolver.calls == [("hooks.example", server.port)]
    assert connects == ["127.0.0.1"]
    assert server.connections == 1
    assert [b for *_, b in server.requests] == [b"1", b"2"]


async def test_close_ends_the_pooled_connections(server: _HttpServer) -> None:
    client = make_client(allow_private=True)
    await client.post(f"http://127.0.0.1:{server.port}/", b"", {}, timeout=TIMEOUT)
    assert server.open_connections == 1  # kept alive for reuse
    await client.close()
    await until(lambda: server.open_connections == 0)


async def test_answer_headers_are_lower_cased(connects: list[str]) -> None:
    srv = _HttpServer(status=503, headers=[("Retry-After", "120"), ("X-Trace-ID", "t-1")],
                      body=b"busy")
    await srv.start()
    try:
        async with _client(allow_private=True) as client:
            answer = await client.post(f"http://127.0.0.1:{srv.port}/", b"", {},
                                       timeout=TIMEOUT)
    finally:
        await srv.close()
    assert (answer.status, answer.body) == (503, b"busy")
    assert answer.headers["retry-after"] == "120"
    assert answer.headers["x-trace-id"] == "t-1"
    assert all(name == name.lower() for name in answer.headers)


async def test_a_long_answer_is_cut_and_its_connection_dropped() -> None:
    body = bytes(range(256)) * 4096  # 1 MiB: far more than is read
    srv = _HttpServer(body=body)
    await srv.start()
    url = f"http://127.0.0.1:{srv.port}/"
    try:
        async with _client(allow_private=True) as client:
            first = await client.post(url, b"", {}, timeout=TIMEOUT)
            second = await client.post(url, b"", {}, timeout=TIMEOUT)
    finally:
        await srv.close()
    assert first.body == second.body == body[:MAX_READ]
    assert srv.connections == 2  # the unread rest was not drained into the next answer


async def test_redirect_to_metadata_is_returned_not_followed(connects: list[str]) -> None:
    location = "http://169.254.169.254/latest/meta-data"
    srv = _HttpServer(status=302, headers=[("Location", location)])
    await srv.start()
    try:
        async with _client(allow_private=True) as client:
            answer = await client.post(f"http://127.0.0.1:{srv.port}/", b"", {},
                                       timeout=TIMEOUT)
    finally:
        await srv.close()
    assert answer.status == 302
    assert answer.headers["location"] == location
    assert connects == ["127.0.0.1"]
    assert srv.connections == 1
    assert len(srv.requests) == 1


async def _failing(host: str, port: int) -> list[str]:
    raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")


async def _empty(host: str, port: int) -> list[str]:
    return []


async def _not_an_address(host: str, port: int) -> list[str]:
    return ["hooks.example"]


@pytest.mark.parametrize("resolver", [_failing, _empty, _not_an_address])
async def test_resolution_failure_is_a_client_connector_dns_error(
        resolver: Any, connects: list[str]) -> None:
    async with _client(resolver=resolver) as client:
        with pytest.raises(aiohttp.ClientConnectorDNSError) as caught:
            await client.post("http://nowhere.example/", b"", {}, timeout=TIMEOUT)
    assert isinstance(caught.value, OSError)  # what the sender catches either way
    assert connects == []


async def test_no_answer_is_a_timeout(connects: list[str]) -> None:
    srv = _HttpServer(answer=False)
    await srv.start()
    try:
        async with _client(allow_private=True) as client:
            with pytest.raises(TimeoutError):
                await client.post(f"http://127.0.0.1:{srv.port}/", b"x", {}, timeout=0.2)
        # the request was sent; it is the answer that never came
        assert [b for *_, b in srv.requests] == [b"x"]
    finally:
        await srv.close()


async def test_proxy_settings_in_the_environment_are_ignored(
        server: _HttpServer, monkeypatch: pytest.MonkeyPatch) -> None:
    proxy = _HttpServer()  # would answer 200 too: which server saw the request tells
    await proxy.start()
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy",
                 "all_proxy"):
        monkeypatch.setenv(name, f"http://127.0.0.1:{proxy.port}")
    try:
        async with _client(allow_private=True) as client:
            answer = await client.post(f"http://127.0.0.1:{server.port}/", b"", {},
                                       timeout=TIMEOUT)
    finally:
        await proxy.close()
    assert answer.status == 200
    assert len(server.requests) == 1
    assert proxy.connections == 0


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
        async with _client(allow_private=True, resolver=resolver,
                           verify=_trusting(ca)) as client:
            answer = await client.post(f"https://hooks.example:{srv.port}/", b"x", {},
                                       timeout=TIMEOUT)
    finally:
        await srv.close()
    assert answer.status == 200
    assert connects == ["127.0.0.1"]
    assert [b for *_, b in srv.requests] == [b"x"]


async def test_https_refuses_a_certificate_for_another_name() -> None:
    ca = trustme.CA()
    srv = _HttpServer(tls=_tls_server_context(ca, "other.example"))
    await srv.start()
    resolver = _FakeResolver({"hooks.example": [["127.0.0.1"]]})
    try:
        async with _client(allow_private=True, resolver=resolver,
                           verify=_trusting(ca)) as client:
            with pytest.raises(aiohttp.ClientConnectorCertificateError) as caught:
                await client.post(f"https://hooks.example:{srv.port}/", b"x", {},
                                  timeout=TIMEOUT)
    finally:
        await srv.close()
    assert srv.requests == []
    cause = caught.value.certificate_error
    assert isinstance(cause, ssl.SSLCertVerificationError)
    assert cause.verify_code == _X509_V_ERR_HOSTNAME_MISMATCH


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
    ("http://127.1/", "127.0.0.1"),
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


@pytest.mark.parametrize("url", [
    "http://127.0.0.1/", "http://0.0.0.0/", "http://10.0.0.1/",
    "http://169.254.169.254/latest/meta-data", "http://[::1]:8080/",
    "http://[::ffff:127.0.0.1]/", "http://[fd00:ec2::254]/",
])
def test_check_url_accepts_private_ip_literals_when_allowed(url: str) -> None:
    assert check_url(url, allow_private=True) is url


# Resolvers accept these numeric forms, HTTP clients do not: never deliverable.
# Private ones are refused as private first when strict (PRIVATE_LITERALS).
NON_CANONICAL_IPV4 = [
    ("http://134744072/", False),
    ("http://134744072/", True),
    ("http://0x8.8.8.8/", False),
    ("http://8.8.2056/", False),
    ("http://010.8.8.8/", False),
    ("http://2130706433/", True),
    ("http://127.1/", True),
    ("http://0x7f.1/", True),
    ("http://017700000001/", True),
]


@pytest.mark.parametrize(("url", "allow_private"), NON_CANONICAL_IPV4)
def test_check_url_refuses_non_canonical_ipv4_as_invalid_argument(
        url: str, allow_private: bool) -> None:
    with pytest.raises(ClusterError) as caught:
        check_url(url, allow_private=allow_private)
    assert not isinstance(caught.value, WebhookError)
    assert caught.value.reason is Reason.INVALID_ARGUMENT
    assert caught.value.details["field"] == "url"


@pytest.mark.parametrize("url", ["http://\uff11\uff12\uff17.0.0.1/",
                                 "http://127\u30020\u30020\u30021/"])
def test_check_url_refuses_a_loopback_literal_written_with_unicode_digits_or_dots(
        url: str) -> None:
    with pytest.raises(WebhookError) as caught:
        check_url(url, allow_private=False)
    assert caught.value.reason is Reason.WEBHOOK_TARGET_REFUSED


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
