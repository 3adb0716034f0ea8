"""What hooks see of a request: the bearer token, and headers without it."""

from __future__ import annotations

from covey import RequestContext, use_context
from covey.realtime._handshake import handshake_of


def test_a_bearer_header_becomes_the_token_and_leaves_the_headers() -> None:
    scope = {"path": "/rpc", "headers": [(b"Authorization", b"Bearer s3cret"), (b"X-A", b"1")],
             "query_string": b"codec=json&x=%2F", "client": ("10.0.0.1", 5000)}
    with use_context(RequestContext(tenant_id="acme")):
        handshake = handshake_of(scope)
    assert handshake.token == "s3cret"
    assert "authorization" not in handshake.headers
    assert handshake.headers == {"x-a": "1"}
    assert handshake.query == {"codec": "json", "x": "/"}
    assert (handshake.client, handshake.tenant, handshake.path) == ("10.0.0.1:5000", "acme", "/rpc")


def test_a_bearer_subprotocol_becomes_the_token_and_leaves_the_headers() -> None:
    scope = {"headers": [(b"sec-websocket-protocol", b"covey.v1.json, bearer.t0k")],
             "subprotocols": ["covey.v1.json", "bearer.t0k"]}
    handshake = handshake_of(scope)
    assert handshake.token == "t0k"
    assert handshake.headers["sec-websocket-protocol"] == "covey.v1.json"


def test_other_schemes_stay_for_the_app() -> None:
    handshake = handshake_of({"headers": [(b"authorization", b"Basic dTpw")]})
    assert handshake.token is None
    assert handshake.headers["authorization"] == "Basic dTpw"
    assert handshake_of({"headers": [(b"x", b"y" * 9000)]}).headers == {}
