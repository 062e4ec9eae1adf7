"""Lower KV-cache tiers of one worker: G2 (host DRAM) and G3 (local disk) under G1 (the BlockPool).

What we follow (Dynamo's mocker, `lib/mocker/src/host_offload/{policy,manager}.rs` - the native
`--num-host-blocks` G2 model resolved to vLLM's `OffloadingConnector` defaults - and KVBM,
`lib/mocker/src/kvbm_offload/config.rs`, docs `kvbm-guide.md`):
- Write-through on store: a block is offloaded when it is computed and cached in G1 (the mocker's
  `StoreTrigger::BlocksCompleted`, submitted at the end of the engine step), not when G1 evicts it;
  a block that lands in G2 is written on to G3 (KVBM's G1->G2->G3 chain). A write is skipped when
  the block is already in (or on its way to) the tier (`StoreAdmission::MissingFromG2`).
- A write reserves its slot when it is submitted and the block becomes resident (visible to lookups
  and to the router) when the write finishes. Making room evicts the least recently used resident
  block (`CapacityHandling::EvictOrRetry`, `G2EvictionPolicy::Lru`); blocks being written are not
  evictable.
- Each direction of each link is one FIFO lane (`FifoTransferLane`): a transfer starts when the
  lane is free and takes bytes / bandwidth; 0 GB/s means no delay (the mocker's rule).
- Lookup is G1 first, then the contiguous continuation in G2, then in G3
  (`LookupOrder::G1ThenG2`); the blocks found are touched so the earliest becomes most recent
  (reverse logical order), and they keep their lower-tier copy after onboarding
  (`PostLoadResidency::RetainG2Copy`).
- Onboarding is asynchronous and fences only the request that needs it
  (`LoadExecution::Async`, `LoadFence::DependentRequest`): the request takes its G1 blocks, leaves
  the waiting queue while the load runs, and is scheduled again when it lands; other requests keep
  running (see `Engine._claim_lower_tiers`).

Where we deviate, and why:
- Writes that back up: a write needs a free or evictable slot; when every slot holds a write in
  flight the block is dropped (counted in `num_dropped_writes`) instead of retried on a later pass.
  Dropping bounds the backlog at the tier's capacity, and a retried write would land too late to
  matter; the mocker's other back-pressure, fencing the G1 source block until its write finishes,
  is not modelled, so that G1 accounting stays exactly as without tiers (the mocker's KVBM path
  takes the same shortcut: its source blocks are never read).
- G3 is read straight into G1 over its own lane (a GDS-style path), in parallel with G2 reads,
  where KVBM stages G3 blocks through G2; the request is ready when both loads are done.
- Offload covers every block cached in G1, outputs included (KVBM offloads on register), where
  the native vLLM profile stores prompt blocks only.
- Lower-tier blocks are not pinned while they are read: bytes are not modelled, only time.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Sequence

from envs.sim.kv_tiers_config import KvTiersConfig


class FifoLane:
    """One direction of a link: transfers run one after another at `bandwidth_gbps`."""

    __slots__ = ("_s_per_block", "tail_s")

    def __init__(self, bandwidth_gbps: float, block_bytes: float) -> None:
        self._s_per_block = block_bytes / (bandwidth_gbps * 1e9) if bandwidth_gbps > 0 else 0.0
        self.tail_s = 0.0

    def submit(self, now_s: float, num_blocks: int) -> float:
        """Queue a transfer of `num_blocks`; returns when it finishes."""
        self.tail_s = max(now_s, self.tail_s) + num_blocks * self._s_per_block
        return self.tail_s


class LowerTier:
    """One lower tier: LRU residency, writes in flight, and its write and read lanes."""

    __slots__ = ("_writes", "capacity_blocks", "num_dropped_writes", "pending", "read", "resident", "write")

    def __init__(self, capacity_blocks: int, offload_gbps: float, onboard_gbps: float, block_bytes: float):
        self.capacity_blocks = capacity_blocks
        self.resident: OrderedDict[int, None] = OrderedDict()  # least recently used first
        self.pending: set[int] = set()  # writes in flight (each holds a slot)
        self._writes: deque[tuple[float, int]] = deque()  # (done_s, hash): FIFO, so in done order
        self.write = FifoLane(offload_gbps, block_bytes)
        self.read = FifoLane(onboard_gbps, block_bytes)
        self.num_dropped_writes = 0

    def start_write(self, block_hash: int, now_s: float) -> None:
        """Offload one block unless the tier has it or is writing it already."""
        if block_hash in self.resident or block_hash in self.pending:
            return
        if len(self.resident) + len(self.pending) >= self.capacity_blocks:
            if not self.resident:
                self.num_dropped_writes += 1  # every slot is a write in flight: drop (see module doc)
                return
            self.resident.popitem(last=False)
        self.pending.add(block_hash)
        self._writes.append((self.write.submit(now_s, 1), block_hash))

    def finish_writes(self, now_s: float) -> list[tuple[float, int]]:
        """Make every write done by `now_s` resident; returns them as (done_s, hash)."""
        writes = self._writes
        done: list[tuple[float, int]] = []
        while writes and writes[0][0] <= now_s:
            done_s, block_hash = writes.popleft()
            self.pending.discard(block_hash)
            self.resident[block_hash] = None
            done.append((done_s, block_hash))
        return done

    def match(self, block_hashes: Sequence[int], start: int, limit: int) -> int:
        """Resident blocks contiguous from `block_hashes[start]` (at most up to `limit`)."""
        resident = self.resident
        end = start
        while end < limit and block_hashes[end] in resident:
            end += 1
        return end - start

    def touch(self, block_hashes: Sequence[int]) -> None:
        """Mark hits most recently used, the earliest block last (it is shared most)."""
        resident = self.resident
        for block_hash in reversed(block_hashes):
            resident.move_to_end(block_hash)


class KvTiers:
    """G2 and (optionally) G3 of one worker, fed write-through from its G1 BlockPool."""

    __slots__ = ("disk", "host")

    def __init__(self, config: KvTiersConfig, block_bytes: float) -> None:
        self.host = LowerTier(
            config.host_blocks, config.host_offload_gbps, config.host_onboard_gbps, block_bytes
        )
        self.disk = (
            LowerTier(config.disk_blocks, config.disk_offload_gbps, config.disk_onboard_gbps, block_bytes)
            if config.disk_blocks > 0
            else None
        )

    def advance(self, now_s: float) -> None:
        """Finish the writes due by `now_s`; each block that lands in G2 is written on to G3."""
        disk = self.disk
        for done_s, block_hash in self.host.finish_writes(now_s):
            if disk is not None:
                disk.finish_writes(done_s)  # G3's state as of this write's submission
                disk.start_write(block_hash, done_s)
        if disk is not None:
            disk.finish_writes(now_s)

    def offload(self, block_hashes: Sequence[int], now_s: float) -> None:
        """Write-through: blocks just computed and cached in G1 start their G1->G2 write."""
        self.advance(now_s)
        host = self.host
        for block_hash in block_hashes:
            host.start_write(block_hash, now_s)

    def match(self, block_hashes: Sequence[int], start: int, limit: int, now_s: float) -> tuple[int, int]:
        """Blocks found beyond a G1 match of `start` blocks: the run in G2, then the run in G3."""
        self.advance(now_s)
        num_host = self.host.match(block_hashes, start, limit)
        num_disk = self.disk.match(block_hashes, start + num_host, limit) if self.disk is not None else 0
        return num_host, num_disk

    def onboard(
        self, block_hashes: Sequence[int], start: int, num_host: int, num_disk: int, now_s: float
    ) -> float:
        """Read matched blocks into G1 (touching them in LRU order); returns when both loads are
        done. G2 and G3 reads run in parallel on their own lanes."""
        ready_s = now_s
        if num_host:
            self.host.touch(block_hashes[start : start + num_host])
            ready_s = self.host.read.submit(now_s, num_host)
        if num_disk and self.disk is not None:
            first = start + num_host
            self.disk.touch(block_hashes[first : first + num_disk])
            ready_s = max(ready_s, self.disk.read.submit(now_s, num_disk))
        return ready_s
