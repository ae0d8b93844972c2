"""The answer a clinician would read: which option an R1-style output commits to, after its last </think>.

Read the way answers are written, not from a list of phrasings:
1. Commitments first. An answer commits with a statement: a lead-in before the option ("the answer is", "Answer —",
   "going with", "the most likely diagnosis is", "the one that is not a feature ... is", 本题选, 答案：), a verdict
   after it ("C is correct", "C项正确"), `\\boxed{C}`, a ✅, or a line that holds only the option ("**C**",
   "C. Nephrolithiasis", under a "Final Answer" heading). The last commitment that stands wins ("the answer is C.
   Wait, actually D" is D). One stands unless its own sentence takes it back or makes it hypothetical ("a common
   incorrect answer is C", "for a child the answer would be A", "C seems right at first glance") or negates it
   ("the answer is not C"); one that names two options ("Answer: B and D", "A or C") or hangs on a condition
   ("if pregnant, A; otherwise B") is no answer.
2. Options are found by syntax, not by character. A letter is an option where letters refer to options: in
   brackets, in bold, after "option" or a lead-in, before a verb ("C is", "B and D"), at the end of a clause; not
   inside names ("E. coli", "D-dimer", "B cells", "vitamin B", "Lp(a)", "CHA2DS2-VASc") nor as the article that opens
   a sentence ("A 74-year-old man"). Full-width letters and brackets are read as ASCII (NFKC).
3. Option text only as whole tokens in its own sense: the longest of texts that share words ("overt
   hypothyroidism"), a number as a quantity of its own (not "1 mg" in "1 mg/mL", nor "15" inside a sum), and
   function-word options ("yes", "no", "none") only as a whole statement ("No." but not "no difference").
4. Without a commitment, the only option named and not dismissed (not, ruled out, contraindicated, has no role,
   would worsen, ❌, 排除, ...) is the answer; two live options are a hedge: unreadable, never guessed.
5. Layout first (medical_r1.answer_layout): a degenerate tail after a stated answer (the options listed again, a
   restarted "Reasoning:", an echoed prompt, code, an invented question) is cut off; an answer whose first line
   states the option answers with it unless what follows says it changes it ("wait", "actually").
6. Never a wrong letter where a careful grader would hesitate: "the answer is not B" (B excluded), "none of the
   above", a letter beyond the options, "cannot be determined", or a later stated answer that disagrees: the rules
   abstain (rule "abstained", the reason a key of ABSTENTIONS) unless a commitment follows; 04's model reader decides.
An output still thinking when its tokens ran out is "unfinished". `similarity` (opt-in) reads an answer naming no
option as its most similar option, reported apart.
"""
from __future__ import annotations

import difflib
import re
import unicodedata

from medical_r1.abstentions import not_an_option, undetermined
from medical_r1.answer_layout import answer_first, answer_lines, cut_tail, two_answers
from medical_r1.option_mentions import Mention, exclusion_groups, paraphrased_option, quantity_spans
from src_helpers import split_thinking

# Why the rules give no letter where a careful grader would hesitate (rule "abstained"): 04's model reader decides.
ABSTENTIONS = {
    "not_an_option": "the answer says the right option is none of those given, or states a letter beyond them",
    "only_excluded": "the answer says which option it is not and names no other",
    "undetermined": "the answer says it cannot choose, or withdraws the pick it was pushed to",
    "disagreeing": "the answer states one option first and another later without saying it changed its mind"}

