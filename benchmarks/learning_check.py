"""Does each preference method learn, and as well as TRL? preftune and TRL trained on the same split with
the same knobs, both judged on held-out pairs by the same `preftune eval` (training.evaluation.evaluate).

    .venv/bin/python benchmarks/learning_check.py                             # orca, DPO/SimPO/RPO, both arms
    .venv/bin/python benchmarks/learning_check.py --data hh --methods dpo     # HH-RLHF harmless, 400 / 200
    .venv/bin/python benchmarks/learning_check.py --arms preftune --train 64 --eval 48   # shorter
    .venv/bin/python benchmarks/learning_check.py --same-pairs --arms preftune  # only the pairs TRL keeps
    .venv/bin/python benchmarks/learning_check.py --methods simpo --seeds 42,1,2 --json simpo.json  # 3 seeds
    .venv/bin/python benchmarks/learning_check.py --summarize a.json b.json   # pool earlier runs' results
    .venv/bin/python benchmarks/learning_check.py --same-pairs --max-length 1536  # no pair truncated (orca)

Splits (shuffled with `random.Random(0)`, the first `--train` pairs trained on, the next `--eval` held out):
- `orca`: shared orca_dpo_pairs (284 pairs): 200 train / 84 held out, the anchor users know;
- `hh`: shared HH-RLHF harmless-base test split converted with `preftune data convert --from hh-rlhf`:
  400 train / 200 held out, the hard case (the two answers are often close).

Knobs, the same for both arms (TRL's `DPOTrainer`, its `CPOTrainer` for SimPO): smollm2-135m-instruct, LoRA
r 16 alpha 32 on all linear layers, lr 1e-4 (linear decay, no warmup), batch 8, max length 384, 1 epoch,
seed 42, float32 (`--precision`). DPO: beta 0.1. RPO: beta 0.1, alpha 1.0 (TRL 1.x: `loss_type=["sigmoid",
"sft"]`, `loss_weights=[1, alpha]`). SimPO: beta 2.0, gamma 1.0 (TRL: `loss_type="simpo"`, `cpo_alpha=0`,
`simpo_gamma=1.0`; the same loss, -log sigma(beta * (avg log p_c - avg log p_r) - gamma)); SimPO at beta 0.1
barely moves in one epoch, and the paper's range is 2.0-2.5.

Judged, for every run, on the held-out pairs (`preftune eval`'s figures, beside the base model's): the
sigmoid DPO loss at beta 0.1 against the base model (lower is better), reward accuracy and margin, and the
policy's own preference accuracy (summed and per-token log-probs). The check: preftune's held-out loss no
worse than TRL's (within `--tolerance`) and its accuracies no lower, on the means over `--seeds` (one seed
per arm is not enough: orca SimPO's held-out loss moved 0.06 between two of preftune's seeds, more than its
gap to TRL). `--summarize` pools several runs' `--json` files into one such verdict.

The two arms truncate differently at max length: preftune drops the prompt's start first, TRL the answers'
ends, and TRL's DPOTrainer drops a pair outright when its prompt alone fills max length (35 of orca's 200
training pairs, 17 of HH's 400 at 384 tokens). The experimental CPOTrainer (TRL's SimPO) keeps such a pair
with an empty answer, whose mean log-prob is 0/0 = NaN, and one such pair in a batch makes every weight
NaN after the first step; the SimPO arm therefore drops the same pairs as TRL's DPOTrainer. Each result
records the pairs each arm trained on and its steps. `--same-pairs` removes the difference: both arms
train only on the pairs TRL's DPOTrainer keeps (`drop_long_prompts` counts the prompt as TRL does), so a
gap that remains is the method's, not the data's. TRL keeps its default gradient checkpointing (it
changes no figure; without it TRL's batch of 8 at 384 tokens needs 17 GB). The held-out pairs are the same for both arms and the
same code judges them (long prompts there are cut at the start, for both).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from preftune.contracts.spec import PRECISIONS

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
DATASETS: dict[str, dict[str, Any]] = {
    "orca": {"path": SHARED / "orca_dpo_pairs" / "orca_dpo_pairs.jsonl", "train": 200, "eval": 84},
    "hh": {
        "path": SHARED / "hh_rlhf_harmless_base" / "test.jsonl.gz",
        "train": 400,
        "eval": 200,
        "convert": "hh-rlhf",
    },
}
MODEL = "smollm2-135m-instruct"
SEED = 0
COMMON: dict[str, Any] = {
    "max_length": 384,
    "batch_size": 8,
    "n_epochs": 1,
    "lora_r": 16,
    "lora_alpha": 32,
    "lora_trainable_modules": "all-linear",
    "learning_rate": 1e-4,
    "seed": 42,
}
METHODS: dict[str, dict[str, Any]] = {
    "dpo": {"dpo_beta": 0.1},
    "simpo": {"dpo_beta": 2.0, "simpo_gamma": 1.0},
    "rpo": {"dpo_beta": 0.1, "rpo_alpha": 1.0},
}
JUDGE_BETA = 0.1
FIGURES = [
    "loss",
    "rewards/accuracies",
    "rewards/margins",
    "preference_accuracy",
    "preference_accuracy_normalized",
]
LABELS = ["loss", "reward acc", "margin", "pref acc", "pref acc/tok"]


def prepare(name: str, train: int, held_out: int, directory: Path) -> tuple[Path, Path]:
    """The seeded split of data set `name` (converted first if it needs it)."""
    info = DATASETS[name]
    source = Path(info["path"])
    if "convert" in info:
        from preftune.data.convert import convert_file

        converted = directory / f"{name}.jsonl"
        convert_file(source, converted, source=info["convert"])
        source = converted
    lines = [line for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]
    if train + held_out > len(lines):
        raise SystemExit(f"--train + --eval must be at most {len(lines)} for {name}")
    random.Random(SEED).shuffle(lines)
    train_file, eval_file = directory / f"{name}-train.jsonl", directory / f"{name}-eval.jsonl"
    train_file.write_text("\n".join(lines[:train]) + "\n", encoding="utf-8")
    eval_file.write_text("\n".join(lines[train : train + held_out]) + "\n", encoding="utf-8")
    return train_file, eval_file


def drop_long_prompts(train_file: Path, model_dir: Path, max_length: int) -> int:
    """Keep only the pairs TRL's DPOTrainer keeps: those whose chat-templated prompt (up to where it and
    prompt + answer diverge, as TRL counts it) is shorter than max_length. Returns the pairs dropped."""
    from transformers import AutoTokenizer

    from preftune.training.tokenize import common_prefix_length, render

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    kept, dropped = [], 0
    for line in train_file.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        messages = record["input"]["messages"]
        # TRL's prompt length: the min of its common prefix with each prompt + answer, i.e. with both.
        length = common_prefix_length(
            render(tokenizer, messages, generation_prompt=True),
            *(render(tokenizer, messages + record[key], generation_prompt=False)
              for key in ("preferred_output", "non_preferred_output")),
        )  # fmt: skip
        if length < max_length:
            kept.append(line)
        else:
            dropped += 1
    train_file.write_text("\n".join(kept) + "\n", encoding="utf-8")
    return dropped


def judge(adapter: Path, model_dir: Path, eval_file: Path) -> dict[str, Any]:
    from preftune.training.evaluation import evaluate

    return evaluate(
        str(adapter),
        eval_file,
        models_dir=model_dir.parent,
        base=str(model_dir),
        beta=JUDGE_BETA,
        max_length=COMMON["max_length"],
        batch_size=COMMON["batch_size"],
    )


# --- the two arms (each in its own process) ---------------------------------------------------------
def train_preftune(
    method: str, model_dir: Path, train_file: Path, out: Path, precision: str
) -> tuple[Path, dict[str, int]]:
    from preftune.contracts.spec import TrainingSpec
    from preftune.training.trainer import train

    params = {**COMMON, **METHODS[method], "precision": precision}
    result = train(
        TrainingSpec.from_params(params),
        model=str(model_dir),
        training_file=train_file,
        output_dir=out,
        models_dir=out / "models",
    )
    assert result.adapter_path is not None
    pairs = sum(1 for line in train_file.read_text(encoding="utf-8").splitlines() if line.strip())
    return result.adapter_path, {"pairs_trained": pairs, "steps": result.steps}


def train_trl(
    method: str, model_dir: Path, train_file: Path, out: Path, precision: str
) -> tuple[Path, dict[str, int]]:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer

    rows = []
    for line in train_file.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        rows.append(
            {
                "prompt": record["input"]["messages"],
                "chosen": record["preferred_output"],
                "rejected": record["non_preferred_output"],
            }
        )
    knobs = {**COMMON, **METHODS[method]}
    torch.manual_seed(knobs["seed"])
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    shared = {
        "output_dir": str(out / "trl"),
        "per_device_train_batch_size": knobs["batch_size"],
        "learning_rate": knobs["learning_rate"],
        "num_train_epochs": knobs["n_epochs"],
        "beta": knobs["dpo_beta"],
        "max_length": knobs["max_length"],
        "bf16": precision == "bf16",
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "use_cpu": True,
        "seed": knobs["seed"],
        "disable_tqdm": True,
        # TRL's default gradient checkpointing stays on: without it one batch of 8 pairs at 384 tokens
        # (16 sequences, full-vocabulary logits) took 17 GB and was OOM-killed on the 24 GB VM.
    }
    lora = LoraConfig(
        r=knobs["lora_r"], lora_alpha=knobs["lora_alpha"], target_modules="all-linear", task_type="CAUSAL_LM"
    )
    trainer: Any
    if method == "simpo":
        from trl.experimental.cpo import CPOConfig, CPOTrainer

        cpo_args = CPOConfig(**shared, loss_type="simpo", cpo_alpha=0.0, simpo_gamma=knobs["simpo_gamma"])
        trainer = CPOTrainer(
            model=model,
            args=cpo_args,
            processing_class=tokenizer,
            train_dataset=Dataset.from_list(rows),
            peft_config=lora,
        )
        # CPOTrainer keeps a pair whose prompt alone fills max_length, with an empty answer; SimPO's mean
        # log-prob over it is 0/0 = NaN, and one NaN in a batch turns every weight NaN after the step.
        # TRL's own DPOTrainer drops exactly these pairs ("prompt alone fills max_length"); do the same.
        limit = knobs["max_length"]
        trainer.train_dataset = trainer.train_dataset.filter(lambda row: len(row["prompt_input_ids"]) < limit)
    else:
        from trl import DPOConfig, DPOTrainer

        extra: dict[str, Any] = {}
        if method == "rpo":
            extra = {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, knobs["rpo_alpha"]]}
        dpo_args = DPOConfig(**shared, **extra)
        trainer = DPOTrainer(
            model=model,
            args=dpo_args,
            processing_class=tokenizer,
            train_dataset=Dataset.from_list(rows),
            peft_config=lora,
        )
    trainer.train()
    adapter = out / "adapter"
    trainer.model.save_pretrained(adapter)
    tokenizer.save_pretrained(adapter)
    return adapter, {"pairs_trained": len(trainer.train_dataset), "steps": trainer.state.global_step}


def worker(
    arm: str, method: str, model_dir: Path, train_file: Path, eval_file: Path, precision: str
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix=f"learn-{arm}-{method}-") as tmp:
        started = time.perf_counter()
        trainer = train_preftune if arm == "preftune" else train_trl
        adapter, trained = trainer(method, model_dir, train_file, Path(tmp) / "run", precision)
        seconds = time.perf_counter() - started
        figures = judge(adapter, model_dir, eval_file)
    return {"arm": arm, "method": method, "train_seconds": seconds, **trained, "figures": figures}


def _write_json(path: Path, value: Any) -> None:
    """Whole or not at all: a stop mid-write leaves the previous file, never half of one."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(value, indent=2), encoding="utf-8")
    os.replace(partial, path)


