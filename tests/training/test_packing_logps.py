"""Prefix-shared, packed, chunked log-probs equal the plain one-sequence-at-a-time computation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from preftune.training.logps import sequence_logps, token_logps
from preftune.training.packing import pack
from preftune.training.tokenize import PairTokens, SFTTokens


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path) -> tuple[torch.nn.Module, object]:
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa")
    model.eval()
    return model, AutoTokenizer.from_pretrained(tiny_model_dir)


def plain_logp(model: torch.nn.Module, context: list[int], answer: list[int]) -> float:
    """The textbook computation: full logits of context+answer, log-softmax, sum over the answer."""
    ids = torch.tensor([context + answer])
    with torch.no_grad():
        logits = model(input_ids=ids).logits.float()
    logp = torch.log_softmax(logits[0, :-1], dim=-1).gather(-1, ids[0, 1:, None]).squeeze(-1)
    return float(logp[len(context) - 1 :].sum())


def random_pairs(n: int, seed: int) -> list[PairTokens]:
    g = torch.Generator().manual_seed(seed)

    def ids(lo: int, hi: int) -> list[int]:
        length = int(torch.randint(lo, hi, (1,), generator=g))
        return torch.randint(3, 1000, (length,), generator=g).tolist()

    pairs = [
        PairTokens(index=i + 1, prompt=ids(1, 12), chosen=ids(1, 9), rejected=ids(1, 9)) for i in range(n)
    ]
    pairs[0].prompt = ids(30, 31)  # one long prompt: blocks of very different sizes
    return pairs


def test_pairs_are_laid_end_to_end_without_padding() -> None:
    pairs = random_pairs(5, seed=7)
    batch = pack(pairs)
    assert batch.input_ids.shape == (1, sum(p.length for p in pairs)) == (1, batch.n_tokens)
    assert [length for length, _ in batch.blocks] == [
        n for p in pairs for n in (len(p.prompt) + len(p.chosen), len(p.rejected))
    ]
    assert [prefix for _, prefix in batch.blocks] == [n for p in pairs for n in (0, len(p.prompt))]


def test_prefix_shared_logps_match_plain(tiny: tuple[torch.nn.Module, object]) -> None:
    model, _ = tiny
    pairs = random_pairs(7, seed=1)
    batch = pack(pairs)
    with torch.no_grad():
        sums, counts = sequence_logps(model, batch, chunk_tokens=5)  # tiny chunks: many chunk borders
    for i, pair in enumerate(pairs):
        assert counts[2 * i] == len(pair.chosen) and counts[2 * i + 1] == len(pair.rejected)
        assert sums[2 * i].item() == pytest.approx(plain_logp(model, pair.prompt, pair.chosen), abs=1e-4)
        assert sums[2 * i + 1].item() == pytest.approx(
            plain_logp(model, pair.prompt, pair.rejected), abs=1e-4
        )


def test_chunked_gradients_match_unchunked(tiny: tuple[torch.nn.Module, object]) -> None:
    model, _ = tiny
    batch = pack(random_pairs(4, seed=2))
    grads = []
    for chunk in (3, 100_000):
        model.zero_grad()
        sums, _ = sequence_logps(model, batch, chunk_tokens=chunk)
        sums.sum().backward()
        grads.append(model.get_output_embeddings().weight.grad.clone())
    model.zero_grad()
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-4)


def test_sft_targets_only_labelled_tokens(tiny: tuple[torch.nn.Module, object]) -> None:
    model, _ = tiny
    ids = list(range(10, 30))
    labels = [False] * 12 + [True] * 8
    example = SFTTokens(index=1, ids=ids, labels=labels)
    with torch.no_grad():
        sums, counts = sequence_logps(
            model, pack([example, SFTTokens(2, ids[:5], [False, True] * 2 + [True])])
        )
    assert counts.tolist() == [8.0, 3.0]
    assert sums[0].item() == pytest.approx(plain_logp(model, ids[:12], ids[12:]), abs=1e-4)


def test_bf16_autocast_logps_close_to_fp32(tiny: tuple[torch.nn.Module, object]) -> None:
    model, _ = tiny
    batch = pack(random_pairs(3, seed=3))
    with torch.no_grad():
        fp32, _ = sequence_logps(model, batch)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16, _ = sequence_logps(model, batch)
    assert bf16.dtype == torch.float32, "log-softmax runs in float32 even under autocast"
    torch.testing.assert_close(bf16, fp32, rtol=2e-2, atol=0.5)


def test_activation_checkpointing_gives_the_same_logps_and_gradients(tiny_model_dir: Path) -> None:
    batch = pack(random_pairs(3, seed=4))
    results = []
    for checkpointing in (False, True):
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa")
        model.train()
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        sums, _ = sequence_logps(model, batch)
        sums.sum().backward()
        results.append((sums.detach(), model.model.layers[0].mlp.up_proj.weight.grad.clone()))
    torch.testing.assert_close(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1], atol=1e-6, rtol=1e-5)


def plain_pair_loss(model: torch.nn.Module, pairs: list[PairTokens]) -> torch.Tensor:
    """Sum over pairs of logp(chosen) - 0.5 logp(rejected), each sequence in its own forward."""
    total = torch.zeros(())
    for pair in pairs:
        for answer, weight in ((pair.chosen, 1.0), (pair.rejected, -0.5)):
            ids = torch.tensor([pair.prompt + answer])
            logits = model(input_ids=ids).logits.float()
            logp = torch.log_softmax(logits[0, :-1], dim=-1).gather(-1, ids[0, 1:, None]).squeeze(-1)
            total = total + weight * logp[len(pair.prompt) - 1 :].sum()
    return total


@pytest.mark.parametrize("frozen_head", [True, False])
def test_packed_gradients_match_plain(tiny_model_dir: Path, frozen_head: bool) -> None:
    """Block attention and the frozen-head shortcut give the plain computation's gradients."""
    pairs = random_pairs(4, seed=5)
    grads = []
    for packed in (True, False):
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa")
        model.get_output_embeddings().weight.requires_grad_(not frozen_head)
        model.get_input_embeddings().weight.requires_grad_(not frozen_head)
        if packed:
            sums, _ = sequence_logps(model, pack(pairs), chunk_tokens=4)
            (sums[0::2] - 0.5 * sums[1::2]).sum().backward()
        else:
            plain_pair_loss(model, pairs).backward()
        layer = model.model.layers[0]
        grads.append([layer.self_attn.q_proj.weight.grad.clone(), layer.mlp.down_proj.weight.grad.clone()])
        if not frozen_head:
            grads[-1].append(model.get_output_embeddings().weight.grad.clone())
    for packed_grad, plain_grad in zip(grads[0], grads[1], strict=True):
        torch.testing.assert_close(packed_grad, plain_grad, atol=1e-5, rtol=1e-4)