_I = re.IGNORECASE
# What may stand between a lead-in and the option: markup, punctuation, "option", \boxed{, quotes.
_SKIP = r"(?:[\s*_#:=>(\[{$`'\"“”‘’✅✔☑]|[-—–]|\\boxed|\\text(?:bf)?|\boption\b|\bchoice\b|\bletter\b|选项)*"
# Statements after which the next option is the one chosen (English, then Chinese). "answer ... is" may hold a
# few words between ("The answer, therefore, is C"); a short filler after it ("is probably C") is checked apart.
_LEAD_IN = re.compile(
    r"(?:\b(?:final\s+|correct\s+|right\s+|best\s+|my\s+|the\s+)?(?:answer|ans\.?)(?:\b[^.;!?\n]{0,40}?\b(?:is|would be"
    r"|should be|must be|will be|remains))?"
    r"|\b(?:correct|right|best|final|most\s+(?:likely|appropriate|probable|accurate|suitable|consistent))\s+(?:option"
    r"|choice|response|selection|diagnosis|treatment|management|step|drug|explanation|cause|mechanism|test|finding"
    r"|investigation|intervention|therapy|agent|medication)\b(?:[^.;!?\n]{0,40}?\b(?:is|are|would be|=))?"
    r"|\b(?:most\s+(?:likely|probable|appropriate|consistent\s+with)|best\s+(?:treated|managed|explained)\s+(?:with|by)"
    r"|(?:the\s+)?(?:diagnosis|treatment of choice|drug of choice|next step)\s+(?:is|would be|:))"
    r"|\bthe\s+(?:[\w-]+\s+){0,2}?(?:one|option|choice|exception|odd one out|statement|item|finding|feature|drug|test"
    r"|answer|diagnosis|cause|step|sign|symptom|agent|treatment|therapy|management|regimen|vasopressor|investigation"
    r"|intervention|mechanism|medication|organism|antibiotic)\b[^.;!?\n]{0,80}?\b(?:is|would be|remains)"
    r"|\b(?:recommend(?:s|ed)?|treat(?:ed)?\s+with|start(?:ing)?|initiate|give|administer)\b"
    r"|\b(?:so|thus|hence|therefore|i\.e\.),?|[✅✔☑]|→|=>"
    r"|\b(?:i(?:'ll|'d| would| will)?|we(?:'ll|'d)?)\s+(?:say|answer|lean\s+(?:towards?|to))\b|\bmy\s+(?:pick|vote"
    r"|bet)\b"
    r"|\b(?:points?|pointing)\s+(?:to(?:wards)?|at)|\b(?:suggests?|indicates?|favou?rs?|confirms?|establish(?:es)?)\b"
    r"|\bconsistent\s+with"
    r"|\b(?:go(?:ing)?|went|stick(?:ing)?|settle[ds]?|settling)\s+(?:with|on|for)"
    r"|\b(?:choose|chose|choosing|pick|picked|picking|select|selected|selecting|opt(?:ing)?\s+for)"
    r"|\b(?:leaves|leaving|left\s+with)(?:\s+us)?(?:\s+with)?|\bso\s+it(?:'s|\s+is)|\bit\s+(?:must|has to|should)\s+be"
    r"|\bactually\b,?(?:\s+it(?:'s|\s+is))?|\b(?:or|no),?\s+rather\b,?"
    r"|(?:本题|故|所以|因此|最终|我|应|当|则|宜|可)?(?:选择?|答案)(?:项)?(?:应该|应|当)?(?:是|为|选)?|答|应为|而是|当选"
    r"|答案(?:不是|并非|不选)|正确(?:答案|选项|的是|的选项)(?:是|为|应为)?"
    r"|最(?:佳|合适|恰当|可能|准确)的?(?:选择|选项|答案|诊断|治疗)?(?:是|为)"
    r"|诊断(?:为|是|考虑)|考虑(?:为|是))", _I)
