"""Options named in forms the scorer's plain reading misses, and lists that name several options at once.

- Exclusion lists: "Not A, C or D: B", "Neither B nor D fits; A does", "A, C and D are wrong, leaving B",
  "排除A、B、D". A dismissal before the list's first letter or after its last is the whole list's
  (`exclusion_groups` gives the lists; the scorer spreads the dismissal).
- Quantities in another unit or form: "= 1.2 g" or "1200 mg" against an option "1,200 mg" (`quantity_spans`).
- Paraphrase: an answer that names no option in its words, but whose first statement uses most of one option's
  content words and clearly more than any other's ("both the vaccine and HBIG within 12 hours" for "Hepatitis B
  vaccine and hepatitis B immunoglobulin within 12 hours of birth"; "de Quervain's (subacute) thyroiditis" for
  "Subacute thyroiditis") (`paraphrased_option`). Only a fallback: it never outranks an option named outright.
"""
from __future__ import annotations

import dataclasses
import re

_I = re.IGNORECASE


@dataclasses.dataclass
class Mention:
    """An option the answer names, where, how, and what its own clause says of it (medical_r1.scorer sets the flags)."""
    letter: str
    start: int
    end: int
    kind: str  # "marked_letter", "standalone_letter" or "option_text"
    asserted: bool = False
    stated: bool = False  # asserted by words (a lead-in before it or a verdict after it), not by its line alone
    negated: bool = False
    retracted: bool = False
    conditional: bool = False
    dismissed: bool = False  # negated in words that would take back an earlier choice ("contraindicated", "wrong")


# What joins the letters of one list: commas, 、, slashes, "or", "nor", "and".
_LIST_JOIN = re.compile(r"[\s*)\]]*(?:,|、|/|\bor\b|\bnor\b|\band\b|,\s*(?:or|nor|and)\b|或|和|与|及)\s*(?:option\s*)?"
                        r"[\s(\[*]*", _I)
# A verdict after a list that dismisses all of it ("A, C and D are wrong", "... can be ruled out", "均不对").
_LIST_VERDICT = re.compile(r"[\s*)\]]*(?:are|were|all|can be|are all|—|-)?\s*(?:all\s+)?(?:wrong|incorrect|ruled out"
                           r"|excluded|eliminated|unlikely|out|false|not (?:correct|right|the answer)|don'?t fit"
                           r"|do not fit)\b|[\s*)\]]*(?:均|都)?(?:不对|错误|排除|不正确|不符合)", _I)
_UNITS = {"mcg": 1e-6, "µg": 1e-6, "μg": 1e-6, "ug": 1e-6, "mg": 1e-3, "g": 1.0, "kg": 1e3, "ml": 1e-3, "l": 1.0,
          "mmol": 1e-3, "mol": 1.0, "meq": 1e-3, "iu": 1.0, "units": 1.0, "u": 1.0}
_QUANTITY = re.compile(r"(?<![\w.,/])(\d+(?:,\d{3})*(?:\.\d+)?)\s*(mcg|µg|μg|ug|mg|kg|g|ml|l|mmol|mol|meq|iu|units|u)"
                       r"(?![\w/])", _I)
_STOP = {"the", "a", "an", "of", "and", "or", "with", "to", "in", "on", "for", "at", "by", "is", "are", "be", "from",
         "only", "its", "their", "as", "that", "this", "than", "then", "after", "before", "into"}
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?", _I)
_FIRST_STATEMENT = re.compile(r"[^.;!?。；！？\n]+")


def exclusion_groups(text: str, letters: list) -> list[tuple[list, bool]]:
    """Runs of letter mentions joined as a list ("A, C or D", "B nor D", "A、B、D"), each with whether a dismissal
    right after the list's last letter covers it. `letters` are mention objects with start and end, in order."""
    groups, run = [], []
    for m in letters:
        if run and _LIST_JOIN.fullmatch(text[run[-1].end:m.start]) and m.letter not in {r.letter for r in run}:
            run.append(m)
            continue
        if len(run) > 1:
            groups.append(run)
        run = [m]
    if len(run) > 1:
        groups.append(run)
    return [(g, bool(_LIST_VERDICT.match(text[g[-1].end:g[-1].end + 40]))) for g in groups]


def _amount(number: str, unit: str) -> float:
    return float(number.replace(",", "")) * _UNITS[unit.lower()]


def quantity_spans(text: str, options: dict) -> list[tuple[str, int, int]]:
    """(letter, start, end) of each quantity in the answer equal to an option's quantity in the same kind of unit
    ("1.2 g" for "1,200 mg"), not a rate ("20 mg/kg") nor a quantity written as the option writes it (the plain
    option-text reading finds those)."""
    wanted = {}
    for letter, option in options.items():
        m = _QUANTITY.fullmatch(option.strip())
        if m:
            wanted[letter] = (_amount(*m.groups()), m.group(2).lower() in ("ml", "l"))
    spans = []
    for m in _QUANTITY.finditer(text) if wanted else ():
        amount, volume = _amount(*m.groups()), m.group(2).lower() in ("ml", "l")
        for letter, (value, is_volume) in wanted.items():
            if volume == is_volume and abs(amount - value) <= 1e-9 * max(1.0, value) and \
                    m.group().lower() != options[letter].strip().lower():
                spans.append((letter, m.start(), m.end()))
    return spans


def _content(text: str) -> set:
    """Content words cut to their first five letters, so "thyroiditis" meets "thyroid-" and "doses" "dose"."""
    return {w.lower()[:5] for w in _WORD.findall(text) if w.lower() not in _STOP}


def paraphrased_option(text: str, options: dict) -> str | None:
    """The option the answer's first statement paraphrases: at least two and half of its content words used, and
    a fifth more of them, or two words more, than of any other option's; None otherwise ("pyelonephritis" alone is
    not "Acute pyelonephritis": the acuity is the option's point)."""
    first = _FIRST_STATEMENT.search(text)
    if not first:
        return None
    said = _content(first.group())
    shares, counts = {}, {}
    for letter, option in options.items():
        words = _content(option)
        counts[letter] = len(words & said)
        if counts[letter] >= 2:
            shares[letter] = counts[letter] / len(words)
    ranked = sorted(shares, key=lambda k: (shares[k], counts[k]), reverse=True)
    if not ranked or shares[ranked[0]] < 0.5:
        return None
    best = ranked[0]
    others = [k for k in options if k != best]
    clear_share = all(shares[best] - shares.get(k, 0.0) >= 0.2 for k in others)
    clear_count = all(counts[best] - counts[k] >= 2 for k in others)  # "vaccine and immunoglobulin in 12 hours"
    return best if clear_share or clear_count else None
