"""Standard Webhooks secrets, signatures and verification, checked against the
reference library (``standardwebhooks``) in both directions."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from standardwebhooks import Webhook, WebhookVerificationError
from starlette.datastructures import Headers

from covey.core import ClusterError, Reason, SerializationError, WebhookError
from covey.webhooks._secrets import WebhookSecret, generate_secret
from covey.webhooks._signing import (
    VerifiedWebhook,
    check_message_id,
    sign,
    verify,
    webhook_headers,
)

NOW = 1_767_225_600
BODY = '{"type": "invoice.paid", "amount": 1200, "note": "café"}'.encode()
SIG = Reason.WEBHOOK_SIGNATURE_INVALID
STAMP = Reason.WEBHOOK_TIMESTAMP_INVALID


def invalid_field(info: pytest.ExceptionInfo[ClusterError]) -> str:
    assert info.value.reason is Reason.INVALID_ARGUMENT
    field: str = info.value.details["field"]
    return field


# -- secrets -----------------------------------------------------------------------------

def test_a_secret_round_trips_and_never_shows_its_key() -> None:
    secret = generate_secret()
    text = str(secret)
    assert text.startswith("whsec_") and len(secret.key) == 32
    assert WebhookSecret.parse(text) == secret
    assert WebhookSecret.parse(secret) is secret
    shown = repr(secret)
    assert shown == f"WebhookSecret(whsec_…{text[-4:]})"
    assert text[6:20] not in shown and repr(secret.key) not in shown
    assert generate_secret(24).key != generate_secret(24).key
    assert len(generate_secret(64).key) == 64


def test_a_secret_without_base64_padding_is_the_same_secret() -> None:
    secret = WebhookSecret(bytes(range(32)))  # 44 base64 characters, one "="
    assert WebhookSecret.parse(str(secret).rstrip("=")) == secret


@pytest.mark.parametrize("value", [
    "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",                       # no prefix
    "whsk_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",                  # another prefix
    "whsec_",                                                 # empty
    "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLa!w",                 # not base64
    "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLa-w",                 # url-safe alphabet
    "whsec_MfKQ9r8GKYqrTwjUPD8I LPZIo2LaLaSw",                # a space inside
    "whsec_" + base64.b64encode(b"x" * 23).decode(),          # 23 bytes: too short
    "whsec_" + base64.b64encode(b"x" * 65).decode(),          # 65 bytes: too long
    "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSwé",                # not ASCII
])
def test_a_malformed_secret_is_refused_without_being_quoted(value: str) -> None:
    with pytest.raises(ClusterError) as info:
        WebhookSecret.parse(value)
    assert invalid_field(info) == "secret"
    assert value[6:] not in str(info.value) or value[6:] == ""


@pytest.mark.parametrize("value", [b"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", None, 42])
def test_a_secret_that_is_not_a_string_is_refused(value: Any) -> None:
    with pytest.raises(ClusterError) as info:
        WebhookSecret.parse(value)
    assert invalid_field(info) == "secret"


@pytest.mark.parametrize("nbytes", [23, 65, 0, True, 32.0])
def test_generate_secret_refuses_sizes_outside_the_specification(nbytes: Any) -> None:
    with pytest.raises(ClusterError) as info:
        generate_secret(nbytes)
    assert invalid_field(info) == "nbytes"


# -- signing -----------------------------------------------------------------------------

def test_the_standard_webhooks_test_vector() -> None:
    # The vector from the Standard Webhooks / Svix libraries' own test suites.
    secret = WebhookSecret.parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    signature = sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}',
                     [secret])
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_several_secrets_sign_in_the_order_given() -> None:
    a, b = generate_secret(), generate_secret()
    both = sign("msg_1", NOW, BODY, [a, b])
    assert both == f"{sign('msg_1', NOW, BODY, [a])} {sign('msg_1', NOW, BODY, [b])}"
    assert webhook_headers("msg_1", NOW, BODY, [a, b]) == {
        "webhook-id": "msg_1", "webhook-timestamp": str(NOW), "webhook-signature": both}


@pytest.mark.parametrize(("args", "field"), [
    (("msg.1", NOW, BODY), "id"),
    (("msg_1", -1, BODY), "timestamp"),
    (("msg_1", float(NOW), BODY), "timestamp"),
    (("msg_1", True, BODY), "timestamp"),
    (("msg_1", NOW, BODY.decode()), "body"),
])
def test_signing_refuses_bad_input(args: tuple[Any, Any, Any], field: str) -> None:
    with pytest.raises(ClusterError) as info:
        sign(args[0], args[1], args[2], [generate_secret()])
    assert invalid_field(info) == field


def test_signing_needs_a_secret() -> None:
    with pytest.raises(ClusterError) as info:
        sign("msg_1", NOW, BODY, [])
    assert invalid_field(info) == "secret"


@pytest.mark.parametrize("msg_id", ["msg_2KWPBgLlAfxdpx2AI54pPJ85f4W", "a", "x" * 255,
                                    "evt:1/2-3_4~!"])
def test_check_message_id_accepts(msg_id: str) -> None:
    assert check_message_id(msg_id) == msg_id


@pytest.mark.parametrize("msg_id", ["", "x" * 256, "msg.1", "msg 1", "msg\t1", "msg\n1",
                                    "mség", "msg\x00", 7, None, b"msg_1"])
def test_check_message_id_refuses(msg_id: object) -> None:
    with pytest.raises(ClusterError) as info:
        check_message_id(msg_id)
    assert invalid_field(info) == "id"


# -- interoperability with the reference library -------------------------------------------

def test_what_covey_signs_verifies_with_the_reference_library() -> None:
    secret = generate_secret()
    headers = webhook_headers("msg_interop", int(time.time()), BODY, [secret])
    assert Webhook(str(secret)).verify(BODY, headers) == {
        "type": "invoice.paid", "amount": 1200, "note": "café"}


def test_during_a_rotation_the_reference_library_verifies_with_either_key() -> None:
    old, new = generate_secret(), generate_secret()
    headers = webhook_headers("msg_rotating", int(time.time()), BODY, [old, new])
    assert len(headers["webhook-signature"].split(" ")) == 2
    assert Webhook(str(new)).verify(BODY, headers)["amount"] == 1200  # the second entry
    assert Webhook(str(old)).verify(BODY, headers)["amount"] == 1200
    with pytest.raises(WebhookVerificationError):
        Webhook(str(generate_secret())).verify(BODY, headers)


def test_what_the_reference_library_signs_verifies_with_covey() -> None:
    secret = generate_secret()
    moment = datetime.fromtimestamp(NOW, tz=UTC)
    signature = Webhook(str(secret)).sign("msg_lib", moment, BODY.decode())
    headers = {"webhook-id": "msg_lib", "webhook-timestamp": str(NOW),
               "webhook-signature": signature}
    webhook = verify(headers, BODY, str(secret), now=NOW)
    assert webhook == VerifiedWebhook("msg_lib", NOW, BODY)
    assert webhook.json()["note"] == "café"


# -- verification --------------------------------------------------------------------------

SECRET = WebhookSecret(b"k" * 32)


def good_headers(**change: str) -> dict[str, str]:
    headers = webhook_headers("msg_1", NOW, BODY, [SECRET])
    headers.update(change)
    return headers


@pytest.mark.parametrize("headers", [
    good_headers(),
    {k.upper(): v for k, v in good_headers().items()},
    list(good_headers().items()),
    [(k.title().encode(), v.encode()) for k, v in good_headers().items()],
    Headers(headers={"Webhook-Id": "msg_1", "Webhook-Timestamp": str(NOW),
                     "Webhook-Signature": good_headers()["webhook-signature"]}),
    good_headers(**{"webhook-signature": "v1a,abc v1,nonsense! "
                    + good_headers()["webhook-signature"] + " v2,xyz junk"}),
], ids=["dict", "upper", "pairs", "raw-asgi", "starlette", "among-noise"])
def test_verify_accepts_headers_in_any_case_and_shape(headers: Any) -> None:
    assert verify(headers, BODY, SECRET, now=NOW) == VerifiedWebhook("msg_1", NOW, BODY)


def test_verify_accepts_any_of_the_receivers_secrets() -> None:
    other = generate_secret()
    assert verify(good_headers(), BODY, [str(other), SECRET], now=NOW).id == "msg_1"
    with pytest.raises(WebhookError) as info:
        verify(good_headers(), BODY, [other], now=NOW)
    assert info.value.reason is SIG


def test_the_tolerance_is_inclusive_and_configurable() -> None:
    assert verify(good_headers(), BODY, SECRET, now=NOW + 300).timestamp == NOW
    assert verify(good_headers(), BODY, SECRET, now=NOW - 300).timestamp == NOW
    with pytest.raises(WebhookError) as info:
        verify(good_headers(), BODY, SECRET, now=NOW + 11, tolerance=10)
    assert info.value.reason is STAMP


def test_verify_uses_the_system_clock_by_default() -> None:
    headers = webhook_headers("msg_now", int(time.time()), BODY, [SECRET])
    assert verify(headers, BODY, SECRET).id == "msg_now"
    with pytest.raises(WebhookError) as info:
        verify(good_headers(), BODY, SECRET)  # NOW is in 2026-01-01, long ago or to come
    assert info.value.reason is STAMP


def _sig_only_as(version: str) -> dict[str, str]:
    value = good_headers()["webhook-signature"].split(",", 1)[1]
    return good_headers(**{"webhook-signature": f"{version},{value}"})


def _without(name: str) -> dict[str, str]:
    headers = good_headers()
    del headers[name]
    return headers


TAMPERED: dict[str, tuple[Callable[[], tuple[Any, bytes, float]], Reason]] = {
    "body byte": (lambda: (good_headers(), BODY[:-1] + b"]", NOW), SIG),
    "empty body": (lambda: (good_headers(), b"", NOW), SIG),
    "id": (lambda: (good_headers(**{"webhook-id": "msg_2"}), BODY, NOW), SIG),
    "timestamp": (lambda: (good_headers(**{"webhook-timestamp": str(NOW + 1)}), BODY, NOW), SIG),
    "stale past": (lambda: (good_headers(), BODY, NOW + 301), STAMP),
    "stale future": (lambda: (good_headers(), BODY, NOW - 301), STAMP),
    "no id": (lambda: (_without("webhook-id"), BODY, NOW), SIG),
    "no timestamp": (lambda: (_without("webhook-timestamp"), BODY, NOW), SIG),
    "no signature": (lambda: (_without("webhook-signature"), BODY, NOW), SIG),
    "no headers": (lambda: ({}, BODY, NOW), SIG),
    "empty signature": (lambda: (good_headers(**{"webhook-signature": ""}), BODY, NOW), SIG),
    "garbage signature": (
        lambda: (good_headers(**{"webhook-signature": "garbage"}), BODY, NOW), SIG),
    "v1 without value": (lambda: (good_headers(**{"webhook-signature": "v1"}), BODY, NOW), SIG),
    "v1 not base64": (
        lambda: (good_headers(**{"webhook-signature": "v1,%%%%"}), BODY, NOW), SIG),
    "v1a only": (lambda: (_sig_only_as("v1a"), BODY, NOW), SIG),
    "V1 upper": (lambda: (_sig_only_as("V1"), BODY, NOW), SIG),
    "id with dot": (lambda: (good_headers(**{"webhook-id": "msg.1"}), BODY, NOW), SIG),
    "timestamp text": (
        lambda: (good_headers(**{"webhook-timestamp": "soon"}), BODY, NOW), STAMP),
    "timestamp float": (
        lambda: (good_headers(**{"webhook-timestamp": f"{NOW}.0"}), BODY, NOW), STAMP),
    "timestamp leading zero": (
        lambda: (good_headers(**{"webhook-timestamp": f"0{NOW}"}), BODY, NOW), STAMP),
    "timestamp negative": (
        lambda: (good_headers(**{"webhook-timestamp": f"-{NOW}"}), BODY, NOW), STAMP),
    "timestamp huge": (
        lambda: (good_headers(**{"webhook-timestamp": "9" * 400}), BODY, NOW), STAMP),
    "repeated signature": (
        lambda: ([*good_headers().items(), ("Webhook-Signature", "v1,AAAA")], BODY, NOW), SIG),
}


@pytest.mark.parametrize("case", list(TAMPERED))
def test_a_tampered_or_malformed_webhook_is_refused_with_its_reason(case: str) -> None:
    make, reason = TAMPERED[case]
    headers, body, now = make()
    with pytest.raises(WebhookError) as info:
        verify(headers, body, SECRET, now=now)
    assert info.value.reason is reason


@pytest.mark.parametrize(("args", "kwargs", "field"), [
    ((good_headers(), BODY.decode(), SECRET), {}, "body"),
    ((good_headers(), bytearray(BODY), SECRET), {}, "body"),
    ((good_headers(), BODY, "not-a-secret"), {}, "secret"),
    ((good_headers(), BODY, []), {}, "secret"),
    ((good_headers(), BODY, SECRET), {"tolerance": -1}, "tolerance"),
    (("webhook-id", BODY, SECRET), {}, "headers"),
    ((42, BODY, SECRET), {}, "headers"),
    (([("webhook-id",)], BODY, SECRET), {}, "headers"),
])
def test_the_callers_own_mistakes_are_invalid_arguments(
    args: tuple[Any, ...], kwargs: dict[str, Any], field: str
) -> None:
    with pytest.raises(ClusterError) as info:
        verify(*args, now=NOW, **kwargs)
    assert invalid_field(info) == field


@pytest.mark.parametrize("body", [b"not json", b"\xff\xfe", b"[" * 100_000])
def test_a_body_that_is_not_json_is_payload_invalid(body: bytes) -> None:
    webhook = VerifiedWebhook("msg_1", NOW, body)
    with pytest.raises(SerializationError) as info:
        webhook.json()
    assert info.value.reason is Reason.PAYLOAD_INVALID
