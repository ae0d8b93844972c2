"""GGUF and the Ollama Modelfile: the template reproduces the training prompt; where GGUF cannot be made the
report says why and nothing is left behind."""
import pathlib
import re

import pytest

import src_helpers as sh
from medical_r1 import artifacts, gguf
from medical_r1 import runtime as rt_mod


@pytest.mark.parametrize("template", sorted(sh.TEMPLATES))
def test_modelfile_sends_the_question_as_in_training(tokenizer, template):
    modelfile = gguf.ollama_modelfile(tokenizer, "model-q4_k_m.gguf", template)
    assert modelfile.startswith("FROM ./model-q4_k_m.gguf\n")
    user_turn = re.search(r'eq \.Role "user" }}(.*?){{ else if', modelfile, re.S).group(1)
    question = "What causes hemoptysis?"
    expected = sh.render_prompt(tokenizer, question, template).removeprefix(tokenizer.bos_token)
    assert user_turn.replace("{{ .Content }}", question) == expected
    assert f'PARAMETER stop "{tokenizer.eos_token}"' in modelfile and "PARAMETER temperature 0.6" in modelfile


def test_gguf_off_unsloth_is_skipped_with_the_reason(tmp_path):
    report = gguf.export_gguf(tmp_path, "cpu", rt_mod.detect_runtime(), ["q4_k_m"])
    assert report["files"] == [] and "Unsloth" in report["skipped"]
    assert not artifacts.artifact(tmp_path, "gguf").exists()
    assert gguf.export_gguf(tmp_path, "cpu", rt_mod.detect_runtime(), [])["skipped"]


def test_unknown_quantization_is_refused(tmp_path):
    with pytest.raises(ValueError, match="GGUF_QUANTIZATIONS"):
        gguf.export_gguf(tmp_path, "unsloth", rt_mod.detect_runtime(), ["q3_k_xl"])


def test_a_failed_llama_cpp_build_is_skipped_and_leaves_nothing(tmp_path, tokenizer, monkeypatch):
    class NoLlamaCpp:
        def save_pretrained_gguf(self, directory, tok, quantization_method):
            (pathlib.Path(directory) / "half-written.gguf").write_text("x")
            raise RuntimeError("Unsloth: could not clone llama.cpp\n(details)")

    artifacts.write_json(artifacts.artifact(tmp_path, "data_stats"), {"template": "r1_chat"})
    monkeypatch.setattr(gguf, "load_adapter_model", lambda *a, **k: (NoLlamaCpp(), tokenizer, "base"))
    report = gguf.export_gguf(tmp_path, "unsloth", rt_mod.detect_runtime(), ["q4_k_m", "q8_0"])
    assert report["files"] == []
    assert "could not clone llama.cpp" in report["skipped"] and "adapter" in report["skipped"]
    assert not artifacts.artifact(tmp_path, "gguf").exists()
    assert not [p for p in tmp_path.rglob("*") if "gguf" in p.name]


def test_gguf_files_get_a_modelfile_each(tmp_path, tokenizer, monkeypatch):
    class Exporter:
        def save_pretrained_gguf(self, directory, tok, quantization_method):
            for q in quantization_method:
                (pathlib.Path(directory) / f"model-{q}.gguf").write_bytes(b"GGUF")

    artifacts.write_json(artifacts.artifact(tmp_path, "data_stats"), {"template": "zh_r1"})
    monkeypatch.setattr(gguf, "load_adapter_model", lambda *a, **k: (Exporter(), tokenizer, "base"))
    report = gguf.export_gguf(tmp_path, "unsloth", rt_mod.detect_runtime(), ["q4_k_m", "q8_0"])
    names = sorted(pathlib.Path(f).name for f in report["files"])
    assert names == ["Modelfile.model-q4_k_m", "Modelfile.model-q8_0", "model-q4_k_m.gguf", "model-q8_0.gguf"]
    modelfile = (artifacts.artifact(tmp_path, "gguf") / "Modelfile.model-q8_0").read_text()
    assert modelfile == gguf.ollama_modelfile(tokenizer, "model-q8_0.gguf", "zh_r1")  # the template 02 used
