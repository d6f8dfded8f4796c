"""Prefix-shared, packed rows: the tensors one forward pass needs for a micro-batch.

A preference pair is one segment `[prompt][chosen][rejected]`: the prompt is computed once for
both answers. The rejected answer cannot see the chosen one and its position ids restart after the
prompt, so each answer is computed exactly as if it followed the prompt alone. Segments are laid end
to end in a single row with no padding; `blocks` tells the attention (`kernels.attention`) where
each segment's attention blocks are, so no example sees another.

Log-probs are needed only at answer tokens: `gather` says which hidden state predicts each target
token (for the first rejected token that is the prompt's last token, not the chosen answer's last),
and `slots` says which sequence sum the token belongs to (`2*i` chosen and `2*i+1` rejected for
pair i; `i` for SFT example i).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from preftune.kernels.blocks import Block
from preftune.training.tokenize import PairTokens, SFTTokens


@dataclass
class PackedBatch:
    input_ids: torch.Tensor  # [1, T] long
    position_ids: torch.Tensor  # [1, T] long
    blocks: list[Block]  # attention blocks along the row, see kernels.attention
    gather: torch.Tensor  # [N] long: position in the row of the hidden state that predicts the target
    targets: torch.Tensor  # [N] long
    slots: torch.Tensor  # [N] long
    n_slots: int
    n_examples: int
    n_tokens: int  # T: every token in the row is real
    indices: list[int]  # the examples' 1-based indices in their file

    def to(self, device: torch.device) -> PackedBatch:
        return replace(
            self,
            **{
                name: getattr(self, name).to(device, non_blocking=True)
                for name in ("input_ids", "position_ids", "gather", "targets", "slots")
            },
        )


def pack(examples: Sequence[PairTokens | SFTTokens]) -> PackedBatch:
    """Lay `examples` (all pairs or all SFT sequences) end to end in one row."""
    ids: list[int] = []
    positions: list[int] = []
    blocks: list[Block] = []
    gather: list[int] = []
    targets: list[int] = []
    slots: list[int] = []
    for i, example in enumerate(examples):
        start = len(ids)
        if isinstance(example, PairTokens):
            p, c, r = len(example.prompt), len(example.chosen), len(example.rejected)
            ids += [*example.prompt, *example.chosen, *example.rejected]
            positions += [*range(p + c), *range(p, p + r)]
            blocks += [(p + c, 0), (r, p)]
            gather += range(start + p - 1, start + p + c - 1)
            targets += example.chosen
            slots += [2 * i] * c
            # The first rejected token is predicted by the prompt's last token, the rest by their own.
            gather += [start + p - 1, *range(start + p + c, start + p + c + r - 1)]
            targets += example.rejected
            slots += [2 * i + 1] * r
        else:
            n = len(example.ids)
            ids += example.ids
            positions += range(n)
            blocks.append((n, 0))
            labelled = [t for t in range(1, n) if example.labels[t]]
            gather += [start + t - 1 for t in labelled]
            targets += [example.ids[t] for t in labelled]
            slots += [i] * len(labelled)
    n_slots = 2 * len(examples) if examples and isinstance(examples[0], PairTokens) else len(examples)
    return PackedBatch(
        input_ids=torch.tensor([ids], dtype=torch.long),
        position_ids=torch.tensor([positions], dtype=torch.long),
        blocks=blocks,
        gather=torch.tensor(gather, dtype=torch.long),
        targets=torch.tensor(targets, dtype=torch.long),
        slots=torch.tensor(slots, dtype=torch.long),
        n_slots=n_slots,
        n_examples=len(examples),
        n_tokens=len(ids),
        indices=[e.index for e in examples],
    )
