"""Fireworks' shapes (`fireworks-ai==1.2.30`, camelCase JSON as its REST API speaks) and the
mapping of a DPO job body onto `TrainingSpec`.

`trainingConfig.baseModel -> model`, `epochs -> n_epochs`, `learningRate`, `loraRank -> lora_r`,
`maxContextLength -> max_length`, `batchSizeSamples -> batch_size`, `gradientAccumulationSteps`,
`optimizerWeightDecay -> weight_decay`, `warmStartFrom` (a fine-tuned model: continue from it),
`lossConfig.dpo.beta -> dpo_beta`, `wandbConfig {apiKey, project, runId}`. Fields preftune does
not have are a 400 naming them: `trainingConfig.batchSize` (tokens; use `batchSizeSamples`),
`learningRateWarmupSteps`, `outputModel` (preftune names the model `ft-<job>`), `lossConfig.method`
other than DPO, `lossConfig.klBeta`, `wandbConfig.entity`, `awsS3Config`, `azureBlobStorageConfig`,
and the `dpoJobId` query parameter (preftune chooses job ids).
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from preftune.errors import InvalidRequestError

# Fireworks' resource ids: 1-63 lower-case letters, digits and hyphens, starting with a letter and
# not ending with a hyphen.
RESOURCE_ID_RE = re.compile(r"^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$")
MIN_EXAMPLES = 3
MAX_EXAMPLES = 3_000_000


def check_resource_id(value: str, param: str) -> str:
    if not RESOURCE_ID_RE.match(value):
        raise InvalidRequestError(
            f"{param} {value!r} is not a valid resource id: use 1-63 lower-case letters, digits and '-', "
            "starting with a letter and not ending with '-' (e.g. my-pairs-v2)",
            param=param,
            code="invalid_resource_id",
        )
    return value


def last_segment(name: str, collection: str, param: str) -> str:
    """`accounts/A/<collection>/ID` or a bare `ID` -> `ID`."""
    parts = name.split("/")
    if len(parts) == 4 and parts[0] == "accounts" and parts[2] == collection:
        return parts[3]
    if len(parts) == 1 and parts[0]:
        return parts[0]
    raise InvalidRequestError(f"{param} must be accounts/ACCOUNT/{collection}/ID (got {name!r})", param=param)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class Status(BaseModel):
    code: str = "OK"
    message: str = ""


# --- datasets ---------------------------------------------------------------------------------
class DatasetSpec(BaseModel):
    model_config = ConfigDict(extra="allow")

    displayName: str | None = None
    exampleCount: str | int | None = None
    format: Literal["FORMAT_UNSPECIFIED", "CHAT", "COMPLETION", "RL"] | None = None
    userUploaded: dict[str, Any] | None = None


class DatasetCreate(_Body):
    datasetId: str = Field(description="The dataset's resource id (1-63 of a-z, 0-9, '-', a letter first).")
    dataset: DatasetSpec = Field(default_factory=DatasetSpec)
    sourceDatasetId: str | None = None


class Dataset(BaseModel):
    name: str
    displayName: str | None = None
    createTime: str
    updateTime: str
    state: Literal["UPLOADING", "READY"]
    status: Status = Field(default_factory=Status)
    exampleCount: str | None = None
    format: str = "CHAT"
    userUploaded: dict[str, Any] = Field(default_factory=dict)


class DatasetList(BaseModel):
    datasets: list[Dataset]
    nextPageToken: str = ""
    totalSize: int


class UploadEndpointRequest(_Body):
    filenameToSize: dict[str, str | int]
    readMask: str | None = None


class UploadEndpoint(BaseModel):
    filenameToSignedUrls: dict[str, str]


class DatasetUploaded(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str = "fine-tune"


# --- DPO jobs ---------------------------------------------------------------------------------
class TrainingConfig(_Body):
    baseModel: str | None = None
    epochs: int | None = None
    learningRate: float | None = None
    loraRank: int | None = None
    maxContextLength: int | None = None
    batchSize: int | None = None
    batchSizeSamples: int | None = None
    gradientAccumulationSteps: int | None = None
    learningRateWarmupSteps: int | None = None
    optimizerWeightDecay: float | None = None
    outputModel: str | None = None
    warmStartFrom: str | None = None
    jinjaTemplate: str | None = None
    region: str | None = None
    samplerCheckpointSaveIntervalSteps: int | None = None


class DpoConfig(_Body):
    beta: float | None = None
    refCacheConcurrency: int | None = None
    refCacheBatchSize: int | None = None


class LossConfig(_Body):
    method: str | None = None
    dpo: DpoConfig | None = None
    klBeta: float | None = None


class WandbConfig(_Body):
    enabled: bool | None = None
    apiKey: str | None = None
    project: str | None = None
    entity: str | None = None
    runId: str | None = None
    url: str | None = None


class DpoJobCreate(_Body):
    dataset: str = Field(description="accounts/ACCOUNT/datasets/ID (READY).")
    displayName: str | None = None
    trainingConfig: TrainingConfig = Field(default_factory=TrainingConfig)
    lossConfig: LossConfig | None = None
    wandbConfig: WandbConfig | None = None
    awsS3Config: dict[str, Any] | None = None
    azureBlobStorageConfig: dict[str, Any] | None = None
    rendererHuggingFaceRepoId: str | None = None
    reservationTarget: str | None = None
    useReservation: bool | None = None

    def spec_params(self) -> dict[str, Any]:
        """The `TrainingSpec` knobs; a Fireworks field preftune lacks is a 400 naming it."""
        self._refuse_unsupported()
        config = self.trainingConfig
        params: dict[str, Any] = {"training_method": "dpo"}
        for theirs, ours in (
            ("epochs", "n_epochs"),
            ("learningRate", "learning_rate"),
            ("loraRank", "lora_r"),
            ("maxContextLength", "max_length"),
            ("batchSizeSamples", "batch_size"),
            ("gradientAccumulationSteps", "gradient_accumulation_steps"),
            ("optimizerWeightDecay", "weight_decay"),
        ):
            value = getattr(config, theirs)
            if value is not None:
                params[ours] = value
        if (
            self.lossConfig is not None
            and self.lossConfig.dpo is not None
            and self.lossConfig.dpo.beta is not None
        ):
            params["dpo_beta"] = self.lossConfig.dpo.beta
        wandb = self.wandbConfig
        if wandb is not None and wandb.enabled is not False and wandb.apiKey:
            params["wandb_api_key"] = wandb.apiKey
            if wandb.project:
                params["wandb_project"] = wandb.project
            if wandb.runId:
                params["wandb_name"] = wandb.runId
        return params

    def _refuse_unsupported(self) -> None:
        def refuse(param: str, why: str) -> None:
            raise InvalidRequestError(f"{param}: {why}", param=param, code="unsupported_parameter")

        config = self.trainingConfig
        if config.batchSize is not None:
            refuse("trainingConfig.batchSize", "preftune counts batches in pairs: use batchSizeSamples")
        if config.learningRateWarmupSteps:
            refuse(
                "trainingConfig.learningRateWarmupSteps",
                "preftune warms up by a ratio (warmup_ratio), not steps",
            )
        if config.outputModel:
            refuse(
                "trainingConfig.outputModel",
                "preftune names the output model accounts/ACCOUNT/models/ft-<job>",
            )
        if config.jinjaTemplate:
            refuse("trainingConfig.jinjaTemplate", "preftune uses the base model's own chat template")
        loss = self.lossConfig
        if loss is not None and loss.method not in (None, "METHOD_UNSPECIFIED", "DPO"):
            refuse("lossConfig.method", f"preftune's DPO jobs train DPO only (got {loss.method})")
        if loss is not None and loss.klBeta is not None:
            refuse("lossConfig.klBeta", "for DPO set lossConfig.dpo.beta")
        if self.wandbConfig is not None and self.wandbConfig.entity:
            refuse("wandbConfig.entity", "not supported by preftune (the key's default entity is used)")
        for name in ("awsS3Config", "azureBlobStorageConfig", "rendererHuggingFaceRepoId"):
            if getattr(self, name):
                refuse(name, "preftune trains on datasets uploaded to it")


class TrainingConfigOut(BaseModel):
    baseModel: str
    epochs: int
    learningRate: float
    loraRank: int
    maxContextLength: int
    batchSizeSamples: int
    gradientAccumulationSteps: int
    optimizerWeightDecay: float
    outputModel: str
    warmStartFrom: str | None = None


class DpoJob(BaseModel):
    name: str
    displayName: str | None = None
    dataset: str
    state: str = Field(
        description="JOB_STATE_VALIDATING, _PENDING, _RUNNING, _COMPLETED, _FAILED, _CANCELLING, ..."
    )
    status: Status
    createTime: str
    updateTime: str
    completedTime: str | None = None
    createdBy: str
    trainingConfig: TrainingConfigOut
    lossConfig: dict[str, Any]


class DpoJobList(BaseModel):
    dpoJobs: list[DpoJob]
    nextPageToken: str = ""
    totalSize: int


# --- models -----------------------------------------------------------------------------------
class Model(BaseModel):
    name: str
    displayName: str
    kind: Literal["HF_PEFT_ADDON", "HF_BASE_MODEL"]
    state: Literal["READY"] = "READY"
    status: Status = Field(default_factory=Status)
    baseModelDetails: dict[str, Any] = Field(default_factory=dict)
    createTime: str
    contextLength: int | None = None
    peftDetails: dict[str, Any] | None = None


class ModelList(BaseModel):
    models: list[Model]
    nextPageToken: str = ""
    totalSize: int


class Empty(BaseModel):
    pass
