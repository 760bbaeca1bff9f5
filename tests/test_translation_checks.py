"""Translation checks in the languages users translate into (medo1.data.translation_checks).

The numbers in the expected translations are written by Babel for each locale (format_decimal,
format_percent), not by hand, so the tests do not echo the reader they check. The end-to-end test
translates the 150 demo rows through the local OpenAI stand-in (pipelines/openai_standin.py, a
test double for a paid API) answering in each language with the numbers rewritten by Babel.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from pathlib import Path

import pytest
from babel.numbers import format_decimal, format_percent

from medo1.config import StageError
from medo1.data.translate import TranslateConfig, TranslateError, run_translate
from medo1.data.translation_checks import TranslationChecks, numbers_in, resolve_locale
from pipelines.openai_standin import StandIn, fake_translate
from tests.conftest import DEMO_DATA

KEY = "test-key"
SOURCE = (
    "Give 3.5 mg of morphine twice a day; the platelet count was 197,000 per microliter, potassium "
    "4.2 mEq/L, blood pressure 150/95 mmHg, and 37.5% of the cells were abnormal."
)
# Faithful translations of SOURCE; {dose} {count} {k} {pct} are filled in by Babel for the locale.
TEMPLATES = {
    "es": (
        "Spanish",
        "Administre {dose} mg de morfina dos veces al día; el recuento de plaquetas fue de {count} por "
        "microlitro, el potasio {k} mEq/L, la presión arterial 150/95 mmHg y el {pct} de las células eran anormales.",
    ),
    "pt": (
        "Portuguese",
        "Administre {dose} mg de morfina duas vezes ao dia; a contagem de plaquetas foi de {count} por "
        "microlitro, o potássio {k} mEq/L, a pressão arterial 150/95 mmHg, e {pct} das células eram anormais.",
    ),
    "de": (
        "German",
        "Geben Sie zweimal täglich {dose} mg Morphin; die Thrombozytenzahl betrug {count} pro Mikroliter, "
        "Kalium {k} mEq/L, der Blutdruck 150/95 mmHg, und {pct} der Zellen waren auffällig.",
    ),
    "fr": (
        "French",
        "Administrer {dose} mg de morphine deux fois par jour ; la numération plaquettaire était de {count} "
        "par microlitre, le potassium de {k} mEq/L, la pression artérielle de 150/95 mmHg, et {pct} des "
        "cellules étaient anormales.",
    ),
    "ja": (
        "Japanese",
        "モルヒネ{dose} mgを1日2回投与してください。血小板数は1マイクロリットルあたり{count}、カリウムは"
        "{k} mEq/L、血圧は150/95 mmHgで、細胞の{pct}が異常でした。",
    ),
    "zh": (
        "Chinese",
        "给予吗啡{dose} mg，每日两次；血小板计数为每微升{count}，血钾{k} mEq/L，血压150/95 mmHg，其中{pct}的细胞异常。",
    ),
}
# A translation into another language must be rejected (Chinese for Japanese would pass: kanji
# without kana cannot be told apart, see the module docstring).
THIRD = {"es": "pt", "pt": "es", "de": "fr", "fr": "de", "ja": "es", "zh": "ja"}


def numbers(code: str, dose: str = "3.5") -> dict[str, str]:
    return {
        "dose": format_decimal(Decimal(dose), locale=code),
        "count": format_decimal(197000, locale=code),
        "k": format_decimal(Decimal("4.2"), locale=code),
        "pct": format_percent(Decimal("0.375"), locale=code, decimal_quantization=False),
    }


def translation(code: str, **changed: str) -> str:
    return TEMPLATES[code][1].format(**(numbers(code) | changed))


def reasons(problems: list) -> set[str]:
    return {p.reason for p in problems}


@pytest.mark.parametrize("code", list(TEMPLATES))
def test_each_language_keeps_correct_translations_and_rejects_wrong_ones(code):
    checks = TranslationChecks(TEMPLATES[code][0])
    src = {"Question": SOURCE}
    good = translation(code)
    assert checks.problems(src, {"Question": good}) == [], good

    wrong = {
        "changed dose": (translation(code, dose=format_decimal(Decimal("5.3"), locale=code)), "number"),
        "dropped number": (good.replace(numbers(code)["k"], "", 1), "number"),
        "swapped unit": (good.replace(" mg", " g", 1), "unit"),
        "untranslated": (SOURCE, "language"),
        "third language": (translation(THIRD[code]), "language"),
    }
    for case, (text, reason) in wrong.items():
        problems = checks.problems(src, {"Question": text})
        assert reason in reasons(problems), (case, text, problems)
    untranslated = checks.problems(src, {"Question": SOURCE})
    assert any("still in English" in p for p in untranslated)
    third = checks.problems(src, {"Question": translation(THIRD[code])})
    assert any(f"not {TEMPLATES[code][0]}" in p and "still in" not in p for p in third)


def test_japanese_and_chinese_units_and_numerals():
    checks = TranslationChecks("ja")
    src = {"q": "The platelet count was 197,000 per microliter and the dose 3.5 mg, given to 37 patients for 12 weeks."}
    myriad = format_decimal(Decimal("19.7"), locale="ja") + "万"
    for text in (
        f"血小板数は1マイクロリットルあたり{myriad}で、用量は3.5 mgであり、37人の患者に12週間投与された。",
        "血小板数は1マイクロリットルあたり十九万七千で、用量は３．５ｍｇであり、三十七人の患者に十二週間投与された。",
        "血小板数は1マイクロリットルあたり197,000で、用量は3.5ミリグラムであり、37人の患者に12週間投与された。",
    ):
        assert checks.problems(src, {"q": text}) == [], text
    wrong = "血小板数は1マイクロリットルあたり1.97万で、用量は3.5 mgであり、37人の患者に12週間投与された。"
    assert any("197000" in p for p in checks.problems(src, {"q": wrong}))
    zh = TranslationChecks("Chinese")
    src = {"q": "Blood pressure was 150/95 mmHg and 2.5 mg was given to 1,200,000 people at risk."}
    assert zh.problems(src, {"q": "血压为150/95毫米汞柱，给予2.5毫克，高危人群为120万人。"}) == []
    assert reasons(zh.problems(src, {"q": "血压为150/95毫米汞柱，给予2.5克，高危人群为120万人。"})) == {"unit"}


def test_number_values_across_conventions():
    def values(text: str, locale: str) -> list[Decimal]:
        return [q.value for q in numbers_in(text, resolve_locale(locale))]

    count = Decimal(197000)
    for locale in ("es", "de", "fr", "pt", "de_CH", "it", "ja", "es_MX"):
        assert values(format_decimal(count, locale=locale), locale) == [count], locale
        assert values(format_decimal(Decimal("3.5"), locale=locale), locale) == [Decimal("3.5")], locale
    assert values("197 000", "fr") == values("197\u00a0000", "fr") == values("197’000", "de-CH") == [count]
    assert values("１９７，０００", "ja") == [count]  # full-width digits and comma
    assert values("1億2000万", "ja") == [Decimal(120_000_000)]
    # A range, a fraction, a ratio and a percentage are read as their numbers, with their units.
    assert [str(q) for q in numbers_in("3–5 mg, ½ tablet, 120/80 mmHg, 37,5 %", resolve_locale("es"))] == [
        "3",
        "5 mg",
        "1",
        "2",
        "120",
        "80 mmHg",
        "37.5 %",
    ]
    # 3.5 kept verbatim in Spanish text is 3.5; 1.500 written by a German translator is 1500, not 1.5.
    checks = TranslationChecks("German")
    assert checks.problems({"q": "3.5 mg"}, {"q": "3.5 mg"}) == []
    assert reasons(checks.problems({"q": "1.5 mg"}, {"q": "1.500 mg"})) == {"number"}
    assert checks.problems({"q": "1.5 mg"}, {"q": "1,5 mg"}) == []
    # Grouping by spaces (SI style) is read in every language; in English 3 200 mg stays two numbers.
    assert checks.problems({"q": "197,000 cells"}, {"q": "197 000 Zellen"}) == []
    assert checks.problems({"q": "3 200 mg tablets"}, {"q": "3 Tabletten zu 200 mg"}) == []


def test_short_fields_are_exempt_from_the_language_check():
    checks = TranslationChecks("Spanish")
    source = {
        "question": "Which drug lowers the risk of stroke in atrial fibrillation?",
        "options": {"A": "B. Aspirin", "B": "Warfarin 5 mg", "C": "42", "D": "Low molecular weight heparin"},
    }
    kept = {"A": "B. Aspirin", "B": "Warfarin 5 mg", "C": "42", "D": "Heparina de bajo peso molecular"}
    question = "¿Qué fármaco reduce el riesgo de ictus en la fibrilación auricular?"
    assert checks.problems(source, {"question": question, "options": kept}) == []
    english = checks.problems(source, {"question": source["question"], "options": kept})
    assert [p.reason for p in english] == ["language"] and "'question'" in english[0]


def test_english_medical_text_reads_as_english():
    """Real medical-o1 fields checked as their own English "translation": medical terms must not read as
    Latin, nor short answers as Romanian or Welsh (20 of 634 fields did, before Latin was left out and
    fields under 10 words exempted)."""
    checks = TranslationChecks("English")
    rows = json.loads(DEMO_DATA.read_text())
    fields = [
        {key: row[key]}
        for row in rows
        for key in ("Question", "Complex_CoT", "Response", "Open-ended Verifiable Question", "Ground-True Answer")
    ]
    misread = [problem for field in fields for problem in checks.problems(field, field)]
    assert {p.reason for p in misread} <= {"language"}
    assert len(misread) <= 0.01 * len(fields), misread


def test_target_language_names_and_codes():
    assert str(resolve_locale("Japanese")) == "ja"
    assert str(resolve_locale("es-MX")) == "es_MX"
    assert str(resolve_locale("Brazilian Portuguese")) == "pt_BR"
    assert TranslationChecks("pt_BR").name == "Portuguese"
    with pytest.raises(StageError, match="'Klingon'"):
        TranslationChecks("Klingon")


# ------------------------------------------------------------------------------- end to end


@pytest.fixture(autouse=True)
def api_key_env(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


def run(tmp_path: Path, server: StandIn, language: str, **extra) -> dict:
    values = {
        "input": str(DEMO_DATA),
        "output": str(tmp_path / "out.jsonl"),
        "format": "medical_o1",
        "target_language": language,
        "base_url": server.base_url,
        "concurrency": 8,
        "backoff_s": 0.01,
    }
    cfg = TranslateConfig(**(values | extra))
    return run_translate(cfg, progress=False)


@pytest.mark.parametrize("code", list(TEMPLATES))
def test_demo_rows_in_each_language_number_convention_are_all_kept(tmp_path, code):
    rows = json.loads(DEMO_DATA.read_text(encoding="utf-8"))
    with StandIn(api_key=KEY, language=code, locale_numbers=True, max_lifetime_s=120) as server:
        summary = run(tmp_path, server, TEMPLATES[code][0])
    assert (summary["records"], summary["translated"], summary["rejected"]) == (150, 150, 0)
    assert summary["validation_retries"] == 0 and summary["rejected_by_reason"] == {}
    assert summary["warnings"] == []
    out = [json.loads(line) for line in Path(summary["output"]).read_text(encoding="utf-8").splitlines()]
    assert [o["Response"] for o in out] == [fake_translate(r["Response"], code, True) for r in rows]
    # The answers really are written the language's way (not a copy of the English numbers).
    written = "".join(o[column] for o in out for column in ("Question", "Complex_CoT", "Response"))
    assert re.search(r"\d+万" if code in ("ja", "zh") else r"\d,\d", written)


def test_answers_in_another_language_are_retried_then_rejected(tmp_path):
    with StandIn(api_key=KEY, language="ja", max_lifetime_s=60) as server:
        with pytest.raises(TranslateError) as error:
            run(tmp_path, server, "Spanish", limit=4, validation_retries=1, concurrency=1)
        assert server.total < 4 * 2  # the failure budget is spent before every record is asked for
    assert "reads as Japanese, not Spanish" in str(error.value)


def test_bench_reports_checks_per_second_on_demo_rows():
    from bench.translate_concurrency import measure_checks

    result = measure_checks(records=6, languages=("es", "ja"))
    assert [row["language"] for row in result["results"]] == ["Spanish", "Japanese"]
    for row in result["results"]:
        assert row["records"] == 6 and row["rejected"] == 0 and row["records_per_second"] > 0


# ------------------------------------------------------------------------------- all-short records


def short_mcq_records() -> list[dict]:
    """MCQ records from real demo rows whose every field is under MIN_CHECKED_WORDS words: a short question and
    four real ground-truth answers as options."""
    rows = [row for row in json.loads(DEMO_DATA.read_text()) if len(row["Ground-True Answer"].split()) < 6]
    records = []
    for start in range(0, 40, 4):
        options = {letter: row["Ground-True Answer"] for letter, row in zip("ABCD", rows[start : start + 4])}
        records.append(
            {"question": "Which of these is the most likely diagnosis?", "options": options, "answer_idx": "A"}
        )
    return records


@pytest.mark.parametrize("language", ["Japanese", "Spanish", "Russian"])
def test_a_short_record_sent_back_untranslated_is_rejected(language):
    checks = TranslationChecks(language)
    for record in short_mcq_records():
        payload = {"question": record["question"], "options": record["options"]}
        problems = checks.problems(payload, payload)
        assert reasons(problems) == {"language"}, (language, record)
        assert "record: " in problems[0] and f"not translated to {checks.name}" in problems[0]


def test_a_short_record_translated_or_keeping_names_passes():
    source = {"question": "Which drug is first-line?", "options": {"A": "Metformin", "B": "Insulin glargine"}}
    japanese = {"question": "第一選択薬はどれですか？", "options": {"A": "Metformin", "B": "インスリングラルギン"}}
    assert TranslationChecks("Japanese").problems(source, japanese) == []
    assert TranslationChecks("Japanese").problems(source, japanese | {"question": "第一選択薬は?"}) == []
    spanish = {"question": "¿Qué fármaco es de primera línea?", "options": {"A": "Metformin", "B": "Insulina glargina"}}
    assert TranslationChecks("Spanish").problems(source, spanish) == []
    # Units and abbreviations are kept as written: a record of them alone is not "untranslated".
    assert TranslationChecks("German").problems({"q": "5 mg IV"}, {"q": "5 mg IV"}) == []


def test_an_untranslated_mcq_set_fails_the_translate_run(tmp_path):
    source = tmp_path / "mcq.json"
    source.write_text(json.dumps(short_mcq_records()))
    with StandIn(api_key=KEY, passthrough=True, max_lifetime_s=60) as server:
        with pytest.raises(
            TranslateError, match=r"6 of 10 record\(s\) failed.*row 0: .*record: no Japanese \(Jpan\) letter"
        ):
            run_translate(
                TranslateConfig(
                    input=str(source),
                    output=str(tmp_path / "ja.jsonl"),
                    format="mcq",
                    target_language="Japanese",
                    base_url=server.base_url,
                    backoff_s=0.01,
                    validation_retries=0,
                    concurrency=1,
                    max_failure_ratio=0.5,
                ),
                progress=False,
            )
    assert not (tmp_path / "ja.jsonl").exists()
