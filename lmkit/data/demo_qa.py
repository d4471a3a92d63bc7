"""The demo corpus's question-answering set (``qa.jsonl``, ``qa-test.jsonl``) in SQuAD's layout.

A context is a page of reference: consecutive docstrings of one module, each after its name (``NAME:
docstring``), up to about ``PAGE_CHARS`` characters: longer than one window of a tiny encoder, so that windows
and their stride matter. Two kinds of question, each answered by a span of the page:

* cloze: a sentence of the page with one content word blanked (``Fill in the blank: ...``); the answer is that
  word where the sentence stands. The sentence is drawn from every eligible sentence of the page, so the
  answer is rarely in the page's first sentence: the first-sentence baseline is honest, and beatable.
* return value: ``What does NAME return?`` for a docstring that starts ``Return(s) X.``; the answer is X.

The test set is every fifth page of the labeled docstrings (docstrings.jsonl), which pretraining never reads.
Training has the other labeled pages and, for volume (a few hundred labeled pages teach a tiny encoder
little), cloze questions on pages of the other modules' docstrings (stdlib/*.txt, pretraining text, as
SQuAD's Wikipedia was BERT's). Draws are seeded by the page's first name and text: a page's questions do not
depend on other pages.
"""

from __future__ import annotations

import random
import re
import zlib

PAGE_CHARS = 1200        # a page ends before the docstring that would take it past this
MAX_DOC_CHARS = 600      # a longer docstring is cut at a paragraph end (or left out when it has none)
QUESTIONS_PER_PAGE = 8   # cloze questions at most; return-value questions come besides
TEST_EVERY = 5
BLANK = "_____"
# Words too common to make a cloze answer: the answer should be a content word the sentence pins down.
_STOPWORDS = set("""about above after again against also although among another because been before being below
between both cannot could does doing down during each either every from further have having here into itself just
least less many might more most much must neither never none only other otherwise over same shall should since some
such than that their them then there these they this those through under until upon very were what when where
whether which while whom whose will with within without would your""".split())
_WORD = re.compile(r"\b[A-Za-z]{4,}\b")
_RETURNS = re.compile(r"^Returns? (?:an? |the )?(?P<answer>[A-Za-z][^.;:\n]{2,80}?)\.(?:\s|$)")


def _cut(text: str) -> str | None:
    """A docstring of at most MAX_DOC_CHARS characters: cut at its last paragraph end that fits."""
    if len(text) <= MAX_DOC_CHARS:
        return text
    cut = text.rfind("\n\n", 0, MAX_DOC_CHARS)
    return text[:cut] if cut > 40 else None


Entry = tuple  # (name or None, text, owner): a docstring or paragraph, and the module it belongs to


def _paginate(entries: list[Entry]) -> list[list[Entry]]:
    """Runs of entries of one owner, each run at most PAGE_CHARS characters as a context. A page of one entry
    alone is left out (a short context)."""
    pages: list[list[Entry]] = []
    current: list[Entry] = []
    size, module = 0, None
    for name, text, owner in entries:
        entry = len(name or "") + len(text) + 4
        if current and (owner != module or size + entry > PAGE_CHARS):
            pages.append(current)
            current, size = [], 0
        current.append((name, text, owner))
        size, module = size + entry, owner
    if current:
        pages.append(current)
    return [page for page in pages if len(page) >= 2]


def _labeled_pages(records: list[dict]) -> list[list[tuple[str | None, str]]]:
    entries = []
    for record in records:
        name, text = record["meta"]["name"], _cut(record["text"])
        if text is not None:
            entries.append((name, text, name if record["label"] == "module" else name.rsplit(".", 1)[0]))
    return [[(name, text) for name, text, _ in page] for page in _paginate(entries)]


