"""Where an answer begins and ends: the layouts a reader takes in before reading a word of it.

- A degenerate tail after a clear answer is no second answer. Small fine-tuned models state an answer and then
  loop: they list the options again, restart a "Reasoning:" that walks through every option, echo the prompt or a
  chat template's tokens, write a loop of code, or invent a new question with its own A-D and answer it. The answer
  is the one stated before the tail starts; the tail is cut off (`cut_tail`).
- Answer first: an answer whose first line states the option ("Final answer: **B**", "\\boxed{B}", "答案：B",
  "**B. Metoprolol**") and then explains itself ("A is ... C is the answer in nephropathy, not here") answers with its
  first line. What follows can only change it by saying so ("wait", "actually", "on reflection"); a later stated
  answer of another option without that is a disagreement the rules do not settle (`answer_first`).
"""
from __future__ import annotations

import re
import unicodedata

_I = re.IGNORECASE
# A line that states an answer under a heading of its own: "Final answer:", "**Answer: C**", "The answer is C",
# "\\boxed{C}", "答案：C", a JSON "answer" field; and, first in an answer, a line that opens with the option.
_TWO_ANSWERS = re.compile(r"^[\s*)\]}'\"’”.]*(?:,|/|&|\+|\band\b|\bor\b|and/or|或者?|和|与|、|及)\s*(?:option\s*)?"
                          r"[\s(\[*'\"]*$", _I)
_HEADED = re.compile(
    r"^[\s>*_#\-•{\"']*(?:(?:my\s+|the\s+)?(?:final\s+|correct\s+|best\s+)?(?:answer|ans)(?:_choice)?\b|\\boxed"
    r"|(?:最终|正确)?答案|本题选|故选)", _I)
_OPENS_WITH_OPTION = re.compile(r"^[\s>*_#\-•]*[(\[]?\s*[A-J]\s*(?:[)\]]|[*_.:\-—–]|$)")  # not "A 5-year-old"
# What starts a degenerate tail: the options listed again (on their own lines, or several on one), a restarted
# walk through the options, a chat template's tokens or a second </think>, a new question, code.
_OPTION_LINE = re.compile(r"^[\s>*_#\-•]*(?:option\s+)?[(\[]?([A-J])[.):\]]\s*\S", _I | re.M)
_OPTIONS_ON_ONE_LINE = re.compile(r"(?<![A-Za-z])[A-J][.)]\s+\S[^\n]*?\s(?<![A-Za-z])[A-J][.)]\s+\S", re.M)
_TAIL_START = re.compile(
    r"<\|[a-z_]+\|>|<｜|</s>|\[/?INST\]|</?think>"
    r"|^[\s*#]*(?:question\b|q\d*\s*[:.]|problem\s*\d|问题|题目|下一题)"
    r"|^[\s*#]*\d*[.)]?\s*an?\s+\d+[- ](?:year|month|week|day)[- ]old\b|^\s*(?:```|def |for \w+ in |print\(|import )"
    r"|^[\s>*_#]*(?:reasoning|explanation|rationale|justification|discussion|analysis|why not the others|other options"
    r"|let'?s (?:go through|analy[sz]e|evaluate|look at) (?:each|the) options?|解析|理由|分析)\b", _I | re.M)
# What a later passage says when it changes the answer first stated.
REVISION = re.compile(r"\b(?:wait|actually|on (?:second thought|reflection)|correction|scratch that|i was wrong"
                      r"|reconsider\w*|chang\w+ (?:my|the) answer|re-?read\w*|hmm+|no,)"
                      r"|不对|更正|修正|改为|重新考虑|再想", _I)


def _first_tail(text: str, after: int) -> int | None:
    """Where, after `after`, the first degenerate tail starts; None when the answer does not degenerate."""
    starts = [m.start() for m in _TAIL_START.finditer(text, after)]
    starts += [m.start() for m in _OPTIONS_ON_ONE_LINE.finditer(text, after)]
    lines = list(_OPTION_LINE.finditer(text, after))
    starts += [a.start() for a, b in zip(lines, lines[1:]) if a.group(1).upper() != b.group(1).upper()
               and text.count("\n", a.end(), b.start()) <= 2]
    return min(starts, default=None)


