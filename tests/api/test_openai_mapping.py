"""The OpenAI `method.*.hyperparameters` mapping onto TrainingSpec, and back."""

from __future__ import annotations

import pytest
from openai.types.fine_tuning import FineTuningJob

from preftune.api.dialects.openai.schemas import (
    BASE_LEARNING_RATE,
    OpenAIFineTuningJob,
    OpenAIJobCreate,
    openai_hyperparameters,
)
from preftune.contracts.spec import TrainingSpec
from preftune.errors import InvalidRequestError


def test_dpo_hyperparameters_map_to_spec_names() -> None:
    request = OpenAIJobCreate.model_validate(
        {
            "model": "m",
            "training_file": "file-1",
            "suffix": "mine",
            "seed": 7,
            "method": {
                "type": "dpo",
                "dpo": {
                    "hyperparameters": {
                        "beta": 0.2,
                        "n_epochs": 2,
                        "batch_size": 4,
                        "learning_rate_multiplier": 2.0,
                        "rpo_alpha": 1.0,
                        "lora_r": 8,
                    }
                },
            },
        }
    )
    spec = TrainingSpec.from_params(request.spec_params())
    assert spec.training_method == "dpo"
    assert spec.dpo_beta == 0.2
    assert spec.n_epochs == 2 and spec.batch_size == 4
    assert spec.learning_rate == pytest.approx(2.0 * BASE_LEARNING_RATE)
    assert spec.rpo_alpha == 1.0 and spec.lora_r == 8
    assert spec.suffix == "mine" and spec.seed == 7


def test_auto_means_default_and_supervised_is_sft() -> None:
    request = OpenAIJobCreate.model_validate(
        {
            "model": "m",
            "training_file": "f",
            "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": "auto"}}},
        }
    )
    spec = TrainingSpec.from_params(request.spec_params())
    assert spec.training_method == "sft"
    assert spec.n_epochs == TrainingSpec.model_fields["n_epochs"].default


def test_unknown_hyperparameter_names_its_path() -> None:
    request = OpenAIJobCreate.model_validate(
        {
            "model": "m",
            "training_file": "f",
            "method": {"type": "dpo", "dpo": {"hyperparameters": {"bta": 1}}},
        }
    )
    with pytest.raises(InvalidRequestError) as info:
        request.spec_params()
    assert info.value.param == "method.dpo.hyperparameters.bta"


def test_reinforcement_is_refused_naming_method_type() -> None:
    request = OpenAIJobCreate.model_validate(
        {"model": "m", "training_file": "f", "method": {"type": "reinforcement"}}
    )
    with pytest.raises(InvalidRequestError) as info:
        request.spec_params()
    assert info.value.param == "method.type"


def test_job_shape_parses_in_the_openai_client_types() -> None:
    spec = TrainingSpec(
        dpo_beta=0.3, learning_rate=BASE_LEARNING_RATE / 2, rpo_alpha=1.0, wandb_api_key="secret-wandb-key"
    )
    basic, method = openai_hyperparameters(spec.public_dict())
    job = OpenAIFineTuningJob(
        id="ftjob-1",
        created_at=1,
        hyperparameters=basic,
        model="m",
        organization_id="owner-1",
        seed=spec.seed,
        status="running",
        training_file="file-1",
        method=method,
    )
    parsed = FineTuningJob.model_validate(job.model_dump(mode="json"))
    assert parsed.method is not None and parsed.method.dpo is not None
    hyper = parsed.method.dpo.hyperparameters
    assert hyper is not None and hyper.beta == 0.3 and hyper.learning_rate_multiplier == pytest.approx(0.5)
    assert parsed.hyperparameters.n_epochs == spec.n_epochs
    assert "secret-wandb-key" not in job.model_dump_json()
