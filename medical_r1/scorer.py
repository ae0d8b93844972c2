"""The answer a clinician would read: which option an R1-style output commits to, after its last </think>.

Every mention of an option in the answer (its letter, or its text) is found and marked asserted ("the answer is
C", "I pick D", "答案为C", "C is correct", "ruling out A and B leaves C") or negated ("it isn't A", "B is
wrong", "rule out A", "not lithium", "答案并非A", "排除A"). The committed answer is the last asserted, non-negated
mention (second thoughts win); without one, the only option named and not negated. Two live answers with no
statement choosing between them ("A or C", "either B or D could be right") are a hedge: unreadable, never guessed.
Option text matches whole words ("no" is not in "cannot" or "know"); text in Chinese, which has no spaces, matches
as it stands, and a one-character Chinese option only right after an answer phrase. An output still thinking
when its tokens ran out is "unfinished". `similarity` (opt-in) reads an answer that names no option as its most
similar option, reported apart.
"""
from __future__ import annotations

import dataclasses
import re

from src_helpers import split_thinking

# Phrases after which the next option is the one chosen. A letter may be lower case right after one of these
# ("the answer is c"), but not an article or a pronoun ("the answer is a fracture", "I think").
_LEAD_IN = (r"(?:final\s+)?answer\s*(?:is|would be|should be|must be|=)?\s*(?:option|choice|letter)?\s*[:：]?"
            r"|(?:correct|right|best|final)\s+(?:option|choice)\s*(?:is|would be)?\s*[:：]?"
            r"|(?:i would|i'd|i will|i'll|i|we)\s+(?:go with|choose|pick|select|opt for)(?:\s+option|\s+choice)?"
            r"|my\s+(?:final\s+)?(?:answer|choice|pick)\s*(?:is)?\s*[:：]?|(?:that|which|this)?\s*leaves(?:\s+us\s+with)?"
            r"|leaving|so it(?:'s| is)(?:\s+option)?|it must be(?:\s+option)?"
            r"|答案(?:应该是|应为|是|为|选)?\s*[:：]?|正确(?:答案|选项)(?:是|为|应为)?\s*[:：]?|应为|应选|而是"
            r"|(?:应|故|所以|因此|最终|我)选(?:择)?(?:项)?(?:是|为)?\s*[:：]?|答\s*[:：]")
_LEAD_IN_BEFORE = re.compile(rf"(?:{_LEAD_IN})\s*[\(\[（*\s]*$", re.IGNORECASE)
_CHOSEN_AFTER = re.compile(r"^[\s*)\]）]*(?:[.:：]\s*[^.;。；]{0,60}?\s)?(?:is|would be|seems|appears)\s+(?:to be\s+)?(?:the\s+)?"
                           r"(?:correct|right|best|most likely|most appropriate|answer)\b|^[\s*)\]）]*(?:是)?(?:正确|最合适|最佳)",
                           re.IGNORECASE)
# Negation: a cue before a mention, or a verdict after it, in the same stretch of text.
_NOT_BEFORE = re.compile(r"\b(?:not|isn't|aren't|never|cannot be|can't be|rather than|instead of|rules? out|ruled out"
                         r"|ruling out|excludes?|excluded|excluding|eliminates?|eliminated|eliminating|unlike|except)\b"
                         r"|不是|并非|而非|排除|不选|除了", re.IGNORECASE)
_NOT_AFTER = re.compile(r"\b(?:is|are|was|were|seems|appears)\s+(?:not|wrong|incorrect|unlikely|less likely|ruled out"
                        r"|excluded|eliminated|false)\b|\b(?:isn't|aren't|wrong|incorrect)\b|\bcan be (?:ruled out|excluded"
                        r"|eliminated)\b|不对|错误|不正确|可以排除|被排除|不符合|不成立", re.IGNORECASE)
# Where a negation's reach ends: sentence and clause punctuation, and the words that turn to another option.
_STRETCH_END = re.compile(r"[.;:!?。；！？\n,，—]|\s-\s|\b(?:but|so|therefore|thus|hence|because|since|leaves|leaving"
                          r"|instead|whereas|while|then)\b|所以|因此|故|而是|应为|但", re.IGNORECASE)
_HEDGE_AFTER = re.compile(r"^[\s*)\]）]*(?:or|/|and/or|或者?)\s*(?:option\s*)?[\(\[（*\s]*$", re.IGNORECASE)
_BRACKETED = re.compile(r"[\(\[（]\s*([A-Ja-j])\s*[\)\]）]")
_BOLD = re.compile(r"\*\*\s*([A-J])\s*(?:\*\*|[.:)])")
_CAPITAL = re.compile(r"(?<![A-Za-z0-9])([A-J])(?![A-Za-z0-9])")
_LOWER = re.compile(r"(?<![A-Za-z0-9])([a-j])(?![A-Za-z0-9'])")
_OPTION_WORD = re.compile(r"\b(?:option|choice)\s*$", re.IGNORECASE)
# "A patient", "I think": an article or a pronoun, unless a verb or list follows ("A is wrong", "A and B").
_WORD_AFTER = re.compile(r"\s+([a-z']+)")
_LETTER_FOLLOWERS = {"is", "was", "would", "could", "can", "seems", "appears", "fits", "remains", "and", "or", "nor",
                     "are", "might", "may", "must", "should", "cannot", "isn't", "wasn't", "also", "alone", "too"}