def headed_lines(text: str):
    """(start, end) of each line that states an answer under a heading of its own."""
    for line in re.finditer(r"[^\n]+", text):
        if _HEADED.match(line.group()):
            yield line.start(), line.end()


def cut_tail(text: str, read_line) -> str:
    """The answer without the degenerate tail after its first stated answer (or a first line holding only its
    letter). `read_line(line)` is the letter the rules read in one line, or None."""
    first = re.search(r"[^\n]*\S[^\n]*", text)  # a first line holding only the letter ("B", "**(B)**")
    lone = first and re.fullmatch(r"[\s>*_#\-•]*[(\[]?\s*[A-J]\s*[)\]]?[\s*_.!]*", first.group())
    opening = [(first.start(), first.end())] if lone else []
    for start, end in opening + list(headed_lines(text)):
        if read_line(text[start:end]) is None:
            continue
        tail = _first_tail(text, end)
        return text if tail is None else text[:tail].rstrip()
    return text


def answer_first(text: str, read_line, read_stated) -> tuple[str | None, bool]:
    """(first line, disagreed) for an answer whose first line states its option: the line when nothing after it
    says it changes the answer, and `disagreed` when a later stated answer names another option without saying so
    (`read_stated(text)`: the letter of the answer the rules read in `text` if it is stated in words, else None).
    (None, False) for any other layout."""
    lines = [(m.start(), m.end()) for m in re.finditer(r"[^\n]*\S[^\n]*", text)]
    first = text[lines[0][0]:lines[0][1]] if lines else ""
    if not (_HEADED.match(first) or _OPENS_WITH_OPTION.match(first)):
        return None, False
    letter = read_line(first)
    if letter is None or REVISION.search(first):
        return None, False
    rest = text[lines[0][1]:]
    if re.match(r"\s*(?:[-*•]\s*)?(?:option\s+)?[(\[]?[A-J](?:[.):\]]\s*\S|[)\]*\s]*$)", rest, _I | re.M):
        return None, False  # the first line opens a list of the options, not an answer
    if REVISION.search(rest):
        return None, False
    later = ({read_line(rest[s:e]) for s, e in headed_lines(rest)} | {read_stated(rest)}) - {None, letter}
    return first, bool(later)


def answer_lines(text: str, options: dict) -> dict[int, str]:
    """Lines that hold only an option ("**C**", "(c)", "C. Nephrolithiasis"), by their start: the letter each names."""
    lines = {}
    for line in re.finditer(r"[^\n]+", text):
        m = re.fullmatch(r"[\s>*_#\-•✅✔$]*(?:\\boxed\{)?[(\[]?\s*([A-Ja-j])\s*[)\]}]?\$?[\s*_]*(?:[.:)\-—–]\s*(.*?))?"
                         r"[\s*_.!$]*", line.group())
        if m and m.group(1).upper() in options:
            rest = (m.group(2) or "").strip(" *_.")
            own = unicodedata.normalize("NFKC", options[m.group(1).upper()]).strip()
            if not rest or rest.lower() == own.lower():
                lines[line.start()] = m.group(1).upper()
    return lines


def two_answers(text: str, chosen, mentions: list) -> bool:
    """Does the committed statement name a second option beside it ("Answer: B and D", "A or C")?"""
    earlier = [m for m in mentions if m.end <= chosen.start and m.letter != chosen.letter]
    if earlier and not earlier[-1].negated and _TWO_ANSWERS.match(text[earlier[-1].end:chosen.start]):
        return True  # "could be A or C": the statement's first option is the second answer
    later = [m for m in mentions if m.start >= chosen.end]
    end = chosen.end
    for m in later:
        if m.letter == chosen.letter:
            end = m.end
            continue
        return not m.negated and _TWO_ANSWERS.match(text[end:m.start]) is not None
    return False
