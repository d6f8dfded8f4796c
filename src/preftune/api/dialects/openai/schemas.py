"""The OpenAI fine-tuning API's shapes, and the mapping between them and `TrainingSpec`.

`method.dpo.hyperparameters` maps `beta -> dpo_beta`, `n_epochs`, `batch_size` and
`learning_rate_multiplier -> learning_rate = multiplier x BASE_LEARNING_RATE`; any other
`TrainingSpec` knob (`rpo_alpha`, `simpo_gamma`, `lora_r`, ...) is accepted inside the same
`hyperparameters` object. `method.type` `supervised` is preftune's `sft`. "auto" means
preftune's default. The response models parse in the official `openai` client's types.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from preftune.api.dialects.states import OpenAIStatus
from preftune.contracts.spec import TrainingSpec
from preftune.errors import InvalidRequestError

# learning_rate = learning_rate_multiplier x this; a multiplier of 1 is TrainingSpec's default.
BASE_LEARNING_RATE: float = TrainingSpec.model_fields["learning_rate"].default

METHOD_TO_NATIVE = {"dpo": "dpo", "supervised": "sft"}
NATIVE_TO_METHOD = {"dpo": "dpo", "sft": "supervised"}


class MethodHyperparameters(BaseModel):
    """OpenAI's hyperparameters plus, as extra keys, any preftune knob (`rpo_alpha`, `simpo_gamma`, ...)."""

    model_config = ConfigDict(extra="allow")

    batch_size: int | Literal["auto"] | None = None
    learning_rate_multiplier: float | Literal["auto"] | None = None
    n_epochs: int | Literal["auto"] | None = None
    beta: float | Literal["auto"] | None = Field(default=None, description="DPO beta (preftune's dpo_beta).")


class MethodConfig(BaseModel):
    hyperparameters: MethodHyperparameters | None = None


class Method(BaseModel):
    type: Literal["supervised", "dpo", "reinforcement"]
    dpo: MethodConfig | None = None
    supervised: MethodConfig | None = None
    reinforcement: dict[str, Any] | None = None


class WandbIntegration(BaseModel):
    project: str
    name: str | None = None
    entity: str | None = None
    tags: list[str] | None = None


class Integration(BaseModel):
    type: Literal["wandb"]
    wandb: WandbIntegration


class OpenAIJobCreate(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    model: str
    training_file: str
    validation_file: str | None = None
    hyperparameters: MethodHyperparameters | None = Field(default=None, description="Deprecated: use method.")
    method: Method | None = None
    suffix: str | None = None
    seed: int | None = None
    integrations: list[Integration] | None = None
    metadata: dict[str, str] | None = None

    def spec_params(self) -> dict[str, Any]:
        """The `TrainingSpec` parameters this request asks for (validated by the caller)."""
        params: dict[str, Any] = {}
        method_type = self.method.type if self.method else "supervised"
        if method_type not in METHOD_TO_NATIVE:
            raise InvalidRequestError(
                f"method.type '{method_type}' is not supported by preftune; use 'dpo' or 'supervised'",
                param="method.type",
            )
        params["training_method"] = METHOD_TO_NATIVE[method_type]
        hyper = self.hyperparameters
        if self.method is not None:
            config = getattr(self.method, method_type, None)
            if config is not None and config.hyperparameters is not None:
                hyper = config.hyperparameters
        prefix = f"method.{method_type}.hyperparameters" if self.method else "hyperparameters"
        if hyper is not None:
            for key, value in hyper.model_dump(exclude_none=True).items():
                if value == "auto":
                    continue
                if key == "beta":
                    params["dpo_beta"] = value
                elif key == "learning_rate_multiplier":
                    if not isinstance(value, int | float) or value <= 0:
                        raise InvalidRequestError(
                            f"{prefix}.learning_rate_multiplier must be a positive number (got {value!r})",
                            param=f"{prefix}.learning_rate_multiplier",
                        )
                    params["learning_rate"] = float(value) * BASE_LEARNING_RATE
                elif key in TrainingSpec.model_fields:
                    params[key] = value
                else:
                    raise InvalidRequestError(
                        f"unknown hyperparameter '{key}' in {prefix}. Known: batch_size, beta, "
                        f"learning_rate_multiplier, n_epochs and preftune's knobs: "
                        f"{', '.join(sorted(TrainingSpec.model_fields))}",
                        param=f"{prefix}.{key}",
                    )
        if self.suffix is not None:
            params["suffix"] = self.suffix
        if self.seed is not None:
            params["seed"] = self.seed
        for integration in self.integrations or []:
            params["wandb_project"] = integration.wandb.project
            if integration.wandb.name:
                params["wandb_name"] = integration.wandb.name
        return params


class OpenAIJobError(BaseModel):
    code: str
    message: str
    param: str | None = None


class OpenAIHyperparameters(BaseModel):
    batch_size: int | None = None
    learning_rate_multiplier: float | None = None
    n_epochs: int | None = None


class OpenAIFineTuningJob(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int
    error: OpenAIJobError | None = None
    fine_tuned_model: str | None = None
    finished_at: int | None = None
    hyperparameters: OpenAIHyperparameters
    model: str
    organization_id: str
    result_files: list[str] = Field(default_factory=list)
    seed: int
    status: OpenAIStatus
    trained_tokens: int | None = None
    training_file: str
    validation_file: str | None = None
    estimated_finish: int | None = None
    integrations: list[Integration] | None = None
    metadata: dict[str, str] | None = None
    method: Method


class OpenAIJobEvent(BaseModel):
    id: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: Literal["info", "warn", "error"] = "info"
    message: str
    data: dict[str, Any] | None = None
    type: Literal["message", "metrics"] = "message"


class CheckpointMetrics(BaseModel):
    model_config = ConfigDict(extra="allow")

    step: float | None = None
    train_loss: float | None = None
    train_mean_token_accuracy: float | None = None
    valid_loss: float | None = None
    valid_mean_token_accuracy: float | None = None
    full_valid_loss: float | None = None
    full_valid_mean_token_accuracy: float | None = None


class OpenAICheckpoint(BaseModel):
    id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    metrics: CheckpointMetrics
    step_number: int


def openai_hyperparameters(spec: dict[str, Any]) -> tuple[OpenAIHyperparameters, Method]:
    """The OpenAI view of a job's resolved hyperparameters (`spec` is `TrainingSpec.public_dict()`)."""
    multiplier = float(spec.get("learning_rate", BASE_LEARNING_RATE)) / BASE_LEARNING_RATE
    basic = OpenAIHyperparameters(
        batch_size=spec.get("batch_size"), learning_rate_multiplier=multiplier, n_epochs=spec.get("n_epochs")
    )
    method_type = NATIVE_TO_METHOD.get(str(spec.get("training_method", "dpo")), "dpo")
    extras = {
        k: v
        for k, v in spec.items()
        if k not in {"batch_size", "learning_rate", "n_epochs", "dpo_beta", "training_method"}
    }
    hyper = MethodHyperparameters(
        batch_size=basic.batch_size,
        learning_rate_multiplier=multiplier,
        n_epochs=basic.n_epochs,
        beta=spec.get("dpo_beta") if method_type == "dpo" else None,
        **extras,
    )
    config = MethodConfig(hyperparameters=hyper)
    method = Method(type=method_type, **{method_type: config})  # type: ignore[arg-type]
    return basic, method
