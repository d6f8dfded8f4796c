"""Parity with TRL 1.16 on the same tiny model and the same 4 real pairs, in float32.

The policy and the reference are two different tiny random models, so the log-ratios are not zero and
every variant's loss and rewards really depend on them. The chain is compared link by link:
1. tokenisation: TRL's DPOTrainer tokenises the pairs; its prompt/chosen/rejected ids equal preftune's;
2. per-sequence log-probs: TRL's (padded, one sequence a row) equal preftune's (prefix-shared, packed);
3. the first step's loss and TRL's logged metrics (`rewards/*`, `logps/*`) for each variant.
SimPO is checked against `trl.experimental.cpo.CPOTrainer(loss_type="simpo", cpo_alpha=0)`, fed the same
token ids (its legacy tokeniser appends an extra EOS after the chat template's closing newline).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from preftune.contracts.spec import TrainingSpec
from preftune.data import PreferenceExample, iter_examples
from preftune.training.logps import sequence_logps
from preftune.training.losses import SequenceLogps, loss_for
from preftune.training.packing import pack
from preftune.training.tokenize import PairTokens, TruncationStats, tokenize_pair

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")

N_PAIRS = 4
MAX_TOKENS = 305  # the 4 shortest orca pairs: no truncation on either side, small float32 sums
TOL = 1e-4
METRICS = (
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracies",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
)


class Fixture:
    def __init__(self, tiny_model_dir: Path, orca_path: Path) -> None:
        self.tokenizer: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(tiny_model_dir)
        self.policy = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
        # The same architecture with other random weights: a reference the policy really differs from.
        # A wider initialisation makes its next-token distributions far from uniform, so even the per-token
        # (length-normalised) log-ratios are large enough to move every loss well beyond the tolerance.
        torch.manual_seed(1)
        config = self.policy.config.__class__.from_dict(
            {**self.policy.config.to_dict(), "initializer_range": 0.1}
        )
        self.reference = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        self.policy.train()
        self.reference.eval()
        self.examples: list[PreferenceExample] = []
        self.pairs: list[PairTokens] = []
        for example in iter_examples(orca_path):
            assert isinstance(example, PreferenceExample)
            chars = sum(
                len(m["content"]) for m in [*example.messages, example.preferred, example.non_preferred]
            )
            if chars > 4 * MAX_TOKENS:  # cheap pre-filter: rendering every example's template is slow
                continue
            tokens = tokenize_pair(
                self.tokenizer,
                len(self.pairs) + 1,
                example.messages,
                example.preferred,
                example.non_preferred,
                max_length=100_000,
                stats=TruncationStats(),
            )
            assert isinstance(tokens, PairTokens)
            if tokens.length <= MAX_TOKENS:
                self.examples.append(example)
                self.pairs.append(tokens)
            if len(self.pairs) == N_PAIRS:
                break
        assert len(self.pairs) == N_PAIRS
        batch = pack(self.pairs)
        with torch.no_grad():
            self.policy_logps = self._logps(self.policy, batch)
            self.reference_logps = self._logps(self.reference, batch)

    @staticmethod
    def _logps(model: torch.nn.Module, batch: Any) -> SequenceLogps:
        sums, counts = sequence_logps(model, batch)
        return SequenceLogps(sums[0::2], sums[1::2], counts[0::2], counts[1::2])

    def trl_rows(self) -> list[dict[str, Any]]:
        return [
            {"prompt": e.messages, "chosen": [e.preferred], "rejected": [e.non_preferred]}
            for e in self.examples
        ]


@pytest.fixture(scope="module")
def fx(tiny_model_dir: Path, orca_path: Path) -> Fixture:
    return Fixture(tiny_model_dir, orca_path)


def dpo_trainer(fx: Fixture, tmp_path: Path, **config: Any) -> Any:
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(
        output_dir=str(tmp_path / "trl"),
        per_device_train_batch_size=N_PAIRS,
        max_length=None,
        report_to="none",
        use_cpu=True,
        bf16=False,
        fp16=False,
        **config,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return DPOTrainer(
            model=fx.policy,
            ref_model=fx.reference,
            args=args,
            processing_class=fx.tokenizer,
            train_dataset=Dataset.from_list(fx.trl_rows()),
        )


def trl_batch(trainer: Any) -> dict[str, torch.Tensor]:
    """TRL's own collated batch of the 4 pairs, in file order (the dataloader would shuffle)."""
    rows = [trainer.train_dataset[i] for i in range(N_PAIRS)]
    keys = ("prompt_ids", "chosen_ids", "rejected_ids")
    return trainer.data_collator([{k: row[k] for k in keys} for row in rows])


def trl_first_step(trainer: Any) -> tuple[float, dict[str, float]]:
    batch = trl_batch(trainer)
    trainer.model.train()  # TRL files metrics under "train" or "eval" by the model's mode
    trainer._metrics["train"].clear()
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, batch)
    return float(loss), {name: values[-1] for name, values in trainer._metrics["train"].items()}


