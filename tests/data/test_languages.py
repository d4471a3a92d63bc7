"""Language identification and XLM's temperature shares."""

import pytest

from lmkit.data import languages
from lmkit.errors import UserError
from tests.conftest import block_imports
from tests.multilingual import SENTENCES

pytest.importorskip("py3langid")


def test_every_test_sentence_is_identified():
    for lang, sentences in SENTENCES.items():
        assert [languages.identify(s) for s in sentences] == [lang] * len(sentences)


def test_unknown_codes_are_refused_naming_the_known_ones():
    languages.check_codes(["de", "en"])
    with pytest.raises(UserError, match=r"--languages xx: not a language the identifier knows .* de, .*en, "):
        languages.check_codes(["de", "xx"])


def test_temperature_shares():
    sizes = {"en": 900.0, "de": 100.0}
    assert languages.temperature_shares(sizes, 1.0) == pytest.approx({"en": 0.9, "de": 0.1})
    assert languages.temperature_shares(sizes, 0.0) == pytest.approx({"en": 0.5, "de": 0.5})
    half = languages.temperature_shares(sizes, 0.5)
    assert half["de"] == pytest.approx(0.1 ** 0.5 / (0.1 ** 0.5 + 0.9 ** 0.5)) \
        and sum(half.values()) == pytest.approx(1)


def test_a_missing_identifier_names_the_extra(monkeypatch):
    languages.identifier.cache_clear()
    block_imports(monkeypatch, "py3langid")
    try:
        with pytest.raises(UserError, match=r"identifying languages needs py3langid; install lmkit\[languages\]"):
            languages.identifier()
    finally:
        languages.identifier.cache_clear()
