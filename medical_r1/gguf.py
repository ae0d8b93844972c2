"""GGUF files through Unsloth and llama.cpp, with an Ollama Modelfile whose template is the training prompt.
"""
from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys
import tarfile

from medical_r1 import REPO_ROOT
from medical_r1.artifacts import artifact, read_json, require_artifact, save_dir_atomic
from medical_r1.install import parse_requirements
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


# llama.cpp's own converter, from the package registry -------------------------------------------------------

GGUF_REQUIREMENTS = REPO_ROOT / "requirements-gguf.txt"
CONVERTER_OUTTYPES = ("f32", "f16", "bf16", "q8_0")  # what convert_hf_to_gguf.py writes without llama-quantize

# Runs convert_hf_to_gguf.py as its own command line would, after optionally naming the pre-tokenizer: the
# converter knows the real DeepSeek tokenizers by a hash of their output, but not a test tokenizer.
_RUN_CONVERTER = """
import runpy, sys
converter_dir, pre_tokenizer, *argv = sys.argv[1:]
sys.path[:0] = [converter_dir, converter_dir + "/gguf-py"]
if pre_tokenizer:
    from conversion.base import TextModel
    TextModel.get_vocab_base_pre = lambda self, tokenizer: pre_tokenizer
sys.argv = [converter_dir + "/convert_hf_to_gguf.py", *argv]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _last_line(stderr: str) -> str:
    """A failed command's own last word: the error line Python and pip end with."""
    return (stderr.strip().splitlines() or ["no message"])[-1]


def llama_cpp_version() -> str:
    return parse_requirements(GGUF_REQUIREMENTS)["llama-cpp-python"]


def fetch_converter(cache_dir, sdist=None) -> pathlib.Path:
    """llama.cpp's converter (convert_hf_to_gguf.py, its `conversion` package and gguf-py) as shipped in the
    source distribution of the pinned llama-cpp-python: the converter Unsloth runs after cloning llama.cpp
    from GitHub, taken from the package registry instead. `sdist` is a downloaded .tar.gz, else pip fetches it."""
    version = llama_cpp_version()
    cache_dir = pathlib.Path(cache_dir)
    out = cache_dir / f"llama.cpp-{version}"
    if (out / "convert_hf_to_gguf.py").exists():
        return out
    if sdist is None:
        cache_dir.mkdir(parents=True, exist_ok=True)
        sdist = cache_dir / f"llama_cpp_python-{version}.tar.gz"
        if not sdist.exists():
            got = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                                  f"llama-cpp-python=={version}", "-d", str(cache_dir)], check=False, capture_output=True, text=True)
            if got.returncode or not sdist.exists():
                raise RuntimeError(f"Could not download llama-cpp-python=={version}'s source from the package "
                                   f"registry ({_last_line(got.stderr)}); "
                                   "download it elsewhere and pass the .tar.gz as sdist")
    prefix = f"llama_cpp_python-{version}/vendor/llama.cpp/"

    def extract(tmp):
        with tarfile.open(sdist) as tar:
            members = []
            for member in tar.getmembers():
                name = member.name.removeprefix(prefix)
                if member.name.startswith(prefix) and (name == "convert_hf_to_gguf.py"
                                                       or name.startswith(("conversion/", "gguf-py/"))):
                    member.name = name
                    members.append(member)
            tar.extractall(tmp, members=members, filter="data")
        if not (pathlib.Path(tmp) / "convert_hf_to_gguf.py").exists():
            raise RuntimeError(f"{sdist} holds no vendor/llama.cpp/convert_hf_to_gguf.py")

    return save_dir_atomic(out, extract)


def convert_to_gguf(model_dir, out_file, outtype: str, converter_dir, pre_tokenizer: str | None = None,
                    vocab_only: bool = False):
    """One GGUF of a merged 16-bit model folder, written by llama.cpp's converter in a subprocess. The file
    appears only once it is whole. `pre_tokenizer` names llama.cpp's pre-tokenizer for a tokenizer the
    converter does not recognise (the tests' GPT-2-style fixture is "gpt-2"); the real models need none.
    vocab_only writes the tokenizer alone (a folder with config and tokenizer files is enough)."""
    if outtype not in CONVERTER_OUTTYPES:
        raise ValueError(f"outtype must be one of {', '.join(CONVERTER_OUTTYPES)}, got {outtype!r}")
    out_file = pathlib.Path(out_file)
    part = out_file.with_name(f".{out_file.name}.part")
    done = subprocess.run([sys.executable, "-c", _RUN_CONVERTER, str(converter_dir), pre_tokenizer or "",
                           str(model_dir), "--outfile", str(part), "--outtype", outtype,
                           *(["--vocab-only"] if vocab_only else [])], check=False, capture_output=True, text=True)
    if done.returncode:
        part.unlink(missing_ok=True)
        raise RuntimeError(f"llama.cpp's converter failed on {model_dir}: {_last_line(done.stderr)}")
    os.replace(part, out_file)
    return out_file


# The Modelfile's TEMPLATE, rendered as Ollama would --------------------------------------------------------

def render_modelfile_template(modelfile: str, messages: list[dict], system: str = "") -> str:
    """The text Ollama sends to the model for these messages: the Go-template subset ollama_modelfile writes
    (if / else if / range / eq / fields), interpreted here so a test can tokenize it."""
    template = re.search(r'TEMPLATE """(.*?)"""', modelfile, re.DOTALL).group(1)
    nodes, _, _ = _parse_template(re.split(r"{{-?\s*(.*?)\s*-?}}", template), 0)
    return _render_template(nodes, {"System": system, "Messages": messages})


def _parse_template(parts: list[str], i: int):
    nodes = []
    while i < len(parts):
        part, i = parts[i], i + 1
        if i % 2:  # re.split alternates text and actions
            nodes += [("text", part)] if part else []
        elif part == "end" or part.startswith("else"):
            return nodes, i, part
        elif part.startswith("if "):
            branches, condition = [], part[3:]
            while True:
                body, i, stop = _parse_template(parts, i)
                branches.append((condition, body))
                if stop == "end":
                    break
                condition = stop.removeprefix("else if ") if stop.startswith("else if ") else "true"
            nodes.append(("if", branches))
        elif part.startswith("range "):
            body, i, _ = _parse_template(parts, i)
            nodes.append(("range", part[6:], body))
        else:
            nodes.append(("value", part))
    return nodes, i, None


def _template_value(expression: str, context: dict):
    if expression == "true":
        return True
    if expression.startswith("eq "):
        field, literal = expression[3:].split(" ", 1)
        return _template_value(field, context) == literal.strip('"')
    return context.get(expression.removeprefix("."), "")


def _render_template(nodes, context: dict) -> str:
    out = []
    for node in nodes:
        if node[0] == "text":
            out.append(node[1])
        elif node[0] == "value":
            out.append(str(_template_value(node[1], context)))
        elif node[0] == "if":
            body = next((b for condition, b in node[1] if _template_value(condition, context)), [])
            out.append(_render_template(body, context))
        else:
            out += [_render_template(node[2], {**context, **item}) for item in _template_value(node[1], context)]
    return "".join(out)
