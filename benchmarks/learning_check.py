"""Does each preference method learn? Held-out reward accuracy and margin before and after training.

    .venv/bin/python benchmarks/learning_check.py                       # 200 train / the other 84 pairs
    .venv/bin/python benchmarks/learning_check.py --train 64 --eval 48  # shorter

Trains smollm2-135m-instruct with LoRA on the first `--train` orca pairs and evaluates on the last
`--eval` pairs (never trained on), for DPO, SimPO and RPO, each in its own subprocess. The evaluation is
independent of the trainer's own: the saved adapter is loaded with PEFT onto the base model, the reference
is the base model (adapter disabled), and the log-probs go through preftune's tokenisation, packing and
losses. Reported per method, before and after:
- `rewards/accuracies` and `rewards/margins` on the held-out pairs, as the method defines its reward
  (DPO and RPO: beta * log-ratio to the reference, 0 for every pair before training by construction;
  SimPO: beta * per-token average log-prob);
- `pref_acc`: the fraction of held-out pairs where the chosen answer has the higher per-token average
  log-prob, the same yardstick for every method, meaningful before training too.

Knobs (CPU-sized; documented because they differ from the API defaults): max_length 320, batch 8, one epoch,
LoRA r=16 alpha=32 on all linear layers, lr 5e-4 (LoRA needs a larger rate than full fine-tuning; 5e-5 barely
moves an adapter in 25 steps), linear decay with 10% warmup. DPO beta 0.1; SimPO beta 2.0, gamma 1.0
(gamma/beta = 0.5, the paper's range); RPO beta 0.1, alpha 1.0.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from preftune.contracts.spec import PRECISIONS

ROOT = Path(__file__).resolve().parent.parent
ORCA = ROOT.parent / "shared" / "data" / "orca_dpo_pairs" / "orca_dpo_pairs.jsonl"
MODEL = "smollm2-135m-instruct"
COMMON = {
    "max_length": 320,
    "batch_size": 8,
    "n_epochs": 1,
    "lora_r": 16,
    "lora_alpha": 32,
    "learning_rate": 5e-4,
    "warmup_ratio": 0.1,
    "seed": 42,
}
METHODS: dict[str, dict[str, Any]] = {
    "dpo": {"dpo_beta": 0.1},
    "simpo": {"dpo_beta": 2.0, "simpo_gamma": 1.0},
    "rpo": {"dpo_beta": 0.1, "rpo_alpha": 1.0},
}


def evaluate(model_dir: Path, adapter: Path | None, data: Path, params: dict[str, Any]) -> dict[str, float]:
    """Held-out metrics of base (+ adapter) against the base model as reference."""
    import torch
    from transformers import AutoModelForCausalLM

    from preftune.contracts.spec import TrainingSpec
    from preftune.training.dataset import tokenize_file
    from preftune.training.logps import sequence_logps
    from preftune.training.losses import SequenceLogps, loss_for
    from preftune.training.packing import pack

    spec = TrainingSpec.from_params(params)
    base: Any = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32, attn_implementation="sdpa"
    )
    model: Any = base
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(base, adapter)
    model.eval()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    examples = tokenize_file(data, spec, tokenizer, param="validation_file").examples
    collected: dict[str, list[torch.Tensor]] = {}
    with torch.no_grad():
        for start in range(0, len(examples), 8):
            batch = pack(examples[start : start + 8])
            sums, counts = sequence_logps(model, batch)
            policy = SequenceLogps(sums[0::2], sums[1::2], counts[0::2], counts[1::2])
            reference = None
            if spec.needs_reference:
                if adapter is not None:
                    with model.disable_adapter():
                        ref_sums, _ = sequence_logps(model, batch)
                else:
                    ref_sums = sums
                reference = SequenceLogps(ref_sums[0::2], ref_sums[1::2], counts[0::2], counts[1::2])
            out = loss_for(spec)(policy, reference)  # type: ignore[arg-type]
            for key in ("rewards/accuracies", "rewards/margins"):
                collected.setdefault(key, []).append(out.metrics[key])
            collected.setdefault("pref_acc", []).append(
                (policy.chosen_mean() > policy.rejected_mean()).float()
            )
            collected.setdefault("loss", []).append(out.mean().reshape(1).repeat(len(batch.indices)))
    return {key: float(torch.cat(values).mean()) for key, values in collected.items()} | {"n": len(examples)}


def worker(method: str, model_dir: Path, train_file: Path, eval_file: Path, precision: str) -> dict[str, Any]:
    from preftune.contracts.spec import TrainingSpec
    from preftune.training.trainer import train

    params = {**COMMON, **METHODS[method], "precision": precision}
    before = evaluate(model_dir, None, eval_file, params)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"learn-{method}-") as out:
        result = train(
            TrainingSpec.from_params(params),
            model=str(model_dir),
            training_file=train_file,
            output_dir=Path(out) / "run",
            models_dir=Path(out) / "models",
        )
        seconds = time.perf_counter() - started
        assert result.adapter_path is not None
        after = evaluate(model_dir, result.adapter_path, eval_file, params)
        final = result.final_metrics
    return {
        "method": method,
        "params": params,
        "before": before,
        "after": after,
        "train_seconds": seconds,
        "steps": result.steps,
        "precision": result.report.get("precision"),
        "final_train_metrics": final,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--train", type=int, default=200, help="first N pairs to train on (default 200)")
    parser.add_argument(
        "--eval",
        type=int,
        default=None,
        help="last N pairs to evaluate on (default: all after the training ones)",
    )
    parser.add_argument("--methods", default="dpo,simpo,rpo")
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="training precision (default auto: bf16 autocast where the CPU has native bf16)",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--worker-args", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        w = json.loads(args.worker_args)
        print(
            json.dumps(
                worker(args.worker, Path(w["model_dir"]), Path(w["train"]), Path(w["eval"]), w["precision"])
            )
        )
        return

    from preftune.config import Settings
    from preftune.contracts.base_models import resolve_model

    lines = ORCA.read_text(encoding="utf-8").splitlines()
    if args.eval is None:
        args.eval = len(lines) - args.train
    if args.train + args.eval > len(lines):
        raise SystemExit(f"--train + --eval must be at most {len(lines)} (the orca file's pairs)")
    model_dir = resolve_model(MODEL, Settings().models_dir)
    print(
        f"train on pairs 1-{args.train}, evaluate on pairs {len(lines) - args.eval + 1}-{len(lines)}; "
        f"load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    results = []
    with tempfile.TemporaryDirectory(prefix="learn-data-") as tmp:
        train_file, eval_file = Path(tmp) / "train.jsonl", Path(tmp) / "eval.jsonl"
        train_file.write_text("\n".join(lines[: args.train]) + "\n", encoding="utf-8")
        eval_file.write_text("\n".join(lines[-args.eval :]) + "\n", encoding="utf-8")
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "WANDB_MODE": "disabled",
            "TOKENIZERS_PARALLELISM": "false",
        }
        for method in args.methods.split(","):
            print(f"training {method} ...", flush=True)
            cmd = [
                sys.executable,
                __file__,
                "--worker",
                method,
                "--worker-args",
                json.dumps(
                    {
                        "model_dir": str(model_dir),
                        "train": str(train_file),
                        "eval": str(eval_file),
                        "precision": args.precision,
                    }
                ),
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                sys.stderr.write(proc.stderr[-4000:])
                raise SystemExit(f"{method} failed")
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            results.append(r)
            b, a = r["before"], r["after"]
            print(
                f"  {method} ({r['precision']}): {r['steps']} steps in {r['train_seconds']:.0f} s; held-out (n={a['n']}) "
                f"rewards/accuracies {b['rewards/accuracies']:.3f} -> {a['rewards/accuracies']:.3f}, "
                f"rewards/margins {b['rewards/margins']:.4f} -> {a['rewards/margins']:.4f}, "
                f"pref_acc {b['pref_acc']:.3f} -> {a['pref_acc']:.3f}, loss {b['loss']:.4f} -> {a['loss']:.4f}",
                flush=True,
            )
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
