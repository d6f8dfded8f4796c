"""preftune's DPO trainer against TRL's DPOTrainer: same model, data and knobs, on this machine.

    .venv/bin/python benchmarks/train_vs_trl.py            # 64 pairs, every configuration
    .venv/bin/python benchmarks/train_vs_trl.py --quick    # 16 pairs: a couple of minutes per configuration
    .venv/bin/python benchmarks/train_vs_trl.py --trl fp32 --bracket   # preftune before and after TRL
    .venv/bin/python benchmarks/train_vs_trl.py --trl fp32-gc --precision fp32 --bracket   # float32 only

Model `smollm2-135m-instruct` (resolved and, the first time, imported by `resolve_model`), the first N
pairs of the orca file, LoRA r=16 alpha=32 on all linear layers, batch 8, max length 512, beta 0.1,
lr 5e-5, one epoch. TRL runs with bf16 on/off and gradient checkpointing on/off; preftune with its
defaults (precision auto, which is fp32 on a CPU without native bf16) unless `--precision` says
otherwise. Each configuration runs in its own subprocess, one after the other, so peak RSS is that
configuration's alone.

Throughput counts the training loop only (first step start to last step end: no model load, no
tokenisation, no saving), identically for both. tokens/s counts each pair's tokens once (prompt + chosen +
rejected, as tokenised by the chat template), so the two rates have the same numerator; TRL's layout
computes the prompt twice and pads. FLOP/s (preftune) is a model-FLOPs estimate, `training.flops` (the
trainer's own `mfu` metric counts the same): per token, 2N for the policy forward, 2N for the backward
through frozen weights (activation gradients only; LoRA's own are negligible) and 2N for the reference
forward (N = the transformer blocks' matmul weights), plus the output layer for the answer tokens only
(preftune never builds the other logits); measured against a matmul's speed in the run's precision on the
same threads.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from preftune.contracts.spec import PRECISIONS

ROOT = Path(__file__).resolve().parent.parent
ORCA = ROOT.parent / "shared" / "data" / "orca_dpo_pairs" / "orca_dpo_pairs.jsonl"
MODEL = "smollm2-135m-instruct"
KNOBS: dict[str, Any] = {
    "lora_r": 16,
    "lora_alpha": 32,
    "batch_size": 8,
    "max_length": 512,
    "dpo_beta": 0.1,
    "learning_rate": 5e-5,
    "n_epochs": 1,
}
TRL_CONFIGS = [
    {"bf16": False, "gradient_checkpointing": False},
    {"bf16": False, "gradient_checkpointing": True},
    {"bf16": True, "gradient_checkpointing": False},
    {"bf16": True, "gradient_checkpointing": True},
]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def write_pairs(n: int, out: Path) -> Path:
    lines = ORCA.read_text(encoding="utf-8").splitlines()[:n]
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


def pair_tokens(model_dir: Path, data: Path, max_length: int) -> tuple[int, int]:
    """Tokens of all pairs (prompt once + both answers) and their answer tokens (the output layer's
    rows), with preftune's tokenisation and truncation."""
    from transformers import AutoTokenizer

    from preftune.data import PreferenceExample, iter_examples
    from preftune.training.flops import logit_tokens
    from preftune.training.tokenize import PairTokens, TruncationStats, tokenize_pair

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    total = answers = 0
    for i, ex in enumerate(iter_examples(data)):
        assert isinstance(ex, PreferenceExample)
        pair = tokenize_pair(
            tokenizer, i + 1, ex.messages, ex.preferred, ex.non_preferred, max_length, TruncationStats()
        )
        if isinstance(pair, PairTokens):
            total += pair.length
            answers += logit_tokens(pair)
    return total, answers


# --- workers (run in their own process) ----------------------------------------------------------------------


def worker_trl(model_dir: Path, data: Path, bf16: bool, checkpointing: bool) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    rows = []
    for line in data.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        rows.append(
            {
                "prompt": record["input"]["messages"],
                "chosen": record["preferred_output"],
                "rejected": record["non_preferred_output"],
            }
        )

    class Clock(TrainerCallback):
        def __init__(self) -> None:
            self.start = 0.0
            self.end = 0.0
            self.losses: list[float] = []
            self.steps = 0

        def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if not self.start:
                self.start = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.end = time.perf_counter()
            self.steps += 1

        def on_log(
            self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any
        ) -> None:
            if logs and "loss" in logs:
                self.losses.append(float(logs["loss"]))

    torch.manual_seed(42)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    args = DPOConfig(
        output_dir=tempfile.mkdtemp(prefix="trl-bench-"),
        per_device_train_batch_size=KNOBS["batch_size"],
        learning_rate=KNOBS["learning_rate"],
        num_train_epochs=KNOBS["n_epochs"],
        beta=KNOBS["dpo_beta"],
        max_length=KNOBS["max_length"],
        bf16=bf16,
        gradient_checkpointing=checkpointing,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=42,
        disable_tqdm=True,
    )
    clock = Clock()
    trainer = DPOTrainer(
        model=model,
        args=args,
        processing_class=tokenizer,
        train_dataset=Dataset.from_list(rows),
        peft_config=LoraConfig(
            r=KNOBS["lora_r"],
            lora_alpha=KNOBS["lora_alpha"],
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        ),
        callbacks=[clock],
    )
    trainer.train()
    return {
        "seconds": clock.end - clock.start,
        "steps": clock.steps,
        "final_loss": clock.losses[-1] if clock.losses else None,
        "peak_rss_mb": peak_rss_mb(),
        "threads": torch.get_num_threads(),
    }


