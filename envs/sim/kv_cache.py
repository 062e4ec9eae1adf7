"""A vLLM-v1-style paged KV block pool with prefix caching.

Blocks are counted, not stored: a full block is identified by its content hash (hash-chained
over the prefix by the workload), which is all that prefix caching and the router's indexer need.

A block is in one of three states:
- free: holds nothing;
- active: referenced by at least one running request (a cached block can be shared);
- inactive: cached content that no request references, kept in an LRU pool so a later request
  with the same prefix can reuse it, and evicted (least recently freed first) when a free block
  is needed.
A request's blocks that are not (or not yet) in the cache index - the partial last block, or a
full block whose hash another request registered first - are "private" and go straight back to
the free list when released.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

KvEventSink = Callable[[str, int], None]


class BlockPool:
    """Block accounting and the prefix-cache index of one worker."""

    __slots__ = ("_inactive", "_on_event", "_refcount", "caching", "num_blocks", "num_free")

    def __init__(self, num_blocks: int, enable_prefix_caching: bool = True) -> None:
        self.num_blocks = num_blocks
        self.num_free = num_blocks
        self.caching = enable_prefix_caching
        self._refcount: dict[int, int] = {}
        self._inactive: OrderedDict[int, None] = OrderedDict()
        self._on_event: KvEventSink | None = None

    def subscribe(self, sink: KvEventSink) -> None:
        """Receive ("stored" | "removed", block_hash) events, as Dynamo's KV publisher sends."""
        self._on_event = sink

    @property
    def num_available(self) -> int:
        """Blocks that an allocation can take: free ones plus evictable inactive ones."""
        return self.num_free + len(self._inactive)

    @property
    def num_active(self) -> int:
        return self.num_blocks - self.num_available

    @property
    def num_cached(self) -> int:
        """Blocks in the prefix-cache index (what the router's radix tree holds for this worker)."""
        return len(self._refcount) + len(self._inactive)

    def is_cached(self, block_hash: int) -> bool:
        return block_hash in self._refcount or block_hash in self._inactive

    def match_prefix(self, block_hashes: Sequence[int], limit: int) -> int:
        """Number of leading blocks among the first `limit` of `block_hashes` that are cached
        (active or inactive)."""
        if not self.caching:
            return 0
        refcount, inactive = self._refcount, self._inactive
        matched = 0
        while matched < limit:
            block_hash = block_hashes[matched]
            if block_hash not in refcount and block_hash not in inactive:
                break
            matched += 1
        return matched

    def acquire(self, block_hashes: Sequence[int]) -> None:
        """Take a reference on cached blocks (a prefix hit); inactive ones become active."""
        refcount, inactive = self._refcount, self._inactive
        for block_hash in block_hashes:
            count = refcount.get(block_hash)
            if count is None:
                del inactive[block_hash]
                refcount[block_hash] = 1
            else:
                refcount[block_hash] = count + 1

    def allocate(self, num_blocks: int) -> bool:
        """Reserve `num_blocks` private blocks, evicting LRU inactive blocks as needed.

        Returns False, changing nothing, when even eviction cannot supply them.
        """
        if num_blocks > self.num_free + len(self._inactive):
            return False
        shortfall = num_blocks - self.num_free
        if shortfall > 0:
            self._evict(shortfall)
        self.num_free -= num_blocks
        return True

    def register(self, block_hash: int) -> bool:
        """Publish a private block that just became full under `block_hash`.

        Returns True when the block joined the cache index (the caller then holds it by hash);
        False when the content is already cached, in which case the block stays private.
        """
        if not self.caching or block_hash in self._refcount or block_hash in self._inactive:
            return False
        self._refcount[block_hash] = 1  # the caller's private block becomes this cached one
        if self._on_event is not None:
            self._on_event("stored", block_hash)
        return True

    def release(self, held_hashes: Sequence[int], num_private: int) -> None:
        """Return a request's blocks: cached ones become inactive when unreferenced.

        Tail blocks are released first so that, as in vLLM, they are evicted before the shared
        head of a prefix.
        """
        self.num_free += num_private
        refcount, inactive = self._refcount, self._inactive
        for block_hash in reversed(held_hashes):
            count = refcount[block_hash] - 1
            if count:
                refcount[block_hash] = count
            else:
                del refcount[block_hash]
                inactive[block_hash] = None

    def _evict(self, num_blocks: int) -> None:
        inactive = self._inactive
        for _ in range(num_blocks):
            block_hash, _ = inactive.popitem(last=False)
            self.num_free += 1
            if self._on_event is not None:
                self._on_event("removed", block_hash)
