"""`medo1 upload`'s recipe section and its errors."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from medo1.config import Section, StageError


class UploadError(StageError):
    """The upload cannot go ahead (configuration or environment problem)."""


class UploadRefused(UploadError):
    """The directory must not be uploaded: credentials found, or it does not load."""


class UploadConfig(Section):
    """`medo1 upload`: push an exported model and its model card to the Hugging Face Hub (token from $HF_TOKEN)."""

    model_dir: str = Field(min_length=1)
    """The exported model directory (a training stage's OUTPUT/export)."""
    repo_id: str = Field(min_length=1)
    """owner/name on the Hub; created if missing."""
    private: bool = True
    """Create the repo private."""
    revision: str = Field("main", min_length=1)
    """Branch committed to."""
    commit_message: str = "Upload medo1 model"
    """The Hub commit's message."""
    endpoint: str | None = None
    """Hub URL (a self-hosted Hub or mirror); default: huggingface_hub's (HF_ENDPOINT, else huggingface.co)."""
    base_model: str | None = None
    """The model fine-tuned from, for the model card."""
    datasets: list[str] = Field(default_factory=list)
    """Datasets the model was trained on, for the model card."""
    language: list[str] = Field(default_factory=list)
    """Languages of the model, for the model card (ISO 639-1 codes)."""
    license: str = "apache-2.0"
    """The model card's license."""
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    """Training settings listed in the model card."""
    eval_report: str | None = None
    """A medo1 eval report.json whose accuracies go in the model card."""
    dry_run: bool = False
    """List what would be sent and write the card aside; nothing leaves the machine."""
    retries: int = Field(3, ge=0)
    """Extra attempts for a failed Hub call."""

    @field_validator("repo_id")
    @classmethod
    def _hub_repo_id(cls, repo_id: str) -> str:
        # The Hub's own rule, as huggingface_hub checks it before any request (utils/_validators.py validate_repo_id);
        # medo1 asks for the owner too, so a model never lands in whichever account the token belongs to by accident.
        from huggingface_hub.errors import HFValidationError
        from huggingface_hub.utils import validate_repo_id

        try:
            validate_repo_id(repo_id)
        except HFValidationError as exc:
            raise ValueError(f"{repo_id!r} is not a Hub repo id ({str(exc).split(':')[0].rstrip('.')})") from None
        if "/" not in repo_id:
            raise ValueError(f"{repo_id!r} is not a Hub repo id: give OWNER/NAME")
        return repo_id