def worker_preftune(model_dir: Path, data: Path, precision: str) -> dict[str, Any]:
    import torch

    from preftune.contracts.spec import TrainingSpec
    from preftune.training.callbacks import TRAINING_START, TrainCallbacks
    from preftune.training.trainer import train

    class Clock(TrainCallbacks):
        def __init__(self) -> None:
            self.start = 0.0
            self.end = 0.0
            self.steps = 0
            self.last: dict[str, Any] = {}

        def on_event(self, type: str, message: str, data: dict[str, Any]) -> None:
            if type == TRAINING_START:
                self.start = time.perf_counter()

        def on_step(self, metrics: dict[str, Any]) -> None:
            if metrics.get("split") == "train":
                self.end = time.perf_counter()
                self.steps += 1
                self.last = metrics

    spec = TrainingSpec.from_params({**KNOBS, "precision": precision, "seed": 42})
    clock = Clock()
    with tempfile.TemporaryDirectory(prefix="preftune-bench-") as out:
        result = train(
            spec,
            model=str(model_dir),
            training_file=data,
            output_dir=Path(out) / "run",
            models_dir=Path(out) / "models",
            callbacks=clock,
        )
        report = result.report
    return {
        "seconds": clock.end - clock.start,
        "steps": clock.steps,
        "final_loss": clock.last.get("loss"),
        "peak_rss_mb": peak_rss_mb(),
        "threads": torch.get_num_threads(),
        "precision": report.get("precision"),
        "tokens_seen": report.get("tokens_seen"),
    }


def worker_matmul_peak(dtype_name: str, n: int = 1536) -> dict[str, Any]:
    """Best FLOP/s of a square matmul (the machine's practical peak for this dtype and thread count):
    `training.flops.measured_matmul_peak`, the trainer's own measurement, at a larger size and with
    more repeats than the trainer's quick one. The better of `torch.mm` and, in float32, the pre-packed
    oneDNN matmul preftune's frozen layers use: MFU is measured against the fastest kernel there is
    here, not against the one preftune happens to beat."""
    import math

    import torch

    from preftune.training.flops import measured_matmul_peak
    from preftune.training.modeling import set_threads

    set_threads()
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    return {"flops": measured_matmul_peak(dtype, torch.device("cpu"), size=n, repeats=8, budget_s=math.inf)}


def model_flops(model_dir: Path, steps_tokens: int, answer_tokens: int) -> float:
    """Model FLOPs of one LoRA DPO epoch (`training.flops.model_flops`, the module docstring's convention)."""
    from transformers import AutoConfig

    from preftune.training.flops import model_flops as count

    config = AutoConfig.from_pretrained(model_dir)
    return count(config, steps_tokens, answer_tokens, trained_weights=False, reference=True)


# --- driver ---------------------------------------------------------------------------------------------------


def run_worker(kind: str, **kwargs: Any) -> dict[str, Any]:
    """Run one configuration in a fresh process; a crash (e.g. killed for memory) is reported, not fatal."""
    cmd = [sys.executable, __file__, "--worker", kind, "--worker-args", json.dumps(kwargs)]
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "WANDB_MODE": "disabled",
        "TOKENIZERS_PARALLELISM": "false",
        "TQDM_DISABLE": "1",
    }
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-2000:])
        why = (
            "killed by signal 9 (out of memory?)" if proc.returncode == -9 else f"exit code {proc.returncode}"
        )
        print(
            f"  {kind} {kwargs.get('bf16', '')} {kwargs.get('checkpointing', '')} failed: {why}", flush=True
        )
        return {"failed": why}
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def run_preftune(model_dir: Path, data: Path, precision: str) -> dict[str, Any]:
    print("running preftune ...", flush=True)
    ours = run_worker("preftune", model_dir=str(model_dir), data=str(data), precision=precision)
    if "failed" in ours:
        raise SystemExit(f"preftune failed: {ours['failed']}")
    return {"name": f"preftune ({ours['precision']})", **ours}


