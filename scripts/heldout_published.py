"""medical_r1.scorer on real published chain-of-thought outputs: InstructGPT's on MedQA (USMLE), MedMCQA and
PubMedQA, as Liévin et al. released them ("Can large language models reason about medical questions?",
github.com/vlievin/medical-reasoning, docs/samples/*.html, Apache-2.0). Not committed here (megabytes each):
pass the HTML files' paths.

Each output there is the model's reasoning followed by their answer-extraction sentence ("Therefore, among A
through D, the answer is D"), the model's own reading of its reasoning. Two checks:
- full: the output as published; our letter should be the one their sentence states.
- reasoning: the reasoning alone, as an R1 answer would end without that sentence. Where we give a letter, it is
  compared with the model's own extraction: a different letter counts as a wrong letter. Abstained and unreadable
  are counted apart (those go to 04's model reader, which is their extraction sentence in our pipeline).

    python scripts/heldout_published.py usmle-valid.html medmcqa-wo-context.html pubmedqa.html
"""
import html
import pathlib
import re
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from medical_r1.scorer import read_answer  # noqa: E402

_ROW = re.compile(r"<tr data-qid=(\w+)>(.*?)</tr>", re.S)
_CELL = re.compile(r"<td>(.*?)</td>", re.S)
_OPTION = re.compile(r"^([A-J])\) (.*?)$", re.M)
_EXTRACTION = re.compile(r"\n\s*Therefore, among A through [A-J], the answer is\s*\(?([A-J](?![A-Za-z]))?")


def outputs(path: str):
    """(options, reasoning, full output, the model's own extracted letter) for each chain-of-thought cell."""
    page = pathlib.Path(path).read_text(encoding="utf-8")
    options = {}
    for qid, row in _ROW.findall(page):
        if "colspan" in row:  # the question row: its options, one a line
            plain = re.sub(r"</?(?:strong|td)[^>]*>", "", row)
            options = {k: html.unescape(v).strip() for k, v in _OPTION.findall(plain)}
            continue
        for cell in _CELL.findall(row):
            text = html.unescape(re.sub(r"<[^>]+>", "", cell)).lstrip("\u2705\u274c ").strip()
            found = _EXTRACTION.search(text)
            if options and found and found.group(1):
                yield options, text[:found.start()].strip(), text, found.group(1)


def main(paths: list[str]) -> None:
    for path in paths:
        counts = {"outputs": 0, "full agrees": 0, "full wrong": 0, "reasoning read": 0, "reasoning wrong": 0,
                  "reasoning abstained": 0, "reasoning unreadable": 0, "reasoning unfinished": 0}
        wrong = []
        for options, reasoning, full, theirs in outputs(path):
            counts["outputs"] += 1
            ours = read_answer("</think>" + full, options)[0]
            counts["full agrees"] += ours == theirs
            counts["full wrong"] += ours not in (None, theirs)
            letter, rule, why = read_answer("</think>" + reasoning, options)
            counts["reasoning read"] += letter is not None
            counts["reasoning wrong"] += letter not in (None, theirs)
            if letter is None:
                counts[f"reasoning {rule}"] += 1
            if letter not in (None, theirs):
                wrong.append((letter, theirs, reasoning[-300:]))
        print(pathlib.Path(path).name, counts)
        for letter, theirs, tail in wrong[:20]:
            print(f"  ours {letter}, theirs {theirs}: ...{tail!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
