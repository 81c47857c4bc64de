"""The safeguarding term list: loading, validation, folding."""

from __future__ import annotations

from pathlib import Path

import pytest

from schoolgate.config import AlertsConfig
from schoolgate.services.alert_rules import AlertSettings
from schoolgate.services.keywords import KeywordList, fold, searchable_text, words


def test_builtin_list_loads_with_the_expected_categories() -> None:
    keywords = KeywordList.load()
    assert {"self-harm", "extremism", "weapons", "bullying"} <= set(keywords.severities)
    assert keywords.severities["self-harm"] == "critical"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ＳＵＩＣＩＤＥ", "suicide"),
        ("ćàfé", "cafe"),
        ("a\u200bb\u00adc", "abc"),
        ("роrn", "porn"),  # Cyrillic р and о, Latin r and n
    ],
)
def test_fold(text: str, expected: str) -> None:
    assert fold(text) == expected


def test_words_read_digit_stand_ins_only_inside_words() -> None:
    assert words("k1ll mys3lf in 2024, $elf h@rm") == ["kill", "myself", "in", "2024", "self", "harm"]


def test_searchable_text_tolerates_bad_urls() -> None:
    assert searchable_text(None, "http://[::1") == ""
    assert searchable_text("term", "https://x.example/?q=a+b&empty=") == "term\na b"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not toml [", "not valid TOML"),
        ("x = 1", r"needs \[categories"),
        ('[categories.a]\nseverity = "urgent"\nterms = ["x"]', "severity must be one of"),
        ('[categories.a]\nseverity = "low"\nterms = ["!!!"]', "has no letters"),
        ('[categories.a]\nseverity = "low"\nterms = "x"', "needs severity"),
    ],
)
def test_bad_lists_are_refused_with_a_reason(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        KeywordList.from_toml(text, "terms.toml")


def test_settings_from_config(tmp_path: Path) -> None:
    own = tmp_path / "terms.toml"
    own.write_text('[categories.local]\nseverity = "high"\nterms = ["secret den"]\n', encoding="utf-8")
    settings = AlertSettings.from_config(AlertsConfig(keywords_file=str(own), out_of_hours_start="18:30"))
    assert [m.category for m in settings.keywords.match("our SECRET den")] == ["local"]
    assert settings.out_of_hours_start.hour == 18 and settings.out_of_hours_start.minute == 30
    with pytest.raises(ValueError, match="out_of_hours_end"):
        AlertSettings.from_config(AlertsConfig(out_of_hours_end="7pm"))
    with pytest.raises(ValueError, match="threshold"):
        AlertSettings.from_config(AlertsConfig(repeated_blocks_threshold=0))