# "vitamin D", "hepatitis B", "type I": a capital that belongs to a name, not an option.
_NAME_BEFORE = re.compile(r"\b(?:vitamin|hepatitis|type|class|grade|stage|phase|factor|group|complex|category"
                          r"|schedule|lead|zone|cluster|level|protein|cell|mode|wave|point|vessel)\s*$", re.IGNORECASE)
_CJK = re.compile(r"[\u3400-\u9fff]")


@dataclasses.dataclass
class Mention:
    letter: str
    start: int
    end: int
    kind: str  # "marked_letter", "standalone_letter" or "option_text"
    asserted: bool = False
    negated: bool = False


def _letter_mentions(answer: str, letters: set) -> list[Mention]:
    found: dict[int, Mention] = {}
    for pattern, kind in ((_BRACKETED, "marked_letter"), (_BOLD, "marked_letter")):
        for m in pattern.finditer(answer):
            if m.group(1).upper() in letters:
                found.setdefault(m.start(1), Mention(m.group(1).upper(), m.start(1), m.end(1), kind))
    for m in _CAPITAL.finditer(answer):
        letter, before = m.group(1), answer[:m.start()]
        if letter not in letters or m.start() in found or _NAME_BEFORE.search(before):
            continue
        marked = _OPTION_WORD.search(before) or _LEAD_IN_BEFORE.search(before)
        word = _WORD_AFTER.match(answer, m.end())
        if letter == "I" and not marked:
            continue  # the pronoun, unless an option word or answer phrase says otherwise
        if letter == "A" and not marked and word and word.group(1) not in _LETTER_FOLLOWERS:
            continue  # the article
        found[m.start()] = Mention(letter, m.start(), m.end(), "standalone_letter")
    for m in _LOWER.finditer(answer):
        before = answer[:m.start()]
        if m.group(1).upper() in letters and m.start() not in found and (
                _OPTION_WORD.search(before) or _LEAD_IN_BEFORE.search(before)):
            word = _WORD_AFTER.match(answer, m.end())
            if m.group(1) in "ai" and word and word.group(1) not in _LETTER_FOLLOWERS:
                continue
            found[m.start()] = Mention(m.group(1).upper(), m.start(), m.end(), "standalone_letter")
    return list(found.values())


def _text_mentions(answer: str, options: dict) -> list[Mention]:
    spans = []
    for letter, text in options.items():
        text = text.strip()
        if not text:
            continue
        if _CJK.search(text):
            pattern = re.escape(text)  # no spaces to mark word boundaries in Chinese
        else:
            pattern = r"(?<![A-Za-z0-9])" + re.escape(text) + r"(?![A-Za-z0-9])"
        for m in re.finditer(pattern, answer, re.IGNORECASE):
            if len(text) == 1 and _CJK.search(text) and not _LEAD_IN_BEFORE.search(answer[:m.start()]):
                continue  # one Chinese character (是, 否) is part of too many words to count on its own
            spans.append(Mention(letter, m.start(), m.end(), "option_text"))
    # "Acute cystitis" also contains "cystitis": keep the longest text at each place.
    return [s for s in spans if not any(o is not s and o.start <= s.start and s.end <= o.end and
                                        o.end - o.start > s.end - s.start for o in spans)]


def _stretch(answer: str, start: int, end: int) -> tuple[int, int]:
    """The stretch of text around [start, end) that a negation can reach."""
    left = max((m.end() for m in _STRETCH_END.finditer(answer, 0, start)), default=0)
    right = next((m.start() for m in _STRETCH_END.finditer(answer, end)), len(answer))
    return left, right


def find_mentions(answer: str, options: dict) -> list[Mention]:
    mentions = sorted(_letter_mentions(answer, set(options)) + _text_mentions(answer, options), key=lambda m: m.start)
    for m in mentions:
        before, after = answer[:m.start], answer[m.end:]
        m.asserted = bool(_LEAD_IN_BEFORE.search(before) or _CHOSEN_AFTER.search(after))
        left, right = _stretch(answer, m.start, m.end)
        m.negated = bool(_NOT_BEFORE.search(answer, left, m.start) or _NOT_AFTER.search(answer, m.end, right))
    return mentions


def _hedged(answer: str, chosen: Mention, mentions: list[Mention]) -> bool:
    """Does the answer statement name a second option as an alternative ("the answer is A or C")?"""
    return any(m.letter != chosen.letter and m.start >= chosen.end and _HEDGE_AFTER.match(answer[chosen.end:m.start])
               for m in mentions)


def extract_choice(output: str, options: dict, similarity: bool = False) -> tuple[str | None, str]:
    """(letter, rule): "answer_is" for an answer statement, otherwise the kind of the only option named
    ("marked_letter", "standalone_letter", "option_text"); (None, "unfinished") without </think>; (None,
    "unreadable") for no option or a hedge, or (letter, "similarity") when `similarity` is asked for."""
    import difflib

    _, answer, finished = split_thinking(output)
    if not finished:
        return None, "unfinished"
    mentions = find_mentions(answer, options)
    chosen = [m for m in mentions if m.asserted and not m.negated]
    if chosen:
        last = chosen[-1]
        if _hedged(answer, last, mentions):
            return None, "unreadable"
        return last.letter, "answer_is"
    live = [m for m in mentions if not m.negated]
    if len({m.letter for m in live}) == 1:
        return live[0].letter, live[0].kind
    if similarity and answer and not live:
        lowered = answer.lower()
        best = max(options, key=lambda k: difflib.SequenceMatcher(None, lowered, options[k].lower()).ratio())
        return best, "similarity"
    return None, "unreadable"
