"""GGUF and the Ollama Modelfile: the template reproduces the training prompt; where GGUF cannot be made the
report says why and nothing is left behind."""
import pathlib
import re

import pytest

import src_helpers as sh
from medical_r1 import artifacts, gguf
from medical_r1 import models as models_mod
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


@pytest.mark.parametrize("template", sorted(sh.TEMPLATES))
def test_modelfile_template_rendered_as_ollama_gives_the_training_tokens(tokenizer, template):
    modelfile = gguf.ollama_modelfile(tokenizer, "model-q8_0.gguf", template)
    for question in ("A 45-year-old man has sudden chest pain. What is the first test?", "患者空腹血糖升高，应考虑什么？"):
        text = gguf.render_modelfile_template(modelfile, [{"Role": "user", "Content": question}])
        ids = [tokenizer.bos_token_id] + tokenizer(text, add_special_tokens=False)["input_ids"]
        assert ids == sh.encode_prompt(tokenizer, question, template)
    turns = [{"Role": "user", "Content": "q1"}, {"Role": "assistant", "Content": "a1"}, {"Role": "user", "Content": "q2"}]
    text = gguf.render_modelfile_template(modelfile, turns, system="")
    first = sh.render_prompt(tokenizer, "q1", template).removeprefix(tokenizer.bos_token)
    assert text.startswith(first + "a1" + tokenizer.eos_token) and text.endswith(
        sh.render_prompt(tokenizer, "q2", template).removeprefix(tokenizer.bos_token))


def reader_field(reader):
    """name -> the value of that GGUF metadata field."""
    return lambda name: reader.fields[name].contents()


@pytest.fixture(scope="module")
def converter_dir(tmp_path_factory):
    # llama.cpp's converter from the pinned llama-cpp-python's source on PyPI (the registry is reachable in CI)
    return gguf.fetch_converter(tmp_path_factory.mktemp("llama-cpp"))


def test_llama_cpp_converter_writes_the_merged_model(converter_dir, tmp_path):
    import sys

    import torch
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    merged = models_mod.build_merged_tiny_model(tmp_path / "merged", "llama")
    files = {t: gguf.convert_to_gguf(merged, tmp_path / f"m-{t}.gguf", t, converter_dir, pre_tokenizer="gpt-2")
             for t in ("f16", "q8_0")}
    sys.path.insert(0, str(converter_dir / "gguf-py"))
    from gguf import GGUFReader
    from gguf.quants import dequantize

    hf = {k: v.float() for k, v in load_file(f"{merged}/model.safetensors").items()}
    tokenizer = AutoTokenizer.from_pretrained(merged)
    for outtype, path in files.items():
        reader = GGUFReader(path)
        field = reader_field(reader)
        assert field("general.architecture") == "llama" and field("tokenizer.ggml.pre") == "gpt-2"
        assert field("tokenizer.ggml.bos_token_id") == tokenizer.bos_token_id
        assert field("tokenizer.ggml.eos_token_id") == tokenizer.eos_token_id
        assert field("tokenizer.ggml.tokens")[:len(tokenizer)] == tokenizer.convert_ids_to_tokens(range(len(tokenizer)))
        tensors = {t.name: torch.from_numpy(dequantize(t.data, t.tensor_type).copy()).float().reshape(
            [int(n) for n in reversed(t.shape)]) for t in reader.tensors}
        assert len(tensors) == len(hf)
        pairs = {"token_embd.weight": "model.embed_tokens.weight", "output.weight": "lm_head.weight",
                 "blk.1.ffn_down.weight": "model.layers.1.mlp.down_proj.weight",
                 "blk.0.attn_v.weight": "model.layers.0.self_attn.v_proj.weight"}
        for ours, theirs in pairs.items():
            error = (tensors[ours] - hf[theirs]).abs().max().item() / hf[theirs].abs().max().item()
            assert error < (1e-3 if outtype == "f16" else 1e-2), (outtype, ours, error)
    vocab = GGUFReader(gguf.convert_to_gguf(merged, tmp_path / "vocab.gguf", "f16", converter_dir, "gpt-2",
                                            vocab_only=True))
    assert not vocab.tensors and len(vocab.fields["tokenizer.ggml.tokens"].contents()) == len(hf["lm_head.weight"])
    assert sorted(p.name for p in tmp_path.glob("*.gguf")) == ["m-f16.gguf", "m-q8_0.gguf", "vocab.gguf"]


def test_a_converter_failure_names_it_and_leaves_no_file(converter_dir, tmp_path):
    merged = models_mod.build_merged_tiny_model(tmp_path / "merged", "llama")
    with pytest.raises(RuntimeError, match="pre-tokenizer was not recognized"):
        gguf.convert_to_gguf(merged, tmp_path / "m.gguf", "f16", converter_dir)  # the fixture's hash is unknown
    with pytest.raises(ValueError, match="outtype"):
        gguf.convert_to_gguf(merged, tmp_path / "m.gguf", "q4_k_m", converter_dir)
    assert not list(tmp_path.glob("*.gguf*")) and not list(tmp_path.glob(".*part"))
