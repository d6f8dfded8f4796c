"""Together's shapes (`together==3.1.1`: `together.types`, `together.lib.types.fine_tuning`) and
the mapping of its job-create body onto `TrainingSpec`.

Knobs Together has and preftune maps (`TogetherJobCreate.spec_params`):
`training_method.{method, dpo_beta, dpo_normalize_logratios_by_length, rpo_alpha, simpo_gamma}`,
`training_type` (`Lora` with `lora_r`, `lora_alpha`, `lora_dropout`, `lora_trainable_modules`;
`Full`), `lr_scheduler.{lr_scheduler_type, lr_scheduler_args.min_lr_ratio}`, `max_seq_length ->
max_length`, `random_seed -> seed`, `wandb_key -> wandb_api_key`, `wandb_project_name ->
wandb_project`, `wandb_name`, `n_epochs`, `learning_rate`, `warmup_ratio`, `max_grad_norm`,
`weight_decay`, `n_checkpoints`, `n_evals`, `gradient_accumulation_steps`, `suffix`,
`train_on_inputs`, `from_checkpoint` (`ft-...[:STEP]`). `batch_size: "max"` and
`validation_file: ""` mean preftune's default batch size and no validation file.

Knobs preftune does not have are accepted at the value that changes nothing and refused with a
400 naming them otherwise: `packing` (preftune always packs), `early_stopping_enabled` (and its
patience / min_delta / warmup_evals), `lr_scheduler_args.num_cycles` other than 0.5,
`dpo_reference_free` without `simpo_gamma`, `wandb_base_url`, `wandb_entity`, `from_hf_model`,
`hf_*`, `multimodal_params.train_vision`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from preftune.api.dialects.states import TogetherStatus
from preftune.errors import InvalidRequestError

# Together's job ids; preftune's own are `ftjob-<hex>`, shown to Together's clients as `ft-<hex>`.
TOGETHER_JOB_PREFIX = "ft-"
NATIVE_JOB_PREFIX = "ftjob-"


def public_job_id(job_id: str) -> str:
    return TOGETHER_JOB_PREFIX + job_id.removeprefix(NATIVE_JOB_PREFIX)


def service_job_id(public: str) -> str:
    """`ft-<hex>` (or a native `ftjob-<hex>`) -> the service's id."""
    if public.startswith(NATIVE_JOB_PREFIX):
        return public
    return NATIVE_JOB_PREFIX + public.removeprefix(TOGETHER_JOB_PREFIX)


def service_checkpoint_ref(ref: str) -> str:
    """`ft-<hex>[:STEP]` -> `ftjob-<hex>[:STEP]` for `TrainingSpec.from_checkpoint`."""
    job, sep, step = ref.partition(":")
    return service_job_id(job) + sep + step


# --- files ------------------------------------------------------------------------------------
class ValidationReport(BaseModel):
    valid: bool
    dataset_format: str | None = None
    error: str | None = None
    error_type: Literal["INVALID_FORMAT"] | None = None
    file_id: str | None = None
    nlines: int | None = None


