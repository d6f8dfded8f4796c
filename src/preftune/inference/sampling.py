"""Choose each request's next token from its logits: greedy, or temperature + nucleus (top-p).

Every request samples with its own `torch.Generator`, so a seeded request gives the same
answer whatever else shares its batch.
"""

from __future__ import annotations

import torch

from preftune.inference.types import SamplingParams

# Below this temperature sampling is indistinguishable from argmax, and dividing by it overflows.
GREEDY_BELOW = 1e-5


def make_generator(params: SamplingParams) -> torch.Generator:
    generator = torch.Generator(device="cpu")
    if params.seed is not None:
        generator.manual_seed(params.seed)
    else:
        generator.seed()
    return generator


def sample_token(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> int:
    """One token id from a 1-D row of logits."""
    if params.temperature < GREEDY_BELOW:
        return int(torch.argmax(logits).item())
    scaled = logits.float() / params.temperature
    probs = torch.softmax(scaled, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        cumulative = torch.cumsum(sorted_probs, dim=-1)
        # Keep the smallest set whose mass reaches top_p (the first token is always kept).
        drop = cumulative - sorted_probs >= params.top_p
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        choice = torch.multinomial(sorted_probs.cpu(), 1, generator=generator)
        return int(order[choice.to(order.device)].item())
    return int(torch.multinomial(probs.cpu(), 1, generator=generator).item())
