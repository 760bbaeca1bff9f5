"""Checks a translation must pass before it is kept, in whatever language it is written.

Shape: same keys (and option letters) as the source, no empty field, the `## Thinking` /
`## Final Response` markers as often as in the source.

Numbers: every number of the source is in the translation with the same VALUE, read the way the
target language writes numbers. Decimal and grouping symbols come from CLDR through Babel for the
target locale (`3,5` and `197.000` in Spanish, `197 000` with a narrow no-break space in French,
`197'000` in Swiss German); digits are NFKC-folded, so full-width ones count; Japanese and Chinese
`万` / `億` (`亿`) / `千` / `百` / `十` and kanji numerals are read where the value is exact
(`19.7万` == 197000, `三十七` == 37), and so are units they write out (毫克, ミリグラム == mg). A
number written exactly as in the source (a model told to keep numbers verbatim writes `3.5` in
Spanish text) is also read the source's way. Ranges (`3-5`),
fractions (`1/2`, `½`) and ratios are read as their numbers; a unit written right after a number
(mg, mmHg, mEq/L, %, ...) must come back with that value: `3.5 mg` turned into `3,5 g` is a changed
unit, `3.5 mg` into `35 mg` a changed dose.

Language: each translated field is identified with lingua (`lingua-language-detector`, its
n-gram models ship inside the wheel and run offline), low-accuracy mode over its 75 languages but
Latin (about 90 MB, ~10 ms for a 2,000-character field; the high-accuracy models take 1.3 GB and 20 s
to load). Latin is left out because medical terms read as Latin: on the 150 English demo rows, with
it, 20 of 634 fields of 5 words or more were read as another language, 12 of them as Latin. A field
must read as the target language; one still in the source language or in a third language is a
problem. Exempt are fields whose source is short, where low-accuracy identification guesses (short
answers such as "Necrosis of the renal papillae" read as Romanian or Welsh): fewer than
`MIN_CHECKED_WORDS` words (a word being a run of two or more letters; in unspaced Chinese or
Japanese source text, every two characters count as one word), after removing the markers. A drug
name, a lone number or an option like "B. Aspirin" is therefore never language-checked. Kanji-only
text cannot tell Japanese from Chinese: for a Japanese target, a field without kana that reads as
Chinese passes.

Records whose fields are all short are still checked, as a whole: when no field of a record is long enough for
the field check, the record fails if (1) for a target written in another script than the Latin one (CLDR's
likely script: Japanese, Chinese, Korean, Cyrillic, Arabic, Hebrew, Greek, Thai, Indic scripts, ...) its source has
`MIN_SCRIPT_WORDS` Latin words or more and no field of the translation has a letter of that script; (2) every field
of the translation is the source's own text (the record came back untranslated); or (3) its fields together reach
`MIN_CHECKED_WORDS` words and the translation, read as one text, is not in the target language. An MCQ set sent back
in English for Japanese fails (1) and (2), as does one for Spanish (2). Options kept as written ("B. Aspirin")
in a record whose question was translated pass.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from babel import Locale, UnknownLocaleError
from babel.numbers import NumberFormatError, get_group_symbol, parse_decimal
from lingua import IsoCode639_1, Language, LanguageDetector, LanguageDetectorBuilder

from medo1.config import StageError
from medo1.data.sources import FINAL_RESPONSE_HEADER, THINKING_HEADER

MARKERS = (THINKING_HEADER, FINAL_RESPONSE_HEADER)
SOURCE_LOCALE = Locale("en")
"""The source datasets (medical-o1 and its derivatives) are English."""
MIN_CHECKED_WORDS = 10  # on the demo rows: 2 of 603 English fields misread, against 12 of 634 from 5 words
REASONS = ("shape", "empty", "marker", "number", "unit", "language")
"""What a problem is about; the translate summary counts retries and rejects per reason."""

# A run of digits with . , ' ’ between digit groups, or a space-like separator before exactly three
# digits (French and Swiss grouping); which symbol means what is the locale's business (Babel).
NUMBER_RE = re.compile(r"\d+(?:(?:[.,'’]|[ \u00a0\u202f](?=\d{3}(?!\d)))\d+)*")
SPACES = " \u00a0\u202f"
APOSTROPHES = "'’"
# Units checked when written right after a number (case aside; μ also as µ, ³ as 3: NFKC).
UNITS = (
    "mEq/L",
    "mmol/L",
    "μmol/L",
    "nmol/L",
    "pmol/L",
    "mg/dL",
    "g/dL",
    "g/L",
    "mg/L",
    "ng/mL",
    "pg/mL",
    "μg/mL",
    "mg/kg",
    "μg/kg",
    "mL/kg",
    "mL/min",
    "mL/h",
    "U/L",
    "IU/L",
    "mIU/L",
    "mU/L",
    "cells/μL",
    "/μL",
    "/mm3",
    "mm3",
    "mmHg",
    "cmH2O",
    "mEq",
    "mmol",
    "mOsm/kg",
    "kcal",
    "mcg",
    "μg",
    "ng",
    "mg",
    "kg",
    "g",
    "mL",
    "dL",
    "L",
    "IU",
    "U",
    "%",
    "°C",
    "°F",
    "bpm",
    "cm",
    "mm",
    "km",
    "min",
    "h",
)
# Unit names that Chinese and Japanese translations write out, as the unit they stand for.
CJK_UNITS = {
    "毫米汞柱": "mmHg",
    "毫克": "mg",
    "微克": "mcg",
    "千克": "kg",
    "公斤": "kg",
    "毫升": "mL",
    "克": "g",
    "ミリグラム": "mg",
    "マイクログラム": "mcg",
    "キログラム": "kg",
    "グラム": "g",
    "ミリリットル": "mL",
}
# Longest first (`mg/dL` is not read as `mg`); not followed by a Latin or Greek letter (`5 minutes`
# has no unit `min`), while CJK text may follow at once (5mgを).
UNIT_RE = re.compile(
    r"[ \u00a0\u202f]?("
    + "|".join(re.escape(u) for u in sorted([*UNITS, *CJK_UNITS], key=len, reverse=True))
    + r")(?![A-Za-z\u00c0-\u024f\u0370-\u03ff])",
    re.IGNORECASE,
)
CANONICAL_UNITS = {unit.lower(): unit for unit in UNITS} | {"μg": "mcg"} | CJK_UNITS
CJK_DIGITS = dict(zip("〇零一二两兩三四五六七八九", (0, 0, 1, 2, 2, 2, 3, 4, 5, 6, 7, 8, 9)))
CJK_SMALL = {"十": 10, "百": 100, "千": 1000}
CJK_BIG = {"万": 10**4, "萬": 10**4, "億": 10**8, "亿": 10**8}
CJK_MULTIPLIERS = frozenset(CJK_SMALL) | frozenset(CJK_BIG)
CJK_NUMBER_RE = re.compile(
    r"(?:\d+(?:,\d{3})*(?:\.\d+)?|[" + "".join(CJK_DIGITS) + "".join(CJK_SMALL) + "".join(CJK_BIG) + r"])+"
)
CJK_CHAR_RE = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]")
KANA_RE = re.compile(r"[\u3040-\u30ff]")
WORD_RE = re.compile(r"[^\W\d_]{2,}")


MIN_SCRIPT_WORDS = 2
"""Latin words (units and all-capital abbreviations aside) in a short record's source from which its translation
must show the target's script (non-Latin targets) and must not be the source's own text."""
# Scripts a target language is written in (CLDR likely-subtags script code) -> the Unicode character-name prefixes of
# their letters. Latin-script targets have none: their check is the language identification.
SCRIPT_LETTERS = {
    "Jpan": ("HIRAGANA", "KATAKANA", "CJK UNIFIED IDEOGRAPH"),
    "Hans": ("CJK UNIFIED IDEOGRAPH",),
    "Hant": ("CJK UNIFIED IDEOGRAPH",),
    "Kore": ("HANGUL",),
    "Cyrl": ("CYRILLIC",),
    "Arab": ("ARABIC",),
    "Hebr": ("HEBREW",),
    "Grek": ("GREEK",),
    "Thai": ("THAI",),
    "Deva": ("DEVANAGARI",),
    "Beng": ("BENGALI",),
    "Taml": ("TAMIL",),
    "Telu": ("TELUGU",),
    "Knda": ("KANNADA",),
    "Mlym": ("MALAYALAM",),
    "Gujr": ("GUJARATI",),
    "Guru": ("GURMUKHI",),
    "Geor": ("GEORGIAN",),
    "Armn": ("ARMENIAN",),
    "Ethi": ("ETHIOPIC",),
    "Khmr": ("KHMER",),
    "Laoo": ("LAO",),
    "Mymr": ("MYANMAR",),
    "Sinh": ("SINHALA",),
}
# Languages commonly written in more than one script: only a script named in the target (sr_Latn, sr-Cyrl) counts.
MULTI_SCRIPT_LANGUAGES = frozenset({"sr", "bs", "uz", "az", "kk", "ku", "mn", "pa", "sd", "ks"})
LATIN_WORD_RE = re.compile(r"[A-Za-z\u00c0-\u024f]{2,}")


class TranslationCheckError(StageError):
    """The checks cannot be set up (a target language Babel or lingua does not know)."""


class CheckProblem(str):
    """One thing wrong with a translation: the message, with `reason` (one of REASONS) attached."""

    reason: str

    def __new__(cls, reason: str, message: str) -> CheckProblem:
        problem = super().__new__(cls, message)
        problem.reason = reason
        return problem


@dataclass(frozen=True)
class Quantity:
    """A number as read from a text: its value and the unit written right after it (or None)."""

    value: Decimal
    unit: str | None

    def __str__(self) -> str:
        number = f"{self.value.normalize():f}"
        return f"{number} {self.unit}" if self.unit else number


# ---------------------------------------------------------------------------------- locales


@functools.cache
def _language_names() -> dict[str, str]:
    """English display names of CLDR languages and locales ("japanese", "portuguese (brazil)") -> id."""
    english = Locale("en")
    names = {name.lower(): code for code, name in english.languages.items()}
    for code in english.languages:
        try:
            names.setdefault(Locale.parse(code).get_display_name("en").lower(), code)
        except (ValueError, UnknownLocaleError):
            continue
    return names


def resolve_locale(target_language: str) -> Locale:
    """The Babel locale of a config's target_language: a name ("Japanese", "Brazilian Portuguese",
    "Spanish (Mexico)") or a code ("ja", "es-MX", "pt_BR")."""
    text = target_language.strip()
    code = _language_names().get(text.lower(), text)
    try:
        return Locale.parse(code.replace("-", "_"))
    except (ValueError, UnknownLocaleError):
        raise TranslationCheckError(
            f"target_language {target_language!r}: not a language name or code that CLDR knows "
            "(e.g. 'Japanese', 'Spanish', 'ja', 'es-MX')"
        ) from None


def lingua_language(locale: Locale) -> Language:
    try:
        return Language.from_iso_code_639_1(IsoCode639_1.from_str(locale.language))
    except ValueError:
        raise TranslationCheckError(
            f"target language {locale.english_name!r}: the language detector (lingua) has no model for it"
        ) from None


def target_script(locale: Locale) -> str | None:
    """The script `locale` is written in (CLDR likely subtags), or None when it is Latin or not one script."""
    from babel.core import get_global

    script = locale.script
    if script is None and locale.language not in MULTI_SCRIPT_LANGUAGES:
        likely = get_global("likely_subtags").get(locale.language, "")
        script = next((part for part in likely.split("_")[1:] if len(part) == 4), None)
    return script if script in SCRIPT_LETTERS else None


def has_script(text: str, script: str) -> bool:
    prefixes = SCRIPT_LETTERS[script]
    return any(ch.isalpha() and unicodedata.name(ch, "").startswith(prefixes) for ch in text)


@functools.cache
def detector() -> LanguageDetector:
    return LanguageDetectorBuilder.from_all_languages_without(Language.LATIN).with_low_accuracy_mode().build()


# ---------------------------------------------------------------------------------- numbers


def _unit(text: str) -> str:
    return CANONICAL_UNITS[text.lower()]


def _read(token: str, locale: Locale) -> Decimal | None:
    """The value of `token` written the way `locale` writes numbers, or None if it is not one."""
    group = get_group_symbol(locale)
    token = re.sub(f"[{SPACES}]", group, token)  # grouping by spaces (SI style) is read in every locale
    if group in APOSTROPHES:
        token = re.sub(f"[{APOSTROPHES}]", group, token)
    try:
        return parse_decimal(token, locale, strict=True)
    except (NumberFormatError, InvalidOperation):
        return None


def _cjk_value(token: str) -> Decimal | None:
    """Value of a Chinese/Japanese numeral (digits allowed between units: 19.7万, 1億2000万, 三十七)."""
    total = Decimal(0)
    rest = token
    for char, scale in sorted(CJK_BIG.items(), key=lambda item: -item[1]):
        if char in rest:
            head, rest = rest.split(char, 1)
            if any(c in head for c in CJK_BIG):
                return None
            part = _cjk_small(head)
            if part is None:
                return None
            total += part * scale
    if rest:
        part = _cjk_small(rest)
        if part is None:
            return None
        total += part
    return total


def _cjk_small(text: str) -> Decimal | None:
    """Below 万: 三千二百, 3千, 二十, 15.5; None for an empty or malformed one."""
    if not text:
        return None
    total, digit = Decimal(0), None
    for piece in re.findall(r"\d+(?:\.\d+)?|.", text.replace(",", "")):
        if piece[0].isdigit() or piece in CJK_DIGITS:
            if digit is not None:
                return None  # two digits in a row: 一一, or 3五
            digit = Decimal(piece) if piece[0].isdigit() else Decimal(CJK_DIGITS[piece])
        elif piece in CJK_SMALL:
            total += (Decimal(1) if digit is None else digit) * CJK_SMALL[piece]
            digit = None
        else:
            return None
    return total + (digit or 0)


def _values(token: str, locale: Locale, verbatim: frozenset[str] | None) -> list[Decimal]:
    """What `token` may mean: one value for a source (`verbatim` None), every likely one for a translation."""
    pieces = re.split(f"[{SPACES}]", token)
    if verbatim is None and len(pieces) > 1 and get_group_symbol(locale) not in SPACES:
        return [value for piece in pieces for value in _values(piece, locale, None)]  # 3 200 mg in English
    value = _read(token, locale)
    values = [value] if value is not None else []
    if verbatim is None:
        return values or [Decimal(run) for run in re.findall(r"\d+", token)]
    if value is None or token in verbatim:
        values += _values(token, SOURCE_LOCALE, None)
    if len(pieces) > 1:
        values += [value for piece in pieces for value in _values(piece, locale, verbatim)]
    return values


def numbers_in(text: str, locale: Locale = SOURCE_LOCALE, verbatim: frozenset[str] | None = None) -> list[Quantity]:
    """Every number of `text` as `locale` writes it, with the unit written right after it.

    Without `verbatim`, `text` is a source and each number has one value (a token no locale can
    read, like 1,2,3, counts as its digit runs). With it (the source's number tokens), `text` is a
    translation and a token counts as every value it may mean: the source's reading too when it
    is no valid number in `locale` (3.5 in Spanish) or is written as in the source, and each part
    of a space-grouped one (3 200 mg may be 3 times 200 mg). Chinese/Japanese numerals with 万 /
    億 / 千 come with their value.
    """
    text = unicodedata.normalize("NFKC", text).replace("\u2044", "/")
    found: list[Quantity] = []
    for match in NUMBER_RE.finditer(text):
        token = match.group()
        if text[match.end() : match.end() + 1] in CJK_MULTIPLIERS:
            continue  # 19.7万: read whole below
        unit_match = UNIT_RE.match(text, match.end())
        unit = _unit(unit_match.group(1)) if unit_match else None
        found.extend(Quantity(value, unit) for value in _values(token, locale, verbatim))
    for match in CJK_NUMBER_RE.finditer(text):
        token = match.group()
        if token.replace(".", "").replace(",", "").isdigit():
            continue  # plain digits: read above
        value = _cjk_value(token)
        if value is not None:
            unit_match = UNIT_RE.match(text, match.end())
            found.append(Quantity(value, _unit(unit_match.group(1)) if unit_match else None))
    return found


def number_tokens(text: str) -> frozenset[str]:
    return frozenset(NUMBER_RE.findall(unicodedata.normalize("NFKC", text)))


# ---------------------------------------------------------------------------------- language


def checked_words(text: str) -> int:
    """Words counted for the short-field exemption (see the module docstring)."""
    text = _without_markers(text)
    latin = len(WORD_RE.findall(CJK_CHAR_RE.sub(" ", text)))
    return latin + len(CJK_CHAR_RE.findall(text)) // 2


def _without_markers(text: str) -> str:
    for marker in MARKERS:
        text = text.replace(marker, " ")
    return text


# ---------------------------------------------------------------------------------- checks


def _strings(value: Any, path: str) -> list[tuple[str, Any]]:
    if isinstance(value, dict):
        return [(f"{path}.{k}", v) for k, v in value.items()]
    return [(path, value)]


class TranslationChecks:
    """The checks for one target language: `problems(source, translated)`; empty means keep it."""

    def __init__(self, target_language: str):
        self.locale = resolve_locale(target_language)
        self.language = lingua_language(self.locale)
        self.name = self.language.name.title()
        self.script = target_script(self.locale)

    def problems(self, source: dict[str, Any], translated: Any) -> list[CheckProblem]:
        """Problems of a translation of `source` (a payload of column -> text, or options dict)."""
        if not isinstance(translated, dict):
            return [CheckProblem("shape", f"expected a JSON object, got {type(translated).__name__}")]
        problems: list[CheckProblem] = []
        missing = [k for k in source if k not in translated]
        extra = [k for k in translated if k not in source]
        if missing:
            problems.append(CheckProblem("shape", f"missing key(s) {missing}"))
        if extra:
            problems.append(CheckProblem("shape", f"unexpected key(s) {extra}"))
        for key, src_value in source.items():
            if key not in translated:
                continue
            out_value = translated[key]
            if isinstance(src_value, dict):
                if not isinstance(out_value, dict):
                    got = type(out_value).__name__
                    problems.append(CheckProblem("shape", f"field '{key}': expected an object, got {got}"))
                    continue
                if list(out_value) != list(src_value):
                    keys = f"option keys {list(out_value)} differ from {list(src_value)}"
                    problems.append(CheckProblem("shape", f"field '{key}': {keys}"))
                    continue
            for (path, src), (_, out) in zip(_strings(src_value, key), _strings(out_value, key)):
                problems.extend(self.field_problems(path, src, out))
        if not problems:
            problems.extend(self.record_problems(source, translated))
        return problems

    def record_problems(self, source: dict[str, Any], translated: dict[str, Any]) -> Iterator[CheckProblem]:
        """A record whose every field is under MIN_CHECKED_WORDS, judged as a whole (see the module docstring)."""
        pairs = [
            (src, out)
            for key, value in source.items()
            for (_, src), (_, out) in zip(_strings(value, key), _strings(translated[key], key))
            if isinstance(src, str) and isinstance(out, str)
        ]
        if not pairs or any(checked_words(src) >= MIN_CHECKED_WORDS for src, _ in pairs):
            return  # the long fields were checked one by one
        if self.locale.language == SOURCE_LOCALE.language:
            return
        src_text = "\n".join(_without_markers(src) for src, _ in pairs)
        out_text = "\n".join(_without_markers(out) for _, out in pairs)
        latin_words = sum(
            word.lower() not in CANONICAL_UNITS and not word.isupper()  # mg, HbA1c's kin: kept as written
            for word in LATIN_WORD_RE.findall(src_text)
        )
        if self.script and latin_words >= MIN_SCRIPT_WORDS and not has_script(out_text, self.script):
            yield CheckProblem(
                "language",
                f"record: no {self.name} ({self.script}) letter in any field of the "
                f"translation (not translated to {self.name})",
            )
        elif latin_words >= MIN_SCRIPT_WORDS and all(src.strip() == out.strip() for src, out in pairs):
            yield CheckProblem(
                "language", f"record: every field is the source's own text (not translated to {self.name})"
            )
        elif checked_words(src_text) >= MIN_CHECKED_WORDS:
            problem = self.language_problem("record", src_text, out_text)
            if problem:
                yield problem

    def field_problems(self, path: str, src: str, out: Any) -> Iterator[CheckProblem]:
        if not isinstance(out, str):
            yield CheckProblem("shape", f"field '{path}': expected a string, got {type(out).__name__}")
            return
        if not out.strip():
            yield CheckProblem("empty", f"field '{path}': empty")
            return
        for marker in MARKERS:
            want, got = src.count(marker), out.count(marker)
            if want != got:
                counts = f"appears {got}x, source has it {want}x"
                yield CheckProblem("marker", f"field '{path}': marker '{marker}' {counts}")
        yield from self.number_problems(path, src, out)
        language_problem = self.language_problem(path, src, out)
        if language_problem:
            yield language_problem

    def number_problems(self, path: str, src: str, out: str) -> Iterator[CheckProblem]:
        wanted = list(dict.fromkeys(numbers_in(src)))
        have = set(numbers_in(out, self.locale, number_tokens(src)))
        values = {q.value for q in have}
        lost = [q for q in wanted if q.value not in values]
        if lost:
            listed = ", ".join(str(q) for q in lost)
            yield CheckProblem("number", f"field '{path}': number(s) {listed} missing from the translation")
        # A unit counts as kept on a bare number of the same value (3-5 mg has 3 bare) while it is
        # written after some number of the translation.
        units = {q.unit for q in have}
        changed = [
            q
            for q in wanted
            if q.unit
            and q.value in values
            and q not in have
            and (Quantity(q.value, None) not in have or q.unit not in units)
        ]
        if changed:
            listed = ", ".join(str(q) for q in changed)
            yield CheckProblem("unit", f"field '{path}': {listed} lost its unit or got another in the translation")

    def language_problem(self, path: str, src: str, out: str) -> CheckProblem | None:
        if checked_words(src) < MIN_CHECKED_WORDS:
            return None
        found = detector().detect_language_of(_without_markers(out))
        if found is None or found == self.language:
            return None
        if self.language == Language.JAPANESE and found == Language.CHINESE and not KANA_RE.search(out):
            return None  # kanji only: Japanese and Chinese cannot be told apart
        name = found.name.title()
        if found == detector().detect_language_of(_without_markers(src)):
            return CheckProblem("language", f"field '{path}': still in {name} (not translated to {self.name})")
        return CheckProblem("language", f"field '{path}': reads as {name}, not {self.name}")
