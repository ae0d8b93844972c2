import os
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# Nothing in the tests may reach the network: every model and dataset is made or shipped here.
os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", WANDB_MODE="disabled")
for secret in ("HF_TOKEN", "WANDB_API_KEY"):
    os.environ.pop(secret, None)

import src_helpers as sh  # noqa: E402


@pytest.fixture(scope="session")
def tokenizer():
    return sh.load_tokenizer(str(sh.TOKENIZER_FIXTURE))


@pytest.fixture(scope="session")
def en_rows():
    return sh.load_sft_rows(str(sh.SAMPLE_DATA_DIR), "en")


@pytest.fixture(scope="session")
def zh_rows():
    return sh.load_sft_rows(str(sh.SAMPLE_DATA_DIR), "zh")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    return sh.build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-qwen2", "qwen2")