def _stdlib_pages(texts: dict[str, str]) -> list[list[tuple[str | None, str]]]:
    """Pages of the unlabeled modules' docstrings (paragraphs of their text; the module's name opens a page)."""
    entries = [(None, paragraph, module) for module, text in texts.items() for paragraph in text.split("\n\n")
               if 40 <= len(paragraph) <= MAX_DOC_CHARS]
    return [[(page[0][2], page[0][1])] + [(None, text) for _, text, _ in page[1:]] for page in _paginate(entries)]


def _sentences(text: str, offset: int) -> list[tuple[int, str]]:
    """(offset, sentence) of a docstring's prose: paragraphs without code, examples or indented lines, split
    after . ! or ? before a capital letter."""
    found = []
    for paragraph in re.finditer(r"(?:[^\n]|\n(?!\s*\n))+", text):
        body = paragraph.group()
        if ">>>" in body or "::" in body or re.match(r"\s", body) or re.search(r"\n\s", body):
            continue
        start = 0
        for end in re.finditer(r"(?<=[.!?])\s+(?=[A-Z])|$", body):
            sentence = body[start:end.start()]
            if 5 <= len(sentence.split()) <= 30 and sentence.endswith((".", "!", "?")):
                found.append((offset + paragraph.start() + start, sentence))
            start = end.end()
    return found


def _questions(page: list[tuple[str | None, str]], returns_too: bool = True) -> tuple[str, list[dict]]:
    """A page's context and its questions (SQuAD's layout, with the kind of question in meta)."""
    parts, sentences, returns = [], [], []
    at = 0
    for name, text in page:
        head = f"{name}: " if name else ""
        sentences += _sentences(text, at + len(head))
        found = _RETURNS.match(text) if name and returns_too else None
        if found:
            returns.append((name, at + len(head) + found.start("answer"), found.group("answer")))
        parts.append(head + text)
        at += len(head) + len(text) + 2
    context = "\n\n".join(parts)
    rng = random.Random(zlib.crc32(context[:200].encode("utf-8")))
    questions = []
    eligible = [(start, sentence, words) for start, sentence in sentences
                if (words := [w for w in _WORD.finditer(sentence) if w.group().lower() not in _STOPWORDS])]
    for index in sorted(rng.sample(range(len(eligible)), min(len(eligible), QUESTIONS_PER_PAGE))):
        start, sentence, words = eligible[index]
        word = rng.choice(words)
        blanked = sentence[:word.start()] + BLANK + sentence[word.end():]
        questions.append({"question": "Fill in the blank: " + " ".join(blanked.split()),
                          "answers": {"text": [word.group()], "answer_start": [start + word.start()]},
                          "meta": {"kind": "cloze"}})
    for name, start, answer in returns:
        questions.append({"question": f"What does {name} return?",
                          "answers": {"text": [answer], "answer_start": [start]}, "meta": {"kind": "returns"}})
    for question in questions:
        answer, start = question["answers"]["text"][0], question["answers"]["answer_start"][0]
        assert context[start:start + len(answer)] == answer, (answer, context[start:start + 40])
    return context, questions


def _records(page: list[tuple[str | None, str]], source: str) -> list[dict]:
    context, questions = _questions(page, returns_too=source == "docstrings")
    return [{"id": f"{page[0][0]}#{index}", "question": question["question"], "context": context,
             "answers": question["answers"], "meta": {**question["meta"], "source": source}}
            for index, question in enumerate(questions)]


def qa_records(records: list[dict], stdlib: dict[str, str]) -> tuple[list[dict], list[dict]]:
    """(training, test) question records: the test set is every TEST_EVERY-th page of the labeled docstrings
    ``records``; training has the other labeled pages' questions, then those on the ``stdlib`` modules' pages."""
    train, test = [], []
    for number, page in enumerate(_labeled_pages(records)):
        (test if number % TEST_EVERY == TEST_EVERY - 1 else train).extend(_records(page, "docstrings"))
    for page in _stdlib_pages(stdlib):
        train += _records(page, "stdlib")
    return train, test
