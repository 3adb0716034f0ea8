"""Sending webhooks through a cluster to a real HTTP receiver: signatures, routing,
retries on the schedule, the dead-letter, replay, 410, breaker and bad input."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest
import standardwebhooks
from pydantic import BaseModel

import covey
from covey.core import Reason, SystemClock, TestClock, WebhookOptions
from covey.testing import TestCluster
from covey.webhooks import WebhookDelivery, verify
from tests.unit._waiting import until
from tests.unit.webhooks._stub import Answer, StubReceiver, serving

START = 1_767_225_600.0


@pytest.fixture
async def stub() -> AsyncIterator[StubReceiver]:
    async with serving(StubReceiver(SystemClock().now)) as receiver:
        yield receiver


def cluster(runners: int = 2, clock: covey.Clock | None = None, **options: object) -> TestCluster:
    tc = TestCluster(runners=runners, clock=clock)
    tc.config = replace(tc.config, webhooks=WebhookOptions(**options))  # type: ignore[arg-type]
    return tc


async def finished(member: covey.Cluster, delivery_id: int,
                   timeout: float = 10.0) -> WebhookDelivery:
    found: list[WebhookDelivery] = []

    async def done() -> bool:
        found[:] = [await member.webhooks.delivery(delivery_id)]
        return found[0].state in ("delivered", "dead")
    await until(done, timeout)
    return found[0]


class Invoice(BaseModel):
    invoice_id: str
    amount: int


async def test_a_delivery_verifies_with_the_reference_library(stub: StubReceiver) -> None:
    async with cluster() as tc:
        hooks = tc.client_member.webhooks
        endpoint = await hooks.add_endpoint(stub.url(), types=["invoice.paid"], allow_private=True,
                                            headers={"X-Env": "test"})
        sent = await hooks.send("invoice.paid", Invoice(invoice_id="i-1", amount=42))
        delivery = await finished(tc.client_member, sent.deliveries[endpoint.id])
        assert delivery.state == "delivered"
        assert [a.outcome for a in delivery.attempts] == ["delivered"]
        assert delivery.attempts[0].status == 200
        (request,) = stub.received
        # the exact bytes sent verify with the Standard Webhooks reference library
        standardwebhooks.Webhook(str(endpoint.secret)).verify(request.body, request.headers)
        verified = verify(request.headers, request.body, endpoint.secret)
        assert verified.id == sent.id == request.id
        body = request.json()
        assert body["type"] == "invoice.paid"
        assert body["data"] == {"invoice_id": "i-1", "amount": 42}
        assert body["timestamp"].endswith("Z")
        assert request.headers["content-type"] == "application/json"
        assert request.headers["x-env"] == "test"


async def test_during_a_rotation_both_secrets_sign_and_either_verifies(
        stub: StubReceiver) -> None:
    async with cluster(runners=1) as tc:
        # the member that rotates is the one that delivers: it sees the change at once
        # (another member within a second, when its copy of the endpoints is re-read)
        hooks = tc.runners[0].webhooks
        endpoint = await hooks.add_endpoint(stub.url(), allow_private=True)
        old = endpoint.secret
        rotated = await hooks.rotate_secret(endpoint.id, overlap=3600)
        assert rotated.secret != old
        sent = await hooks.send("invoice.paid", {"n": 1})
        await finished(tc.client_member, sent.deliveries[endpoint.id])
        request = stub.received[-1]
        assert len(request.headers["webhook-signature"].split(" ")) == 2
        for secret in (old, rotated.secret):  # a receiver on either key accepts it
            standardwebhooks.Webhook(str(secret)).verify(request.body, request.headers)
        # the overlap over (0 s): only the newest key signs; the old one fails
        newest = await hooks.rotate_secret(endpoint.id, overlap=0)
        sent = await hooks.send("invoice.paid", {"n": 2})
        await finished(tc.client_member, sent.deliveries[endpoint.id])
        request = stub.received[-1]
        assert len(request.headers["webhook-signature"].split(" ")) == 1
        standardwebhooks.Webhook(str(newest.secret)).verify(request.body, request.headers)
        with pytest.raises(standardwebhooks.WebhookVerificationError):
            standardwebhooks.Webhook(str(rotated.secret)).verify(request.body, request.headers)


async def step_until(clock: TestClock, condition: object, *, limit: float,
                     step: float) -> None:
    """Move the test clock in ``step`` jumps until ``condition()`` holds."""
    moved = 0.0
    while not condition():  # type: ignore[operator]
        assert moved <= limit, "the condition did not hold within the time limit"
        await clock.jump(step)
        moved += step
        await asyncio.sleep(0.01)  # real time for the request to travel


async def test_attempts_land_on_the_schedule_then_dead_letter_then_replay() -> None:
    clock = TestClock(START)
    async with serving(StubReceiver(clock.now)) as stub, cluster(clock=clock) as tc:
        stub.script = [Answer(500, body=b"down") for _ in range(4)]
        hooks = tc.client_member.webhooks
        schedule = [5.0, 300.0, 1800.0]
        endpoint = await hooks.add_endpoint(stub.url(), allow_private=True, schedule=schedule)
        sent = await hooks.send("invoice.paid", {"n": 1})
        delivery_id = sent.deliveries[endpoint.id]

        async def recorded(count: int) -> bool:
            delivery = await hooks.delivery(delivery_id)
            return len(delivery.attempts) == count and delivery.state == "retrying"

        for number, gap in enumerate(schedule, start=2):
            # the failed attempt is recorded (its retry is timed from then); then time
            # moves quickly to 70 % of the gap, then in steps of 1 % of it
            await until(lambda n=number: recorded(n - 1))
            await clock.jump(gap * 0.7)
            await tc.settle()
            await step_until(clock, lambda n=number: len(stub.received) >= n,
                             limit=gap, step=gap / 100)
        assert len({r.id for r in stub.received}) == 1  # one webhook-id on every attempt
        assert len({r.headers["webhook-timestamp"] for r in stub.received}) == 4  # re-signed
        delivery = await finished(tc.client_member, sent.deliveries[endpoint.id])
        assert delivery.state == "dead"
        # when each attempt was made (the runner's clock as it began), and when the
        # receiver got it: both within 20 % of the schedule
        for times in ([a.at for a in delivery.attempts], [r.at for r in stub.received]):
            gaps = [b - a for a, b in itertools.pairwise(times)]
            for gap, wanted in zip(gaps, schedule, strict=True):
                assert wanted * 0.8 <= gap <= wanted * 1.2, (gaps, schedule)
        assert [(a.number, a.outcome, a.status, a.response) for a in delivery.attempts] == [
            (n, "http_error", 500, "down") for n in (1, 2, 3, 4)]
        assert all(a.latency_ms is not None and a.latency_ms >= 0 for a in delivery.attempts)
        (dead,) = await hooks.dead_letters(endpoint=endpoint.id)
        assert dead.id == delivery.id
        # the receiver is back: a replay delivers, with the same webhook-id
        replayed = await hooks.replay(delivery.id)
        assert replayed.id == delivery.id
        again = await finished(tc.client_member, delivery.id)
        assert again.state == "delivered"
        # the attempts before the replay are kept, the new one follows them
        assert [(a.number, a.outcome) for a in again.attempts] == [
            (1, "http_error"), (2, "http_error"), (3, "http_error"), (4, "http_error"),
            (5, "delivered")]
        assert stub.received[-1].id == sent.id and len(stub.received) == 5
        assert await hooks.dead_letters() == []


async def test_retry_after_on_429_sets_the_next_attempt() -> None:
    clock = TestClock(START)
    async with serving(StubReceiver(clock.now)) as stub, cluster(clock=clock) as tc:
        stub.script = [Answer(429, headers={"retry-after": "120"})]
        hooks = tc.client_member.webhooks
        endpoint = await hooks.add_endpoint(stub.url(), allow_private=True, schedule=[5.0])
        sent = await hooks.send("invoice.paid", {"n": 1})

        async def retrying() -> bool:
            return (await hooks.delivery(sent.deliveries[endpoint.id])).state == "retrying"
        await until(retrying)
        await clock.jump(60)  # past the schedule's 5 s: the receiver asked for 120
        await tc.settle()
        for _ in range(20):
            await asyncio.sleep(0)
        assert len(stub.received) == 1
        await clock.jump(50)
        await tc.settle()
        await step_until(clock, lambda: len(stub.received) == 2, limit=30, step=1)
        assert 118 <= stub.received[1].at - stub.received[0].at <= 132
        delivery = await finished(tc.client_member, sent.deliveries[endpoint.id])
        assert [a.status for a in delivery.attempts] == [429, 200]


async def test_410_gone_disables_the_endpoint(stub: StubReceiver) -> None:
    stub.default = Answer(410, body=b"gone")
    async with cluster() as tc:
        hooks = tc.client_member.webhooks
        endpoint = await hooks.add_endpoint(stub.url(), allow_private=True)
        sent = await hooks.send("invoice.paid", {"n": 1})
        delivery = await finished(tc.client_member, sent.deliveries[endpoint.id])
        assert delivery.state == "dead" and len(delivery.attempts) == 1
        current = await hooks.endpoint(endpoint.id)
        assert not current.enabled and "410" in (current.disabled_reason or "")
        assert (await hooks.send("invoice.paid", {"n": 2})).deliveries == {}  # skipped now
        enabled = await hooks.enable(endpoint.id)
        assert enabled.enabled and enabled.disabled_reason is None


async def test_messages_go_to_the_endpoints_of_their_type_and_tenant(stub: StubReceiver) -> None:
    async with cluster() as tc:
        hooks = tc.client_member.webhooks
        invoices = await hooks.add_endpoint(stub.url("/invoices"), types=["invoice.*"],
                                            allow_private=True)
        paid = await hooks.add_endpoint(stub.url("/paid"), types="order.paid",
                                        allow_private=True)
        every = await hooks.add_endpoint(stub.url("/all"), allow_private=True)
        acme = await hooks.add_endpoint(stub.url("/acme"), tenant="acme", allow_private=True)
        globex = await hooks.add_endpoint(stub.url("/globex"), tenant="globex",
                                          allow_private=True)
        cases = [
            (await hooks.send("invoice.paid", {"n": 1}), {invoices.id, every.id}),
            (await hooks.send("order.paid", {"n": 2}), {paid.id, every.id}),
            (await hooks.send("order.shipped", {"n": 3}), {every.id}),
            (await hooks.send("order.paid", {"n": 4}, tenant="acme"), {acme.id}),
        ]
        with covey.use_context(covey.RequestContext(tenant_id="globex")):
            cases.append((await hooks.send("invoice.paid", {"n": 5}), {globex.id}))
        for sent, wanted in cases:
            assert set(sent.deliveries) == wanted
        await until(lambda: len(stub.received) == 7)
        by_path = {p: [r.json()["data"]["n"] for r in stub.on(p)] for p in
                   ("/invoices", "/paid", "/all", "/acme", "/globex")}
        assert {k: sorted(v) for k, v in by_path.items()} == {
            "/invoices": [1], "/paid": [2], "/all": [1, 2, 3], "/acme": [4], "/globex": [5]}
        # one endpoint by id
        direct = await hooks.send(acme.id, {"n": 6}, type="ping", tenant="acme")
        assert set(direct.deliveries) == {acme.id}
        await until(lambda: len(stub.on("/acme")) == 2)
        assert stub.on("/acme")[-1].json()["type"] == "ping"


async def test_the_same_id_is_delivered_once(stub: StubReceiver) -> None:
    async with cluster() as tc:
        hooks = tc.client_member.webhooks
        endpoint = await hooks.add_endpoint(stub.url(), allow_private=True)
        first = await hooks.send("invoice.paid", {"n": 1}, id="msg_invoice-7")
        second = await hooks.send("invoice.paid", {"n": 1}, id="msg_invoice-7")
        assert first.id == second.id == "msg_invoice-7"
        assert not first.duplicate and second.duplicate
        assert second.deliveries[endpoint.id] == first.deliveries[endpoint.id]
        await finished(tc.client_member, first.deliveries[endpoint.id])
        assert [r.id for r in stub.received] == ["msg_invoice-7"]


async def test_a_redirect_is_not_followed(stub: StubReceiver) -> None:
    stub.default = Answer(302, headers={"location": "http://169.254.169.254/latest/meta-data"},
                          body=b"")
    async with cluster() as tc:
        hooks = tc.client_member.webhooks
        endpoint = await hooks.add_endpoint(stub.url(), allow_private=True, schedule=[])
        sent = await hooks.send("invoice.paid", {"n": 1})
        delivery = await finished(tc.client_member, sent.deliveries[endpoint.id])
        assert delivery.state == "dead"
        assert [(a.outcome, a.status) for a in delivery.attempts] == [("http_error", 302)]
        assert len(stub.received) == 1


async def test_a_private_target_is_refused_without_a_request(stub: StubReceiver) -> None:
    async with cluster() as tc:
        hooks = tc.client_member.webhooks
        with pytest.raises(covey.WebhookError) as refused:
            await hooks.add_endpoint(stub.url())  # 127.0.0.1: refused when registered
        assert refused.value.reason is Reason.WEBHOOK_TARGET_REFUSED
        # a name is checked when the connection is made: localhost resolves to loopback
        endpoint = await hooks.add_endpoint(f"http://localhost:{stub.port}/hook", schedule=[])
        sent = await hooks.send("invoice.paid", {"n": 1})
        delivery = await finished(tc.client_member, sent.deliveries[endpoint.id])
        assert [a.outcome for a in delivery.attempts] == ["refused"]
        assert stub.received == []


async def test_a_slow_endpoint_does_not_hold_up_the_others(stub: StubReceiver) -> None:
    hold = asyncio.Event()
    stub.default = Answer()
    # four requests in flight on the runner: the slow endpoint may hold two of them
    async with cluster(runners=1, concurrency=4) as tc:
        hooks = tc.client_member.webhooks
        slow = await hooks.add_endpoint(stub.url("/slow"), types=["slow"], allow_private=True,
                                        concurrency=2, timeout=60)
        fast = await hooks.add_endpoint(stub.url("/fast"), types=["fast"], allow_private=True)
        stub.script = [Answer(hold=hold) for _ in range(2)]  # the first two requests hang
        for n in range(30):
            await hooks.send("slow", {"n": n})
        await until(lambda: len(stub.on("/slow")) == 2)
        sent = [await hooks.send("fast", {"n": n}) for n in range(10)]
        for s in sent:
            assert (await finished(tc.client_member, s.deliveries[fast.id])).state == "delivered"
        assert len(stub.on("/slow")) == 2  # its own limit: two in flight, the rest wait
        hold.set()
        await until(lambda: len(stub.on("/slow")) == 30, timeout=15)
        assert slow.concurrency == 2


async def test_the_breaker_opens_after_consecutive_failures(stub: StubReceiver) -> None:
    stub.default = Answer(500)
    async with cluster(runners=1, breaker_failures=3, breaker_cooldown=600) as tc:
        hooks = tc.client_member.webhooks
        endpoint = await hooks.add_endpoint(stub.url(), allow_private=True, schedule=[],
                                            concurrency=1)
        sent = [await hooks.send("invoice.paid", {"n": n}) for n in range(6)]
        outcomes = [(await finished(tc.client_member, s.deliveries[endpoint.id])).attempts[0]
                    .outcome for s in sent]
        assert outcomes.count("http_error") == 3
        assert outcomes.count("circuit_open") == 3
        assert len(stub.received) == 3  # nothing was sent while it was open


async def test_an_endpoint_failing_for_too_long_is_disabled() -> None:
    clock = TestClock(START)
    async with serving(StubReceiver(clock.now)) as stub, \
            cluster(clock=clock, disable_after=3600) as tc:
        stub.default = Answer(503)
        hooks = tc.client_member.webhooks
        endpoint = await hooks.add_endpoint(stub.url(), allow_private=True, schedule=[])
        first = await hooks.send("invoice.paid", {"n": 1})
        await finished(tc.client_member, first.deliveries[endpoint.id])
        assert (await hooks.endpoint(endpoint.id)).failing_since == pytest.approx(START, abs=5)
        await clock.jump(3700)
        await tc.settle()
        second = await hooks.send("invoice.paid", {"n": 2})
        await finished(tc.client_member, second.deliveries[endpoint.id])
        current = await hooks.endpoint(endpoint.id)
        assert not current.enabled
        assert "failed for" in (current.disabled_reason or "")


async def test_deliveries_of_a_deleted_endpoint_end_in_the_dead_letter(
        stub: StubReceiver) -> None:
    stub.default = Answer(500)
    async with cluster() as tc:
        hooks = tc.client_member.webhooks
        # the retry comes after every member re-read the endpoints (they do every second)
        endpoint = await hooks.add_endpoint(stub.url(), allow_private=True, schedule=[2.0])
        sent = await hooks.send("invoice.paid", {"n": 1})
        await until(lambda: len(stub.received) == 1)
        await hooks.delete(endpoint.id)
        delivery = await finished(tc.client_member, sent.deliveries[endpoint.id])
        assert [a.outcome for a in delivery.attempts] == ["http_error", "endpoint_deleted"]
        assert len(stub.received) == 1
        with pytest.raises(covey.WebhookError) as missing:
            await hooks.endpoint(endpoint.id)
        assert missing.value.reason is Reason.WEBHOOK_ENDPOINT_NOT_FOUND
        assert await hooks.purge_dead(endpoint=endpoint.id) == 1
        assert await hooks.dead_letters() == []


@pytest.mark.parametrize(("call", "field"), [
    ({"url": "ftp://example.com/x"}, "url"),
    ({"url": "not a url"}, "url"),
    ({"url": "https://user:pw@example.com/"}, "url"),
    ({"url": "https://example.com/", "secret": "whsec_notbase64!"}, "secret"),
    ({"url": "https://example.com/", "secret": "abc"}, "secret"),
    ({"url": "https://example.com/", "headers": {"webhook-id": "x"}}, "headers"),
    ({"url": "https://example.com/", "headers": {"bad name": "x"}}, "headers"),
    ({"url": "https://example.com/", "schedule": [-1]}, "schedule"),
    ({"url": "https://example.com/", "schedule": [float("nan")]}, "schedule"),
    ({"url": "https://example.com/", "timeout": 0}, "timeout"),
    ({"url": "https://example.com/", "concurrency": 0}, "concurrency"),
    ({"url": "https://example.com/", "types": ["has space"]}, "types"),
    ({"url": "https://example.com/", "allow_private": "yes"}, "allow_private"),
])
async def test_a_bad_endpoint_is_refused_and_nothing_is_stored(
        call: dict[str, object], field: str) -> None:
    async with cluster(runners=1) as tc:
        hooks = tc.client_member.webhooks
        with pytest.raises(covey.ClusterError) as refused:
            await hooks.add_endpoint(**call)  # type: ignore[arg-type]
        assert refused.value.reason is Reason.INVALID_ARGUMENT
        assert refused.value.details["field"] == field
        assert await hooks.endpoints() == []


async def test_a_bad_send_is_refused_and_nothing_is_stored(stub: StubReceiver) -> None:
    def configure(member: covey.Cluster) -> None:
        member.webhook_type("invoice.paid", Invoice)

    tc = TestCluster(runners=1, configure=configure)
    async with tc:
        hooks = tc.client_member.webhooks
        await hooks.add_endpoint(stub.url(), allow_private=True)
        with pytest.raises(covey.SerializationError):  # the declared model refuses it
            await hooks.send("invoice.paid", {"invoice_id": "i-1", "amount": "lots"})
        with pytest.raises(covey.ClusterError) as bad:
            await hooks.send("order.placed", {"at": object()})
        assert bad.value.reason in (Reason.INVALID_ARGUMENT, Reason.PAYLOAD_UNKNOWN_TYPE)
        with pytest.raises(covey.ClusterError) as bad:
            await hooks.send("order.placed", {"x": float("nan")})
        assert bad.value.details.get("field") == "payload"
        for kwargs in ({"id": "has.dot"}, {"id": ""}, {"id": 5}):
            with pytest.raises(covey.ClusterError) as bad:
                await hooks.send("order.placed", {}, **kwargs)  # type: ignore[arg-type]
            assert bad.value.details["field"] == "id"
        with pytest.raises(covey.ClusterError) as bad:
            await hooks.send("", {})
        assert bad.value.details["field"] == "target"
        with pytest.raises(covey.WebhookError) as missing:
            await hooks.send("ep_123", {})
        assert missing.value.reason is Reason.WEBHOOK_ENDPOINT_NOT_FOUND
        with pytest.raises(covey.WebhookError) as missing:
            await hooks.delivery(12345)
        assert missing.value.reason is Reason.WEBHOOK_DELIVERY_NOT_FOUND
        assert await hooks.deliveries() == []
        # a valid one still goes out: the cluster kept serving
        sent = await hooks.send("invoice.paid", {"invoice_id": "i-1", "amount": 3})
        (delivery_id,) = sent.deliveries.values()
        assert (await finished(tc.client_member, delivery_id)).state == "delivered"
        assert json.loads(stub.received[0].body)["data"] == {"invoice_id": "i-1", "amount": 3}


#: the webhooks of the cluster under test (an application holds its cluster globally)
HOOKS: list[covey.webhooks.Webhooks] = []


class Order(covey.Entity, type="WebhookOrder"):
    @covey.rpc(persisted=True)
    async def place(self, fail: bool) -> str:
        sent = await HOOKS[0].send("order.placed", {"order": self.ctx.address.entity_id},
                                   transaction=self.ctx)
        if fail:
            raise RuntimeError("the order failed after sending")
        return sent.id


async def test_a_webhook_sent_in_a_failing_handler_is_not_sent(stub: StubReceiver) -> None:
    tc = TestCluster(Order, runners=1)
    async with tc:
        hooks = tc.client_member.webhooks
        HOOKS[:] = [hooks]
        endpoint = await hooks.add_endpoint(stub.url(), allow_private=True)
        with pytest.raises(covey.EntityError):
            await tc.client_member.client(Order, "o-1").place(True)
        ok = await tc.client_member.client(Order, "o-2").place(False)
        await until(lambda: len(stub.received) == 1)
        assert stub.received[0].id == ok
        assert stub.received[0].json()["data"] == {"order": "o-2"}
        assert len(await hooks.deliveries(endpoint=endpoint.id)) == 1


class Shipped(covey.Event, topic="shipping", name="order.shipped"):
    order_id: str


async def test_domain_events_are_forwarded_to_endpoints(stub: StubReceiver) -> None:
    def configure(member: covey.Cluster) -> None:
        member.webhook_events(Shipped)

    async with TestCluster(runners=2, configure=configure) as tc:
        hooks = tc.client_member.webhooks
        await hooks.add_endpoint(stub.url(), types=["order.*"], allow_private=True)
        event_id = await tc.runners[0].publish(Shipped(order_id="o-9"))
        await until(lambda: len(stub.received) == 1)
        request = stub.received[0]
        assert request.id == f"evt_{event_id}"
        assert request.json()["type"] == "order.shipped"
        assert request.json()["data"] == {"order_id": "o-9"}


async def test_the_senders_trace_travels_with_each_attempt(stub: StubReceiver) -> None:
    trace_id, span_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    async with cluster(runners=1) as tc:
        hooks = tc.client_member.webhooks
        await hooks.add_endpoint(stub.url(), allow_private=True)
        with covey.use_context(covey.RequestContext(trace_id=trace_id, span_id=span_id)):
            await hooks.send("invoice.paid", {"n": 1})
        await hooks.send("invoice.paid", {"n": 2})  # no trace: no traceparent
        await until(lambda: len(stub.received) == 2)
        by_n = {r.json()["data"]["n"]: r.headers for r in stub.received}
        assert by_n[1]["traceparent"].split("-")[1] == trace_id
        assert "traceparent" not in by_n[2]


async def test_the_jobs_api_hands_dead_deliveries_to_webhooks(stub: StubReceiver) -> None:
    # a delivery is a job: cluster.jobs.retry_dead replays it keeping its earlier
    # attempts, and cluster.jobs.purge_dead deletes their record with it
    from covey.webhooks._webhooks import history_key

    stub.default = Answer(500)
    async with cluster() as tc:
        member = tc.client_member
        endpoint = await member.webhooks.add_endpoint(stub.url(), allow_private=True, schedule=[])
        first = (await member.webhooks.send("invoice.paid", {"n": 1})).deliveries[endpoint.id]
        assert (await finished(member, first)).state == "dead"
        await member.jobs.retry_dead(first)
        await until(lambda: len(stub.received) == 2)
        dead = await finished(member, first)
        assert [a.outcome for a in dead.attempts] == ["http_error", "http_error"]
        assert await member.storage.state.get(history_key(first)) is not None
        assert await member.jobs.purge_dead() == 1
        assert await member.webhooks.dead_letters() == []
        assert await member.storage.state.get(history_key(first)) is None