_LEAD_IN_BEFORE = re.compile(rf"(?P<lead>{_LEAD_IN.pattern}){_SKIP}((?:[\w'-]{{2,}}\s+){{0,3}}?){_SKIP}$", _I)
# Only a heading's lead-in reaches the next line ("**Final Answer**" over "C"); "✔" or "so" does not.
_HEADING = re.compile(r"answer|ans\b|答案|答|选|choice|option|diagnosis|conclusion|verdict|recommendation", _I)
_CHOSEN_AFTER = re.compile(
    r"^[\s*)\]}'\"’”]*(?:[.:)\-—–]\s*[^.;!?\n]{0,60}?\s)?(?:is|was|would be|seems|appears|remains|looks"
    r"|fits)\s+(?:to be\s+)?"
    r"(?:clearly\s+|therefore\s+|thus\s+|indeed\s+|also\s+|by far\s+)?(?:the\s+)?(?:correct|right|best|most likely|most"
    r" appropriate|most consistent|answer|better|preferred|true|one|appropriate|first[- ]line|recommended|treatment of"
    r" choice|drug of choice|indicated|diagnosis|likeliest|next step|(?:immediate|initial|first) step)\b"
    r"|^[\s*)\]}]*(?:is|are|does)\s*(?:[.!]|$)"
    r"|^[\s*)\]}]*(?:is|would be)\s+(?:the\s+)?safest\b"
    r"|^[^\n✅✔☑❌✗✘]{0,60}?[✅✔☑]|^[\s*)\]}]*(?:项|选项)?(?:是|为|最)?"
    r"(?:正确|最合适|最佳|最恰当|符合题意|当选)", _I)
_BOXED = re.compile(r"\\boxed\{\s*(?:\\text(?:bf)?\{)?\s*$")
# A mention taken back in its own clause ("A is tempting", "C seems right at first glance"), or a statement named as
# the wrong one just before it ("a common incorrect answer is C").
_RETRACTED = re.compile(
    r"\b(?:at first(?:\s+(?:glance|sight))?|initially|tempting|might\s+(?:think|choose|pick|be tempted)|may\s+seem"
    r"|one might|some(?:one)?\s+(?:might|would|may)|would have been|a distractor|a trap|misleading)\b|常见错误|容易误选", _I)
_TAKEN_BACK = re.compile(r"\b(?:no,?\s+wait|wait,?\s+no|scratch that|on second thought|actually,?\s+no)\b|不对", _I)
# A later dismissal strong enough to take back an earlier choice of the same option.
_STRONG_NOT = re.compile(r"contraindicat\w*|\b(?:wrong|incorrect|ruled out|excluded|eliminated|not (?:the )?(?:answer"
                         r"|correct|right))\b|不对|错误|排除|禁忌", _I)
_WRONG_STATEMENT = re.compile(r"\b(?:incorrect|wrong|mistaken|tempting|trap|distractor|common|popular|naive|obvious"
                              r"|tempted)\s+(?:[\w-]+\s+)?$", _I)
# A commitment that hangs on a condition: "if pregnant, A; otherwise B", "D would be right only for ...".
_CONDITION = re.compile(r"\b(?:unless|otherwise|only\s+(?:if|when|for|in)|depend(?:s|ing)\s+on)\b"
                        r"|\bif\s+(?!we\b|you\b|one\b|i\b|all\b"
                        r"|everything\b|this\b)|\bnot\s+(?:here|in\s+this\s+(?:patient|case))\b|如果|若|否则"
                        r"|^\W*but\s+(?:this|the|our)\s+patient\s+(?:has\s+neither|has\s+no|does\s+not|doesn't)", _I)
_HYPOTHETICAL = re.compile(r"\b(?:for|in)\s+an?\s+\w+|\bwere\b", _I)  # with "would be": "for a child ... would be A"
_MODAL = re.compile(r"\b(?:would|could|might)\s+be\b", _I)
_SENTENCE_END = re.compile(r"[.!?。！？](?=\s|$)|[\n;；]|[,，](?=\s*(?:故|所以|因此))|\b(?:but|however|whereas)\b|但是?",
                           _I)
