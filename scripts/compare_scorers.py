"""How medical_r1.scorer and HuatuoGPT-o1's match_choice read the same labelled R1-style outputs
(tests/fixtures/scorer_cases.json): per family, how many each reads as labelled, how many it gives a wrong letter
(a letter other than the label, or any letter where the label is "no answer") and how many it leaves without a
letter where one was due (unreadable, abstained or unfinished: those go on to 04's model reader, a wrong letter goes
into the verdict). Prints the table docs/evaluation.md shows.

HuatuoGPT-o1's score() counts an item right when either the first or the last letter it finds is the gold one,
per benchmark whichever scores higher; here its last letter is taken (the one that copes with second thoughts),
read from the whole output as it does, and any letter on an output labelled "no answer" counts as a misread.

    python scripts/compare_scorers.py
"""
import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
import huatuo_scorer  # noqa: E402

from medical_r1.scorer import extract_choice  # noqa: E402

CASES = ROOT / "tests" / "fixtures" / "scorer_cases.json"


def readings() -> list[dict]:
    """Each labelled case with what both scorers read."""
    doc = json.loads(CASES.read_text(encoding="utf-8"))
    rows = []
    for case in doc["cases"]:
        options = doc["option_sets"][case["options"]]
        ours = extract_choice(case["output"], options)[0]
        theirs = huatuo_scorer.match_choice(case["output"], options)[0][1]
        rows.append({**case, "ours": ours, "theirs": theirs})
    return rows


def counts(rows: list[dict], scorer: str) -> tuple[int, int, int]:
    """(as labelled, wrong letters, no letter where one was due) for "ours" or "theirs"."""
    right = sum(r[scorer] == r["expected"] for r in rows)
    wrong = sum(r[scorer] is not None and r[scorer] != r["expected"] for r in rows)
    return right, wrong, len(rows) - right - wrong


def table(rows: list[dict]) -> str:
    families = list(dict.fromkeys(r["family"] for r in rows))
    lines = ["| family | cases | medical_r1.scorer: as labelled / wrong letter / no letter "
             "| HuatuoGPT-o1 match_choice: as labelled / wrong letter / no letter |", "|---|---|---|---|"]
    for family in families + ["all"]:
        mine = [r for r in rows if family in ("all", r["family"])]
        ours, theirs = (" / ".join(map(str, counts(mine, scorer))) for scorer in ("ours", "theirs"))
        name = f"**{family}**" if family == "all" else family
        lines.append(f"| {name} | {len(mine)} | {ours} | {theirs} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(readings()))
