"""Secrets: the environment, then Colab's userdata, then Kaggle Secrets. Values are never printed or saved.
"""
from __future__ import annotations

import os

SECRET_NAMES = {"HF_TOKEN": "pushing to the Hugging Face Hub (and gated downloads)",
                "WANDB_API_KEY": "logging the training run to Weights & Biases",
                "JUDGE_API_KEY": "the optional LLM judge in 04 (any OpenAI-compatible endpoint)"}


def resolve_secret(name: str, environ=os.environ) -> tuple[str | None, str]:
    """Return (value, where it was found). Looks in the environment, Colab userdata, Kaggle Secrets."""
    if environ.get(name):
        return environ[name], "environment"
    try:
        from google.colab import userdata  # type: ignore

        value = userdata.get(name)
        if value:
            return value, "Colab secrets"
    except Exception:  # not on Colab, or the secret is absent or not shared with this notebook
        pass
    try:
        from kaggle_secrets import UserSecretsClient  # type: ignore

        value = UserSecretsClient().get_secret(name)
        if value:
            return value, "Kaggle secrets"
    except Exception:  # not on Kaggle, or the secret is not attached to this notebook
        pass
    return None, "not found"


def load_secrets(environ=os.environ) -> dict[str, str]:
    """Resolve every secret into os.environ (where the libraries read them) and report, without values."""
    report = {}
    for name, purpose in SECRET_NAMES.items():
        value, where = resolve_secret(name, environ)
        if value:
            environ[name] = value
            report[name] = f"found ({where})"
        else:
            report[name] = f"not set: skipping {purpose}"
    return report


def secrets_summary(report: dict) -> str:
    return "\n".join(f"{name}: {status}" for name, status in report.items())


def login_services(environ=os.environ) -> list[str]:
    """Log in to the Hub and W&B where a key exists. Returns what happened, one line each."""
    lines = []
    if environ.get("HF_TOKEN"):
        from huggingface_hub import login

        try:
            login(token=environ["HF_TOKEN"], add_to_git_credential=False)
            lines.append("Hugging Face Hub: logged in")
        except Exception as err:  # offline or a bad token; the message never contains the token
            lines.append(f"Hugging Face Hub: login failed ({type(err).__name__}); pushing will be skipped")
    if environ.get("WANDB_API_KEY"):
        lines.append("Weights & Biases: key present; training will log to W&B")
    return lines
