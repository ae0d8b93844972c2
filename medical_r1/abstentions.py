"""Where a careful grader would hesitate: statements that say the answer is no option, or that no option can be
chosen. The scorer abstains on them (medical_r1.scorer.ABSTENTIONS names why) unless the answer commits to an option
after saying so; 04's model reader then decides, and without it the item stays without an answer.
"""
from __future__ import annotations

import re

_I = re.IGNORECASE
# A stated answer that is a letter beyond the options ("The answer is E" when they stop at D, {"answer": "E"}).
_STATED_LETTER = re.compile(r"(?:\banswer(?:_choice)?\b|\bans\b|答案|选)[\"'\s*:：=]*(?:is\s+|would be\s+|为|是)?"
                            r"(?:option\s+)?[\s(\[*\"']*((?-i:[A-Z]))(?![A-Za-z0-9])(?!\s+[a-z]{2,})", _I)
# An answer that says the right option is none of them, or is missing.
_NO_OPTION = re.compile(
    r"\bnone\s+of\s+(?:the\s+(?:above|options|choices|answers)|these(?:\s+options)?|them|A[-–]?[A-Z]\b|(?:A,\s*)?B,?\s)"
    r"(?=\s*(?:[.!;:,)*\n]|$|(?:is|are)\s+(?:correct|right|the\s+answer)|fits?\b|appl(?:y|ies)\b))"
    r"|\bnot\s+(?:listed|among\s+the\s+(?:options|choices)|(?:one\s+)?of\s+the\s+options|in\s+the\s+options)"
    r"|\bno\s+(?:correct\s+|right\s+)?(?:option|choice|answer)\s+(?:is\s+|fits|here|given|listed)|\banswer:?\s+none\b"
    r"|以上(?:都|均|皆)(?:不|非)|不在选项|没有正确(?:的)?(?:答案|选项)|无正确(?:答案|选项)", _I)
# An answer that says it cannot choose, or withdraws the pick it was pushed to ("if I had to pick C, but ...").
_UNDETERMINED = re.compile(
    r"\bcannot\s+be\s+(?:determined|answered|decided)|\bcan(?:no|')?t\s+(?:tell|decide|choose|determine|commit)"
    r"|\bcannot\s+(?:tell|decide|choose|determine|commit)|\bwouldn'?t\s+commit|\bnot\s+commit|\bambiguous"
    r"|\bequally\s+(?:defensible|likely|possible|valid|plausible)|\bno\s+option\s+is\s+(?:right|correct)"
    r"|\bnone\s+(?:of\s+them\s+)?(?:fits|is\s+(?:right|correct))|\bindeterminate|\bundecidable"
    r"|无法(?:确定|判断|选择|决定)|难以(?:确定|判断|选择)|都有可能|不能确定", _I)


def not_an_option(text: str, options: dict) -> int | None:
    """Where the answer states a letter beyond the options, or that the answer is none of them; None if it
    does not (or an option itself says "none of the above")."""
    last = max(options)
    spots = [m.start() for m in _STATED_LETTER.finditer(text) if m.group(1) > last and m.group(1) != "I"]
    if not any(re.search(r"\bnone\b|以上", o, _I) for o in options.values()):
        spots += [m.start() for m in _NO_OPTION.finditer(text)]
    return min(spots, default=None)


def undetermined(text: str) -> int | None:
    """Where the answer says it cannot choose; None if it does not."""
    m = _UNDETERMINED.search(text)
    return m.start() if m else None
