"""GGUF files through Unsloth and llama.cpp, with an Ollama Modelfile whose template is the training prompt.
"""
from __future__ import annotations

import pathlib

from medical_r1.artifacts import artifact, read_json, require_artifact, save_dir_atomic
from medical_r1.models import load_adapter_model
from medical_r1.params import check_gguf_quantizations
from medical_r1.runtime import Runtime
from src_helpers import render_prompt


def ollama_modelfile(tokenizer, gguf_name: str, template: str = "r1_chat", temperature: float = 0.6,
                     top_p: float = 0.95) -> str:
    """An Ollama Modelfile for a GGUF of the tuned model. Its chat template is cut from render_prompt, so a
    question reaches the model exactly as in training (the GGUF's tokenizer adds the BOS itself)."""
    marker = "\x00QUESTION\x00"
    prompt = render_prompt(tokenizer, marker, template).removeprefix(tokenizer.bos_token)
    before, after = prompt.split(marker)
    turns = ('{{ if .System }}{{ .System }}{{ end }}{{ range .Messages }}{{ if eq .Role "user" }}'
             f'{before}{{{{ .Content }}}}{after}{{{{ else if eq .Role "assistant" }}}}{{{{ .Content }}}}'
             f'{tokenizer.eos_token}{{{{ end }}}}{{{{ end }}}}')
    stops = [tokenizer.eos_token, *[t for t in ("<｜User｜>",) if t in tokenizer.get_vocab()]]
    return "\n".join([f"FROM ./{gguf_name}", f'TEMPLATE """{turns}"""', f"PARAMETER temperature {temperature}",
                      f"PARAMETER top_p {top_p}", *[f'PARAMETER stop "{t}"' for t in stops]]) + "\n"


def export_gguf(work_dir, backend: str, runtime: Runtime, quantizations: list[str], max_seq_length: int = 2048) -> dict:
    """GGUF files (through Unsloth and llama.cpp) and an Ollama Modelfile beside each, in WORK_DIR/gguf.
    Where this cannot run (another backend, or llama.cpp cannot be fetched and built) the report says why
    and nothing is left half-written; the adapter and the merged model are unaffected."""
    if not quantizations:
        return {"files": [], "skipped": "GGUF_QUANTIZATIONS is empty"}
    check_gguf_quantizations(quantizations, "GGUF_QUANTIZATIONS")
    if backend != "unsloth":
        return {"files": [], "skipped": f"GGUF export runs through Unsloth on a GPU; this run's backend is {backend!r}"}
    template = read_json(require_artifact(work_dir, "data_stats"))["template"]
    model, tokenizer, _ = load_adapter_model(work_dir, backend, runtime, max_seq_length, True)
    out_dir = artifact(work_dir, "gguf")

    def save(tmp):
        model.save_pretrained_gguf(tmp, tokenizer, quantization_method=list(quantizations))
        for gguf in pathlib.Path(tmp).glob("*.gguf"):
            (pathlib.Path(tmp) / f"Modelfile.{gguf.stem}").write_text(ollama_modelfile(tokenizer, gguf.name, template))

    try:
        save_dir_atomic(out_dir, save)
    except Exception as err:  # llama.cpp is cloned and compiled on first use: no internet or no compiler
        first_line = (str(err).strip().splitlines() or [""])[0][:300]
        return {"files": [], "skipped": f"GGUF export failed, so it was skipped ({type(err).__name__}: {first_line}). "
                                        "It needs internet to fetch llama.cpp and a C++ compiler to build it; "
                                        "the adapter and the merged model are unaffected"}
    return {"files": sorted(str(f) for f in out_dir.iterdir()), "skipped": None}
