"""Argument checks of :class:`~covey.storage.RunnerStorage`, shared by every backend.

They run once, in :mod:`covey.storage._checked`, before anything is read,
written or locked, so a malformed value is refused the same way on memory,
SQLite and PostgreSQL: a non-retryable :class:`~covey.core.ClusterError` with
reason ``invalid_argument`` and ``details["field"]`` naming the argument.

Why it matters: a registration is read back by every runner at every membership
refresh. One malformed row (an address that does not parse back, a groups value
that is not a list of names) would make every ``live_runners()`` fail, and with
it membership on every runner. A huge weight or group list would make every
runner build a huge hash ring or shard list. And on PostgreSQL a shard number
outside ``int4`` fails inside the lock session, which is then dropped with every
lock it held.

What a registration may be:

* a **runner**: ``RunnerAddress(host, port)`` with a non-empty host (at most
  :data:`~covey.core.MAX_NAME_BYTES` UTF-8 bytes, no NUL or lone surrogate) and a
  port in 1..65535, a weight in 1..:data:`MAX_RUNNER_WEIGHT` and at most
  :data:`MAX_RUNNER_GROUPS` shard groups (valid names);
* a **client-only** process (it only reserves a machine id): port 0, weight 0 and
  no groups. It serves nothing, so it may not acquire shards either.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from covey.core import MAX_NAME_BYTES, RunnerAddress, ShardId
from covey.core.runtime import check_text
from covey.storage._checks import check_shard_ids
from covey.storage._errors import invalid

#: The largest runner weight. A runner puts 128 points per unit of weight on the
#: assignment ring that every runner computes; ratios beyond 1000:1 mean nothing
#: with hundreds of shards, and a larger weight would only slow every runner down.
MAX_RUNNER_WEIGHT = 1000
#: The most shard groups one runner may serve: every runner lists the shards of
#: every group any live runner serves.
MAX_RUNNER_GROUPS = 64
_MAX_PORT = 65535


def _int(value: object) -> int | None:
    """``value`` if it is an int (a bool is not), else ``None``."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def check_runner_address(address: object, *, serving: bool = False) -> RunnerAddress:
    """``address`` if it is a runner address every backend stores and reads back.

    Args:
        address: the value to check.
        serving: whether the address must be one that serves shards (port >= 1);
            otherwise port 0, a client-only registration, is allowed too.

    Raises:
        ClusterError: reason ``invalid_argument``; ``details["field"]`` is
            ``address``, ``address.host`` or ``address.port``.
    """
    if not isinstance(address, RunnerAddress):
        raise invalid("address", address, f"a RunnerAddress, not {type(address).__name__}")
    check_text("address.host", address.host, max_bytes=MAX_NAME_BYTES)
    port = _int(address.port)
    if port is None or not (1 if serving else 0) <= port <= _MAX_PORT:
        why = ("a runner that serves shards has a port in 1..65535" if serving
               else "a port is an int in 0..65535 (0: a client-only registration)")
        raise invalid("address.port", address.port, why)
    return address


def check_groups(groups: object) -> tuple[str, ...]:
    """``groups`` as a tuple if it is a sequence of at most 64 valid shard-group names.

    A bare string is refused: it would be read as its characters.
    """
    if isinstance(groups, str | bytes) or not isinstance(groups, Sequence):
        raise invalid("groups", groups, "a sequence of shard-group names")
    if len(groups) > MAX_RUNNER_GROUPS:
        raise invalid("groups", f"{len(groups)} groups",
                      f"a runner serves at most {MAX_RUNNER_GROUPS} shard groups")
    for group in groups:
        check_text("groups", group, max_bytes=MAX_NAME_BYTES)
    return tuple(groups)


def check_weight(weight: object, *, serving: bool) -> int:
    """``weight`` if it is an int in 1..:data:`MAX_RUNNER_WEIGHT` (``serving``) or 0."""
    value = _int(weight)
    if serving:
        if value is None or not 1 <= value <= MAX_RUNNER_WEIGHT:
            raise invalid("weight", weight,
                          f"a runner's weight is an int in 1..{MAX_RUNNER_WEIGHT}")
    elif value != 0:
        raise invalid("weight", weight,
                      "a client-only registration (port 0) serves nothing: weight 0")
    return value or 0


def check_registration(address: object, groups: object,
                       weight: object) -> tuple[RunnerAddress, tuple[str, ...], int]:
    """Refuse a ``register`` call no backend may store (see the module docstring).

    Returns the address, the groups as a tuple and the weight.

    Raises:
        ClusterError: reason ``invalid_argument``; ``details["field"]`` names the
            argument (``address``, ``address.host``, ``address.port``, ``groups``
            or ``weight``).
    """
    checked = check_runner_address(address)
    serving = checked.port != 0
    names = check_groups(groups)
    if not serving and names:
        raise invalid("groups", groups,
                      "a client-only registration (port 0) serves no shard groups")
    return checked, names, check_weight(weight, serving=serving)


def check_max_age(max_age: object) -> float:
    """``max_age`` as a float if it is a number of seconds, not negative and not NaN.

    ``inf`` is allowed: every registered runner, whatever its last heartbeat
    (``Storage.info`` counts them so). NaN would match no row on one backend and
    every row on another.
    """
    if not isinstance(max_age, int | float) or isinstance(max_age, bool):
        raise invalid("max_age", max_age, "a number of seconds")
    try:
        seconds = float(max_age)
    except OverflowError:  # an int beyond any float
        raise invalid("max_age", max_age, "a number of seconds a float can hold") from None
    if math.isnan(seconds) or seconds < 0:
        raise invalid("max_age", max_age, "a number of seconds, not negative")
    return seconds


def check_runner_shards(address: object, shards: object, *,
                        serving: bool = False) -> list[ShardId]:
    """Refuse a malformed ``acquire`` / ``refresh`` / ``release``; the shards, sorted.

    ``address`` as :func:`check_runner_address` (``serving`` for ``acquire``: a
    client-only registration holds no shards); ``shards`` a collection of shard
    ids with a valid group name and a number in 1..2**31-1.
    """
    check_runner_address(address, serving=serving)
    return check_shard_ids(shards)
