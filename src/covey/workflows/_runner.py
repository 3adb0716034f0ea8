"""WorkflowRunner: runs the workflow executions of the shards a runner owns.

The deliverer of ``covey.Workflow`` messages. An execution's start message
(tag ``start``) runs it (:class:`~covey.workflows._execution.Execution`, one
at a time per workflow id on this runner); a ``signal`` adds to its mailbox
and wakes it; a ``cancel`` sets its flag and interrupts it; a transactional
step's own message read back from storage (its runner died mid-step) wakes
the execution it belongs to.

All journal writes of one workflow id on this runner are serialized by one
lock, so an execution and the signals that arrive while it runs never race;
another runner is kept out by the shard's fence.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import msgpack

from covey.core import (
    Clock,
    ClusterError,
    EntityError,
    FencedOut,
    MsgpackCodec,
    Reason,
    ShardId,
    VersionConflict,
    WorkflowError,
    metrics,
)
from covey.core.runtime import TaskSet
from covey.sharding.runtime import Completed, Deferred, Envelope, Reschedule, error_payload
from covey.storage import Fence, Message, Reply, Storage, UnitOfWork
from covey.workflows._context import CHILD_TOPIC
from covey.workflows._definition import (
    FRESH_HEADER,
    NAME_HEADER,
    PARENT_HEADER,
    PAYLOAD_VERSION_HEADER,
    START_TAG,
    VERSION_HEADER,
    Workflow,
    payload_version,
)
from covey.workflows._execution import TERMINAL, Execution
from covey.workflows._journal import Journal, journal_key
from covey.workflows._steps import STEP_TAG

if TYPE_CHECKING:
    from covey.workflows._workflows import Workflows

log = logging.getLogger("covey.workflows")

SIGNAL_TAG = "signal"
CANCEL_TAG = "cancel"
RESUME_TAG = "__resume__"
#: a start message of a workflow this runner does not declare (or of a newer
#: version) is left to other runners and looked at again after this long
UNKNOWN_DELAY = 5.0


class _Slot:
    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0


class WorkflowRunner:
    """The deliverer of ``covey.Workflow`` envelopes on one runner.

    Args:
        clock: time source.
        storage: the store (journals, messages).
        epoch_of: the epoch this runner holds a shard at (``None``: not held).
        fenced: told of a shard whose fence went stale.
        wake_sent: pushes messages stored by a commit to their owners.
        rerun: resets a stored message of a shard held here and runs it again.
        client: the workflows facade (starting children, building messages).
        key: the secret awakeable tokens are signed with.
        tasks: the runner's task set for executions.
    """

    def __init__(self, clock: Clock, storage: Storage, *,
                 epoch_of: Callable[[ShardId], int | None],
                 fenced: Callable[[list[ShardId]], Awaitable[None]],
                 wake_sent: Callable[[list[Message]], None],
                 rerun: Callable[[int], Awaitable[None]],
                 next_id: Callable[[], int],
                 client: Workflows, tasks: TaskSet) -> None:
        self.clock = clock
        self.storage = storage
        self.state = storage.state
        self.messages = storage.messages
        self._epoch_of = epoch_of
        self._fenced = fenced
        self._wake_sent = wake_sent
        self._rerun = rerun
        self._next_id = next_id
        self._client = client
        self._tasks = tasks
        self._codec = MsgpackCodec()
        self.specs: dict[str, Workflow] = {}
        self.live: dict[str, Execution] = {}
        self._slots: dict[str, _Slot] = {}

    def add(self, spec: Workflow) -> None:
        if spec.name in self.specs:
            raise ClusterError(f"workflow {spec.name!r} is declared twice",
                               reason=Reason.INVALID_ARGUMENT)
        self.specs[spec.name] = spec

    # ---- ExecutionHost ---------------------------------------------------

    def next_id(self) -> int:
        return self._next_id()

    async def fenced(self, shard: ShardId) -> None:
        await self._fenced([shard])

    def wake_sent(self, messages: list[Message]) -> None:
        if messages:
            self._wake_sent(messages)

    def complete_later(self, reply: Reply, fence: Fence) -> None:
        """Store an ended execution's reply in the background (its journal has it)."""
        self._tasks.spawn(self._complete(reply, fence), name="covey-workflow-reply")

    async def _complete(self, reply: Reply, fence: Fence) -> None:
        try:
            await self.messages.save_reply(reply, fence)
        except ClusterError as exc:  # its start message runs again and stores it then
            log.debug("storing the reply of workflow message %s failed: %s",
                      reply.request_id, exc)

    def release(self, execution: Execution) -> None:
        if self.live.get(execution.workflow_id) is execution:
            del self.live[execution.workflow_id]
        metrics.WORKFLOWS_RUNNING.labels(execution.spec.name).dec()
        self._unuse(execution.workflow_id)

    def child_messages(self, execution: Execution, outcome: dict[str, Any],
                       cancelled: bool) -> list[Message]:
        out: list[Message] = []
        parent = execution.start.headers.get(PARENT_HEADER)
        if parent:
            out.append(self._client.signal_message(
                parent, f"{CHILD_TOPIC}{execution.workflow_id}", outcome,
                idempotency_key=f"child:{execution.workflow_id}"))
        if cancelled:
            out.extend(self._client.cancel_message(child) for child in execution.j.children)
        return out

    async def start_child(self, execution: Execution, workflow: Workflow | str,
                          payload: Any, child_id: str, detached: bool) -> None:
        await self._client.start(workflow, payload, workflow_id=child_id,
                                 parent=None if detached else execution.workflow_id)

    def sign(self, workflow_id: str, seq: int) -> str:
        return self._client.tokens.sign(workflow_id, seq)

    # ---- delivery ----------------------------------------------------------

    async def deliver(self, envelope: Envelope, unit: UnitOfWork | None = None
                      ) -> Reply | Reschedule | Completed | Deferred:
        """Run a workflow message here (see the module docstring)."""
        message = envelope.message
        if not envelope.persisted:
            return await self._control(message)
        try:
            if message.tag == START_TAG:
                return await self._start(message)
            if message.tag == SIGNAL_TAG:
                return await self._signal(message, cancel=False)
            if message.tag == CANCEL_TAG:
                return await self._signal(message, cancel=True)
            if message.tag == STEP_TAG:
                return await self._step_message(message)
        except ClusterError as exc:
            if exc.reason in (Reason.NOT_OWNER, Reason.SHUTTING_DOWN) or exc.retryable:
                raise
            return Reply(message.id, error_payload(exc), is_error=True)
        error = WorkflowError(f"unknown workflow message tag {message.tag!r}",
                              reason=Reason.INVALID_ARGUMENT)
        return Reply(message.id, error_payload(error), is_error=True)

    async def _start(self, start: Message) -> Completed | Deferred | Reschedule:
        name = start.headers.get(NAME_HEADER, "")
        spec = self.specs.get(name)
        if spec is None:
            return Reschedule(self.clock.now() + UNKNOWN_DELAY,
                              f"workflow {name!r} is not declared on this runner")
        version = int(start.headers.get(VERSION_HEADER, "1") or 1)
        if version > spec.version:
            return Reschedule(self.clock.now() + UNKNOWN_DELAY,
                              f"workflow {name!r} version {version} is newer than this "
                              f"runner's ({spec.version})")
        stored = int(start.headers.get(PAYLOAD_VERSION_HEADER, "1") or 1)
        if stored > payload_version(spec):
            return Reschedule(self.clock.now() + UNKNOWN_DELAY,
                              f"workflow {name!r}: its payload is version {stored} of its "
                              f"model, newer than this runner's ({payload_version(spec)})")
        execution = self.live.get(start.address.entity_id)
        if execution is None or execution.closed:
            execution = self._launch(start, spec)
        return await asyncio.shield(execution.outcome)

    def _launch(self, start: Message, spec: Workflow) -> Execution:
        shard = start.address.shard
        epoch = self._epoch_of(shard)
        if epoch is None:
            raise EntityError(f"shard {shard} is not served here", reason=Reason.NOT_OWNER)
        workflow_id = start.address.entity_id
        slot = self._use(workflow_id)
        execution = Execution(self, spec, start, Fence(shard, epoch), slot.lock, self._codec,
                              fresh=start.headers.get(FRESH_HEADER) == "1")
        self.live[workflow_id] = execution
        metrics.WORKFLOWS_RUNNING.labels(spec.name).inc()
        self._tasks.spawn(execution.run(), name="covey-workflow")
        return execution

    async def _kick(self, start_id: int) -> None:
        """Run the execution of ``start_id`` now (a signal arrived while it waited)."""
        start = await self.messages.get(start_id)
        if start is None:
            return
        execution = self.live.get(start.address.entity_id)
        if execution is not None and not execution.closed:
            execution.notify()
            return
        spec = self.specs.get(start.headers.get(NAME_HEADER, ""))
        if spec is None:
            return  # a runner that declares it runs it when its timer comes due
        with contextlib.suppress(ClusterError):
            self._launch(start, spec)

    async def _signal(self, message: Message, *, cancel: bool) -> Reply:
        workflow_id = message.address.entity_id
        item: dict[str, Any] = {}
        if not cancel:
            item = self._codec.decode(message.payload, dict[str, Any])
            item["i"] = message.id
        async with self._locked(workflow_id):
            execution = self.live.get(workflow_id)
            if execution is not None and not execution.closed and execution.journal:
                if _apply(execution.j, message.id, item, cancel):
                    await execution.write_locked()
                if cancel:
                    execution.cancel_body()
                else:
                    execution.notify()
                return Reply(message.id, b"")
            journal, version = await self._journal(workflow_id)
            if journal is None:
                found = await self._client.find_start(workflow_id)
                if found is None:
                    raise WorkflowError(f"no workflow with id {workflow_id!r}",
                                        reason=Reason.WORKFLOW_NOT_FOUND,
                                        workflow_id=workflow_id)
                journal = Journal(found.headers.get(NAME_HEADER, ""),
                                  int(found.headers.get(VERSION_HEADER, "1") or 1), found.id,
                                  self.clock.now(), state="pending")
            parked = journal.state == "failed_nondeterministic"
            if journal.state in TERMINAL and not parked:
                if cancel:
                    return Reply(message.id, b"")
                raise WorkflowError(
                    f"workflow {workflow_id!r} has ended ({journal.state}); the signal "
                    "was not delivered", reason=Reason.WORKFLOW_FINISHED,
                    workflow_id=workflow_id, state=journal.state)
            if _apply(journal, message.id, item, cancel):
                journal.updated_at = self.clock.now()
                await self._write(message.address.shard, workflow_id, journal, version)
            # a parked execution keeps what it is sent for when it is resumed
            kick = None if parked else journal.start_id
        if kick is not None:
            await self._kick(kick)
        return Reply(message.id, b"")

    async def _write(self, shard: ShardId, workflow_id: str, journal: Journal,
                     version: int | None) -> None:
        epoch = self._epoch_of(shard)
        if epoch is None:
            raise EntityError(f"shard {shard} is not served here", reason=Reason.NOT_OWNER)
        try:
            await self.state.set(journal_key(workflow_id), journal.encode(),
                                 expected_version=version, fence=Fence(shard, epoch))
        except FencedOut:
            await self._fenced([shard])
            raise EntityError(f"shard {shard} is not served here",
                              reason=Reason.NOT_OWNER) from None
        except VersionConflict as exc:
            raise EntityError(f"workflow {workflow_id!r}: its journal changed meanwhile",
                              reason=Reason.VERSION_CONFLICT) from exc

    async def _journal(self, workflow_id: str) -> tuple[Journal | None, int | None]:
        key = journal_key(workflow_id)
        stored = await self.state.get(key)
        if stored is None:
            return None, None
        return Journal.decode(stored.value, key), stored.version

    async def _step_message(self, message: Message) -> Completed | Deferred:
        """A transactional step's message read back from storage: its run did not
        finish; the execution it belongs to runs again (and finds it)."""
        workflow_id = message.address.entity_id
        journal, _ = await self._journal(workflow_id)
        if journal is not None and journal.state in TERMINAL:
            reply = Reply(message.id, b"abandoned: the workflow ended", is_error=True)
            epoch = self._epoch_of(message.address.shard)
            if epoch is not None:
                with contextlib.suppress(ClusterError):
                    await self.messages.save_reply(reply, Fence(message.address.shard, epoch))
            return Completed(reply)
        if journal is not None and workflow_id not in self.live:
            await self._kick(journal.start_id)
        return Deferred()

    async def _control(self, message: Message) -> Reply:
        """Volatile requests about an execution owned here: resume a parked one."""
        if message.tag != RESUME_TAG:
            raise EntityError(f"unknown workflow request {message.tag!r}",
                              reason=Reason.UNKNOWN_RPC)
        start_id: int = self._codec.decode(message.payload, int)
        workflow_id = message.address.entity_id
        async with self._locked(workflow_id):
            journal, version = await self._journal(workflow_id)
            if journal is None or journal.state != "failed_nondeterministic":
                return Reply(message.id, self._codec.encode(False))
            # parked: it runs again from its journal, with the code deployed now
            journal.state, journal.outcome, journal.updated_at = "running", None, self.clock.now()
            await self._write(message.address.shard, workflow_id, journal, version)
        # unprocessed again (any cached reply forgotten), then run now: its stored
        # deliver_at may still be a wait's timer, which would hold a plain re-run back
        await self._rerun(start_id)
        await self._kick(start_id)
        return Reply(message.id, self._codec.encode(True))

    # ---- locks -------------------------------------------------------------

    def _use(self, workflow_id: str) -> _Slot:
        slot = self._slots.get(workflow_id)
        if slot is None:
            slot = self._slots[workflow_id] = _Slot()
        slot.users += 1
        return slot

    def _unuse(self, workflow_id: str) -> None:
        slot = self._slots.get(workflow_id)
        if slot is not None:
            slot.users -= 1
            if slot.users <= 0:
                del self._slots[workflow_id]

    @contextlib.asynccontextmanager
    async def _locked(self, workflow_id: str) -> AsyncIterator[None]:
        slot = self._use(workflow_id)
        try:
            async with slot.lock:
                yield
        finally:
            self._unuse(workflow_id)

    # ---- stopping ------------------------------------------------------------

    async def stop_shards(self, shards: set[ShardId], *, graceful: bool) -> None:
        """Stop the executions of ``shards`` (the next owner runs them from their journal)."""
        stopping = [e for e in self.live.values() if e.start.address.shard in shards]
        for execution in stopping:
            execution.stop()
        if stopping:
            await asyncio.wait([e.outcome for e in stopping], timeout=2.0)

    async def close(self) -> None:
        for execution in list(self.live.values()):
            execution.stop()
        await self._tasks.close()


