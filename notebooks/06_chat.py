# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 06 · Chat with the tuned model
#
# Open a chat with the fine-tuned model: replies stream token by token, the thinking is folded under the
# answer, and a choice puts the base model (the adapter off) beside it for the same question.
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/medical-r1/medical-r1-notebooks/blob/main/notebooks/06_chat.ipynb) [![Open In Kaggle](https://kaggle.com/static/images/open-in-kaggle.svg)](https://kaggle.com/kernels/welcome?src=https://github.com/medical-r1/medical-r1-notebooks/blob/main/notebooks/06_chat.ipynb)
#
# **On Kaggle:** *Settings > Accelerator*: GPU T4 x2; *Internet*: on; secrets under *Add-ons > Secrets*; *Add Input > Your Work > Notebooks*: your runs of `02_format_dataset`, `03_train`, `05_export_push` (the notebook copies their files from `/kaggle/input` itself, or says which one is missing).
#
# **Reads:** `WORK_DIR/adapter/` and `train_metrics.json` (03) or `merged_16bit/` (05), and `run.json` (02: the template, length, precision).
# **Writes:** nothing.
# **Time on a T4 (an estimate; not yet measured on one):** a minute or two to load the 8B model; then about as
# fast as 01's answers, one question at a time.
#
# Each question is rendered by the same template function as training and answered on its own (R1 distills
# are trained single-turn). On Colab and Kaggle the chat gets a public `gradio.live` link (`SHARE = "auto"`):
# anyone with the link can use your GPU while the notebook runs, unless a `CHAT_PASSWORD` secret (Kaggle:
# *Add-ons > Secrets*; Colab: the key icon) is set: then the page and its API ask for it. Not medical advice.

# %% tags=["parameters"]
WORK_DIR = "runs/medical-r1"  # every notebook reads and writes its files under this folder
BACKEND = "auto"  # "auto", "unsloth", "transformers" or "cpu"
CHAT_MODEL = "adapter"  # "adapter" (base + LoRA, with the base-model switch) or "merged" (05's merged model)
MAX_NEW_TOKENS = 1024  # the reply's length limit; R1 thinks at length before it answers
TEMPERATURE = 0.6  # DeepSeek recommends 0.5-0.7 for the distills; 0 is greedy
TOP_P = 0.95  # nucleus sampling, DeepSeek's recommended value
SHARE = "auto"  # "auto" makes a public link on Colab and Kaggle only; True or False forces it
CHAT_SHOW_API = False  # True lists the chat's API page ("Use via API"); with CHAT_PASSWORD set it asks for it too
INSTALL_REQUIREMENTS = "auto"  # "auto" installs requirements.txt's pins on Kaggle/Colab when missing; "never", "always"

# %%
# The helpers: src_helpers.py (prompt templates, encoding) and the medical_r1 package. In a checkout of the
# repository they are found where they are. Opened alone, the notebook installs them with pip: on Kaggle from
# the wheel in the attached medical-r1-helpers dataset (offline), on Colab from the repository.
import glob
import importlib.util
import subprocess
import sys

sys.path[:0] = [".", ".."]  # the repository root, whether the notebook runs from it or from notebooks/
if importlib.util.find_spec("medical_r1") is None:
    wheels = glob.glob("/kaggle/input/**/medical_r1-*.whl", recursive=True)
    source = wheels[0] if wheels else "git+https://github.com/medical-r1/medical-r1-notebooks"
    if subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", source]).returncode:
        raise ModuleNotFoundError(
            f"The medical_r1 helpers are not here and pip could not install them from {source}: on Kaggle attach "
            "the medical-r1-helpers dataset (scripts/build_kaggle.py), on Colab turn the network on, or run "
            "the notebook from a checkout of the repository.")
    importlib.invalidate_caches()

# %%
from medical_r1.artifacts import require_artifact
from medical_r1.install import install_requirements
from medical_r1.manifest import check_trained_as_run, read_run_manifest
from medical_r1.params import Params
from medical_r1.runtime import setup_backend

print(install_requirements(INSTALL_REQUIREMENTS))
Params(work_dir=WORK_DIR, backend=BACKEND, chat_model=CHAT_MODEL, max_new_tokens=MAX_NEW_TOKENS,
       temperature=TEMPERATURE, top_p=TOP_P, share=SHARE, chat_show_api=CHAT_SHOW_API)  # checks every value
run = read_run_manifest(WORK_DIR)  # the settings 02 decided for the whole series (run.json)
print(run)
check_trained_as_run(run, WORK_DIR)  # 03's adapter (and 05's merge of it) belongs to this run's model
template = run.template
model_dir = require_artifact(WORK_DIR, CHAT_MODEL)
runtime, backend = setup_backend(BACKEND, run.precision)

# %% [markdown]
# ## Load the model
# The adapter folder loads its base model with the adapter on top, so the chat can switch the adapter off.

# %%
from medical_r1.models import language_model_loader
from medical_r1.runtime import compute_dtype

FastLanguageModel = language_model_loader(backend)
model, tokenizer = FastLanguageModel.from_pretrained(
    model_name=str(model_dir),
    max_seq_length=run.max_seq_length,
    dtype=compute_dtype(runtime),
    load_in_4bit=run.load_in_4bit,
)
FastLanguageModel.for_inference(model)

# %% [markdown]
# ## The chat
# Type a question, in English or Chinese. Each reply says which model wrote it. "Additional inputs" holds the model
# choice (fine-tuned, base, or both one after the other for the same question) and the sampling settings, starting
# from the parameters above. A reply that runs out of tokens says so. Run this cell again for a fresh chat.
# With a `CHAT_PASSWORD` secret the chat asks for it (any user name); without one, the line above the link says
# whether the link is open to anyone.

# %%
from medical_r1.chat import FOLD_SCRIPT, build_chat_app, chat_access, share_link

app = build_chat_app(model, tokenizer, template, MAX_NEW_TOKENS, TEMPERATURE, TOP_P, can_switch=CHAT_MODEL == "adapter",
                     max_seq_length=run.max_seq_length)
access, note = chat_access(share_link(SHARE), CHAT_SHOW_API)  # the password from CHAT_PASSWORD; never printed
print(note)
# The script keeps a thinking fold you opened open while it streams, and a question typed meanwhile until it ends.
app.launch(share=share_link(SHARE), js=FOLD_SCRIPT, **access)
