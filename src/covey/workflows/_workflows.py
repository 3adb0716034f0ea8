"""The workflows API of a cluster member: start, wait, signal, cancel, resume, inspect.

``cluster.start(...)``, ``cluster.send(...)``, ``cluster.get_event(...)``,
``cluster.resolve(...)`` and ``cluster.workflows`` are this object. It works on
every member, including one that hosts nothing (a web process that only starts
workflows): an execution is a stored message, its journal a stored value.
"""

from __future__ import annotations

import contextlib
import dataclasses
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from covey.core import (
    Clock,
    ClusterError,
    EntityAddress,
    MsgpackCodec,
    Reason,
    SnowflakeGenerator,
    VersionConflict,
    WorkflowError,
    current_context,
    parse_snowflake,
)
from covey.core.runtime import (
    check_seconds,
    inject_trace,
    invalid_argument,
    shard_for,
    validate_value,
)
from covey.entities.runtime import EffectScope
from covey.sharding.runtime import Envelope, Messenger, raise_error_reply
from covey.storage import Duplicate, Message, Storage, TransactionalMessages
from covey.workflows._context import AWAKEABLE_TOPIC
from covey.workflows._definition import (
    FRESH_HEADER,
    NAME_HEADER,
    PARENT_HEADER,
    PAYLOAD_VERSION_HEADER,
    START_TAG,
    VERSION_HEADER,
    WORKFLOW_ENTITY,
    Workflow,
    check_workflow_id,
    payload_version,
    unknown_workflow,
)
from covey.workflows._execution import FINALIZER_BASE, TERMINAL
from covey.workflows._journal import Journal, journal_key
from covey.workflows._runner import CANCEL_TAG, RESUME_TAG, SIGNAL_TAG, Tokens

#: where the key awakeable tokens are signed with is kept (made on first use)
TOKEN_KEY = "covey.workflow-token-key"

STATES = ("pending", "running", "waiting", "completed", "compensated", "failed", "cancelled",
          "failed_nondeterministic")



@dataclass(frozen=True)
class WorkflowStatus:
    """Where an execution stands.

    Attributes:
        state: pending (stored, not run yet) | running | waiting (a durable sleep,
            a recv, an awakeable, a child) | completed | compensated (failed; every
            compensation ran) | failed | cancelled | failed_nondeterministic
            (parked: its journal does not fit the code; resume after a fix).
        steps: journal entries so far.
        error: the failure (``"Type: message"``) of an execution that failed.
        waiting_for: what a waiting execution waits for.
    """

    workflow_id: str
    name: str
    version: int
    state: str
    created_at: float | None
    updated_at: float | None
    steps: int
    error: str | None = None
    waiting_for: str | None = None

    @property
    def done(self) -> bool:
        return self.state in TERMINAL


@dataclass(frozen=True)
class JournalEntry:
    """One journaled operation of an execution (``covey workflows show``)."""

    seq: int
    key: str
    kind: str
    status: str
    result: Any
    error: str | None
    at: float | None


class WorkflowHandle:
    """A started execution: wait for it, look at it, cancel it."""

    def __init__(self, workflows: Workflows, workflow_id: str, result_type: Any = Any,
                 start: Message | None = None, *, duplicate: bool = False) -> None:
        self._workflows = workflows
        self.id = workflow_id
        self._result_type = result_type
        self._start = start
        #: whether this start found the execution started already (same workflow id)
        self.duplicate = duplicate

    def __repr__(self) -> str:
        return f"<WorkflowHandle {self.id!r}>"

    async def result(self, timeout: float = 30.0) -> Any:
        """The workflow's return value; its failure as a :class:`~covey.WorkflowError`."""
        return await self._workflows.result(self.id, timeout=timeout,
                                            result_type=self._result_type, start=self._start)

    async def status(self) -> WorkflowStatus:
        return await self._workflows.status(self.id)

    async def cancel(self) -> WorkflowStatus:
        return await self._workflows.cancel(self.id)