# Dismissals: a cue before the option, or a verdict after it, within its clause.
_NOT_BEFORE = re.compile(
    r"\b(?:not|isn't|aren't|wasn't|never|cannot be|can't be|rather than|instead of|rules? out|ruled out|ruling out"
    r"|excludes?|excluded|excluding|eliminates?|eliminated|eliminating|unlike|against|avoid|no (?:role|need|place)"
    r"\s+for|contraindicat\w*|despite|in spite of|already (?:on|taking|receiving|given)|failed|neither)\b"
    r"|(?<![A-J]\s)(?<![A-J])[❌✗✘](?=[\s*(\[]*$)|不是|并非|而非|排除"
    r"|不选|除了|不能选|不应选", _I)
_NOT_ADJACENT = re.compile(r"\b(?:than|over|vs\.?|versus)\s+(?:the\s+|an?\s+)?$", _I)
_NOT_AFTER = re.compile(
    r"\b(?:is|are|was|were|seems|appears|would be|remains)\s+(?:also\s+)?(?:not|wrong|incorrect|unlikely|less likely"
    r"|ruled out|excluded|eliminated|false|contraindicated|inappropriate|irrelevant|unnecessary|harmful"
    r"|dangerous)\b|\b(?:isn't|aren't|wasn't|wrong|incorrect|unlikely|less likely|contraindicated|(?:has|have"
    r"|plays?) no"
    r" (?:role|place|indication)|would (?:worsen|harm|be harmful|risk|mask"
    r"|leave|precipitate)|worsens|(?:does|do)(?:n't| not) (?:fit|explain|match"
    r"|account|cause)|fails? to|cannot explain|can't explain|not indicated|inappropriate|irrelevant|a distractor"
    r"|a trap|can be (?:ruled out|excluded|eliminated))\b|[❌✗✘]|不对|错误|不正确|可以排除|被排除|不符合|不成立|不能|不会"
    r"|无关|禁用|禁忌|不宜|不适合|不是", _I)
# A dismissal right after the option ("here is wrong"), not one in a later clause.
_VERDICT_START = re.compile(rf"(?:[\w'-]+\s+){{0,2}}?(?:{_NOT_AFTER.pattern})", _I)
_DOUBLE_NEGATIVE = re.compile(r"\b(?:not|n't|cannot|never|no)\s+(?:\w+\s+)?$", _I)
_STRETCH_END = re.compile(r"[.;:!?。；！？\n,，—]|\s-\s|\b(?:but|so|therefore|thus|hence|because|since|leaves|leaving"
                          r"|instead|whereas|while|then|which)\b|所以|因此|故|而是|应为|但", _I)
_LETTER = re.compile(r"(?<![A-Za-z0-9])([A-Za-z])(?![A-Za-z0-9])")
# A capital that belongs to a name, not an option: "vitamin D", "hepatitis B", "type I".
_NAME_BEFORE = re.compile(r"\b(?:vitamin|hepatitis|type|class|grade|stage|phase|factor|group|complex|category"
                          r"|schedule|lead|zone|cluster|level|protein|cell|mode|wave|point|vessel|plan|step|part|lp)"
                          r"\s*\(?$", _I)
# Words after a letter that make it an option ("C is", "B and D"); any other word makes it a name or an article.
_FOLLOWERS = {"is", "was", "would", "could", "can", "seems", "appears", "fits", "remains", "and", "or", "nor", "are",
              "might", "may", "must", "should", "cannot", "isn't", "wasn't", "also", "alone", "too", "only", "looks",
              "best", "matches", "explains", "makes", "describes", "correctly", "here", "instead", "then", "has",
              "does", "doesn't", "will", "won't", "wins", "stands", "as", "because", "since", "over", "rather", "fit",
              "match",
              "explain", "seem", "appear", "look", "remain", "were", "be", "both", "together", "the"}
