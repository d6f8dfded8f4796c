"""Prefix-shared, packed rows: the tensors one forward pass needs for a micro-batch.

A preference pair is one segment `[prompt][chosen][rejected]`: the prompt is computed once for
both answers. Inside a segment the rejected answer cannot see the chosen one, and its position
ids restart after the prompt, so each answer is computed exactly as if it followed the prompt
alone. Several segments share a row (first-fit, longest first) with a block-diagonal mask, and
rows are only as long as the longest segment, so almost no compute goes to padding.

Log-probs are needed only at answer tokens: `gather_rows`/`gather_pos` say which hidden state
predicts each target token (for the first rejected token that is the prompt's last token, not
the chosen answer's last), and `slots` says which sequence sum the token belongs to
(`2*i` chosen and `2*i+1` rejected for pair i; `i` for SFT example i).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from preftune.training.tokenize import PairTokens, SFTTokens


@dataclass
class PackedBatch:
    input_ids: torch.Tensor  # [rows, L] long
    position_ids: torch.Tensor  # [rows, L] long
    attention_mask: torch.Tensor  # [rows, 1, L, L] bool, True = may attend
    gather_rows: torch.Tensor  # [N] long
    gather_pos: torch.Tensor  # [N] long: position of the hidden state that predicts the target
    targets: torch.Tensor  # [N] long
    slots: torch.Tensor  # [N] long
    n_slots: int
    n_examples: int
    n_tokens: int  # real (non-padding) tokens in the rows
    indices: list[int]  # the examples' 1-based indices in their file

    def to(self, device: torch.device) -> PackedBatch:
        fields = {
            name: getattr(self, name).to(device, non_blocking=True)
            for name in (
                "input_ids",
                "position_ids",
                "attention_mask",
                "gather_rows",
                "gather_pos",
                "targets",
                "slots",
            )
        }
        return PackedBatch(
            **fields,
            n_slots=self.n_slots,
            n_examples=self.n_examples,
            n_tokens=self.n_tokens,
            indices=self.indices,
        )


@dataclass
class _Segment:
    ids: list[int]
    positions: list[int]
    # (position in segment of the target, position in segment of its predictor, slot)
    targets: list[tuple[int, int, int]]
    # Start/end (exclusive) of the chosen block, hidden from the rejected block that follows it.
    hidden_block: tuple[int, int] | None


def _pair_segment(pair: PairTokens, slot: int) -> _Segment:
    p, c, r = len(pair.prompt), len(pair.chosen), len(pair.rejected)
    ids = [*pair.prompt, *pair.chosen, *pair.rejected]
    positions = [*range(p + c), *range(p, p + r)]
    targets = [(p + k, p + k - 1, slot) for k in range(c)]
    targets += [(p + c + k, (p + c + k - 1) if k else p - 1, slot + 1) for k in range(r)]
    return _Segment(ids, positions, targets, (p, p + c))


def _sft_segment(example: SFTTokens, slot: int) -> _Segment:
    n = len(example.ids)
    targets = [(t, t - 1, slot) for t in range(1, n) if example.labels[t]]
    return _Segment(list(example.ids), list(range(n)), targets, None)


def _first_fit(lengths: list[int], capacity: int) -> list[list[int]]:
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda k: -lengths[k]):
        for r, free in enumerate(room):
            if lengths[i] <= free:
                rows[r].append(i)
                room[r] -= lengths[i]
                break
        else:
            rows.append([i])
            room.append(capacity - lengths[i])
    return rows


def pack(examples: Sequence[PairTokens | SFTTokens], pad_id: int, *, pack_rows: bool = True) -> PackedBatch:
    """Build the rows for `examples` (all pairs or all SFT sequences).

    `pack_rows=False` puts each segment in its own row (padded): the layout to compare against.
    """
    segments: list[_Segment] = []
    for i, example in enumerate(examples):
        if isinstance(example, PairTokens):
            segments.append(_pair_segment(example, 2 * i))
        else:
            segments.append(_sft_segment(example, i))
    n_slots = 2 * len(examples) if examples and isinstance(examples[0], PairTokens) else len(examples)
    lengths = [len(s.ids) for s in segments]
    capacity = max(lengths)
    layout = _first_fit(lengths, capacity) if pack_rows else [[i] for i in range(len(segments))]
    width = max(sum(lengths[i] for i in row) for row in layout)

    n_rows = len(layout)
    input_ids = torch.full((n_rows, width), pad_id, dtype=torch.long)
    position_ids = torch.zeros((n_rows, width), dtype=torch.long)
    mask = torch.zeros((n_rows, width, width), dtype=torch.bool)
    g_rows: list[int] = []
    g_pos: list[int] = []
    g_tgt: list[int] = []
    g_slot: list[int] = []
    for r, row in enumerate(layout):
        offset = 0
        for i in row:
            seg = segments[i]
            n = len(seg.ids)
            input_ids[r, offset : offset + n] = torch.tensor(seg.ids)
            position_ids[r, offset : offset + n] = torch.tensor(seg.positions)
            block = torch.ones((n, n), dtype=torch.bool).tril_()
            if seg.hidden_block is not None:
                start, end = seg.hidden_block
                block[end:, start:end] = False
            mask[r, offset : offset + n, offset : offset + n] = block
            for t, pred, slot in seg.targets:
                g_rows.append(r)
                g_pos.append(offset + pred)
                g_tgt.append(seg.ids[t])
                g_slot.append(slot)
            offset += n
        # Padding attends to itself only: a query row with nothing to attend to would give NaNs.
        pad = torch.arange(offset, width)
        mask[r, pad, pad] = True
    return PackedBatch(
        input_ids=input_ids,
        position_ids=position_ids,
        attention_mask=mask.unsqueeze(1),
        gather_rows=torch.tensor(g_rows, dtype=torch.long),
        gather_pos=torch.tensor(g_pos, dtype=torch.long),
        targets=torch.tensor(g_tgt, dtype=torch.long),
        slots=torch.tensor(g_slot, dtype=torch.long),
        n_slots=n_slots,
        n_examples=len(examples),
        n_tokens=sum(lengths),
        indices=[e.index for e in examples],
    )
