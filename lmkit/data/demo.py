"""The built-in demo corpus: Python's own documentation, present wherever Python is.

* ``topics/*.txt``: the language reference topics bundled for ``help()`` (``pydoc_data``),
  about half a megabyte of technical English prose and code.
* ``docstrings.jsonl``: docstrings of standard-library modules, classes and functions, labeled
  ``module``, ``class`` or ``function``: a small labeled set for classification.
* ``instructions.jsonl`` and ``instructions-test.jsonl`` (every tenth pair, held out):
  instruction/response pairs made from the same docstrings, for instruction tuning: the prompt
  asks for the kind of object a docstring documents and its first line; the response answers in
  a fixed format, ``KIND: FIRST LINE``.
* ``chats.jsonl`` and ``chats-test.jsonl`` (every tenth held out): conversations for chat finetuning in
  OpenAI's ``messages`` layout, made from the same docstrings: a system prompt, the user showing a docstring
  and the assistant quoting its first word, then the user asking what kind of object it documents, which the
  assistant can only answer from the earlier turn (``module``, ``class`` or ``function``).
* ``qa.jsonl`` and ``qa-test.jsonl`` (every fifth page held out): extractive question answering in SQuAD's
  layout over pages of the same docstrings (cloze and return-value questions; see demo_qa.py).
* ``pairs.jsonl`` and ``pairs-test.jsonl`` (every tenth held out): text pairs for pair classification, a
  docstring's first line and the rest of it (``match``) or of another docstring (``mismatch``), balanced
  (see demo_pairs.py).
* ``arithmetic*.jsonl``: two-digit additions for SFT, preference tuning and RL with a checked answer (see
  demo_arithmetic.py).
* ``stdlib/*.txt``: the docstrings of every other standard-library module (read from the source
  with ``ast``, nothing imported), about 0.7 MB of unlabeled text in the labeled set's domain, for
  pretraining. The labeled modules are left out, so no labeled text is seen in pretraining.

Nothing is downloaded. The exact text depends on the Python version, which is fine for a demo.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import re
import sysconfig
from pathlib import Path

from lmkit.data.demo_arithmetic import arithmetic_sets
from lmkit.data.demo_pairs import pair_records
from lmkit.data.demo_qa import qa_records

# Pure-Python modules with substantial docstrings that import without side effects.
_MODULES = (
    "abc argparse ast asyncio base64 bisect calendar collections configparser contextlib copy csv "
    "dataclasses datetime decimal difflib email.message enum fractions functools gettext glob gzip "
    "heapq hmac html.parser http.client inspect ipaddress itertools json logging mailbox mimetypes "
    "numbers operator optparse os pathlib pickle pprint queue random re shlex shutil smtplib socket "
    "statistics string struct subprocess tarfile tempfile textwrap threading timeit tokenize typing "
    "unittest urllib.parse uuid warnings weakref zipfile"
).split()


# Not pretraining text: tests, GUIs and demos (their docstrings are few and odd), and third-party packages.
_SKIPPED_PACKAGES = {"test", "tests", "idlelib", "tkinter", "turtledemo", "lib2to3", "site-packages", "__pycache__"}


def _stdlib_texts(labeled_texts: set[str]) -> dict[str, str]:
    """{module name: its docstrings (of at least 40 characters) joined by blank lines} for standard-library
    modules outside the labeled set, parsed from source. A docstring containing a labeled one (``_pydecimal``
    repeats ``decimal``'s) is left out: pretraining must not see the labeled texts."""
    root = Path(sysconfig.get_paths()["stdlib"])
    labeled = {name.split(".")[0] for name in _MODULES}
    texts = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[0] in labeled or _SKIPPED_PACKAGES.intersection(parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue  # a few files are deliberately broken or not UTF-8 (they exist to test Python)
        docs = [doc for node in ast.walk(tree)
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                and (doc := ast.get_docstring(node)) and len(doc) >= 40
                and not any(text in doc for text in labeled_texts)]
        if docs:
            texts[".".join(parts)] = "\n\n".join(docs) + "\n"
    return texts


def _write_if_changed(path: Path, text: str) -> bool:
    """Keep file times (and so Make's view) unchanged when the content is the same."""
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return False
    path.write_text(text, encoding="utf-8")
    return True


def _docstrings() -> list[dict]:
    records, seen = [], set()
    for module_name in _MODULES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:  # a trimmed-down Python may lack one; the demo does not need all
            continue
        members = [(module_name, "module", module)]
        for name, member in sorted(vars(module).items()):
            if name.startswith("_") or getattr(member, "__module__", None) != module.__name__:
                continue
            if inspect.isclass(member):
                members.append((f"{module_name}.{name}", "class", member))
            elif inspect.isfunction(member):
                members.append((f"{module_name}.{name}", "function", member))
        for qualified, label, obj in members:
            doc = inspect.getdoc(obj)
            if not doc or len(doc) < 40 or doc in seen:
                continue
            seen.add(doc)
            records.append({"text": doc, "label": label, "meta": {"name": qualified}})
    return records


INSTRUCTION = "What does this docstring document? Answer with its kind and first line.\n\n"


def _instructions(records: list[dict]) -> list[dict]:
    """One instruction per docstring: its first paragraph (at most 150 characters) as the prompt,
    ``KIND: FIRST LINE`` as the response."""
    pairs = []
    for record in records:
        paragraph = record["text"].split("\n\n")[0][:150]
        first_line = record["text"].split("\n")[0].strip()
        pairs.append({"prompt": INSTRUCTION + paragraph, "response": f"{record['label']}: {first_line}",
                      "meta": record["meta"]})
    return pairs


CHAT_SYSTEM = "Answer briefly."


def _chats(records: list[dict]) -> list[dict]:
    """One conversation per docstring: its first paragraph (at most 120 characters) shown and its first word
    quoted, then the kind of object it documents asked for (the answer depends on the first turn, not on the
    question)."""
    chats = []
    for record in records:
        paragraph = record["text"].split("\n\n")[0][:120]
        messages = [{"role": "system", "content": CHAT_SYSTEM},
                    {"role": "user", "content": f"Here is a docstring:\n\n{paragraph}"},
                    {"role": "assistant", "content": f"It starts with \"{paragraph.split()[0]}\"."},
                    {"role": "user", "content": "What kind of object does it document?"},
                    {"role": "assistant", "content": f"A {record['label']}."}]
        chats.append({"messages": messages, "meta": record["meta"]})
    return chats


def write_demo_corpus(out: Path) -> dict:
    """Write the corpus under ``out``; returns counts. Unchanged files are not rewritten."""
    import pydoc_data.topics

    topics_dir = out / "topics"
    topics_dir.mkdir(parents=True, exist_ok=True)
    changed = 0
    for name, text in sorted(pydoc_data.topics.topics.items()):
        safe = re.sub(r"[^A-Za-z0-9_-]+", "_", name)
        changed += _write_if_changed(topics_dir / f"{safe}.txt", text)
    records = _docstrings()
    lines = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
    changed += _write_if_changed(out / "docstrings.jsonl", lines)
    stdlib_dir = out / "stdlib"
    stdlib_dir.mkdir(exist_ok=True)
    stdlib = _stdlib_texts({record["text"] for record in records})
    for name, text in stdlib.items():
        changed += _write_if_changed(stdlib_dir / f"{name}.txt", text)
    pairs = _instructions(records)
    for name, chosen in (("instructions.jsonl", [p for i, p in enumerate(pairs) if i % 10 != 9]),
                         ("instructions-test.jsonl", pairs[9::10])):  # every tenth pair held out for evaluation
        changed += _write_if_changed(out / name, "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in chosen))
    chats = _chats(records)
    for name, chosen in (("chats.jsonl", [c for i, c in enumerate(chats) if i % 10 != 9]),
                         ("chats-test.jsonl", chats[9::10])):  # every tenth conversation held out
        changed += _write_if_changed(out / name, "".join(json.dumps(c, ensure_ascii=False) + "\n" for c in chosen))
    qa_train, qa_test = qa_records(records, stdlib)
    for name, chosen in (("qa.jsonl", qa_train), ("qa-test.jsonl", qa_test)):
        changed += _write_if_changed(out / name, "".join(json.dumps(q, ensure_ascii=False) + "\n" for q in chosen))
    pairs_train, pairs_test = pair_records(records)
    for name, chosen in (("pairs.jsonl", pairs_train), ("pairs-test.jsonl", pairs_test)):
        changed += _write_if_changed(out / name, "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in chosen))
    arithmetic = arithmetic_sets()
    for name, chosen in arithmetic.items():
        changed += _write_if_changed(out / name, "".join(json.dumps(r) + "\n" for r in chosen))
    return {"topics": len(pydoc_data.topics.topics), "docstrings": len(records), "stdlib_modules": len(stdlib),
            "text_pairs": len(pairs_train) + len(pairs_test), "conversations": len(chats),
            "qa_questions": len(qa_train) + len(qa_test),
            "arithmetic_problems": sum(len(records) for records in arithmetic.values()),
            "files_changed": changed,
            "bytes": sum(p.stat().st_size for p in out.rglob("*") if p.is_file())}