_FUNCTION_WORDS = {"yes", "no", "maybe", "none", "all", "both", "neither", "true", "false", "either"}
_COMPARING = re.compile(r"\b(?:similar|like|unlike|than|different|versus|vs|compared|resembles?)\b", _I)
# After the pronoun "I" only these make it option I ("I is better", "H and I"), not "I would", "I can".
_I_FOLLOWERS = {"is", "and", "or", "nor", "fits", "seems", "appears", "remains", "wins", "matches"}
# A number option stands as an answer after a copula, "=", a colon or at the start, not as one value among others.
_NUMBER_SLOT = re.compile(r"(?:^|[=:~]|\b(?:is|are|be|of|at|to|was|were|now|gives?|equals?|about|approximately"
                          r"|roughly|totals?|total\s+of|sums?\s+to|adds\s+up\s+to|comes\s+to))\s*$", _I)
_ROUTE = re.compile(r"^(?:intravenous|iv|oral|inhaled|nebuli[sz]ed|intramuscular|im|subcutaneous|topical|high-intensity"
                    r"|low-dose|high-dose)\s+", _I)
_CJK = re.compile(r"[\u3400-\u9fff]")
_NUMBER = re.compile(r"^[\d.,]+")


def normalise(text: str) -> str:
    """Full-width letters, brackets and colons as ASCII (NFKC), so "答案：Ｂ" reads as "答案:B"."""
    return unicodedata.normalize("NFKC", text)


def _lead_in(text: str, start: int):
    """The lead-in match that ends just before `start` (with its filler words), or None. A filler that compares
    ("the mechanism is similar to B") makes no commitment."""
    lead = _LEAD_IN_BEFORE.search(text[max(0, start - 160):start])
    if lead and "\n" in lead.group()[lead.end("lead") - lead.start():] and not _HEADING.search(lead.group("lead")):
        return None
    return None if lead and _COMPARING.search(lead.group(2)) else lead


def _letter_mentions(text: str, options: dict) -> list[Mention]:
    found = []
    for m in _LETTER.finditer(text):
        raw, letter = m.group(1), m.group(1).upper()
        if letter not in options:
            continue
        before, after = text[max(0, m.start() - 40):m.start()], text[m.end():m.end() + 40]
        if re.match(r"[-–]\w|['’]\w"
                    r"|\.\s*[a-z]", after) or re.search(r"\w[-–'’]$|[°º]$", before) or \
                _NAME_BEFORE.search(before):
            continue  # D-dimer, I'd, E. coli, anti-B, vitamin B, Lp(a), 38.1°C
        if re.match(r"\s*(?:through|to|[-–])\s*[A-J]\b", after) or \
                re.search(r"\b[A-J]\s*(?:through|to|[-–])\s*$", before):
            continue  # "among A through D": the range of the options, not one of them
        bracketed = re.search(r"(?:^|[^\w])[(\[]\s*$", before) and re.match(r"\s*[)\]]", after)
        bold = re.search(r"\*\*\s*$", before) and re.match(r"\s*(?:\*\*|[.:)])", after)
        marked = bool(bracketed or bold or re.search(r"(?:\boption|\bchoice|选项|选)\s*$", before, _I)
                      or _BOXED.search(before) or _lead_in(text, m.start()))
        word = re.match(r"\s+([\w']+)", after)
        follower = bool(word and word.group(1).lower() in _FOLLOWERS)
        verdict = bool(_CHOSEN_AFTER.match(after) or _NOT_AFTER.match(after.lstrip(" )]*.:")))
        line = text[text.rfind("\n", 0, m.start()) + 1:]
        line = line[:line.find("\n")] if "\n" in line else line
        alone = re.fullmatch(r"[\s>*_#\-•]*[(\[]?\s*\w\s*[)\]]?[\s*_.]*", line) is not None
        if raw.islower():
            if not (marked or alone or _CHOSEN_AFTER.match(after) or (re.match(r"\s*[).]", after) and verdict)):
                continue
            if raw in "ai" and word and not follower and not bracketed:
                continue  # "the answer is a fracture", "i think"
        elif not marked:
            if letter == "I" and not (alone or (word and word.group(1).lower() in _I_FOLLOWERS)):
                continue  # the pronoun
            if word and not follower:
                continue  # "A 74-year-old man", "B cells", "A CT scan"
        kind = "marked_letter" if bracketed or bold else "standalone_letter"
        found.append(Mention(letter, m.start(), m.end(), kind))
    return found