class Workflows:
    """The workflows API (``cluster.workflows``); see the module docstring."""

    def __init__(self, storage: Storage, messenger: Messenger, snowflake: SnowflakeGenerator,
                 clock: Clock, shards: int, specs: Mapping[str, Workflow]) -> None:
        self._storage = storage
        self._messenger = messenger
        self._snowflake = snowflake
        self._clock = clock
        self._shards = shards
        self.specs = specs
        self._codec = MsgpackCodec()
        self._key: bytes | None = None
        self.tokens = Tokens(self._token_key)

    async def prepare(self) -> None:
        """Read (or make) the key awakeable tokens are signed with."""
        if self._key is not None:
            return
        while True:
            stored = await self._storage.state.get(TOKEN_KEY)
            if stored is not None:
                self._key = stored.value
                return
            try:
                await self._storage.state.set(TOKEN_KEY, secrets.token_bytes(32),
                                              expected_version=None)
            except VersionConflict:
                continue  # another member made it first

    def _token_key(self) -> bytes:
        if self._key is None:
            raise ClusterError("the workflows API is not prepared", reason=Reason.INVALID_ARGUMENT)
        return self._key

    # ---- messages ----------------------------------------------------------

    def _address(self, workflow_id: str) -> EntityAddress:
        return EntityAddress(WORKFLOW_ENTITY, workflow_id, shard_for(workflow_id, self._shards))

    def spec(self, workflow: Workflow | str) -> Workflow | None:
        if isinstance(workflow, Workflow):
            return workflow
        if not isinstance(workflow, str):
            raise invalid_argument("workflow", f"{workflow!r} is not a workflow or its name")
        return self.specs.get(workflow)

    def start_message(self, workflow: Workflow | str, payload: Any, workflow_id: str,
                      parent: str | None) -> Message:
        spec = self.spec(workflow)
        if spec is None:
            raise unknown_workflow(str(workflow))
        data = validate_value(payload, spec.payload_type)
        headers = inject_trace(current_context().to_headers())
        headers[NAME_HEADER] = spec.name
        headers[VERSION_HEADER] = str(spec.version)
        headers[PAYLOAD_VERSION_HEADER] = str(payload_version(spec))
        if parent is not None:
            headers[PARENT_HEADER] = parent
        return self._messenger.checked(Message(
            id=self._snowflake.next_id(), address=self._address(workflow_id), tag=START_TAG,
            payload=self._codec.encode(data), headers=headers, primary_key=START_TAG))

    def signal_message(self, workflow_id: str, topic: str, payload: Any, *,
                       idempotency_key: str | None = None) -> Message:
        return self._messenger.checked(Message(
            id=self._snowflake.next_id(), address=self._address(workflow_id), tag=SIGNAL_TAG,
            payload=self._codec.encode({"t": topic, "p": payload}),
            primary_key=idempotency_key))

    def cancel_message(self, workflow_id: str) -> Message:
        return Message(id=self._snowflake.next_id(), address=self._address(workflow_id),
                       tag=CANCEL_TAG, payload=b"", primary_key=CANCEL_TAG)

    # ---- starting ------------------------------------------------------------

    async def start(self, workflow: Workflow | str, payload: Any, *,
                    workflow_id: str | None = None, transaction: Any = None,
                    parent: str | None = None) -> WorkflowHandle:
        """Start an execution (see :meth:`covey.Cluster.start`)."""
        workflow_id = (check_workflow_id(workflow_id) if workflow_id is not None
                       else f"wf-{self._snowflake.next_id()}")
        message = self.start_message(workflow, payload, workflow_id, parent)
        spec = self.spec(workflow)
        result_type = spec.result_type if spec is not None else Any
        if isinstance(transaction, EffectScope):
            transaction.effect_unit("transaction").send([message])
            return WorkflowHandle(self, workflow_id, result_type, message)
        if transaction is not None:
            store = self._storage.messages
            if not isinstance(store, TransactionalMessages):
                raise invalid_argument("transaction", "starting inside the application's "
                                       "transaction needs PostgreSQL (this cluster uses "
                                       f"{self._storage.backend})")
            (saved,) = await store.save_requests_in(transaction, [message])
            return WorkflowHandle(self, workflow_id, result_type, message,
                                  duplicate=isinstance(saved, Duplicate))
        saved = await self._storage.messages.save_request(message)
        if isinstance(saved, Duplicate):
            return WorkflowHandle(self, workflow_id, result_type, duplicate=True)
        fresh = dataclasses.replace(message, headers={**message.headers, FRESH_HEADER: "1"})
        await self._messenger.push_many([Envelope(fresh, persisted=True)])
        return WorkflowHandle(self, workflow_id, result_type, message)

    def handle(self, workflow_id: str, workflow: Workflow | str | None = None) -> WorkflowHandle:
        """A handle to an execution by id (typed by ``workflow`` when given)."""
        spec = None if workflow is None else self.spec(workflow)
        return WorkflowHandle(self, check_workflow_id(workflow_id),
                              spec.result_type if spec is not None else Any)

    async def find_start(self, workflow_id: str) -> Message | None:
        """The start message of ``workflow_id``, if it was started."""
        found = await self._storage.messages.find(self._address(workflow_id), START_TAG,
                                                  START_TAG)
        return None if found is None else await self._storage.messages.get(found)

    async def _start_of(self, workflow_id: str) -> Message:
        start = await self.find_start(workflow_id)
        if start is None:
            raise _not_found(workflow_id)
        return start

    # ---- waiting and looking -------------------------------------------------

    async def result(self, workflow_id: str, *, timeout: float = 30.0, result_type: Any = Any,
                     start: Message | None = None) -> Any:
        """Wait for an execution's outcome (see :meth:`WorkflowHandle.result`)."""
        timeout = check_seconds("timeout", timeout)
        reply = None
        if start is None:
            start = await self._start_of(check_workflow_id(workflow_id))
            reply = (await self._storage.messages.replies_for([start.id])).get(start.id)
        # a handle from start(): straight to its owner (which answers an ended one too)
        if reply is None:
            reply = await self._messenger.wait_for_reply(Envelope(start, persisted=True),
                                                         timeout=timeout)
        outcome: dict[str, Any] = self._codec.decode(reply.payload, dict[str, Any])
        if not reply.is_error and outcome.get("state") == "completed":
            value = outcome.get("result")
            return value if result_type is Any else validate_value(value, result_type)
        raise outcome_error(workflow_id, outcome)

    async def status(self, workflow_id: str) -> WorkflowStatus:
        """Where ``workflow_id`` stands.

        Raises:
            WorkflowError: ``workflow_not_found``.
        """
        workflow_id = check_workflow_id(workflow_id)
        journal = await self._journal(workflow_id)
        if journal is not None:
            return _status_of(workflow_id, journal)
        start = await self._start_of(workflow_id)
        return WorkflowStatus(
            workflow_id, start.headers.get(NAME_HEADER, "?"),
            int(start.headers.get(VERSION_HEADER, "1") or 1), "pending",
            parse_snowflake(start.id).timestamp_ms / 1000, None, 0)

    async def _journal(self, workflow_id: str) -> Journal | None:
        key = journal_key(workflow_id)
        stored = await self._storage.state.get(key)
        return None if stored is None else Journal.decode(stored.value, key)

    async def journal(self, workflow_id: str) -> list[JournalEntry]:
        """The journal of ``workflow_id``: steps in call order, then compensations
        (in the order they ran), then finalizers."""
        journal = await self._journal(check_workflow_id(workflow_id))
        if journal is None:
            await self._start_of(workflow_id)
            return []

        def order(seq: int) -> tuple[int, int]:
            return (0, seq) if seq > 0 else (2, -seq) if seq <= FINALIZER_BASE else (1, seq)

        out = []
        for seq in sorted(journal.entries, key=order):
            e = journal.entries[seq]
            error = None if e.error is None else (
                f"{e.error.get('error_type')}: {e.error.get('message')}")
            out.append(JournalEntry(seq, e.key, e.kind, e.status, e.result, error, e.at))
        return out

    async def list(self, *, state: str | None = None, name: str | None = None,
                   limit: int = 50) -> list[WorkflowStatus]:
        """Executions, newest first (at most ``limit``), optionally of one state or name."""
        if state is not None and state not in STATES:
            raise invalid_argument("state", f"{state!r} is not one of {', '.join(STATES)}")
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= 10_000:
            raise invalid_argument("limit", f"{limit!r} is not an int from 1 to 10000")
        scan = limit if state is None and name is None else min(limit * 20, 10_000)
        records = await self._storage.messages.list_messages(WORKFLOW_ENTITY, tag=START_TAG,
                                                             limit=scan)
        out: list[WorkflowStatus] = []
        for record in records:
            if name is not None and record.message.headers.get(NAME_HEADER) != name:
                continue
            try:
                status = await self.status(record.message.address.entity_id)
            except ClusterError:
                continue
            if state is None or status.state == state:
                out.append(status)
            if len(out) >= limit:
                break
        return out

    # ---- acting ------------------------------------------------------------------

    async def _call(self, message: Message, timeout: float, what: str) -> None:
        reply = await self._messenger.call(Envelope(message, persisted=True), timeout=timeout,
                                           discard=False)
        if reply is not None and reply.is_error:
            raise_error_reply(reply, what)

    async def send(self, workflow_id: str, topic: str, payload: Any, *,
                   idempotency_key: str | None = None, timeout: float = 30.0) -> None:
        """Send ``payload`` to ``workflow_id``'s ``ctx.recv(topic)`` (consumed once).

        Raises:
            WorkflowError: ``workflow_not_found``; ``workflow_finished`` (it ended:
                nothing is delivered).
        """
        workflow_id = check_workflow_id(workflow_id)
        if not isinstance(topic, str) or not topic or topic.startswith("__"):
            raise invalid_argument("topic", f"{topic!r} is not a topic name")
        if idempotency_key is not None and (not isinstance(idempotency_key, str)
                                            or not idempotency_key):
            raise invalid_argument("idempotency_key", f"{idempotency_key!r} is not a key")
        message = self.signal_message(workflow_id, topic, validate_value(payload, Any),
                                      idempotency_key=idempotency_key)
        await self._call(message, check_seconds("timeout", timeout), f"send to {workflow_id}")

    async def resolve(self, token: str, value: Any, *, timeout: float = 30.0) -> None:
        """Deliver ``value`` to the workflow waiting on the awakeable of ``token``.

        Raises:
            WorkflowError: ``token_invalid`` (forged or garbled), ``workflow_finished``.
        """
        await self.prepare()
        workflow_id, seq = self.tokens.verify(token)
        message = self.signal_message(workflow_id, f"{AWAKEABLE_TOPIC}{seq}",
                                      validate_value(value, Any),
                                      idempotency_key=f"awakeable:{seq}")
        await self._call(message, check_seconds("timeout", timeout), f"resolve {workflow_id}")

    async def get_event(self, workflow_id: str, key: str, *,
                        timeout: float | None = None) -> Any:
        """What ``workflow_id`` published under ``key`` (``ctx.set_event``); waits up
        to ``timeout`` seconds for it (``None``: look once); ``None`` if not set."""
        workflow_id = check_workflow_id(workflow_id)
        if not isinstance(key, str) or not key:
            raise invalid_argument("key", f"{key!r} is not an event key")
        deadline = self._clock.monotonic() + (0.0 if timeout is None
                                              else check_seconds("timeout", timeout))
        pause = 0.005
        while True:
            journal = await self._journal(workflow_id)
            if journal is not None and key in journal.events:
                return journal.events[key]
            if journal is not None and journal.state in TERMINAL:
                return None
            if journal is None and pause == 0.005:
                await self._start_of(workflow_id)  # workflow_not_found
            left = deadline - self._clock.monotonic()
            if left <= 0:
                return None
            await self._clock.sleep(min(pause, left))
            pause = min(pause * 2, 0.25)

    async def cancel(self, workflow_id: str, *, timeout: float = 30.0) -> WorkflowStatus:
        """Cancel an execution: it stops at its next step or wait, its compensations
        and finalizers run; its children (not detached) are cancelled too. Returns
        its status once it ended (or when ``timeout`` passed: the cancel is stored
        and takes effect when a runner serves it)."""
        workflow_id = check_workflow_id(workflow_id)
        timeout = check_seconds("timeout", timeout)
        start = await self._start_of(workflow_id)
        deadline = self._clock.monotonic() + timeout
        await self._call(self.cancel_message(workflow_id), timeout, f"cancel {workflow_id}")
        status = await self.status(workflow_id)
        left = deadline - self._clock.monotonic()
        if not status.done and left > 0:
            # its compensations and finalizers run now; wait for its end (up to timeout)
            with contextlib.suppress(ClusterError):
                await self._messenger.wait_for_reply(Envelope(start, persisted=True),
                                                     timeout=left)
            status = await self.status(workflow_id)
        return status

    async def resume(self, workflow_id: str, *, timeout: float = 10.0) -> WorkflowStatus:
        """Run a parked execution (``failed_nondeterministic``) again, from its journal,
        with the code deployed now.

        Raises:
            ClusterError: ``invalid_transition`` for an execution that is not parked.
        """
        status = await self.status(workflow_id)
        if status.state != "failed_nondeterministic":
            raise ClusterError(f"workflow {workflow_id!r} is {status.state}, not parked "
                               "(failed_nondeterministic): nothing to resume",
                               reason=Reason.INVALID_TRANSITION, workflow_id=workflow_id,
                               state=status.state)
        start = await self._start_of(workflow_id)
        probe = Message(id=self._snowflake.next_id(), address=start.address, tag=RESUME_TAG,
                        payload=self._codec.encode(start.id))
        await self._messenger.call(Envelope(probe, persisted=False), timeout=timeout,
                                   discard=False)
        return await self.status(workflow_id)


