"""`TrainingSpec`: every training hyperparameter, its default, range and help text, once.

The CLI flags (`preftune train`, `preftune fine-tuning create`), the SDK keywords,
the native API body, the OpenAI `method.<type>.hyperparameters` mapping, the web
console's form and the trainer all read this one model, so a default can never
differ between them. Field descriptions become `--help` text and the JSON schema.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from preftune.errors import TrainingSpecError

FROM_CHECKPOINT_RE = re.compile(r"^[A-Za-z0-9_.\-/]+(:[0-9]+)?$")

# Fields a job stores but never shows back (secrets).
SECRET_FIELDS = frozenset({"wandb_api_key"})


# The training precisions, named once for the spec and the scripts that pass one through.
Precision = Literal["auto", "fp32", "bf16"]
PRECISIONS: tuple[str, ...] = get_args(Precision)
# The objectives `TrainingSpec.loss_name` resolves to (one module each in `training.losses`).
LossName = Literal["sigmoid", "length_normalized", "robust", "ipo", "hinge", "simpo", "sft"]


class TrainingSpec(BaseModel):
    """The hyperparameters of one training run (model and data files are separate)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # --- method -----------------------------------------------------------------
    training_method: Literal["dpo", "sft"] = Field(
        default="dpo",
        description="dpo: learn from preferred/non-preferred pairs (also SimPO, RPO, IPO, hinge). "
        "sft: supervised fine-tuning on conversations.",
        json_schema_extra={"group": "basic"},
    )
    dpo_beta: float = Field(
        default=0.1,
        gt=0.0,
        le=10.0,
        description="Strength of the pull towards the reference model. Small (0.05) lets the policy move far; "
        "large (0.5-0.9) keeps it close. Useful range 0.05 to 0.9. For SimPO it scales the length-normalised "
        "log-probs (SimPO papers use 2.0-2.5).",
        json_schema_extra={"group": "dpo"},
    )
    dpo_loss_type: Literal["sigmoid", "ipo", "hinge"] = Field(
        default="sigmoid",
        description="sigmoid: the DPO loss. ipo: squared loss towards 1/(2*beta), robust to overfitting. "
        "hinge: SLiC hinge loss max(0, 1 - beta*margin).",
        json_schema_extra={"group": "dpo"},
    )
    dpo_label_smoothing: float = Field(
        default=0.0,
        ge=0.0,
        lt=0.5,
        description="Robust DPO / conservative DPO: the assumed probability that a preference label is "
        "flipped (0 to 0.5). Only with dpo_loss_type=sigmoid.",
        json_schema_extra={"group": "dpo"},
    )
    dpo_normalize_logratios_by_length: bool = Field(
        default=False,
        description="Divide each answer's policy/reference log-ratio by its token count, so long answers are "
        "not favoured just for their length.",
        json_schema_extra={"group": "dpo"},
    )
    rpo_alpha: float = Field(
        default=0.0,
        ge=0.0,
        le=100.0,
        description="RPO: add alpha times the NLL (per token) of the preferred answer to the DPO loss; "
        "keeps the preferred answer likely. 0 turns it off; 1.0 is the paper's value.",
        json_schema_extra={"group": "dpo"},
    )
    simpo_gamma: float = Field(
        default=0.0,
        ge=0.0,
        le=100.0,
        description="SimPO: when > 0, use the reference-free, length-normalised SimPO loss with this target "
        "reward margin (0.5-1.5 is typical; gamma/beta around 0.5).",
        json_schema_extra={"group": "dpo"},
    )
    train_on_inputs: bool | Literal["auto"] = Field(
        default="auto",
        description="SFT only: also compute the loss on the prompt (user/system) tokens. 'auto' trains on "
        "inputs only for plain-text data. Ignored, with a warning, for DPO.",
        json_schema_extra={"group": "sft"},
    )

    # --- LoRA ---------------------------------------------------------------------
    lora: bool = Field(
        default=True,
        description="Train low-rank adapters instead of every weight (less memory, small outputs).",
        json_schema_extra={"group": "basic"},
    )
    lora_r: int = Field(
        default=16, ge=1, le=1024, description="LoRA rank.", json_schema_extra={"group": "lora"}
    )
    lora_alpha: int = Field(
        default=32,
        ge=1,
        le=4096,
        description="LoRA scaling numerator (scale = alpha / r).",
        json_schema_extra={"group": "lora"},
    )
    lora_dropout: float = Field(
        default=0.0,
        ge=0.0,
        lt=1.0,
        description="Dropout on the LoRA input.",
        json_schema_extra={"group": "lora"},
    )
    lora_trainable_modules: str = Field(
        default="all-linear",
        description="Comma-separated module names to adapt (e.g. q_proj,v_proj), or all-linear.",
        json_schema_extra={"group": "lora"},
    )

    # --- schedule -----------------------------------------------------------------
    n_epochs: int = Field(
        default=1,
        ge=1,
        le=100,
        description="Passes over the training data.",
        json_schema_extra={"group": "basic"},
    )
    max_steps: int | None = Field(
        default=None,
        ge=1,
        description="Stop after this many optimizer steps (handy for smoke runs).",
        json_schema_extra={"group": "advanced"},
    )
    batch_size: int = Field(
        default=8,
        ge=1,
        le=4096,
        description="Examples (pairs for DPO) per optimizer step before gradient accumulation.",
        json_schema_extra={"group": "basic"},
    )
    gradient_accumulation_steps: int = Field(
        default=1,
        ge=1,
        le=1024,
        description="Micro-batches summed into one optimizer step.",
        json_schema_extra={"group": "advanced"},
    )
    learning_rate: float = Field(
        default=5e-5,
        gt=0.0,
        le=1.0,
        description="Peak learning rate (AdamW).",
        json_schema_extra={"group": "basic"},
    )
    lr_scheduler_type: Literal["linear", "cosine", "constant"] = Field(
        default="linear", description="Decay after warmup.", json_schema_extra={"group": "advanced"}
    )
    warmup_ratio: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="Fraction of steps spent warming up.",
        json_schema_extra={"group": "advanced"},
    )
    min_lr_ratio: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="Final learning rate as a fraction of the peak.",
        json_schema_extra={"group": "advanced"},
    )
    max_grad_norm: float = Field(
        default=1.0,
        ge=0.0,
        description="Clip the gradient norm to this (0 turns clipping off).",
        json_schema_extra={"group": "advanced"},
    )
    weight_decay: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="AdamW weight decay.",
        json_schema_extra={"group": "advanced"},
    )
    max_length: int = Field(
        default=1024,
        ge=16,
        le=131072,
        description="Longest prompt + answer in tokens. Longer examples drop the prompt's start first, then "
        "the answers' ends; each truncation is counted in the report.",
        json_schema_extra={"group": "basic"},
    )
    seed: int = Field(
        default=42,
        ge=0,
        description="Seed for shuffling, dropout and LoRA initialisation.",
        json_schema_extra={"group": "advanced"},
    )

    # --- checkpoints, evaluation, outputs ------------------------------------------
    n_checkpoints: int = Field(
        default=1,
        ge=1,
        le=100,
        description="Checkpoints saved over the run (the last one at the end).",
        json_schema_extra={"group": "advanced"},
    )
    n_evals: int = Field(
        default=0,
        ge=0,
        le=1000,
        description="Evaluations on the validation data over the run, evenly spaced (the last at the end). "
        "With validation data and 0, the run is still evaluated once, at the end.",
        json_schema_extra={"group": "advanced"},
    )
    validation_split: float = Field(
        default=0.0,
        ge=0.0,
        le=0.5,
        description="Without a validation file: hold out this share of the training examples (a seeded, "
        "deterministic choice) and evaluate on them instead of training on them. 0 turns it off.",
        json_schema_extra={"group": "advanced"},
    )
    early_stopping_patience: int = Field(
        default=0,
        ge=0,
        le=1000,
        description="Stop when this many evaluations in a row did not lower the best validation loss by "
        "more than early_stopping_min_delta; the final weights are then the best checkpoint's. "
        "0 turns it off. Needs validation data and n_evals > 1.",
        json_schema_extra={"group": "advanced"},
    )
    early_stopping_min_delta: float = Field(
        default=0.0,
        ge=0.0,
        description="Smallest drop of the validation loss that counts as an improvement (early stopping and "
        "the best checkpoint).",
        json_schema_extra={"group": "advanced"},
    )
    from_checkpoint: str | None = Field(
        default=None,
        description="Start from an earlier output: JOB_ID[:STEP] on the server, or an output directory for "
        "`preftune train` (e.g. SFT then DPO).",
        json_schema_extra={"group": "advanced"},
    )
    merge: bool = Field(
        default=False,
        description="Also write a merged model (LoRA folded into the weights).",
        json_schema_extra={"group": "advanced"},
    )
    suffix: str | None = Field(
        default=None,
        max_length=40,
        pattern=r"^[a-zA-Z0-9_-]*$",
        description="Added to the fine-tuned model's name.",
        json_schema_extra={"group": "basic"},
    )

    # --- performance --------------------------------------------------------------
    precision: Precision = Field(
        default="auto",
        description="auto: bf16 autocast where the hardware does it fast, else fp32.",
        json_schema_extra={"group": "performance"},
    )
    gradient_checkpointing: bool | Literal["auto"] = Field(
        default="auto",
        description=(
            "Recompute activations in the backward pass to save memory. auto: only when one example "
            "alone would not fit in half the free memory."
        ),
        json_schema_extra={"group": "performance"},
    )
    tokens_per_forward: int | Literal["auto"] = Field(
        default="auto",
        description=(
            "Most tokens in one forward/backward pass; a batch with more is split into several passes "
            "whose gradients add up to the same step (no extra compute, unlike checkpointing). auto: up "
            "to 2048, fewer if half the free memory cannot hold their activations."
        ),
        json_schema_extra={"group": "performance"},
    )

    # --- tracking -----------------------------------------------------------------
    wandb_api_key: SecretStr | None = Field(
        default=None,
        description="Weights & Biases API key: metrics go to W&B. Never shown back.",
        json_schema_extra={"group": "tracking"},
    )
    wandb_project: str | None = Field(
        default=None, description="W&B project (default preftune).", json_schema_extra={"group": "tracking"}
    )
    wandb_name: str | None = Field(
        default=None,
        description="W&B run name (default: the fine-tuned model's name on the server, W&B's own with preftune train).",
        json_schema_extra={"group": "tracking"},
    )

    @field_validator("lora_trainable_modules")
    @classmethod
    def _modules_are_names(cls, value: str) -> str:
        names = [part.strip() for part in value.split(",") if part.strip()]
        if not names or any(not re.fullmatch(r"[A-Za-z0-9_.\-]+", n) for n in names):
            raise ValueError("expected all-linear or comma-separated module names such as q_proj,v_proj")
        return ",".join(names)

    @field_validator("tokens_per_forward")
    @classmethod
    def _enough_tokens(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 16:
            raise ValueError("expected auto or an integer >= 16")
        return value

    @field_validator("from_checkpoint")
    @classmethod
    def _checkpoint_reference(cls, value: str | None) -> str | None:
        if value is not None and not FROM_CHECKPOINT_RE.match(value):
            raise ValueError("expected JOB_ID, JOB_ID:STEP or a directory path")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> TrainingSpec:
        if self.training_method == "sft":
            for name in ("rpo_alpha", "simpo_gamma", "dpo_label_smoothing"):
                if getattr(self, name) != 0.0:
                    raise ValueError(f"{name} applies to training_method=dpo only; remove it or use dpo")
        if self.simpo_gamma > 0 and self.dpo_loss_type != "sigmoid":
            raise ValueError("simpo_gamma (SimPO) uses the sigmoid loss; set dpo_loss_type=sigmoid")
        if self.dpo_label_smoothing > 0 and self.dpo_loss_type != "sigmoid":
            raise ValueError("dpo_label_smoothing applies to dpo_loss_type=sigmoid only")
        if self.early_stopping_patience > 0 and self.n_evals < 2:
            raise ValueError(
                "early_stopping_patience needs n_evals >= 2 (evaluations to compare); set n_evals"
            )
        if self.training_method == "dpo" and self.train_on_inputs is True:
            warnings.warn(
                "train_on_inputs is ignored for DPO: the loss only covers the answers", stacklevel=2
            )
        return self

    # --- derived ------------------------------------------------------------------
    @property
    def loss_name(self) -> LossName:
        """The objective, resolved once; the hosted services' flags keep their meaning:

        sft for training_method=sft; simpo when simpo_gamma > 0 (it force-enables length
        normalisation and drops the reference model, as Together documents); ipo or hinge by
        dpo_loss_type; robust when dpo_label_smoothing > 0; length_normalized with
        dpo_normalize_logratios_by_length; otherwise sigmoid. rpo_alpha > 0 adds the chosen NLL to
        any preference loss (`uses_rpo`). `training.losses` has one module for each name.
        """
        if self.training_method == "sft":
            return "sft"
        if self.simpo_gamma > 0:
            return "simpo"
        if self.dpo_loss_type != "sigmoid":
            return self.dpo_loss_type
        if self.dpo_label_smoothing > 0:
            return "robust"
        if self.dpo_normalize_logratios_by_length:
            return "length_normalized"
        return "sigmoid"

    @property
    def uses_rpo(self) -> bool:
        return self.training_method == "dpo" and self.rpo_alpha > 0

    @property
    def is_simpo(self) -> bool:
        return self.loss_name == "simpo"

    @property
    def needs_reference(self) -> bool:
        """SimPO and SFT are reference-free; every other DPO variant needs reference log-probs."""
        return self.loss_name not in ("simpo", "sft")

    def public_dict(self) -> dict[str, Any]:
        """The resolved hyperparameters as shown to users: secrets reduced to whether they are set."""
        data = self.model_dump(mode="json", exclude=set(SECRET_FIELDS))
        data["wandb_api_key_set"] = self.wandb_api_key is not None
        return data

    # --- construction with errors that name the parameter -----------------------------
    @classmethod
    def from_params(cls, params: dict[str, Any]) -> TrainingSpec:
        """Build from user input; raise `TrainingSpecError` naming the first bad parameter."""
        try:
            return cls.model_validate(params)
        except ValidationError as exc:
            raise spec_error_from_validation(exc) from None

    @classmethod
    def from_yaml(cls, path: Path) -> TrainingSpec:
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise TrainingSpecError(f"cannot read config {path}: {exc}", param="config") from None
        if not isinstance(data, dict):
            raise TrainingSpecError(f"config {path} must be a mapping of knob: value", param="config")
        return cls.from_params(data)


def spec_error_from_validation(exc: ValidationError) -> TrainingSpecError:
    first = exc.errors()[0]
    loc = [str(part) for part in first.get("loc", ())]
    param = loc[0] if loc else None
    msg = first.get("msg", "invalid value")
    if first.get("type") == "extra_forbidden" and param:
        known = ", ".join(sorted(TrainingSpec.model_fields))
        return TrainingSpecError(f"unknown hyperparameter '{param}'. Known: {known}", param=param)
    if param:
        return TrainingSpecError(f"invalid {param}: {msg} (got {first.get('input')!r})", param=param)
    message = msg.removeprefix("Value error, ")
    # Cross-field rules start their message with the parameter at fault.
    named = message.split(" ", 1)[0]
    return TrainingSpecError(message, param=named if named in TrainingSpec.model_fields else None)
