from __future__ import annotations

import threading

import pytest

from covey.core import EPOCH_MS, ClusterError, SnowflakeGenerator, parse_snowflake


def test_ids_are_increasing_and_carry_their_parts() -> None:
    gen = SnowflakeGenerator(37, now_ms=lambda: EPOCH_MS + 5_000)
    ids = [gen.next_id() for _ in range(100)]
    assert ids == sorted(ids) and len(set(ids)) == 100
    parts = parse_snowflake(ids[3])
    assert parts.machine_id == 37 and parts.timestamp_ms == EPOCH_MS + 5_000
    assert parts.sequence == 3


def test_sequence_overflow_borrows_the_next_millisecond() -> None:
    gen = SnowflakeGenerator(1, now_ms=lambda: EPOCH_MS + 10)
    ids = [gen.next_id() for _ in range(5000)]
    assert len(set(ids)) == 5000 and ids == sorted(ids)
    assert parse_snowflake(ids[-1]).timestamp_ms == EPOCH_MS + 11


def test_clock_going_back_never_repeats_an_id() -> None:
    times = iter([EPOCH_MS + 100, EPOCH_MS + 50, EPOCH_MS + 50, EPOCH_MS + 101])
    gen = SnowflakeGenerator(2, now_ms=lambda: next(times))
    ids = [gen.next_id() for _ in range(4)]
    assert ids == sorted(ids) and len(set(ids)) == 4


def test_concurrent_generators_never_collide() -> None:
    generators = [SnowflakeGenerator(m) for m in range(4)]
    out: list[list[int]] = [[] for _ in range(8)]

    def work(slot: int) -> None:
        gen = generators[slot % 4]  # two threads share each generator
        out[slot].extend(gen.next_id() for _ in range(20_000))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [i for chunk in out for i in chunk]
    assert len(every) == 160_000 and len(set(every)) == 160_000
    assert all(i > 0 for i in every)


@pytest.mark.parametrize("bad", [-1, 1024])
def test_machine_id_range(bad: int) -> None:
    with pytest.raises(ClusterError):
        SnowflakeGenerator(bad)
