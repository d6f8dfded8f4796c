"""Automatic prefix caching: the KV of recently seen prompt prefixes, reused by later prompts.

Every chat prompt of a model starts with the same rendered template (SmolLM2's default system
prompt, for one), and real traffic repeats system prompts and earlier turns. Prefilling a
prompt costs compute for each of its tokens, so a prompt whose beginning was seen recently
only prefills the tokens after the longest cached prefix.

Prompts are cut into fixed-size token blocks, as vLLM does. A block is keyed by its namespace
(which weights produced the KV: the base model, or one loaded LoRA adapter, since an adapter
changes every layer's keys and values), the block before it, and its own tokens; so a block
is only ever found by a prompt whose whole beginning, up to and including that block, is
token-for-token the same. Keys are tuples, compared exactly (no hashes that could collide).

Memory is bounded in bytes, least recently used blocks evicted first. A lookup refreshes a
chain from its last block to its first, so a block is always more recent than every block
after it: eviction takes leaves first and never strands a chain's tail behind a missing head.
Not thread-safe: only the engine thread that runs the model touches it.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch

# The parent of a chain's first block: the namespace itself.
_Key = tuple[object, tuple[int, ...]]


@dataclass
class _Block:
    id: int
    kv: torch.Tensor  # (layers, 2, kv_heads, block_size, head_dim): keys and values of the block's tokens


@dataclass
class PrefixCacheStats:
    lookups: int = 0
    hits: int = 0  # lookups that reused at least one block
    hit_tokens: int = 0  # prompt tokens not prefilled thanks to the cache
    inserted_blocks: int = 0
    evicted_blocks: int = 0


class PrefixCache:
    """Token-block KV cache of prompt prefixes, at most `capacity_bytes` of tensors."""

    def __init__(self, block_size: int, capacity_bytes: int) -> None:
        if block_size < 1:
            raise ValueError("block_size must be at least 1")
        self.block_size = block_size
        self.capacity_bytes = capacity_bytes
        self.bytes = 0
        self.stats = PrefixCacheStats()
        self._blocks: OrderedDict[_Key, _Block] = OrderedDict()  # least recently used first
        self._next_id = 0

    def __len__(self) -> int:
        return len(self._blocks)

    @property
    def enabled(self) -> bool:
        return self.capacity_bytes > 0

    def _chain(self, namespace: str, tokens: list[int], blocks: int) -> list[_Key]:
        """Keys of the first `blocks` blocks of `tokens`, as far as they are cached."""
        keys: list[_Key] = []
        parent: object = ("ns", namespace)
        size = self.block_size
        for b in range(blocks):
            key = (parent, tuple(tokens[b * size : (b + 1) * size]))
            block = self._blocks.get(key)
            if block is None:
                break
            keys.append(key)
            parent = block.id
        return keys

    def _touch(self, keys: list[_Key]) -> None:
        for key in reversed(keys):  # the first block ends up the most recent (see the module docstring)
            self._blocks.move_to_end(key)

    def cached_length(self, namespace: str, tokens: list[int], limit: int) -> int:
        """How many tokens `lookup` would give now (no side effects: no stats, no LRU refresh)."""
        if not self.enabled:
            return 0
        return len(self._chain(namespace, tokens, max(limit, 0) // self.block_size)) * self.block_size

    def lookup(self, namespace: str, tokens: list[int], limit: int) -> tuple[int, torch.Tensor | None]:
        """The longest cached prefix of `tokens` of at most `limit` tokens: its length and its KV
        `(layers, 2, kv_heads, length, head_dim)` (a new tensor), or `(0, None)`."""
        if not self.enabled:
            return 0, None
        self.stats.lookups += 1
        keys = self._chain(namespace, tokens, max(limit, 0) // self.block_size)
        if not keys:
            return 0, None
        self._touch(keys)
        n = len(keys) * self.block_size
        self.stats.hits += 1
        self.stats.hit_tokens += n
        return n, torch.cat([self._blocks[k].kv for k in keys], dim=3)

    def insert(self, namespace: str, tokens: list[int], kv: torch.Tensor) -> None:
        """Remember the full blocks of `tokens`, whose KV is `kv` `(layers, 2, kv_heads, len(tokens), head_dim)`."""
        if not self.enabled:
            return
        size = self.block_size
        blocks = len(tokens) // size
        keys = self._chain(namespace, tokens, blocks)
        parent: object = self._blocks[keys[-1]].id if keys else ("ns", namespace)
        block_bytes = kv[:, :, :, :size].numel() * kv.element_size()
        if block_bytes > self.capacity_bytes:
            return
        for b in range(len(keys), blocks):
            key = (parent, tuple(tokens[b * size : (b + 1) * size]))
            # A copy, so that a block never keeps the whole prompt's tensor alive.
            block = _Block(self._next_id, kv[:, :, :, b * size : (b + 1) * size].clone())
            self._next_id += 1
            self._blocks[key] = block
            self.bytes += block_bytes
            self.stats.inserted_blocks += 1
            keys.append(key)
            parent = block.id
        self._touch(keys)
        self._evict()

    def _evict(self) -> None:
        while self.bytes > self.capacity_bytes and self._blocks:
            _, block = self._blocks.popitem(last=False)
            self.bytes -= block.kv.numel() * block.kv.element_size()
            self.stats.evicted_blocks += 1

    def clear(self) -> None:
        self._blocks.clear()
        self.bytes = 0
