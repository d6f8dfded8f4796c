"""The block layout of a packed row, shared by the packer and both attention kernels.

A packed row (`training.packing`) is a run of attention blocks; each is described by a `Block`, and
a block longer than `QUERY_CHUNK` tokens is computed as chunks of queries (`kernels.attention`,
`kernels.bf16_attention`).
"""

from __future__ import annotations

# (block length, prefix length): the block's queries see the first `prefix` tokens of the block
# before it, then themselves causally.
Block = tuple[int, int]

# Queries per attention call in a longer block: a chunk computes its full rectangle of keys, so
# smaller chunks skip more of the causal triangle's hidden half, larger ones make fewer, larger calls.
QUERY_CHUNK = 128