def config_name(cfg: dict[str, bool]) -> str:
    return f"{'bf16' if cfg['bf16'] else 'fp32'}{'-gc' if cfg['gradient_checkpointing'] else ''}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs", type=int, default=64, help="first N orca pairs (default 64)")
    parser.add_argument("--quick", action="store_true", help="16 pairs (2 steps): a shorter run")
    parser.add_argument(
        "--trl", default="all", help="TRL configurations: all, or fastest-guess (fp32, no GC)"
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--precision",
        default="auto",
        choices=PRECISIONS,
        help="preftune's precision knob (default auto: bf16 autocast where the CPU has native bf16); "
        "fp32 compares float32 with float32 on a CPU where auto would pick bf16",
    )
    parser.add_argument(
        "--bracket",
        action="store_true",
        help="run preftune before and after TRL and compare TRL with the mean of the two "
        "(cancels a drift of the machine's speed over the run)",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--worker-args", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        wargs = json.loads(args.worker_args)
        for key in ("model_dir", "data"):
            if key in wargs:
                wargs[key] = Path(wargs[key])
        workers: dict[str, Callable[..., dict[str, Any]]] = {
            "trl": worker_trl,
            "preftune": worker_preftune,
            "matmul": worker_matmul_peak,
        }
        fn = workers[args.worker]
        print(json.dumps(fn(**wargs)))
        return

    from preftune.config import Settings
    from preftune.contracts.base_models import resolve_model

    n_pairs = 16 if args.quick else args.pairs
    model_dir = resolve_model(MODEL, Settings().models_dir)
    load = os.getloadavg()
    print(
        f"model {model_dir}\npairs {n_pairs}, knobs {KNOBS}\nload average before: {load[0]:.1f} "
        f"{load[1]:.1f} {load[2]:.1f} on {os.cpu_count()} CPUs",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="bench-data-") as tmp:
        data = write_pairs(n_pairs, Path(tmp) / "pairs.jsonl")
        tokens, answer_tokens = pair_tokens(model_dir, data, KNOBS["max_length"])
        results: list[dict[str, Any]] = []
        wanted = args.trl.split(",")
        configs = [c for c in TRL_CONFIGS if args.trl == "all" or config_name(c) in wanted]
        ours_runs = [run_preftune(model_dir, data, args.precision)] if args.bracket else []
        for cfg in configs:
            name = f"TRL bf16={'on' if cfg['bf16'] else 'off'} gc={'on' if cfg['gradient_checkpointing'] else 'off'}"
            print(f"running {name} ...", flush=True)
            r = run_worker(
                "trl",
                model_dir=str(model_dir),
                data=str(data),
                bf16=cfg["bf16"],
                checkpointing=cfg["gradient_checkpointing"],
            )
            results.append({"name": name, **r})
        ours_runs.append(run_preftune(model_dir, data, args.precision))
        ours = {
            **ours_runs[-1],
            "seconds": sum(r["seconds"] for r in ours_runs) / len(ours_runs),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in ours_runs),
        }
        if len(ours_runs) > 1:
            ours["runs_pairs_per_s"] = [n_pairs / r["seconds"] for r in ours_runs]
            print(
                "preftune before and after TRL: "
                + ", ".join(f"{rate:.3f}" for rate in ours["runs_pairs_per_s"])
                + " pairs/s (the table shows their mean time)"
            )
        results.append(ours)
        peak = run_worker("matmul", dtype_name="fp32" if ours["precision"] == "fp32" else "bf16")["flops"]
        flops = model_flops(model_dir, int(ours["tokens_seen"] or tokens), answer_tokens)

    failed = [r for r in results if "failed" in r]
    results = [r for r in results if "failed" not in r]
    for r in results:
        r["pairs_per_s"] = n_pairs / r["seconds"]
        r["tokens_per_s"] = tokens / r["seconds"]
    for r in failed:
        print(f"{r['name']}: {r['failed']}")
    print(
        f"\n{'configuration':28} {'pairs/s':>8} {'tokens/s':>9} {'peak RSS MB':>12} {'final loss':>11} {'steps':>6}"
    )
    for r in results:
        loss = f"{r['final_loss']:.4f}" if r["final_loss"] is not None else "-"
        print(
            f"{r['name']:28} {r['pairs_per_s']:8.3f} {r['tokens_per_s']:9.1f} {r['peak_rss_mb']:12.0f} "
            f"{loss:>11} {r['steps']:6d}"
        )
    trl_rows = [r for r in results if r["name"].startswith("TRL")]
    if not trl_rows:
        raise SystemExit("no TRL configuration finished; nothing to compare against")
    fastest = max(trl_rows, key=lambda r: r["pairs_per_s"])
    speedup = ours["pairs_per_s"] / fastest["pairs_per_s"]
    rss_ratio = ours["peak_rss_mb"] / fastest["peak_rss_mb"]
    achieved = flops / ours["seconds"]
    print(
        f"\npreftune vs fastest TRL ({fastest['name']}): {speedup:.2f}x pairs/s (target >= 3x), "
        f"peak RSS {rss_ratio:.2f}x (target <= 1x)"
    )
    print(
        f"preftune model FLOP/s {achieved / 1e9:.1f} GFLOP/s vs measured {ours['precision']} matmul peak "
        f"{peak / 1e9:.1f} GFLOP/s: {100 * achieved / peak:.1f}% MFU"
    )
    load = os.getloadavg()
    print(f"load average after: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "pairs": n_pairs,
                    "tokens": tokens,
                    "results": results,
                    "speedup": speedup,
                    "rss_ratio": rss_ratio,
                    "flops": achieved,
                    "peak_flops": peak,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
