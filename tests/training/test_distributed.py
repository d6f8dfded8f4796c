"""Two processes (gloo) train exactly what one process trains with the same global batch.

fp32, 3 steps of 4 pairs, one pair a micro-batch (so each rank accumulates, and token-balanced
shares can leave one rank a padding pass): the metrics of every step, the final weights and the
final held-out evaluation agree to 1e-5, for LoRA under DDP, for full fine-tuning under FSDP2 and
for LoRA with its frozen base sharded by FSDP2 (`strategy="fsdp"`). Under DDP only rank 0 runs the
final evaluation; under FSDP every rank takes part in its forwards.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from helpers.distributed import assert_same_training, metric_lines, spawn_train
from preftune.training.distributed import Group, rank_passes, shard_step

CPU = torch.device("cpu")

KNOBS: dict[str, Any] = {
    "max_length": 48,
    "batch_size": 1,
    "gradient_accumulation_steps": 4,
    "max_steps": 3,
    "learning_rate": 5e-3,
    "precision": "fp32",
    "lora_dropout": 0.0,
    "n_checkpoints": 1,
}


def _assert_same_run(one: Path, two: Path, lora: bool, strategy: str) -> None:
    assert [x["step"] for x in metric_lines(one)] == [
        1,
        2,
        3,
        3,
    ]  # three steps, then the last one's evaluation
    assert_same_training(one, two, lora)
    report = json.loads((two / "train_report.json").read_text())
    assert report["world_size"] == 2 and report["strategy"] == strategy
    ea, eb = (json.loads((out / "eval.json").read_text()) for out in (one, two))
    assert ea["n_pairs"] == eb["n_pairs"] == 6 and ea["model"]
    for side in ("base", "model"):
        for key, value in (ea[side] or {}).items():
            assert eb[side][key] == pytest.approx(value, abs=1e-5, rel=1e-5), (side, key)


def _assert_mfu_per_device(one: Path, two: Path) -> None:
    """The same global step has the same model FLOPs on any world size; MFU shares them per device."""
    reports = {
        world: json.loads((out / "train_report.json").read_text()) for world, out in ((1, one), (2, two))
    }
    assert reports[1]["model_flops"] == reports[2]["model_flops"] > 0
    for world, out in ((1, one), (2, two)):
        peak = reports[world]["peak_flops"]
        for line in metric_lines(out):
            if line["split"] == "train":
                assert line["mfu"] == pytest.approx(line["model_flops_per_s"] / world / peak, rel=1e-12)
                assert 0 < line["mfu"] <= 1
    per_token = [
        [x["model_flops_per_s"] / x["tokens_per_s"] for x in metric_lines(out) if x["split"] == "train"]
        for out in (one, two)
    ]
    assert per_token[0] == pytest.approx(per_token[1], rel=1e-9)  # global FLOPs, not one rank's share


@pytest.mark.parametrize(
    ("lora", "strategy"),
    [(True, "ddp"), (False, "fsdp"), (True, "fsdp")],
    ids=["lora-ddp", "full-fsdp2", "lora-fsdp2"],
)
@pytest.mark.slow
def test_two_processes_train_what_one_trains(
    lora: bool, strategy: str, tiny_model_dir: Path, pairs_file: Path, eval_pairs_file: Path, tmp_path: Path
) -> None:
    spec = {**KNOBS, "lora": lora}
    runs, outcomes = {}, {}
    for world in (1, 2):
        out = tmp_path / f"world-{world}"
        outcomes[world] = spawn_train(
            world,
            spec,
            # auto is DDP for LoRA and FSDP2 for full fine-tuning; LoRA on FSDP2 is asked for
            strategy="fsdp" if lora and strategy == "fsdp" else "auto",
            model=str(tiny_model_dir),
            training_file=pairs_file,
            validation_file=eval_pairs_file,
            output_dir=out,
            models_dir=tmp_path / "models",
        )
        runs[world] = out
    _assert_same_run(runs[1], runs[2], lora, strategy)
    _assert_mfu_per_device(runs[1], runs[2])
    # Rank 0 alone wrote the metrics: one line a step (and the final step's evaluation), not one per rank.
    assert [line["split"] for line in metric_lines(runs[2])] == ["train", "train", "train", "eval"]
    dcp_dir = runs[2] / "checkpoints" / "step-3" / "dcp"
    assert list(dcp_dir.glob("*.distcp"))
    # The final held-out evaluation: rank 0 alone with replicated weights, every rank with sharded ones.
    assert [o.evaluated for o in outcomes[2]] == [True, strategy == "fsdp"]
    assert all(o.status == "completed" for o in outcomes[2])
    if lora:  # only the adapter is trained and checkpointed, never the frozen base
        from torch.distributed.checkpoint import FileSystemReader

        saved = [
            k
            for k in FileSystemReader(str(dcp_dir)).read_metadata().state_dict_metadata
            if k.startswith("model.")
        ]
        assert saved and all("lora_" in k for k in saved), saved[:3]


@pytest.mark.parametrize("world", [1, 2, 3, 8])
def test_a_step_is_dealt_over_the_ranks_by_tokens(world: int) -> None:
    gen = torch.Generator().manual_seed(world)
    lengths = torch.randint(10, 300, (40,), generator=gen).tolist()
    step = torch.randperm(40, generator=gen)[:13].tolist()
    shares = shard_step(step, lengths, world)
    assert shard_step(step, lengths, world) == shares  # deterministic
    assert sorted(i for share in shares for i in share) == sorted(step)  # every pair once
    for share in shares:  # each share in the step's order
        assert share == [i for i in step if i in share]
    tokens = [sum(lengths[i] for i in share) for share in shares]
    assert max(tokens) - min(tokens) <= max(lengths[i] for i in step)
    # Every rank runs as many passes; the padding ones repeat the step's shortest pair.
    passes = [rank_passes(step, lengths, 2, 400, Group(rank, world, CPU)) for rank in range(world)]
    assert len({len(p) for p, _ in passes}) == 1
    shortest = min(step, key=lambda i: (lengths[i], i))
    for (own, padding), share in zip(passes, shares, strict=True):
        real = own[: len(own) - padding]
        assert [i for p in real for i in p] == share
        assert all(p == [shortest] for p in own[len(own) - padding :])
