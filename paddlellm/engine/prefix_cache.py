"""PrefixCache: prefix caching for the scheduler, over a BlockManager: content keys, lookups, registration.

Content keys. A block's KV depends on every token up to its end and on everything that turns tokens into
values. So the key of full block i is chained, sha256(key of block i-1 + tokens of block i), and block 0
chains from a seed that digests the model and every option that changes the bits (checkpoint, dtype,
quantization, kernels, device, TP size). Equal keys then mean the same tokens at the same positions through
the same model, hence the same KV. SHA-256 makes an accidental collision negligible (2^-128), and the block
manager also compares each matched block's own tokens. Only full blocks get keys; a partial block is still
being written.

Images: all placeholder tokens share one id, so a block overlapping an image's placeholder run also digests
that image's content hash and offset: the same image in a follow-up turn finds its blocks, a different image
of the same size never does. Text-only requests key exactly as before.

Partial hits (block_manager.py): past its full-block hits a request may find a registered block that begins
with its next tokens; those rows are copied into its own block. Blocks overlapping an image are not partial
candidates, and a request's partial run stops before its first image.

Lookup happens when a waiting request is admitted (again after a preemption: it may find its own blocks);
registration after every executed step, for the blocks that step completed (outputs included, so a chat's next
turn finds the previous answer too). With caching off, lookups find nothing and nothing is registered.
"""

from __future__ import annotations

import hashlib
import json
from array import array
from dataclasses import dataclass

from paddlellm.config import EngineConfig
from paddlellm.engine.block_manager import BlockManager
from paddlellm.engine.request import Request
from paddlellm.model_info import ModelInfo

# EngineConfig fields that change the KV values a token gets. Their `auto` values are resolved from the
# checkpoint and this CPU alone, both fixed for the engine's life, so the unresolved names identify them.
_VALUE_FIELDS = (
    "model", "dtype", "quantization", "cpu_kernels", "device", "tensor_parallel_size", "block_size",
    "kv_cache_dtype",
)


def cache_seed(config: EngineConfig, info: ModelInfo) -> bytes:
    """The key chain's start: a digest of the model's identity and the options that change KV values."""
    facts = {name: getattr(config, name) for name in _VALUE_FIELDS}
    facts["checkpoint"] = info.path
    facts["model_config"] = info.raw_config or info.architecture
    text = json.dumps(facts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).digest()


@dataclass(frozen=True)
class PrefixHit:
    """What a request found cached: full `blocks` from position 0, then maybe `rows` tokens' KV in block
    `partial` (copied into the request's next block)."""

    blocks: list[int]
    partial: int | None = None
    rows: int = 0

    def num_tokens(self, block_size: int) -> int:
        return len(self.blocks) * block_size + self.rows


class PrefixCache:
    def __init__(self, blocks: BlockManager, enabled: bool, seed: bytes = b"") -> None:
        self.blocks = blocks
        self.enabled = enabled
        self.seed = seed
        self.queries = 0  # tokens of requests looked up at their first admission
        self.hits = 0  # of those, tokens found cached

    def match(self, req: Request) -> PrefixHit:
        """The longest cached prefix of a waiting request's tokens (prompt + outputs): whole blocks, then a
        partial hit. At least its last token stays to compute, because the step that computes it yields the
        logits to sample from."""
        if not self.enabled:
            return PrefixHit([])
        tokens = req.all_token_ids()
        self._extend_keys(req, tokens)
        bs = self.blocks.block_size
        hits = self.blocks.match_prefix(req.block_hashes, tokens, (len(tokens) - 1) // bs)
        start = len(hits) * bs
        max_rows = len(tokens) - 1 - start
        for im in req.mm.images if req.mm is not None else ():
            if im.end > start:  # images are in prompt order: the first one reaching past `start`
                max_rows = min(max_rows, im.offset - start)
                break
        parent = req.block_hashes[len(hits) - 1] if hits else self.seed
        partial = self.blocks.match_partial(parent, tokens[start : start + max_rows], max_rows)
        if partial is None:
            return PrefixHit(hits)
        return PrefixHit(hits, partial[0], partial[1])

    def admitted(self, req: Request, num_cached_tokens: int, looked_up: bool = True) -> None:
        """Count a request's first admission; later ones (after preemption) are recomputes, not queries, and
        so are admissions that did not look (`looked_up` False: a request that needs its prompt computed)."""
        if self.enabled and looked_up and req.first_scheduled_time is None:
            self.queries += req.num_tokens
            self.hits += num_cached_tokens
            req.num_cached_tokens = min(num_cached_tokens, req.num_prompt_tokens)
        req.num_registered_blocks = num_cached_tokens // self.blocks.block_size

    def register_computed(self, req: Request) -> None:
        """Register the blocks of `req` that its computed tokens now fill (call after each executed step)."""
        full = req.num_computed_tokens // self.blocks.block_size
        if not self.enabled or full <= req.num_registered_blocks:
            return
        tokens = req.all_token_ids()
        self._extend_keys(req, tokens)
        bs = self.blocks.block_size
        images = req.mm.images if req.mm is not None else ()
        for i in range(req.num_registered_blocks, full):
            parent: bytes | None = req.block_hashes[i - 1] if i else self.seed
            if any(im.offset < (i + 1) * bs and im.end > i * bs for im in images):
                parent = None  # its KV depends on an image its tokens do not show: full hits only
            self.blocks.register(req.block_ids[i], req.block_hashes[i], tokens[i * bs : (i + 1) * bs], parent)
        req.num_registered_blocks = full

    def reset_counts(self) -> None:
        self.queries = self.hits = 0

    def _extend_keys(self, req: Request, tokens: list[int]) -> None:
        """Append to req.block_hashes the keys of its further full blocks (its tokens only ever grow)."""
        bs, keys = self.blocks.block_size, req.block_hashes
        parent = keys[-1] if keys else self.seed
        images = req.mm.images if req.mm is not None else ()
        for i in range(len(keys), len(tokens) // bs):
            data = parent + array("q", tokens[i * bs : (i + 1) * bs]).tobytes()
            for im in images:
                if im.offset < (i + 1) * bs and im.end > i * bs:
                    data += im.content_hash.encode("ascii") + array("q", [im.offset]).tobytes()
            parent = hashlib.sha256(data).digest()
            keys.append(parent)
