import pytest

from lmkit.units import parse_size


@pytest.mark.parametrize("text,expected", [("4096", 4096), ("64MB", 64_000_000), ("1GiB", 2**30),
                                           ("1.5 kb", 1500), (" 2mib ", 2 * 2**20), (7, 7)])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "MB", "12 parsecs", "-1MB"])
def test_parse_size_rejects(text):
    with pytest.raises(ValueError, match="not a size"):
        parse_size(text)