def _status_of(workflow_id: str, journal: Journal) -> WorkflowStatus:
    error = None
    for entry in journal.entries.values():
        if entry.status == "failed" and entry.kind == "step" and entry.error:
            error = f"{entry.error.get('error_type')}: {entry.error.get('message')}"
    outcome = journal.outcome
    if outcome is not None and outcome.get("state") != "completed":
        error = f"{outcome.get('error_type')}: {outcome.get('message')}"
    return WorkflowStatus(workflow_id, journal.name, journal.version, journal.state,
                          journal.created_at, journal.updated_at, len(journal.entries),
                          error if journal.state not in ("running", "completed") else None,
                          journal.waiting_for)


def _not_found(workflow_id: str) -> WorkflowError:
    return WorkflowError(f"no workflow with id {workflow_id!r}",
                         reason=Reason.WORKFLOW_NOT_FOUND, workflow_id=workflow_id)


def outcome_error(workflow_id: str, outcome: dict[str, Any]) -> WorkflowError:
    """The error an ended, unsuccessful execution reports to whoever waits for it."""
    state = str(outcome.get("state"))
    reason = {"cancelled": Reason.WORKFLOW_CANCELLED,
              "failed_nondeterministic": Reason.NONDETERMINISM}.get(state, Reason.WORKFLOW_FAILED)
    comps = [f"{c.get('step')}: {c.get('error_type')}: {c.get('message')}"
             for c in outcome.get("compensation_errors") or () if isinstance(c, dict)]
    message = f"workflow {workflow_id!r} {state}: {outcome.get('error_type')}: " \
              f"{outcome.get('message')}"
    if comps:
        message += f" (compensations that failed: {'; '.join(comps)})"
    return WorkflowError(message, reason=reason, workflow_id=workflow_id, state=state,
                         error_type=outcome.get("error_type"), message=outcome.get("message"),
                         step=outcome.get("step"), compensation_errors=comps)

