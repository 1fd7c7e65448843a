"""BlockManager: the paged KV cache's fixed-size blocks, as ids on a free list.

The scheduler owns one; the workers own the memory the ids index. A request's block table is a plain list of
ids that grows as its tokens do; every id is either free or held by exactly one request.
"""

from __future__ import annotations


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError(
                f"need at least one block of at least one token (got {num_blocks} x {block_size})"
            )
        self.block_size = block_size
        self._num_total = num_blocks
        # Pop from the end: low ids first, so small workloads touch the start of the cache.
        self._free: list[int] = list(range(num_blocks - 1, -1, -1))
        self._used: set[int] = set()

    @property
    def num_total_blocks(self) -> int:
        return self._num_total

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    @property
    def num_used_blocks(self) -> int:
        return len(self._used)

    def blocks_for(self, num_tokens: int) -> int:
        """Blocks that hold `num_tokens` tokens."""
        return -(-num_tokens // self.block_size)

    def num_new_blocks(self, block_ids: list[int], num_tokens: int) -> int:
        """Blocks a table of `block_ids` must gain to hold `num_tokens` tokens."""
        return max(0, self.blocks_for(num_tokens) - len(block_ids))

    def append(self, block_ids: list[int], num_tokens: int) -> list[int] | None:
        """Grow `block_ids` in place to hold `num_tokens` tokens; the new ids, or None (no change) if too few
        blocks are free."""
        need = self.num_new_blocks(block_ids, num_tokens)
        if need > len(self._free):
            return None
        new = [self._free.pop() for _ in range(need)]
        self._used.update(new)
        block_ids.extend(new)
        return new

    def free(self, block_ids: list[int]) -> None:
        """Return every id of a block table to the pool and empty the table."""
        for b in block_ids:
            if b not in self._used:
                raise RuntimeError(f"block {b} freed twice or never allocated")
            self._used.remove(b)
        # Reversed so a request's blocks are reused in their original order.
        self._free.extend(reversed(block_ids))
        block_ids.clear()