def assert_parity(fx: Fixture, spec: TrainingSpec, trl_loss: float, trl_metrics: dict[str, float]) -> None:
    reference = fx.reference_logps if spec.needs_reference else None
    out = loss_for(spec)(fx.policy_logps, reference)  # type: ignore[arg-type]
    assert out.mean().item() == pytest.approx(trl_loss, abs=TOL)
    for name in METRICS:
        assert out.metrics[name].mean().item() == pytest.approx(trl_metrics[name], abs=TOL, rel=1e-6), name
    # The comparison has teeth: with no policy/reference difference the loss would be far outside TOL.
    assert out.metrics["rewards/margins"].abs().max().item() > 100 * TOL
    if reference is not None:
        untrained = loss_for(spec)(fx.reference_logps, fx.reference_logps).mean().item()  # type: ignore[arg-type]
        assert abs(untrained - trl_loss) > 10 * TOL


def test_tokenisation_and_logps_match_trl(fx: Fixture, tmp_path: Path) -> None:
    trainer = dpo_trainer(fx, tmp_path, beta=0.1)
    for i, pair in enumerate(fx.pairs):
        row = trainer.train_dataset[i]
        assert row["prompt_ids"] == pair.prompt
        assert row["chosen_ids"] == pair.chosen
        assert row["rejected_ids"] == pair.rejected
    batch = trl_batch(trainer)
    with torch.no_grad():
        for model, ours in ((trainer.model, fx.policy_logps), (trainer.ref_model, fx.reference_logps)):
            chosen, rejected = trainer.compute_ref_log_probs(model, batch)
            torch.testing.assert_close(ours.chosen, chosen.float(), atol=1e-3, rtol=1e-6)
            torch.testing.assert_close(ours.rejected, rejected.float(), atol=1e-3, rtol=1e-6)


@pytest.mark.parametrize(
    ("ours", "trl"),
    [
        pytest.param({"dpo_beta": 0.1}, {"beta": 0.1, "loss_type": ["sigmoid"]}, id="sigmoid"),
        pytest.param(
            {"dpo_beta": 0.3, "dpo_normalize_logratios_by_length": True},
            {"beta": 0.3, "loss_type": ["sigmoid_norm"]},
            id="sigmoid_norm",
        ),
        pytest.param(
            {"dpo_beta": 0.1, "rpo_alpha": 0.7},
            {"beta": 0.1, "loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, 0.7]},
            id="rpo",
        ),
        pytest.param(
            {"dpo_beta": 0.1, "dpo_loss_type": "ipo"}, {"beta": 0.1, "loss_type": ["ipo"]}, id="ipo"
        ),
        pytest.param(
            {"dpo_beta": 0.3, "dpo_loss_type": "hinge"}, {"beta": 0.3, "loss_type": ["hinge"]}, id="hinge"
        ),
        pytest.param(
            {"dpo_beta": 0.1, "dpo_label_smoothing": 0.2},
            {"beta": 0.1, "loss_type": ["robust"], "label_smoothing": 0.2},
            id="robust",
        ),
    ],
)
def test_dpo_variants_match_trl(
    fx: Fixture, tmp_path: Path, ours: dict[str, Any], trl: dict[str, Any]
) -> None:
    trl_loss, trl_metrics = trl_first_step(dpo_trainer(fx, tmp_path, **trl))
    assert_parity(fx, TrainingSpec.from_params(ours), trl_loss, trl_metrics)


def test_simpo_matches_trl_cpo(fx: Fixture, tmp_path: Path) -> None:
    from datasets import Dataset
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    beta, gamma = 2.0, 0.8
    args = CPOConfig(
        output_dir=str(tmp_path / "cpo"),
        loss_type="simpo",
        cpo_alpha=0.0,
        beta=beta,
        simpo_gamma=gamma,
        per_device_train_batch_size=N_PAIRS,
        report_to="none",
        use_cpu=True,
        max_length=4096,
    )
    text_rows = [{"prompt": "a", "chosen": " b", "rejected": " c"}] * N_PAIRS  # CPO insists on a dataset
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = CPOTrainer(
            model=fx.policy,
            args=args,
            processing_class=fx.tokenizer,
            train_dataset=Dataset.from_list(text_rows),
        )
    batch = cpo_batch(fx.pairs, pad_id=fx.tokenizer.pad_token_id)
    with torch.no_grad():
        loss, metrics = trainer.get_batch_loss_metrics(trainer.model, batch)
    assert_parity(
        fx, TrainingSpec.from_params({"dpo_beta": beta, "simpo_gamma": gamma}), float(loss), metrics
    )


def cpo_batch(pairs: list[PairTokens], pad_id: int) -> dict[str, torch.Tensor]:
    """CPOTrainer's padded batch layout (`{chosen,rejected}_{input_ids,attention_mask,labels}`) from our ids."""
    out: dict[str, torch.Tensor] = {}
    for side in ("chosen", "rejected"):
        seqs = [p.prompt + getattr(p, side) for p in pairs]
        width = max(map(len, seqs))
        ids = torch.full((len(pairs), width), pad_id)
        mask = torch.zeros((len(pairs), width), dtype=torch.long)
        labels = torch.full((len(pairs), width), -100)
        for i, (p, seq) in enumerate(zip(pairs, seqs, strict=True)):
            ids[i, : len(seq)] = torch.tensor(seq)
            mask[i, : len(seq)] = 1
            labels[i, len(p.prompt) : len(seq)] = torch.tensor(seq[len(p.prompt) :])
        out |= {f"{side}_input_ids": ids, f"{side}_attention_mask": mask, f"{side}_labels": labels}
    return out


def test_fixture_pairs_are_real_and_distinct(fx: Fixture) -> None:
    assert len({json.dumps(e.messages) for e in fx.examples}) == N_PAIRS
    assert all(p.chosen != p.rejected for p in fx.pairs)
