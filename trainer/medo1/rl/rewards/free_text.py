"""Strict matching of a free-text final answer against a reference (the free-text half of `reward.kind: answer_match`).

A policy trained against a lenient match learns to collect the reward without committing to an answer: "Not
metformin.", "Metformin is contraindicated here; give insulin.", "metformin and insulin", "Possibly metformin"
all contain "metformin". `answer_verdict` accepts only one stated answer:

1. The answer sentence: where the final response states its answer ("The answer is X", "Answer: X", "La
   respuesta es X", "答案是X", "答えはX", ...; several different stated answers: wrong) the stated text, otherwise
   the first sentence. The reference must occur there, whole words in order (each CJK character counts as a word,
   so Japanese and Chinese match as substrings), inside one sentence.
2. Not negated: no negation or contraindication cue before it in its clause ("not", "avoid", "instead of",
   "rule out", "no", "sin", "en lugar de", "不是", "避免", "而不是", ...) nor right after it ("X is
   contraindicated", "X should not", "X no está indicado", "Xではなく", "X以外", "X禁用", ...). This holds for
   every occurrence of the reference in the whole final response: a later "metformin is contraindicated"
   withdraws the answer.
3. One candidate: the reference is not coordinated with another item ("X and Y", "X or Y", "X/Y", "X, Y", "Y, X",
   "XやY", "XとY", "X和Y", "X、Y"), the answer sentence is not a list of three or more short items, and it does
   not hedge ("or", "either", "possibly", "maybe", "might", "o", "quizás", "tal vez", "かもしれない", "おそらく",
   "或者", "也许", ...).
4. Not split over sentences: no other sentence is a bare candidate ("Metformin. Insulin.": a sentence of at most
   three words, no digits) or opens an alternative ("Alternatively, ...", "Or ...", "X may also be considered").

Words inside the reference's own span never count as cues ("Cannot be commented", "Apnea, hypoglycemia, and
hypoxia" are references). Cue words cover English, Spanish, French, German, Italian, Japanese and Chinese, the
translation targets medo1's users run; other languages get the language-independent rules (placement, lists of
punctuation, sentences). A verifier or a judge remains the stronger reward: this rule errs towards calling an
honest but unusual phrasing wrong ("Metformin does not cause hypoglycaemia and is first line" is wrong), never
towards calling a gaming answer right. The table test in tests/test_answer_match.py holds honest and gaming answers
written from real medical-o1 rows.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

# ---------------------------------------------------------------------------------------------------------------
# Tokens

_CJK = "\u3040-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_TOKEN = re.compile(
    rf"(?P<cjk>[{_CJK}])"  # one CJK character or kana per token
    r"|(?P<number>\d+(?:[.,]\d+)*)"  # 0.95, 6,500: one token
    rf"|(?P<word>[^\W\d_{_CJK}]+(?:'[^\W\d_{_CJK}]+)*)"  # letters; Crohn's is one word
    r"|(?P<newline>\n)"
    r"|(?P<punct>[^\s])"
)
_ARTICLES = frozenset({"a", "an", "the", "el", "la", "los", "las", "un", "una", "une", "le", "les"})
_SENTENCE_MARKS = frozenset(".!?。！？")
_CLAUSE_MARKS = frozenset(",;:()[]—–，；：（）「」『』")
# Words (and CJK runs) that open a new clause: a cue before them does not reach past them.
_CLAUSE_WORDS = frozenset(
    {"but", "however", "whereas", "although", "though", "pero", "sino", "mais", "aber", "sondern", "ma", "però"}
)
_CLAUSE_CJK = ("ではなく", "でなく", "じゃなく", "但是", "但", "而是", "しかし", "けれども", "けれど")


@dataclass(frozen=True)
class Token:
    kind: str  # cjk, number, word, newline, punct
    text: str  # NFKC, lower case
    start: int
    end: int


def _normalize(text: str) -> str:
    """NFKC with one apostrophe; the case is kept (a full stop before a capital ends a sentence), and every cue
    pattern ignores it."""
    return unicodedata.normalize("NFKC", text).replace("’", "'").replace("‘", "'").replace("`", "'")


def tokenize(text: str) -> tuple[str, list[Token]]:
    norm = _normalize(text)
    return norm, [Token(m.lastgroup or "punct", m.group().lower(), m.start(), m.end()) for m in _TOKEN.finditer(norm)]


def _is_word(token: Token) -> bool:
    return token.kind in ("word", "number", "cjk")


def _sentence_breaks(norm: str, tokens: list[Token]) -> set[int]:
    """Indices of tokens that end a sentence: a newline, ! ? 。 and a full stop that is followed by the end or by
    a space and a character that is not lower case (not "e.g. the", "vs. insulin", "2.5")."""
    breaks = set()
    for i, token in enumerate(tokens):
        if token.kind == "newline" or (token.kind == "punct" and token.text in "!?。！？"):
            breaks.add(i)
        elif token.text == ".":
            rest = norm[token.end :]
            if not rest.strip():
                breaks.add(i)
            elif rest[0].isspace():
                following = rest.lstrip()[0]
                if not following.islower():
                    breaks.add(i)
    return breaks


# ---------------------------------------------------------------------------------------------------------------
# Cues, per language (lower case, NFKC). Latin patterns match whole words; CJK ones match as substrings.

_NEGATION_BEFORE = re.compile(
    r"\b(?:not|no|never|without|avoid\w*|except|excluding|exclude[ds]?|rule[ds]? out|ruling out|rather than|"
    r"instead of|other than|apart from|neither|nor|cannot|can't|don't|doesn't|isn't|aren't|wasn't|won't|"
    r"shouldn't|mustn't|contraindicat\w*|unlikely|non|stop|stopping|discontinu\w*|withhold\w*|hold off|cease|"
    # es
    r"nunca|sin|evit\w*|excepto|salvo|descart\w*|en lugar de|en vez de|ni|suspend\w*|improbable|"
    # fr
    r"ne|n'\w*|pas|jamais|sans|sauf|exclure|au lieu de|plutôt que|arrêter|"
    # de
    r"nicht|kein\w*|nie|ohne|vermeiden|außer|ausschließen|statt|anstatt|kontraindiziert|absetzen|"
    # it
    r"non|mai|senza|tranne|invece di|controindicat\w*)\b",
    re.IGNORECASE,
)
_NEGATION_BEFORE_CJK = re.compile(
    r"不是|并非|並非|没有|沒有|避免|禁用|禁忌|而不是|除了|排除|不要|不应|不應|不能|不可|不宜|不用|不选|不考虑|不推荐|"
    r"无需|無需|勿|停用|停止|以外の"
)
_NEGATION_ADJACENT_CJK = re.compile(r"(?:非|不|无|無)$")  # only right before the reference
_NEGATION_AFTER = re.compile(
    r"^(?:\W*\w+){0,3}?\W*\b(?:not|never|n't|no longer|contraindicated|avoided|inappropriate|incorrect|wrong|"
    r"unlikely|excluded|ruled out|unsafe|unnecessary|harmful|isn't|aren't|wasn't|shouldn't|mustn't|cannot|"
    r"can't|won't|doesn't|don't|"
    # es / it
    r"no|nunca|contraindicad\w*|evitad\w*|descartad\w*|inapropiad\w*|incorrect\w*|improbable|innecesari\w*|"
    r"non|mai|controindicat\w*|escluso|esclusa|"
    # fr
    r"ne|n'\w*|pas|jamais|contre|exclu\w*|à éviter|"
    # de
    r"nicht|nie|kontraindiziert|vermeiden|ausgeschlossen|kein\w*)\b",
    re.IGNORECASE,
)
_NEGATION_AFTER_CJK = re.compile(
    r"ではな|でなく|じゃな|ではありません|禁忌|避け|使わな|使用しな|投与しな|不適|以外|除外|否定|中止|不要|誤り|間違|"
    r"是禁忌|禁用|不是|不适|不適|不宜|不应|不應|不能|不可|不推荐|應避免|应避免|避免|错误|錯誤|被排除|排除|不考虑"
)
_HEDGES = re.compile(
    r"\b(?:or|either|possibly|perhaps|maybe|probably|might|unsure|uncertain|not sure|could be|may be|"
    r"alternatively|vs|versus|and/or|"
    r"o|u|quizás|quizá|tal vez|posiblemente|probablemente|puede ser|podría ser|o bien|"  # es
    r"ou|peut-être|probablement|éventuellement|"  # fr
    r"oder|vielleicht|möglicherweise|eventuell|wahrscheinlich|"  # de
    r"oppure|forse|probabilmente|possibilmente)\b",  # it
    re.IGNORECASE,
)
_HEDGES_CJK = re.compile(
    r"または|又は|あるいは|もしくは|かもしれ|おそらく|恐らく|多分|たぶん|或者|或是|或|还是|還是|也许|也許|或许|或許|大概|不确定|不確定|(?<!最)可能是"
)
# Between two items: "X and Y", "X & Y", "X/Y", "XとY", "X和Y", "X、Y".
_COORDINATORS = frozenset(
    {
        "and",
        "or",
        "plus",
        "nor",
        "&",
        "+",
        "/",
        "y",
        "e",
        "o",
        "u",
        "ni",
        "et",
        "ou",
        "und",
        "oder",
        "sowie",
        "ed",
        "oppure",
        "vs",
        "versus",
        "、",
        "・",
        "／",
    }
)
_COORDINATOR_PHRASES = ("as well as", "along with", "together with", "and/or", "así como", "ainsi que")
_COORDINATORS_CJK = re.compile(
    r"^(?:和|与|與|及|以及|或|或者|还是|還是|跟|同|や|か|及び|および|または|又は|もしくは|並びに|ならびに|と(?!(?:考え|思|する|され|いう|なる|して|した|診断)))"
)
_COORDINATORS_CJK_BEFORE = re.compile(
    r"(?:和|与|與|及|以及|或|或者|还是|還是|跟|や|か|及び|および|または|又は|もしくは|並びに|ならびに|と)$"
)
# Words that open a phrase which is not another candidate: "X, given ...", "In this case, X", "X, the first-line drug".
_FUNCTION_WORDS = frozenset(
    "given which who whose because since as with without at in on for to from by due then than the a an his her "
    "their its this that these those especially particularly preferably ideally usually typically eg ie "
    "followed starting started if unless when while after before once until therefore thus hence so overall "
    "finally ultimately here now yes clinically based considering in accordance is are was be should must can "
    "dado que ya porque con en para por de del el la los las su sus si cuando especialmente luego entonces "
    "además así finalmente es está debe "
    "donc ainsi car avec pour dans sur si quand est "
    "also daher weil mit für bei wenn ist "
    "quindi perché con per nel se quando è".split()
)
_STATED = (
    r"(?:\bfinal answer|\bthe answer|\banswer|\bla respuesta|\brespuesta|\bla réponse|\bréponse|\bdie antwort|"
    r"\bantwort|\bla risposta|\brisposta)\s*(?:is|would be|es|sería|est|serait|ist|wäre|è|sarebbe|:)\s*"
)
_STATED_LATIN = re.compile(_STATED + r"(.+?)\s*(?:\.(?=\s|$)|\n|$)", re.IGNORECASE)
_STATED_CJK = re.compile(r"(?:答案|答え|正解|解答)\s*(?:是|为|為|は|:)\s*(.+?)\s*(?:[。！？\n]|$)")
_ALTERNATIVE_SENTENCE = re.compile(
    r"^\W*(?:or|alternatively|otherwise consider|another option|other options?|o bien|alternativamente|otra opción|"
    r"ou bien|sinon|alternativ\w*|oder|oppure|in alternativa)\b|"
    r"\b(?:could|may|might|can) also be (?:considered|used|given|an option|the answer)|\balso (?:be )?(?:consider|possible)"
    r"|^\W*(?:または|あるいは|もしくは|他に|ほかに|或者|或|另外|也可以|也可能)",
    re.IGNORECASE,
)
_LIST_SPLIT = re.compile(r"[,;/、，；\n•]|\b(?:and|y|und|et|e)\b", re.IGNORECASE)
_BARE_WORDS = 3
_BARE_CJK_CHARS = 6
_LIST_ITEMS = 3
_HIRAGANA = re.compile(r"[\u3040-\u309f]")


# ---------------------------------------------------------------------------------------------------------------
# Matching


def _content_words(tokens: list[Token]) -> list[int]:
    """Indices of the word tokens that take part in matching (articles left out)."""
    return [i for i, t in enumerate(tokens) if _is_word(t) and t.text not in _ARTICLES]


def _spans(
    tokens: list[Token], breaks: set[int], reference: list[str], reference_breaks: bool
) -> list[tuple[int, int]]:
    """(first, last) token indices of each occurrence of the reference's words, in order, inside one sentence
    (unless the reference itself holds a sentence break)."""
    words = _content_words(tokens)
    found = []
    n = len(reference)
    for k in range(len(words) - n + 1):
        if all(tokens[words[k + j]].text == reference[j] for j in range(n)):
            first, last = words[k], words[k + n - 1]
            if reference_breaks or not any(first <= b < last for b in breaks):
                found.append((first, last))
    return found


@dataclass
class _Text:
    norm: str
    tokens: list[Token]
    breaks: set[int]

    @classmethod
    def of(cls, text: str) -> _Text:
        norm, tokens = tokenize(text)
        return cls(norm, tokens, _sentence_breaks(norm, tokens))

    def sentences(self) -> list[tuple[int, int]]:
        """(first, last) token index of each sentence holding a word."""
        out, start = [], 0
        for i in range(len(self.tokens) + 1):
            if i == len(self.tokens) or i in self.breaks:
                if any(_is_word(t) for t in self.tokens[start:i]):
                    out.append((start, i - 1))
                start = i + 1
        return out

    def sentence_of(self, index: int) -> tuple[int, int]:
        for first, last in self.sentences():
            if first <= index <= last:
                return first, last
        return index, index

    def clause_start(self, index: int) -> int:
        """First token index of the clause holding `index`: after the last sentence/clause break before it."""
        i = index - 1
        while i >= 0:
            t = self.tokens[i]
            if i in self.breaks or (t.kind == "punct" and t.text in _CLAUSE_MARKS) or t.text in _CLAUSE_WORDS:
                return i + 1
            if t.kind == "cjk" and any(self.norm[: t.end].endswith(w) for w in _CLAUSE_CJK):
                return i + 1
            i -= 1
        return 0

    def clause_end(self, index: int) -> int:
        """Last token index of the clause holding `index`."""
        i = index + 1
        while i < len(self.tokens):
            t = self.tokens[i]
            if i in self.breaks or (t.kind == "punct" and t.text in _CLAUSE_MARKS) or t.text in _CLAUSE_WORDS:
                return i - 1
            i += 1
        return len(self.tokens) - 1

    def text(self, first: int, last: int) -> str:
        if first > last or first >= len(self.tokens):
            return ""
        return self.norm[self.tokens[first].start : self.tokens[last].end]


def _negated(doc: _Text, first: int, last: int) -> bool:
    before = doc.text(doc.clause_start(first), first - 1)
    if _NEGATION_BEFORE.search(before) or _NEGATION_BEFORE_CJK.search(before):
        return True
    if _NEGATION_ADJACENT_CJK.search(before.rstrip()):
        return True
    after = doc.text(last + 1, doc.clause_end(last))
    if _NEGATION_AFTER.search(after):
        return True
    # Japanese and Chinese put the negation at the end of the clause, often past a comma: the rest of the sentence.
    _, sentence_end = doc.sentence_of(last)
    rest = doc.text(last + 1, sentence_end)
    cut = min((rest.find(w) for w in ("ではなく", "而是") if w in rest[2:]), default=-1)
    return bool(_NEGATION_AFTER_CJK.search(rest if cut < 0 else rest[: cut + 2]))


def _segment_is_candidate(doc: _Text, first: int, last: int) -> bool:
    """A comma-separated segment that reads as another item of a list: 1-3 words, no digits, not opening with a
    function word ("given ...", "the first-line drug", "therefore")."""
    words = [t for t in doc.tokens[first : last + 1] if _is_word(t)]
    if not words or any(t.kind == "number" for t in words):
        return False
    if words[0].kind == "cjk":
        return False  # CJK lists use 、 (a coordinator); a CJK comma opens a clause
    return len(words) <= _BARE_WORDS and words[0].text not in _FUNCTION_WORDS


def _coordinated(doc: _Text, first: int, last: int) -> bool:
    tokens = doc.tokens
    sentence_first, sentence_last = doc.sentence_of(first)
    # Right after: "X and Y", "X/Y", "X、Y", "XとY", "X as well as Y".
    after = doc.text(last + 1, sentence_last).lower()
    nxt = last + 1
    if nxt <= sentence_last:
        following = tokens[nxt]
        has_more = any(_is_word(t) for t in tokens[nxt + 1 : sentence_last + 1])
        if following.text in _COORDINATORS and has_more:
            return True
        if any(after.lstrip().startswith(p + " ") for p in _COORDINATOR_PHRASES):
            return True
        if following.kind == "cjk" and _COORDINATORS_CJK.match(after) and has_more:
            return True
        if following.text in (",", "，"):
            end = nxt + 1
            while end <= sentence_last and not (tokens[end].text in _CLAUSE_MARKS or tokens[end].text in _COORDINATORS):
                end += 1
            if _segment_is_candidate(doc, nxt + 1, end - 1):
                return True
    # Right before: "Y and X", "Y/X", "Y、X", "YやX", "Y, X".
    prev = first - 1
    if prev >= sentence_first:
        preceding = tokens[prev]
        before = doc.text(sentence_first, prev).lower()
        has_more = any(_is_word(t) for t in tokens[sentence_first:prev])
        if preceding.text in _COORDINATORS and has_more:
            return True
        if any(before.rstrip().endswith(" " + p) for p in _COORDINATOR_PHRASES):
            return True
        if preceding.kind == "cjk" and _COORDINATORS_CJK_BEFORE.search(before) and has_more:
            return True
        if preceding.text in (",", "，"):
            start = prev - 1
            while start >= sentence_first and not (
                tokens[start].text in _CLAUSE_MARKS or tokens[start].text in _COORDINATORS
            ):
                start -= 1
            if start < sentence_first and _segment_is_candidate(doc, start + 1, prev - 1):
                return True
    return False


def _without_span(doc: _Text, sentence: tuple[int, int], spans: list[tuple[int, int]]) -> str:
    """The sentence's text with every reference span replaced by a placeholder."""
    first, last = sentence
    parts, cursor = [], first
    for s_first, s_last in spans:
        if s_first < first or s_last > last:
            continue
        parts.append(doc.text(cursor, s_first - 1))
        parts.append(" REFERENCE ")
        cursor = s_last + 1
    parts.append(doc.text(cursor, last))
    return " ".join(parts)