def test_frozen_head_shortcut_is_used_for_a_frozen_head(tiny_model_dir: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa")
    model.get_output_embeddings().weight.requires_grad_(False)
    hidden = torch.randn(6, model.config.hidden_size, requires_grad=True)
    out = token_logps(hidden, model.get_output_embeddings(), torch.arange(6))
    assert out.grad_fn is not None and "FrozenHeadLogps" in type(out.grad_fn).__name__


@pytest.mark.parametrize("vocab_tile", [7, 64, 10_000])  # ragged tiles, many tiles, one tile
def test_streamed_head_equals_full_log_softmax_and_its_gradient(vocab_tile: int) -> None:
    """Online log-sum-exp over vocabulary tiles gives the whole-vocabulary log-softmax and gradient."""
    g = torch.Generator().manual_seed(11)
    vocab, hidden_size, n = 300, 24, 40
    weight = torch.randn(vocab, hidden_size, generator=g)
    hidden = torch.randn(n, hidden_size, generator=g) * 3  # large logits: the rescaling matters
    targets = torch.randint(0, vocab, (n,), generator=g)
    targets[:2] = torch.tensor([0, vocab - 1])  # the first and the last tile's edges

    from preftune.training.logps import streamed_head_logps

    logps, grad = streamed_head_logps(hidden, weight, targets, with_grad=True, vocab_tile=vocab_tile)
    plain_hidden = hidden.clone().requires_grad_(True)
    plain = torch.log_softmax(plain_hidden @ weight.t(), dim=-1).gather(1, targets[:, None]).squeeze(1)
    plain.sum().backward()
    torch.testing.assert_close(logps, plain.detach(), atol=1e-5, rtol=1e-5)
    assert grad is not None
    torch.testing.assert_close(grad, plain_hidden.grad, atol=1e-5, rtol=1e-5)
    alone, none = streamed_head_logps(hidden, weight, targets, with_grad=False, vocab_tile=vocab_tile)
    assert none is None
    torch.testing.assert_close(alone, logps, atol=0, rtol=0)


def test_streamed_head_with_a_half_precision_weight_accumulates_in_float32() -> None:
    from preftune.training.logps import streamed_head_logps

    g = torch.Generator().manual_seed(12)
    weight = torch.randn(200, 16, generator=g)
    hidden = torch.randn(10, 16, generator=g)
    targets = torch.randint(0, 200, (10,), generator=g)
    fp32, grad32 = streamed_head_logps(hidden, weight, targets, with_grad=True, vocab_tile=50)
    bf16, grad16 = streamed_head_logps(
        hidden.bfloat16(), weight.bfloat16(), targets, with_grad=True, vocab_tile=50
    )
    assert bf16.dtype == torch.float32 and grad16 is not None and grad16.dtype == torch.float32
    torch.testing.assert_close(bf16, fp32, atol=0.1, rtol=0.05)
    torch.testing.assert_close(grad16, grad32, atol=0.1, rtol=0.05)


def test_no_grad_logps_of_a_trainable_head_equal_the_plain_ones(
    tiny: tuple[torch.nn.Module, object],
) -> None:
    """Full fine-tuning's reference and evaluation passes (no autograd) take the streamed head too."""
    model, _ = tiny
    head = model.get_output_embeddings()
    assert head.weight.requires_grad
    hidden = torch.randn(9, model.config.hidden_size)
    targets = torch.arange(9) * 101
    with torch.no_grad():
        streamed = token_logps(hidden, head, targets, chunk_tokens=4)
        plain = torch.log_softmax(head(hidden), dim=-1).gather(1, targets[:, None]).squeeze(1)
    torch.testing.assert_close(streamed, plain, atol=1e-5, rtol=1e-5)
