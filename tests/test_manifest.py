"""The run manifest (medical_r1.manifest): 02 writes the settings the series shares once, 03-07 read them, and what
does not belong together is refused with a sentence that says what to run."""
import pytest

from medical_r1 import artifacts, manifest
from medical_r1.grpo import grpo_start

SETTINGS = {"model_name": "unsloth/DeepSeek-R1-Distill-Llama-8B", "max_seq_length": 2048, "template": "r1_chat",
            "precision": "auto", "load_in_4bit": True}


def test_02s_settings_are_what_03_to_07_read(tmp_path):
    written = manifest.write_run_manifest(tmp_path, **SETTINGS)
    assert artifacts.artifact(tmp_path, "run_manifest").name == "run.json"
    assert manifest.read_run_manifest(tmp_path) == written == manifest.RunManifest(**SETTINGS)


def test_an_adapter_trained_on_another_model_is_refused_with_the_way_out(tmp_path):
    """02 run again with another MODEL_NAME after 03: 04, 06 and 07 (from the adapter) refuse 03's adapter."""
    run = manifest.write_run_manifest(tmp_path, **{**SETTINGS, "model_name": "unsloth/DeepSeek-R1-Distill-Qwen-7B"})
    artifacts.write_json(artifacts.artifact(tmp_path, "train_metrics"), {"model_name": SETTINGS["model_name"]})
    (tmp_path / "adapter").mkdir()
    message = (r"03's adapter .* was trained on 'unsloth/DeepSeek-R1-Distill-Llama-8B', but 02's run manifest "
               r"\(run.json\) now says MODEL_NAME = 'unsloth/DeepSeek-R1-Distill-Qwen-7B': run 03 again after 02")
    with pytest.raises(ValueError, match=message):
        manifest.check_trained_as_run(run, tmp_path)
    with pytest.raises(ValueError, match=message):
        grpo_start(tmp_path, "adapter", run)
    assert grpo_start(tmp_path, "base", run) == "unsloth/DeepSeek-R1-Distill-Qwen-7B"  # a new adapter on its model
    artifacts.write_json(artifacts.artifact(tmp_path, "train_metrics"), {"model_name": run.model_name})
    manifest.check_trained_as_run(run, tmp_path)
    assert grpo_start(tmp_path, "adapter", run) == str(tmp_path / "adapter")


@pytest.mark.parametrize("broken, said", [
    ({"max_seq_length": 0}, "max_seq_length must be a positive integer"),
    ({"template": "chatml"}, "template must be one of"),
    ({"precision": "fp8"}, "precision must be 'auto', 'fp16' or 'bf16'"),
])
def test_a_bad_setting_is_refused_when_written_and_when_read(tmp_path, broken, said):
    with pytest.raises(ValueError, match=said):
        manifest.write_run_manifest(tmp_path, **{**SETTINGS, **broken})
    assert not artifacts.artifact(tmp_path, "run_manifest").exists()  # nothing half-written
    artifacts.write_json(artifacts.artifact(tmp_path, "run_manifest"), {**SETTINGS, **broken})
    with pytest.raises(ValueError, match=f"run.json: {said}.*run 02_format_dataset again"):
        manifest.read_run_manifest(tmp_path)


def test_a_manifest_missing_or_lacking_a_field_says_to_run_02(tmp_path):
    with pytest.raises(FileNotFoundError, match="run.json is missing: run notebooks/02_format_dataset.ipynb first"):
        manifest.read_run_manifest(tmp_path)
    artifacts.write_json(artifacts.artifact(tmp_path, "run_manifest"), {"model_name": "m", "template": "r1_chat"})
    with pytest.raises(ValueError, match="lacks max_seq_length, precision, load_in_4bit: run 02_format_dataset again"):
        manifest.read_run_manifest(tmp_path)


def test_no_notebook_after_02_carries_its_own_copy_of_a_shared_setting():
    """03-07's parameters cells hold only their own settings: the shared ones are 02's, read from run.json."""
    import ast

    from medical_r1 import REPO_ROOT

    shared = {name.upper() for name in manifest.FIELDS}
    for notebook in ("03_train", "04_compare", "05_export_push", "06_chat", "07_grpo"):
        source = (REPO_ROOT / "notebooks" / f"{notebook}.py").read_text()
        cell = source.split('tags=["parameters"]')[1].split("# %%")[0]
        names = {t.id for node in ast.parse(cell).body if isinstance(node, ast.Assign) for t in node.targets}
        assert not names & shared, (notebook, names & shared)
        assert notebook == "05_export_push" or "read_run_manifest(WORK_DIR)" in source
    cell = (REPO_ROOT / "notebooks" / "02_format_dataset.py").read_text().split('tags=["parameters"]')[1]
    assert all(f"\n{name} = " in cell.split("# %%")[0] for name in shared)