def _is_list(text: str) -> bool:
    items = [item.strip() for item in _LIST_SPLIT.split(text) if item.strip()]
    short = [item for item in items if 0 < len(re.findall(r"\w+", item)) <= _BARE_WORDS]
    return len(short) >= _LIST_ITEMS


def _bare_candidate(doc: _Text, first: int, last: int) -> bool:
    words = [t for t in doc.tokens[first : last + 1] if _is_word(t)]
    if any(t.kind == "number" for t in words):
        return False
    if words and words[0].kind == "cjk":
        chars = doc.text(first, last)
        return len(words) <= _BARE_CJK_CHARS and not _HIRAGANA.search(chars)
    return len(words) <= _BARE_WORDS


def stated_answers(answer: str) -> list[str]:
    """The texts the answer states as its answer ("The answer is X.", "Answer: X", "答案是X"), in order."""
    norm = _normalize(answer)
    return [m.strip() for m in _STATED_LATIN.findall(norm) + _STATED_CJK.findall(norm) if m.strip()]


def answer_verdict(answer: str, reference: str) -> str | None:
    """None when `answer` gives `reference` as its one answer; otherwise why not (for tests and debugging)."""
    reference_words = [t.text for t in tokenize(reference)[1] if _is_word(t) and t.text not in _ARTICLES]
    if not reference_words:
        return "empty reference"
    if [t.text for t in tokenize(answer)[1] if _is_word(t) and t.text not in _ARTICLES] == reference_words:
        return None  # the answer is the reference, cue words and all

    doc = _Text.of(answer)
    reference_doc = _Text.of(reference)
    reference_breaks = bool(reference_doc.breaks - {len(reference_doc.tokens) - 1})
    spans = _spans(doc.tokens, doc.breaks, reference_words, reference_breaks)
    if not spans:
        return "reference not in the answer"

    stated = {" ".join(t.text for t in tokenize(s)[1] if _is_word(t)) for s in stated_answers(answer)}
    stated.discard("")
    if len(stated) > 1:
        return "several stated answers"
    sentences = doc.sentences()
    if stated:
        answer_sentence = _stated_sentence(doc, spans)
        if answer_sentence is None:
            return "the stated answer is another"
    else:
        answer_sentence = sentences[0]
    in_answer = [s for s in spans if answer_sentence[0] <= s[0] and s[1] <= answer_sentence[1]]
    if not in_answer:
        return "the reference is not in the answer sentence"

    for first, last in spans:
        if _negated(doc, first, last):
            return "negated"
    for first, last in in_answer:
        if _coordinated(doc, first, last):
            return "several candidates"
    rest = _without_span(doc, answer_sentence, in_answer)
    if _HEDGES.search(rest) or _HEDGES_CJK.search(rest):
        return "hedged"
    if _is_list(rest):
        return "a list"
    for sentence in sentences:
        if sentence == answer_sentence:
            continue
        text = doc.text(*sentence)
        if _ALTERNATIVE_SENTENCE.search(text):
            return "an alternative in another sentence"
        if not any(sentence[0] <= s[0] <= sentence[1] for s in spans) and _bare_candidate(doc, *sentence):
            return "another candidate in its own sentence"
    return None


def _stated_sentence(doc: _Text, spans: list[tuple[int, int]]) -> tuple[int, int] | None:
    """The sentence holding a stated answer ("... answer is X") with the reference in it."""
    for first, _ in spans:
        sentence = doc.sentence_of(first)
        if _STATED_LATIN.search(doc.text(*sentence)) or _STATED_CJK.search(doc.text(*sentence)):
            return sentence
    return None


def matches(answer: str, reference: str) -> bool:
    return answer_verdict(answer, reference) is None