class TogetherFile(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    FileType: Literal["jsonl"] = "jsonl"
    purpose: Literal["fine-tune"] = "fine-tune"
    processing_status: Literal["PENDING", "COMPLETED", "FAILED", "INVALID_FORMAT"] | None = None
    validation_report: ValidationReport | None = None
    LineCount: int | None = None


class TogetherFileList(BaseModel):
    object: Literal["list"] = "list"
    data: list[TogetherFile]


class TogetherFileDeleted(BaseModel):
    id: str
    deleted: bool = True


# --- jobs: the nested create body -------------------------------------------------------------
class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class TrainingMethod(_Body):
    method: Literal["dpo", "sft"] = "sft"
    # dpo
    dpo_beta: float | None = None
    dpo_normalize_logratios_by_length: bool | None = None
    dpo_reference_free: bool | None = None
    rpo_alpha: float | None = None
    simpo_gamma: float | None = None
    # sft
    train_on_inputs: bool | Literal["auto"] | None = None


class TrainingType(_Body):
    type: Literal["Lora", "Full", ""] = "Lora"
    lora_r: int | None = None
    lora_alpha: int | None = None
    lora_dropout: float | None = None
    lora_trainable_modules: str | None = None


class LrSchedulerArgs(_Body):
    min_lr_ratio: float | None = None
    num_cycles: float | None = None


class LrScheduler(_Body):
    lr_scheduler_type: Literal["linear", "cosine", "constant"] = "cosine"
    lr_scheduler_args: LrSchedulerArgs | None = None


class MultimodalParams(_Body):
    train_vision: bool = False


class TogetherJobCreate(_Body):
    """The body `together.Together().fine_tuning.create(...)` sends (`FinetuneRequest`)."""

    training_file: str
    validation_file: str | None = Field(default=None, description='"" or absent: no validation file.')
    model: str | None = Field(
        default=None, description="Base model; absent when from_checkpoint names the job."
    )
    training_method: TrainingMethod = Field(default_factory=TrainingMethod)
    training_type: TrainingType | None = None
    n_epochs: int | None = None
    learning_rate: float | None = None
    lr_scheduler: LrScheduler | None = None
    warmup_ratio: float | None = None
    max_grad_norm: float | None = None
    weight_decay: float | None = None
    n_checkpoints: int | None = None
    n_evals: int | None = None
    max_seq_length: int | None = None
    batch_size: int | Literal["max"] | None = None
    gradient_accumulation_steps: int | None = None
    packing: bool | None = None
    suffix: str | None = None
    random_seed: int | None = None
    wandb_key: str | None = None
    wandb_base_url: str | None = None
    wandb_project_name: str | None = None
    wandb_name: str | None = None
    wandb_entity: str | None = None
    early_stopping_enabled: bool | None = None
    early_stopping_patience: int | None = None
    early_stopping_min_delta: float | None = None
    early_stopping_warmup_evals: int | None = None
    from_checkpoint: str | None = None
    from_hf_model: str | None = None
    hf_model_revision: str | None = None
    hf_api_token: str | None = None
    hf_output_repo_name: str | None = None
    multimodal_params: MultimodalParams | None = None
    train_on_inputs: bool | Literal["auto"] | None = None

    def validation_file_id(self) -> str | None:
        return self.validation_file or None

    def spec_params(self) -> dict[str, Any]:
        """The `TrainingSpec` knobs this body sets; a Together knob preftune lacks is a 400 naming it."""
        self._refuse_unsupported()
        params: dict[str, Any] = {}
        method = self.training_method
        params["training_method"] = method.method
        for name in ("dpo_beta", "dpo_normalize_logratios_by_length", "rpo_alpha", "simpo_gamma"):
            value = getattr(method, name)
            if value is not None:
                params[name] = value
        train_on_inputs = (
            method.train_on_inputs if method.train_on_inputs is not None else self.train_on_inputs
        )
        if train_on_inputs is not None and method.method == "sft":
            params["train_on_inputs"] = train_on_inputs
        if self.training_type is not None:
            params["lora"] = self.training_type.type == "Lora"
            for name in ("lora_r", "lora_alpha", "lora_dropout", "lora_trainable_modules"):
                value = getattr(self.training_type, name)
                if value is not None and params["lora"]:
                    params[name] = value
        if self.lr_scheduler is not None:
            params["lr_scheduler_type"] = self.lr_scheduler.lr_scheduler_type
            args = self.lr_scheduler.lr_scheduler_args
            if args is not None and args.min_lr_ratio is not None:
                params["min_lr_ratio"] = args.min_lr_ratio
        renamed = {
            "max_seq_length": "max_length",
            "random_seed": "seed",
            "wandb_key": "wandb_api_key",
            "wandb_project_name": "wandb_project",
        }
        same = (
            "n_epochs",
            "learning_rate",
            "warmup_ratio",
            "max_grad_norm",
            "weight_decay",
            "n_checkpoints",
            "n_evals",
            "gradient_accumulation_steps",
            "suffix",
            "wandb_name",
        )
        for name in (*same, *renamed):
            value = getattr(self, name)
            if value is not None:
                params[renamed.get(name, name)] = value
        if isinstance(self.batch_size, int):
            params["batch_size"] = self.batch_size
        if self.n_checkpoints == 0:
            params.pop("n_checkpoints")  # Together's "none"; preftune keeps its default
        if self.from_checkpoint:
            params["from_checkpoint"] = service_checkpoint_ref(self.from_checkpoint)
        return params

    def _refuse_unsupported(self) -> None:
        def refuse(param: str, why: str) -> None:
            raise InvalidRequestError(f"{param}: {why}", param=param, code="unsupported_parameter")

        if self.packing is False:
            refuse("packing", "preftune always packs examples into its forward passes; omit it or send true")
        if self.early_stopping_enabled:
            refuse("early_stopping_enabled", "early stopping is not available in preftune yet; send false")
        for name in ("early_stopping_patience", "early_stopping_min_delta", "early_stopping_warmup_evals"):
            if getattr(self, name) is not None and self.early_stopping_enabled:
                refuse(name, "early stopping is not available in preftune yet")
        args = self.lr_scheduler.lr_scheduler_args if self.lr_scheduler is not None else None
        if args is not None and args.num_cycles not in (None, 0.5):
            refuse(
                "lr_scheduler.lr_scheduler_args.num_cycles",
                "preftune's cosine schedule is one half cycle (0.5)",
            )
        method = self.training_method
        if method.dpo_reference_free and not (method.simpo_gamma or 0) > 0:
            refuse(
                "training_method.dpo_reference_free",
                "reference-free training is SimPO in preftune: set simpo_gamma > 0 (or send false)",
            )
        for name in (
            "wandb_base_url",
            "wandb_entity",
            "from_hf_model",
            "hf_model_revision",
            "hf_output_repo_name",
        ):
            if getattr(self, name):
                refuse(name, "not supported by preftune (models come from the server's own model directory)")
        if self.multimodal_params is not None and self.multimodal_params.train_vision:
            refuse("multimodal_params.train_vision", "preftune trains text models only")


# --- jobs: responses --------------------------------------------------------------------------
class TogetherProgress(BaseModel):
    estimate_available: bool = False
    seconds_remaining: int = 0


class TogetherEvent(BaseModel):
    object: Literal["fine-tune-event"] = "fine-tune-event"
    created_at: str
    message: str
    type: str = Field(
        description="job_pending, job_start, training_start, checkpoint_save, job_complete, ..."
    )
    level: Literal["info", "warning", "error"] = "info"
    step: int | None = None
    total_steps: int | None = None
    checkpoint_path: str | None = None
    model_path: str | None = None
    param_count: int | None = None
    token_count: int | None = None
    wandb_url: str | None = None
    hash: str | None = None


class TogetherJob(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    id: str = Field(description="ft-…")
    object: Literal["fine-tune"] = "fine-tune"
    status: TogetherStatus
    user_id: str
    owner_address: str
    created_at: str
    updated_at: str
    started_at: str | None = None
    model: str
    model_output_name: str | None = None
    model_output_path: str | None = None
    adapter_output_name: str | None = None
    training_file: str
    validation_file: str | None = None
    training_method: dict[str, Any]
    training_type: dict[str, Any]
    lr_scheduler: dict[str, Any]
    n_epochs: int
    n_checkpoints: int
    n_evals: int
    batch_size: int
    learning_rate: float
    warmup_ratio: float
    max_grad_norm: float
    weight_decay: float
    max_seq_length: int
    packing: bool = True
    random_seed: int
    suffix: str | None = None
    from_checkpoint: str | None = None
    wandb_project_name: str | None = None
    wandb_name: str | None = None
    train_on_inputs: bool | Literal["auto"] | None = None
    total_price: int = 0
    token_count: int = 0
    param_count: int | None = None
    total_steps: int | None = None
    steps_completed: int = 0
    epochs_completed: int = 0
    evals_completed: int = 0
    queue_depth: int = 0
    progress: TogetherProgress
    events: list[TogetherEvent] = Field(default_factory=list)
    error: str | None = None


class TogetherJobList(BaseModel):
    object: Literal["list"] = "list"
    data: list[TogetherJob]


class TogetherEventList(BaseModel):
    object: Literal["list"] = "list"
    data: list[TogetherEvent]


class TogetherCheckpoint(BaseModel):
    checkpoint_type: str = Field(description='"Intermediate checkpoint at step N" or "Final"')
    checkpoint: Literal["model", "adapter"] | None = None
    created_at: str
    path: str = Field(description="ft-…:STEP, usable as from_checkpoint and with download --checkpoint-step")
    step: int


class TogetherCheckpointList(BaseModel):
    object: Literal["list"] = "list"
    data: list[TogetherCheckpoint]


class TogetherMetrics(BaseModel):
    metrics: list[dict[str, float]]


class LoraLimits(BaseModel):
    default_rank: int
    max_batch_size: int
    max_batch_size_dpo: int
    max_rank: int
    min_batch_size: int
    target_modules: list[str]


class FullLimits(BaseModel):
    max_batch_size: int
    max_batch_size_dpo: int
    min_batch_size: int


class TogetherModelLimits(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    model_name: str
    default_gradient_accumulation_steps: int
    lora_training: LoraLimits
    full_training: FullLimits | None
    max_learning_rate: float
    min_learning_rate: float
    max_num_checkpoints: int
    max_num_epochs: int
    max_num_evals: int
    max_seq_length_dpo: int
    max_seq_length_sft: int
    min_max_seq_length: int
    merge_output_lora: bool = False
    supports_full_training: bool = True
    supports_reasoning: bool = False
    supports_tools: bool = False
    supports_vision: bool = False


class TogetherPriceEstimate(BaseModel):
    estimation_available: Literal[True] = True
    allowed_to_proceed: bool = True
    estimated_total_price: float = 0.0
    estimated_train_token_count: float = 0.0
    estimated_eval_token_count: float = 0.0
    user_limit: float = 0.0


class TogetherPriceRequest(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())

    training_file: str
    model: str | None = None
    validation_file: str | None = None
    from_checkpoint: str | None = None
    n_epochs: int | None = None
    n_evals: int | None = None
