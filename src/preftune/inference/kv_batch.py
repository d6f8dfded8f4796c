"""The KV cache of a running batch: one transformers `DynamicCache` whose rows can join and leave.

Every row is left-padded: `[pad ... pad, token, token, ...]`, with an attention mask that
marks the padding. New requests are prefilled in their own cache and then merged in by
padding the shorter side on the left; finished rows are dropped by index, and columns that
have become padding in every row are trimmed away so the batch never drags dead length along.
This is the layout `transformers.generate` itself uses for batched generation, so the model's
attention and rotary positions need nothing special (positions are passed explicitly).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache


def cache_layers(cache: DynamicCache) -> list[object]:
    """The cache's layers that hold keys and values."""
    return [layer for layer in cache.layers if getattr(layer, "keys", None) is not None]


def _pad_left(t: torch.Tensor, n: int) -> torch.Tensor:
    """Pad dimension -2 (the sequence axis of keys/values) on the left with `n` zeros."""
    if n == 0:
        return t
    shape = list(t.shape)
    shape[-2] = n
    return torch.cat([t.new_zeros(shape), t], dim=-2)


@dataclass
class BatchKV:
    """A batch's cache and its `(batch, length)` attention mask (1 = real token, 0 = padding)."""

    cache: DynamicCache
    mask: torch.Tensor

    @property
    def length(self) -> int:
        return int(self.mask.shape[1])

    @property
    def rows(self) -> int:
        return int(self.mask.shape[0])

    def select(self, keep: list[int]) -> None:
        """Keep only these rows (in this order)."""
        index = torch.tensor(keep, dtype=torch.long, device=self.mask.device)
        for layer in cache_layers(self.cache):
            layer.keys = layer.keys.index_select(0, index)  # type: ignore[attr-defined]
            layer.values = layer.values.index_select(0, index)  # type: ignore[attr-defined]
        self.mask = self.mask.index_select(0, index)
        self.trim()

    def trim(self) -> None:
        """Drop leading columns that are padding in every row."""
        if self.rows == 0:
            return
        real = self.mask.any(dim=0).nonzero()
        first = int(real[0].item()) if real.numel() else self.length
        if first == 0:
            return
        for layer in cache_layers(self.cache):
            layer.keys = layer.keys[..., first:, :]  # type: ignore[attr-defined]
            layer.values = layer.values[..., first:, :]  # type: ignore[attr-defined]
        self.mask = self.mask[:, first:]

    def merge(self, other: BatchKV) -> None:
        """Append `other`'s rows after this batch's rows (both left-padded to a common length)."""
        length = max(self.length, other.length)
        mine, theirs = length - self.length, length - other.length
        for a, b in zip(cache_layers(self.cache), cache_layers(other.cache), strict=True):
            a.keys = torch.cat([_pad_left(a.keys, mine), _pad_left(b.keys, theirs)], dim=0)  # type: ignore[attr-defined]
            a.values = torch.cat([_pad_left(a.values, mine), _pad_left(b.values, theirs)], dim=0)  # type: ignore[attr-defined]
        pad = self.mask.new_zeros
        self.mask = torch.cat(
            [
                torch.cat([pad((self.rows, mine)), self.mask], dim=1),
                torch.cat([pad((other.rows, theirs)), other.mask], dim=1),
            ],
            dim=0,
        )