def _sense(text: str, m: re.Match, option: str) -> bool:
    """Is this match of an option's text used in the option's own sense?"""
    before, after = text[:m.start()], text[m.end():]
    if _NUMBER.match(option):  # a quantity of its own: not inside a sum, a ratio or a longer number
        if not (_NUMBER_SLOT.search(before) or _lead_in(text, m.start())) or re.search(r"[\d.,]$", before):
            return False
        return not re.match(r"\s*[-+×*/÷)]\s*\d|/|[.,]\d", after)
    if option.lower() in _FUNCTION_WORDS:  # "No." or "the answer is no", not "no difference"
        return bool(re.match(r"\s*(?:[.,;:!?)*—–]|$)", after) or _lead_in(text, m.start()))
    return True


def _text_mentions(text: str, options: dict) -> list[Mention]:
    spans = []
    forms = []
    for letter, option in options.items():
        option = normalise(option).strip()
        forms.append((letter, option))
        short = _ROUTE.sub("", option)  # "Intravenous alteplase" is also written "IV alteplase" or "alteplase"
        if short != option and len(short) >= 5 and short.lower() not in {o.lower() for o in options.values()}:
            forms.append((letter, short))
    for letter, option in forms:
        if not option or re.fullmatch(r"[a-jA-J]{1,4}", option):
            continue  # "a", "bd": options that are codes for lettered statements, read only as letters
        cjk = _CJK.search(option)
        pattern = re.escape(option) if cjk else r"(?<![\w])" + re.escape(option) + r"(?![\w])"
        for m in re.finditer(pattern, text, _I):
            if cjk and len(option) == 1 and not _lead_in(text, m.start()):
                continue  # one Chinese character (是, 否) is part of too many words to count on its own
            if not cjk and not _sense(text, m, option):
                continue
            spans.append(Mention(letter, m.start(), m.end(), "option_text"))
    # "Overt hypothyroidism" also contains "hypothyroidism": keep the longest text at each place.
    return [s for s in spans if not any(o is not s and o.start <= s.start and s.end <= o.end and
                                        o.end - o.start > s.end - s.start for o in spans)]


def _stretch(text: str, start: int, end: int) -> tuple[int, int]:
    """The clause around [start, end) that a dismissal can reach."""
    left = max((m.end() for m in _STRETCH_END.finditer(text, 0, start)), default=0)
    right = next((m.start() for m in _STRETCH_END.finditer(text, end)), len(text))
    return left, right


def _sentence(text: str, start: int, end: int) -> tuple[str, str]:
    """The text of the statement's own sentence (up to a semicolon or a "but") before it and after it."""
    left = max((m.end() for m in _SENTENCE_END.finditer(text, 0, start + 3) if m.end() <= start), default=0)
    right = next((m.start() for m in _SENTENCE_END.finditer(text, end)), len(text))
    return text[left:start], text[end:right]


def _own_text_end(text: str, m: Mention, options: dict) -> int:
    """Where the words about a mention begin: after its markup and, for a letter, its option's text (for a text,
    its letter in brackets: "heparin (B) does not fit")."""
    own_letter = rf"(?:[(\[](?i:{m.letter})[)\]])?" if m.kind == "option_text" else ""
    rest = re.match(r"[\s*)\]}.:'\"’”]*" + own_letter, text[m.end:])
    end = m.end + rest.end()
    own = normalise(options[m.letter]).strip()
    if m.kind != "option_text" and own and text[end:end + len(own)].lower() == own.lower():
        end += len(own) + re.match(r"[\s*)\]}.:]*", text[end + len(own):]).end()
    return end + re.match(r"[\s\-—–:]*", text[end:]).end()


