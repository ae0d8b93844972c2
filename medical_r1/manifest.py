"""The run manifest (WORK_DIR/run.json): the settings the whole series shares, decided once in 02's parameters cell
(the model, the longest example in tokens, the prompt template, the precision, 4-bit loading) and read by 03-07,
whose parameters cells hold only their own settings. A MAX_SEQ_LENGTH or MODEL_NAME can then not differ between the
notebook that formatted the data and those that train on it, evaluate it or chat with it.
"""
from __future__ import annotations

import dataclasses

from medical_r1.artifacts import artifact, read_json, require_artifact, write_json


@dataclasses.dataclass(frozen=True)
class RunManifest:
    model_name: str  # the base model 02 tokenised for and 03 trains (and 07 starts from with START_FROM = "base")
    max_seq_length: int  # longer examples were dropped in 02; the loaders' context length
    template: str  # the prompt template every notebook renders prompts with
    precision: str  # "auto", "fp16" or "bf16": resolved on each notebook's own GPU (medical_r1.runtime)
    load_in_4bit: bool  # 4-bit base weights (ignored on CPU)


FIELDS = tuple(f.name for f in dataclasses.fields(RunManifest))


def _checked(settings: dict, where: str) -> RunManifest:
    """A RunManifest from settings, every value checked as the parameters cells' are (Params names a bad one)."""
    from medical_r1.params import Params

    missing = [name for name in FIELDS if name not in settings]
    if missing:
        raise ValueError(f"{where} lacks {', '.join(missing)}: run 02_format_dataset again with the same WORK_DIR")
    run = RunManifest(**{name: settings[name] for name in FIELDS})
    try:
        Params(**dataclasses.asdict(run))
    except ValueError as err:
        raise ValueError(f"{where}: {err}; run 02_format_dataset again with a valid value") from err
    return run


def write_run_manifest(work_dir, **settings) -> RunManifest:
    """02: check and write the shared settings; returns them."""
    run = _checked(settings, "the run manifest")
    write_json(artifact(work_dir, "run_manifest"), dataclasses.asdict(run))
    return run


def read_run_manifest(work_dir) -> RunManifest:
    """03-07: the shared settings 02 wrote, checked; a missing or broken run.json says to run 02."""
    path = require_artifact(work_dir, "run_manifest")
    return _checked(read_json(path), str(path))


def check_trained_as_run(run: RunManifest, work_dir) -> None:
    """The adapter in WORK_DIR was trained on the model the manifest names: refuse it, with the way out, when 02
    was run again with another MODEL_NAME after 03 (the data, the template and the adapter would not belong
    together)."""
    trained = read_json(require_artifact(work_dir, "train_metrics"))
    if trained["model_name"] != run.model_name:
        raise ValueError(f"03's adapter in {work_dir} was trained on {trained['model_name']!r}, but 02's run manifest "
                         f"(run.json) now says MODEL_NAME = {run.model_name!r}: run 03 again after 02, or run 02 with "
                         f"MODEL_NAME = {trained['model_name']!r}")