def _apply(journal: Journal, message_id: int, item: dict[str, Any], cancel: bool) -> bool:
    """Add a signal (or the cancel flag) to ``journal``; ``False`` if it is there already."""
    if cancel:
        if journal.cancel:
            return False
        journal.cancel = True
        return True
    if message_id in journal.seen:
        return False
    journal.seen.append(message_id)
    journal.inbox.append({"t": item.get("t"), "p": item.get("p"), "i": message_id})
    return True


class Tokens:
    """Signs and checks awakeable tokens (HMAC-SHA256 with the cluster's key)."""

    def __init__(self, key: Callable[[], bytes]) -> None:
        self._key = key

    def sign(self, workflow_id: str, seq: int) -> str:
        body = msgpack.packb([workflow_id, seq], use_bin_type=True)
        mac = hmac.new(self._key(), body, hashlib.sha256).digest()[:16]
        return (base64.urlsafe_b64encode(body).decode().rstrip("=") + "."
                + base64.urlsafe_b64encode(mac).decode().rstrip("="))

    def verify(self, token: object) -> tuple[str, int]:
        """``(workflow id, sequence number)`` of a genuine token.

        Raises:
            WorkflowError: ``token_invalid`` for anything else.
        """
        invalid = WorkflowError("the awakeable token is not genuine",
                                reason=Reason.TOKEN_INVALID)
        if not isinstance(token, str) or token.count(".") != 1 or len(token) > 4096:
            raise invalid
        body_text, mac_text = token.split(".")
        try:
            body = base64.urlsafe_b64decode(body_text + "=" * (-len(body_text) % 4))
            mac = base64.urlsafe_b64decode(mac_text + "=" * (-len(mac_text) % 4))
        except ValueError:
            raise invalid from None
        expected = hmac.new(self._key(), body, hashlib.sha256).digest()[:16]
        if not hmac.compare_digest(mac, expected):
            raise invalid
        try:
            workflow_id, seq = msgpack.unpackb(body, raw=False)
        except Exception:
            raise invalid from None
        if not isinstance(workflow_id, str) or not isinstance(seq, int):
            raise invalid
        if not hmac.compare_digest(self.sign(workflow_id, seq), token):
            raise invalid  # only the token as issued: no other spelling of it
        return workflow_id, seq