def _negated(text: str, m: Mention, after: int) -> bool:
    """Dismissed in its clause: a cue before the mention, or a verdict right after `after`, where its own text ends."""
    left, _ = _stretch(text, m.start, m.end)
    for cue in _NOT_BEFORE.finditer(text, left, m.start):
        if not _DOUBLE_NEGATIVE.search(text[max(0, cue.start() - 30):cue.start()]):
            return True  # "doesn't exclude B" is no dismissal of B
    if _NOT_ADJACENT.search(text[left:m.start]):
        return True
    _, right = _stretch(text, after, after)
    return bool(_VERDICT_START.match(text[after:max(right, after)]))


def find_mentions(answer: str, options: dict) -> list[Mention]:
    """Every option the answer names (letters, then text), each marked asserted, conditional, negated or retracted."""
    return _mentions(normalise(answer), options)


def _mentions(text: str, options: dict) -> list[Mention]:
    """find_mentions on text already normalised."""
    texts = _text_mentions(text, options) + [Mention(*span, "option_text") for span in quantity_spans(text, options)]
    letters = [m for m in _letter_mentions(text, options)  # "Both A and B" as an option's own text names no letter
               if not any(t.start <= m.start < t.end and t.letter != m.letter for t in texts)]
    mentions = sorted(letters + texts, key=lambda m: m.start)
    lines = answer_lines(text, options)
    listing = len(set(lines.values())) > 1  # options listed one per line, not an answer
    for m in mentions:
        lead = _lead_in(text, m.start)
        lead_start = m.start - len(text[max(0, m.start - 160):m.start]) + lead.start() if lead else m.start
        chosen_after = _CHOSEN_AFTER.match(text[m.end:m.end + 120])
        line_start = text.rfind("\n", 0, m.start) + 1
        # "...: all of the above." A colon or dash that ends with the option and its sentence states a conclusion.
        own_end = _own_text_end(text, m, options)
        after_own_text = text[own_end:]
        concluded = re.search(r"(?:[:—–]|->)\s*$", text[:m.start]) and re.match(r"[\s*)\]]*(?:[.!]|$)", after_own_text)
        m.stated = bool(lead or chosen_after)
        m.asserted = m.stated or bool(concluded or (not listing and lines.get(line_start) == m.letter))
        # In "the answer is not A but C" the filler's negation is A's; only what follows its last "but" is C's.
        filler = re.split(r"\b(?:but|rather|instead)\b", lead.group(2), flags=_I)[-1] if lead else ""
        m.negated = bool(re.search(r"\b(?:not|never|than|no)\b", filler, _I) or (lead and "不" in lead.group("lead"))
                         or re.search(r"(?:不|非|别|勿)\w?$|\b(?:not|never|n't|avoid|no)\s+(?:\w+\s+)?$", text[:lead_start])
                         or (not lead and _negated(text, m, own_end))
                         or (lead and _VERDICT_START.match(after_own_text[:40])))
        left, right = _stretch(text, m.start, m.end)
        m.dismissed = bool(m.negated and _STRONG_NOT.search(text, left, max(right, m.end)))
        before, after = _sentence(text, lead_start, m.end)
        said = text[lead_start:m.end] + (chosen_after.group() if chosen_after else "")
        next_clause = text[m.end + len(after):]  # "C is right in diabetes, but this patient has neither"
        m.conditional = bool(_CONDITION.search(before + said + after) or _CONDITION.match(next_clause) or (
            m.asserted and _MODAL.search(before + said + after) and _HYPOTHETICAL.search(before + after)))
        m.retracted = bool(_RETRACTED.search(text, left, right) or (lead and _WRONG_STATEMENT.search(text[:lead_start]))
                           or (m.asserted and _TAKEN_BACK.search(after)))
    for group, dismissed_after in exclusion_groups(text, [m for m in mentions if m.kind != "option_text"]):
        if dismissed_after or group[0].negated:  # "Not A, C or D", "A, C and D are wrong": the list's dismissal
            for m in group:
                m.negated = True
    return mentions


