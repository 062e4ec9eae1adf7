"""BlockPool: prefix hits, reference counting, LRU eviction, all-or-nothing allocation, events,
and block conservation under random operations."""

from __future__ import annotations

import numpy as np
import pytest

from envs.sim.kv_cache import BlockPool


class Recorder:
    def __init__(self, pool: BlockPool) -> None:
        self.events: list[tuple[str, int]] = []
        pool.subscribe(lambda kind, block_hash: self.events.append((kind, block_hash)))


def fill(pool: BlockPool, hashes: list[int]) -> list[int]:
    """Allocate private blocks for `hashes` and register them all, as a finished prefill does."""
    assert pool.allocate(len(hashes))
    held = []
    for block_hash in hashes:
        assert pool.register(block_hash)
        held.append(block_hash)
    return held


def test_match_prefix_counts_leading_cached_blocks_and_stops_at_first_miss():
    pool = BlockPool(10)
    fill(pool, [1, 2, 3, 5])
    assert pool.match_prefix([1, 2, 3, 4, 5], 5) == 3
    assert pool.match_prefix([1, 2, 3, 4, 5], 2) == 2  # capped by limit
    assert pool.match_prefix([9, 1, 2], 3) == 0  # later hits do not count after a miss
    assert pool.match_prefix([1, 2, 3, 5], 4) == 4
    assert BlockPool(10, enable_prefix_caching=False).match_prefix([1], 1) == 0


def test_inactive_blocks_still_hit():
    pool = BlockPool(10)
    held = fill(pool, [1, 2, 3])
    pool.release(held, 0)
    assert (pool.num_active, pool.num_available) == (0, 10)
    assert pool.match_prefix([1, 2, 3], 3) == 3


def test_reference_counting():
    pool = BlockPool(8)
    held = fill(pool, [1, 2])  # request A
    pool.acquire([1, 2])  # request B hits the same prefix
    assert pool.num_active == 2  # shared blocks are counted once
    pool.release(held, 0)  # A leaves: B still references both
    assert (pool.num_active, pool.num_available) == (2, 6)
    pool.release([1, 2], 0)  # B leaves: both become inactive (evictable, still cached)
    assert (pool.num_active, pool.num_available, pool.num_free) == (0, 8, 6)
    pool.acquire([1])  # an inactive block becomes active again
    assert (pool.num_active, pool.num_available) == (1, 7)
    assert pool.is_cached(2)


def test_private_blocks_return_straight_to_free():
    pool = BlockPool(8)
    assert pool.allocate(3)
    assert pool.register(11)
    pool.release([11], 2)
    assert (pool.num_free, pool.num_available, pool.num_active) == (7, 8, 0)
    assert pool.is_cached(11)


def test_register_of_already_cached_content_stays_private():
    pool = BlockPool(8)
    rec = Recorder(pool)
    fill(pool, [1])
    assert pool.allocate(1)
    assert not pool.register(1)  # another request registered this content first
    assert rec.events == [("stored", 1)]
    pool.release([], 1)  # the duplicate goes back as a private block
    assert (pool.num_free, pool.num_active) == (7, 1)
    assert not BlockPool(4, enable_prefix_caching=False).register(1)


def test_lru_eviction_order_tail_before_head():
    pool = BlockPool(5)
    rec = Recorder(pool)
    a = fill(pool, [1, 2, 3])
    b = fill(pool, [4, 5])
    assert pool.num_free == 0
    pool.release(a, 0)  # inactive, least recent first: 3, 2, 1 (tail first)
    pool.release(b, 0)  # then 5, 4
    rec.events.clear()
    assert pool.allocate(2)
    assert rec.events == [("removed", 3), ("removed", 2)]
    assert pool.match_prefix([1, 2, 3], 3) == 1  # the head of A survives
    assert pool.allocate(2)
    assert rec.events[2:] == [("removed", 1), ("removed", 5)]
    assert [pool.is_cached(h) for h in (1, 2, 3, 4, 5)] == [False, False, False, True, False]


def test_acquired_blocks_leave_the_lru():
    pool = BlockPool(3)
    rec = Recorder(pool)
    held = fill(pool, [1, 2, 3])
    pool.release(held, 0)  # LRU: 3, 2, 1
    pool.acquire([3])  # 3 is in use again, so it cannot be evicted
    rec.events.clear()
    assert pool.allocate(2)
    assert rec.events == [("removed", 2), ("removed", 1)]
    assert not pool.allocate(1)


def test_failed_allocation_changes_nothing():
    pool = BlockPool(6)
    rec = Recorder(pool)
    held = fill(pool, [1, 2, 3])
    pool.release(held[1:], 0)  # 2 and 3 inactive, 1 active
    assert pool.allocate(1)  # 2 free + 2 inactive left
    before = (pool.num_free, pool.num_available, pool.num_active, [pool.is_cached(h) for h in (1, 2, 3)])
    rec.events.clear()
    assert not pool.allocate(5)
    assert rec.events == []
    assert (
        pool.num_free,
        pool.num_available,
        pool.num_active,
        [pool.is_cached(h) for h in (1, 2, 3)],
    ) == before
    assert pool.allocate(4)  # exactly what is available succeeds, evicting both inactive blocks
    assert sorted(rec.events) == [("removed", 2), ("removed", 3)]
    assert pool.num_available == 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_operations_conserve_blocks(seed):
    """num_free + private + active + inactive == num_blocks after every operation, and the
    KV events replay to exactly the set of cached hashes."""
    rng = np.random.default_rng(seed)
    num_blocks = 40
    pool = BlockPool(num_blocks)
    stored: set[int] = set()
    counts = {"stored": 0, "removed": 0, "refused": 0}

    def on_event(kind: str, block_hash: int) -> None:
        counts[kind] += 1
        if kind == "stored":
            stored.add(block_hash)
        else:
            stored.remove(block_hash)

    pool.subscribe(on_event)
    # A few prefix families: hash = family * 100 + position, so prompts share prefixes.
    live: list[dict] = []  # {"held": [...], "private": int}
    for _ in range(3000):
        op = rng.random()
        if op < 0.45:
            family, length = int(rng.integers(4)), int(rng.integers(1, 12))
            hashes = [family * 100 + j for j in range(length)]
            hits = pool.match_prefix(hashes, length)
            assert all(pool.is_cached(h) for h in hashes[:hits])
            need = length - hits + int(rng.integers(0, 3))  # plus a partial tail block or two
            pool.acquire(hashes[:hits])  # claim the hits first, as the engine does
            if not pool.allocate(need):
                pool.release(hashes[:hits], 0)
                counts["refused"] += 1
                continue
            seq = {"held": hashes[:hits], "private": need}
            for h in hashes[hits:]:
                if pool.register(h):
                    seq["held"].append(h)
                    seq["private"] -= 1
            live.append(seq)
        elif live:
            seq = live.pop(int(rng.integers(len(live))))
            pool.release(seq["held"], seq["private"])
        private = sum(seq["private"] for seq in live)
        distinct_active = len({h for seq in live for h in seq["held"]})
        inactive = pool.num_available - pool.num_free
        assert pool.num_active == private + distinct_active
        assert pool.num_free + private + distinct_active + inactive == num_blocks
        assert min(pool.num_free, inactive, private) >= 0
        assert len(stored) == distinct_active + inactive
    assert min(counts.values()) > 20, counts  # the walk did evict, and did run out of blocks
    for seq in live:
        pool.release(seq["held"], seq["private"])
    assert pool.num_active == 0
    assert pool.num_available == num_blocks
