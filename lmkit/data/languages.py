"""Language identification of documents (``lmkit preprocess --language-id / --languages``), and the
temperature-scaled language shares of XLM (Conneau and Lample 2019) for tokenizer samples and mixtures.

The identifier is py3langid (a numpy port of langid.py, Lui and Baldwin 2012: a naive Bayes model over byte
n-grams that ships inside the package, 97 languages, ISO 639-1 codes); nothing is downloaded. It reads the
first IDENTIFY_CHARS characters of a document, which is where the model's accuracy saturates.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Mapping

from lmkit.errors import UserError

EXTRA = "lmkit[languages]"
IDENTIFY_CHARS = 2000


@lru_cache(maxsize=1)
def identifier() -> Any:
    """py3langid's identifier with its bundled model (loaded once per process)."""
    try:
        from py3langid.langid import MODEL_FILE, LanguageIdentifier
    except ImportError:
        raise UserError(f"--language-id/--languages: identifying languages needs py3langid; install {EXTRA}") from None
    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=False)


def known_codes() -> list[str]:
    return sorted(identifier().nb_classes)


def check_codes(codes: list[str], flag: str = "--languages") -> None:
    """Refuse a code the identifier does not know, naming it and the codes it knows."""
    known = set(known_codes())
    for code in codes:
        if code not in known:
            raise UserError(f"{flag} {code}: not a language the identifier knows (ISO 639-1 codes; py3langid knows "
                            f"{len(known)}: {', '.join(sorted(known))})")


def identify(text: str) -> str:
    """The most likely language code of ``text``."""
    return identifier().classify(text[:IDENTIFY_CHARS])[0]


def temperature_shares(sizes: Mapping[str, float], alpha: float) -> dict[str, float]:
    """XLM's sampling distribution: q_l = p_l^alpha / sum_k p_k^alpha, p_l = size_l / sum of sizes. alpha = 1
    keeps the corpus's proportions, alpha = 0 makes every language equal; below 1 favours the rare ones."""
    total = sum(sizes.values())
    if total <= 0:
        raise ValueError("temperature_shares: no data")
    weights = {key: (size / total) ** alpha if size > 0 else 0.0 for key, size in sizes.items()}
    norm = sum(weights.values())
    return {key: weight / norm for key, weight in weights.items()}