def _read(text: str, options: dict) -> tuple[str | None, str, int]:
    """(letter, rule, where its commitment starts; -1 for the only live option) from the rules on normalised text;
    (None, "unreadable" or "only_excluded", -1) for none."""
    mentions = _mentions(text, options)
    # "The answer is not B": B is excluded, whatever else names it, unless a later statement chooses it.
    excluded = {m.letter for m in mentions if m.stated and m.negated}
    # Second thoughts: an option dismissed outright after it was chosen is no longer chosen.
    standing = [m for i, m in enumerate(mentions) if not any(
        later.dismissed and later.letter == m.letter for later in mentions[i + 1:]) and not (
        m.letter in excluded and not (m.stated and not m.negated))]
    committed = [m for m in standing if m.asserted and not (m.negated or m.retracted or m.conditional)]
    if committed:
        last = committed[-1]
        for m in reversed(committed[:-1]):  # "**B. Acute pyelonephritis**": the letter, then its own text
            if m.letter == last.letter and re.fullmatch(r"[\s*.:)\]—–-]*", text[m.end:last.start]):
                last = m
        if two_answers(text, last, mentions):
            return None, "unreadable", -1
        return last.letter, "answer_is" if last.stated else last.kind, last.start
    live = [m for m in standing if not (m.negated or m.retracted or m.conditional)]
    if len({m.letter for m in live}) == 1:
        return live[-1].letter, live[-1].kind, -1
    if not mentions and paraphrased_option(text, options):
        return paraphrased_option(text, options), "option_text", -1
    return None, "only_excluded" if excluded and not live else "unreadable", -1


def read_answer(output: str, options: dict, similarity: bool = False) -> tuple[str | None, str, str]:
    """(letter, rule, why): extract_choice's reading, with rule "abstained" and `why` a key of ABSTENTIONS where
    the rules find doubt a careful grader would not settle by guessing."""
    _, answer, finished = split_thinking(output)
    if not finished:
        return None, "unfinished", ""
    text = cut_tail(normalise(answer), lambda line: _read(line, options)[0])
    first, disagreed = answer_first(text, lambda line: _read(line, options)[0], lambda rest: next(
        (letter for letter, rule, _ in [_read(rest, options)] if rule == "answer_is"), None))
    if disagreed:
        return None, "abstained", "disagreeing"
    letter, rule, at = _read(first, options) if first else _read(text, options)
    at = 0 if first else at
    doubt = [(where, why) for where, why in ((not_an_option(text, options), "not_an_option"),
                                             (undetermined(text), "undetermined")) if where is not None and where > at]
    if doubt or rule == "only_excluded":
        return None, "abstained", min(doubt)[1] if doubt else rule
    if letter is None and similarity and answer and not [
            m for m in _mentions(text, options) if not (m.negated or m.retracted or m.conditional)]:
        lowered = answer.lower()
        best = max(options, key=lambda k: difflib.SequenceMatcher(None, lowered, options[k].lower()).ratio())
        return best, "similarity", ""
    return letter, rule, ""


def extract_choice(output: str, options: dict, similarity: bool = False) -> tuple[str | None, str]:
    """(letter, rule): "answer_is" for a committed statement, otherwise the kind of the only option named or of
    its answer line ("marked_letter", "standalone_letter", "option_text"); (None, "unfinished") without </think>;
    (None, "abstained") where an answer withdraws, contradicts or rules out its pick, or says the answer is no
    option (read_answer says which); (None, "unreadable") for no option, two answers or a hedge, or (letter,
    "similarity") when asked for."""
    return read_answer(output, options, similarity)[:2]
