import pytest

from lmkit.units import parse_duration, parse_size


@pytest.mark.parametrize("text,expected", [("4096", 4096), ("64MB", 64_000_000), ("1GiB", 2**30),
                                           ("1.5 kb", 1500), (" 2mib ", 2 * 2**20), (7, 7)])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "MB", "12 parsecs", "-1MB"])
def test_parse_size_rejects(text):
    with pytest.raises(ValueError, match="not a size"):
        parse_size(text)


@pytest.mark.parametrize("text,seconds", [("", 0.0), ("90", 90.0), ("90s", 90.0), ("10m", 600.0), ("1.5h", 5400.0),
                                          ("2d", 172800.0), ("5ms", 0.005), (" 250 ms ", 0.25)])
def test_durations(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["soon", "-5s", "5 minutes", "1e3s", "5mss"])
def test_bad_durations_name_the_text(text):
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)
