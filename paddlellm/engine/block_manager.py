"""BlockManager: the paged KV cache's fixed-size blocks, as ids with reference counts; a prefix cache on top.

The scheduler owns one; the workers own the memory the ids index. A request's block table is a plain list of
ids that grows as its tokens do. Without prefix caching every held id belongs to exactly one request.

Prefix caching: a full block whose KV is computed can be registered under its content key (prefix_cache.py).
A new request takes the longest run of registered blocks that matches its own keys (`match_prefix`), holding
them by reference count, so several requests read one copy. Nobody writes to a registered block: it is full,
and a request writes only at positions past its cached prefix. A block no request holds is free; if it is
registered it keeps its KV and key (an "evictable" block, counted as free) until an allocation needs the
space: plain free blocks go first, then evictable ones, least recently released first (LRU).

Partial hits. Where the full-block run ends, a registered block may still begin with the request's next
tokens (a shared system prompt ends mid-block: SmolLM2's is 26 tokens, a block 64). Registered blocks are
also indexed by (their parent's key, their first PARTIAL_MIN_TOKENS tokens); `match_partial` finds the one
sharing the longest run of the request's next tokens, and the scheduler copies those rows of KV into the
request's own new block (SchedulerOutput.block_copies) instead of computing them. The source is pinned (held)
from the lookup to the end of the scheduling pass, so no allocation of that pass can hand it out before the
runner copies it (copies run before the step's forward pass writes anything).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

# A partial hit shares at least this many tokens with a cached block (fewer save too little to look up), and
# each (parent, first tokens) index entry keeps this many candidates, most recently registered last.
PARTIAL_MIN_TOKENS = 16
PARTIAL_CANDIDATES = 4


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError(
                f"need at least one block of at least one token (got {num_blocks} x {block_size})"
            )
        self.block_size = block_size
        self._num_total = num_blocks
        self._refs = [0] * num_blocks
        # Pop from the end: low ids first, so small workloads touch the start of the cache.
        self._free: list[int] = list(range(num_blocks - 1, -1, -1))
        self._evictable: OrderedDict[int, None] = OrderedDict()  # unheld registered blocks, LRU first
        self._by_hash: dict[bytes, int] = {}
        self._key_of: dict[int, tuple[bytes, tuple[int, ...]]] = {}  # registered block -> key, tokens
        # Partial hits: (parent key, first PARTIAL_MIN_TOKENS tokens) -> registered blocks; block -> entry.
        self._by_head: dict[tuple[bytes, tuple[int, ...]], list[int]] = {}
        self._head_of: dict[int, tuple[bytes, tuple[int, ...]]] = {}
        self.num_evictions = 0  # cached blocks given to other content since start

    @property
    def num_total_blocks(self) -> int:
        return self._num_total

    @property
    def num_free_blocks(self) -> int:
        """Blocks no request holds, evictable cached ones included."""
        return len(self._free) + len(self._evictable)

    @property
    def num_used_blocks(self) -> int:
        return self._num_total - self.num_free_blocks

    @property
    def num_cached_blocks(self) -> int:
        """Registered blocks, held or evictable."""
        return len(self._key_of)

    def blocks_for(self, num_tokens: int) -> int:
        """Blocks that hold `num_tokens` tokens."""
        return -(-num_tokens // self.block_size)

    def num_new_blocks(self, block_ids: Sequence[int], num_tokens: int) -> int:
        """Blocks a table of `block_ids` must gain to hold `num_tokens` tokens."""
        return max(0, self.blocks_for(num_tokens) - len(block_ids))

    # ---------------------------------------------------------------- allocation

    def append(self, block_ids: list[int], num_tokens: int) -> list[int] | None:
        """Grow `block_ids` in place to hold `num_tokens` tokens; the new ids, or None (no change) if too few
        blocks are free. Evicts the least recently released cached blocks when no plain free block is left."""
        need = self.num_new_blocks(block_ids, num_tokens)
        if need > self.num_free_blocks:
            return None
        new = [self._pop_free() for _ in range(need)]
        for b in new:
            self._refs[b] = 1
        block_ids.extend(new)
        return new

    def _pop_free(self) -> int:
        if self._free:
            return self._free.pop()
        b, _ = self._evictable.popitem(last=False)
        self.num_evictions += 1
        key, _ = self._key_of.pop(b)
        del self._by_hash[key]
        head = self._head_of.pop(b, None)
        if head is not None:
            entry = self._by_head[head]
            entry.remove(b)
            if not entry:
                del self._by_head[head]
        return b

    def free(self, block_ids: list[int]) -> None:
        """Release every id of a block table and empty the table. Blocks nobody holds any more become free;
        registered ones stay cached (evictable), the table's tail first in line to go (it is the part of a
        prefix least likely to be shared)."""
        for b in block_ids:
            if self._refs[b] <= 0:
                raise RuntimeError(f"block {b} freed twice or never allocated")
        # Reversed: a request's blocks are reused in their original order, its cached tail evicted first.
        for b in reversed(block_ids):
            self._refs[b] -= 1
            if self._refs[b] == 0:
                if b in self._key_of:
                    self._evictable[b] = None
                else:
                    self._free.append(b)
        block_ids.clear()

    def truncate(self, block_ids: list[int], keep: int) -> None:
        """Release the ids of a block table past its first `keep` (speculative decoding: blocks that held only
        rejected draft tokens). They were never registered (none of their tokens was verified), so they go
        back to the plain free list, the next to be handed out."""
        tail = block_ids[keep:]
        self.free(tail)
        del block_ids[keep:]

    # ---------------------------------------------------------------- prefix cache

    def match_prefix(
        self, hashes: Sequence[bytes], tokens: Sequence[int], max_blocks: int
    ) -> list[int]:
        """The registered blocks holding the longest prefix of a sequence: its block keys `hashes`, its
        `tokens` (from position 0), at most `max_blocks` of them. Nothing is taken yet (see `take`)."""
        bs = self.block_size
        hits: list[int] = []
        for i, key in enumerate(hashes[:max_blocks]):
            b = self._by_hash.get(key)
            if b is None or self._key_of[b][1] != tuple(tokens[i * bs : (i + 1) * bs]):
                break
            hits.append(b)
        return hits

    def match_partial(self, parent: bytes, tokens: Sequence[int], max_rows: int) -> tuple[int, int] | None:
        """(block, rows): the registered block whose first `rows` tokens (PARTIAL_MIN_TOKENS <= rows <=
        max_rows, rows < block_size) are the longest run of `tokens` (the request's tokens after its
        full-block hits, the last of which has key `parent`), or None. Nothing is taken (see `pin`)."""
        max_rows = min(max_rows, len(tokens), self.block_size - 1)
        if max_rows < PARTIAL_MIN_TOKENS:
            return None
        best: tuple[int, int] | None = None
        for b in self._by_head.get((parent, tuple(tokens[:PARTIAL_MIN_TOKENS])), ()):
            held = self._key_of[b][1]
            rows = PARTIAL_MIN_TOKENS
            while rows < max_rows and held[rows] == tokens[rows]:
                rows += 1
            if best is None or rows > best[1]:
                best = (b, rows)
        return best

    def pin(self, block: int) -> None:
        """Hold a registered block without a table (a partial hit's source until the runner copied it)."""
        if self._refs[block] == 0:
            del self._evictable[block]
        self._refs[block] += 1

    def unpin(self, block: int) -> None:
        self._refs[block] -= 1
        if self._refs[block] == 0:
            self._evictable[block] = None  # registered: pinned blocks are partial hits' sources

    def num_reclaimed(self, hits: Sequence[int]) -> int:
        """Of matched blocks, how many nobody holds now: taking them turns free blocks into used ones."""
        return sum(1 for b in hits if self._refs[b] == 0)

    def take(self, block_ids: list[int], hits: Sequence[int]) -> None:
        """Start an empty table with matched blocks (from `match_prefix`), holding each once more."""
        assert not block_ids, "a cached prefix starts a block table"
        for b in hits:
            if self._refs[b] == 0:
                del self._evictable[b]
            self._refs[b] += 1
        block_ids.extend(hits)

    def register(
        self, block_id: int, key: bytes, tokens: Sequence[int], parent: bytes | None = None
    ) -> None:
        """Record that held, full block `block_id` has computed KV for content `key` (its `tokens`). If
        another block already holds that content, this one stays private and is freed as usual. With its
        `parent` (the previous block's key, or the chain's seed) it can also serve partial hits."""
        assert self._refs[block_id] > 0, "only a held block can be registered"
        if key in self._by_hash or block_id in self._key_of:
            return
        self._by_hash[key] = block_id
        self._key_of[block_id] = (key, tuple(tokens))
        if parent is not None and self.block_size > PARTIAL_MIN_TOKENS:
            head = (parent, tuple(tokens[:PARTIAL_MIN_TOKENS]))
            entry = self._by_head.setdefault(head, [])
            if len(entry) == PARTIAL_CANDIDATES:
                del self._head_of[entry.pop(0)]  # still cached for full hits; no longer a partial candidate
            entry.append(block_id)
            self._head_of[block_id] = head