def _row(label: str, figures: dict[str, Any]) -> str:
    return f"  {label:<32}" + "".join(f"{figures.get(k, float('nan')):>13.4f}" for k in FIGURES)


def _header() -> str:
    return f"  {'':<32}" + "".join(f"{label:>13}" for label in LABELS)


def _arm_label(result: dict[str, Any]) -> str:
    # TRL's DPOTrainer drops the long-prompt pairs itself, so its arm is the same with or without
    # --same-pairs; preftune's arm is a different experiment with and without it.
    if result["arm"] == "preftune" and result.get("same_pairs"):
        return "preftune same-pairs"
    return str(result["arm"])


def summarize(results: list[dict[str, Any]], tolerance: float) -> list[str]:
    """Each arm's held-out figures averaged over its seeds, and the verdict on those means.

    One seed per arm cannot separate two methods whose seed-to-seed spread is larger than their gap
    (orca SimPO: preftune's seeds 42 and 1 differ by 0.06 in held-out loss), so the check compares means
    and prints each mean's standard deviation beside it. Rows from several runs (``--summarize a.json
    b.json``) are pooled; a repeated (arm, seed) keeps its latest run. Results written before ``--seed``
    existed were all trained with seed 42."""
    groups: dict[tuple[Any, ...], dict[str, dict[int, dict[str, Any]]]] = {}
    for r in sorted(results, key=lambda r: str(r.get("finished", ""))):
        # Runs at different max lengths are different experiments (results before the flag used 384).
        key = (
            r["data"],
            r["train"],
            r["eval"],
            r.get("precision", "fp32"),
            r.get("max_length", 384),
            r["method"],
        )
        groups.setdefault(key, {}).setdefault(_arm_label(r), {})[int(r.get("seed", 42))] = r
    lines: list[str] = []
    for (data, n_train, n_eval, precision, max_length, method), arms in groups.items():
        lines += [
            f"{data} {method}: {n_train} train / {n_eval} held out, {precision}, max length {max_length}",
            _header(),
        ]
        base = next(iter(next(iter(arms.values())).values()))["figures"]["base"]
        lines.append(_row("base", base))
        means: dict[str, dict[str, float]] = {}
        n_seeds: dict[str, int] = {}
        for label, by_seed in sorted(arms.items()):
            runs = [by_seed[seed]["figures"]["model"] for seed in sorted(by_seed)]
            mean = {k: statistics.fmean(run[k] for run in runs) for k in FIGURES}
            seeds = ",".join(str(seed) for seed in sorted(by_seed))
            lines.append(_row(f"{label} (seed {seeds})", mean))
            if len(runs) > 1:
                lines.append(
                    _row("  sd over seeds", {k: statistics.stdev(run[k] for run in runs) for k in FIGURES})
                )
            means[label] = mean
            n_seeds[label] = len(runs)
        theirs = means.get("trl")
        for label, ours in means.items():
            if theirs is None or label == "trl":
                continue
            ok_loss = ours["loss"] <= theirs["loss"] + tolerance
            ok_acc = all(ours[k] >= theirs[k] - tolerance for k in FIGURES if "accura" in k)
            verdict = "ok" if ok_loss and ok_acc else "WORSE"
            lines.append(
                f"  {label} vs trl, means of {n_seeds[label]} and {n_seeds['trl']} seeds: loss {'ok' if ok_loss else 'worse'}, "
                f"accuracies {'ok' if ok_acc else 'lower'} -> {verdict}"
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", choices=sorted(DATASETS), default="orca")
    parser.add_argument("--train", type=int, default=None, help="pairs to train on (default: the data set's)")
    parser.add_argument("--eval", type=int, default=None, help="pairs held out (default: the data set's)")
    parser.add_argument("--methods", default="dpo,simpo,rpo")
    parser.add_argument("--arms", default="preftune,trl")
    parser.add_argument("--precision", choices=[p for p in PRECISIONS if p != "auto"], default="fp32")
    parser.add_argument(
        "--same-pairs",
        action="store_true",
        help="train both arms only on the pairs TRL's DPOTrainer keeps (prompt shorter than max length)",
    )
    parser.add_argument(
        "--seeds",
        "--seed",
        default=str(COMMON["seed"]),
        help="both arms' training seeds, comma-separated; the verdict compares the means over them",
    )
    parser.add_argument(
        "--max-length",
        type=int,
        default=COMMON["max_length"],
        help="training, --same-pairs and judging max length in tokens (above the longest pair: no truncation)",
    )
    parser.add_argument("--tolerance", type=float, default=0.01, help="loss and accuracy slack of the check")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--summarize",
        nargs="+",
        type=Path,
        metavar="JSON",
        help="train nothing: pool the results of earlier --json files and print the means and the verdict",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--worker-args", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.summarize:
        pooled = [r for path in args.summarize for r in json.loads(path.read_text(encoding="utf-8"))]
        print("\n".join(summarize(pooled, args.tolerance)))
        return
    if args.worker:
        w = json.loads(args.worker_args)
        COMMON["seed"] = w["seed"]
        COMMON["max_length"] = w["max_length"]
        out = worker(
            args.worker, w["method"], Path(w["model_dir"]), Path(w["train"]), Path(w["eval"]), w["precision"]
        )
        _write_json(Path(w["result"]), out)
        return

    try:
        seeds = [int(seed) for seed in args.seeds.split(",")]
    except ValueError:
        parser.error(f"--seeds: expected comma-separated integers, got {args.seeds!r}")
    COMMON["max_length"] = args.max_length

    from preftune.config import Settings
    from preftune.contracts.base_models import resolve_model

    info = DATASETS[args.data]
    n_train, n_eval = args.train or info["train"], args.eval or info["eval"]
    model_dir = resolve_model(MODEL, Settings().models_dir)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false"}
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="learn-data-") as tmp:
        train_file, eval_file = prepare(args.data, n_train, n_eval, Path(tmp))
        if args.same_pairs:
            dropped = drop_long_prompts(train_file, model_dir, COMMON["max_length"])
            print(f"--same-pairs: {dropped} training pairs whose prompt fills max length dropped", flush=True)
        print(
            f"{args.data}: shuffled with seed {SEED}, {n_train} train / {n_eval} held out; "
            f"load average {os.getloadavg()[0]:.1f}",
            flush=True,
        )
        print(_header())
        base_shown: set[str] = set()
        for method, seed in ((method, seed) for method in args.methods.split(",") for seed in seeds):
            for arm in args.arms.split(","):
                result_file = Path(tmp) / f"{arm}-{method}-{seed}.json"
                payload = {"method": method, "model_dir": str(model_dir), "train": str(train_file),
                           "eval": str(eval_file), "precision": args.precision, "seed": seed,
                           "max_length": args.max_length, "result": str(result_file)}  # fmt: skip
                cmd = [sys.executable, __file__, "--worker", arm, "--worker-args", json.dumps(payload)]
                # The worker's own output (the trainers' logs) goes to ours, so a long run can be watched.
                proc = subprocess.run(cmd, env=env, stdout=sys.stderr)
                if proc.returncode != 0:
                    raise SystemExit(f"{arm} {method} failed (exit {proc.returncode})")
                r = json.loads(result_file.read_text(encoding="utf-8"))
                results.append({**r, "data": args.data, "train": n_train, "eval": n_eval,
                                "same_pairs": args.same_pairs, "seed": seed, "max_length": args.max_length,
                                "precision": args.precision, "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                                "load_average": os.getloadavg()[0]})  # fmt: skip
                if args.json:  # after every arm, so a stop later loses nothing already finished
                    _write_json(args.json, results)
                if method not in base_shown:  # the base model's figures are the same for every arm and seed
                    base_shown.add(method)
                    print(_row(f"base ({method})", r["figures"]["base"]), flush=True)
                label = f"{arm} {method} s{seed} ({r['train_seconds']:.0f} s)"
                print(_row(label, r["figures"]["model"]), flush=True)
    print("\n".join(["", *summarize(results, args.tolerance)]))
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
