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

from medical_r1 import data as data_mod  # noqa: E402
from medical_r1 import models as models_mod  # noqa: E402


@pytest.fixture(scope="session")
def tokenizer():
    return models_mod.load_tokenizer(str(models_mod.TOKENIZER_FIXTURE))


@pytest.fixture(scope="session")
def en_rows():
    return data_mod.load_sft_rows(str(data_mod.SAMPLE_DATA_DIR), "en")


@pytest.fixture(scope="session")
def zh_rows():
    return data_mod.load_sft_rows(str(data_mod.SAMPLE_DATA_DIR), "zh")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    return models_mod.build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-qwen2", "qwen2")


@pytest.fixture(scope="session")
def adapter_model(tiny_model_dir, tmp_path_factory):
    """The tiny model with a LoRA adapter whose B matrices are not zero, saved and reloaded as 06 loads it."""
    import torch

    from medical_r1 import params
    from medical_r1 import runtime as rt_mod

    rt = rt_mod.detect_runtime()
    model, tok = models_mod.load_model_and_tokenizer(tiny_model_dir, "cpu", rt, 2048)
    model = models_mod.add_lora(model, "cpu", params.Params(lora_r=4))
    with torch.no_grad():
        for name, tensor in model.named_parameters():
            if "lora_B" in name:
                tensor.normal_(0, 0.5)
    folder = tmp_path_factory.mktemp("adapter")
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return models_mod.load_model_and_tokenizer(str(folder), "cpu", rt, 2048)
