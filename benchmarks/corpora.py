"""Build three real labeled text-classification corpora from text that ships in Debian packages.

For an experiment that sets a pretrained+finetuned transformer against a TF-IDF baseline, each corpus
has a labeled set (a few thousand short texts, 5-10 topical classes) and, from the same source but from
other documents, an unlabeled set for self-supervised pretraining:

* ``debian``: Debian package descriptions (short + long description, from ``apt-cache dumpavail``
  joined by Description-md5 with the archive's Translation-en index, fetched once with
  ``apt-get update -o Acquire::Languages=en`` when missing) labeled by the package's Section. Ten
  topical sections that overlap enough not to be trivial (net/web/mail/admin, science/math,
  sound/graphics, database); none of the catch-alls (utils, misc, devel), the packaging kinds (libs,
  libdevel, doc) or the language sections (python, perl...) whose texts name their label. A source
  package yields at most one labeled text, and no binary package of a labeled source package is in the
  unlabeled set, so the -dev/-doc/-data variants that repeat one description leak nothing.
* ``fortunes``: the fortune cookies of Debian's ``fortunes`` and ``fortunes-min``, one class per topical
  file (computers, science, politics, law, food, sports...); the other files and the entries not sampled
  are the unlabeled set. Short, witty and loosely filed: the hardest of the three. ``literature`` is
  left out: it is quotations recognisable by their authors (Twain, Shakespeare) rather than by a topic.
* ``wordnet``: WordNet 3.0 synsets (``wordnet-base``) labeled by the noun synset's lexicographer file,
  a human-assigned supersense: act, animal, artifact, body, cognition, communication, food, person,
  plant, substance (the abstract act/cognition/communication keep it from being easy; location was
  dropped as too easy). Text = the synset's words and gloss ("dog, domestic dog, Canis familiaris:
  a member of the genus Canis..."); the unlabeled set is every other synset, nouns, verbs, adjectives
  and adverbs alike.

Man pages by section were the other candidate (Debian's ``manpages`` and ``manpages-dev`` are nearly all
sections 2, 3 and 7, and a section is a kind of document rather than a topic), and Python's library
reference (``python3-doc``) was left out as too close to the demo corpus, made of Python's docstrings.

Each corpus is deduplicated (by lowercased words), restricted to 40-1,500 characters per labeled text,
capped per class at MAX_PER_CLASS and at 3x the smallest class, sampled and shuffled with a fixed seed:
the same apt lists and packages give the same bytes. The unlabeled set holds none of the labeled texts
(nor any text equal to one after normalisation) and is shuffled too.

    python benchmarks/corpora.py --out /tmp/corpora [--only debian|fortunes|wordnet]

writes OUT/NAME/labeled.jsonl ({"text", "label"}), OUT/NAME/unlabeled.jsonl ({"text"}) and
OUT/NAME/info.json (source, packages and versions, counts per class, sizes).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import NoReturn

SEED = 1234
MIN_CHARS, MAX_CHARS = 40, 1500
MAX_PER_CLASS = 600
DEBIAN_SECTIONS = ["admin", "database", "games", "graphics", "mail", "math", "net", "science", "sound", "web"]
FORTUNE_FILES = ["computers", "drugs", "education", "food", "law", "love", "politics", "science", "sports", "work"]
FORTUNES_DIR = Path("/usr/share/games/fortunes")
WORDNET_DIR = Path("/usr/share/wordnet")
# Every update here fetches the English long descriptions too (Debian's Docker images turn them off), so
# installing a package cannot delete the lists the debian corpus reads.
APT_UPDATE = ["apt-get", "update", "-q", "-o", "Acquire::Languages=en"]
# lexnames(5WN): the lexicographer file numbers of WordNet 3.0 (Debian's wordnet-base omits the file).
LEXNAMES = ("adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body "
            "noun.cognition noun.communication noun.event noun.feeling noun.food noun.group noun.location "
            "noun.motive noun.object noun.person noun.phenomenon noun.plant noun.possession noun.process "
            "noun.quantity noun.relation noun.shape noun.state noun.substance noun.time verb.body verb.change "
            "verb.cognition verb.communication verb.competition verb.consumption verb.contact verb.creation "
            "verb.emotion verb.motion verb.perception verb.possession verb.social verb.stative verb.weather "
            "adj.ppl").split()
WORDNET_CLASSES = ["act", "animal", "artifact", "body", "cognition", "communication", "food", "person", "plant",
                   "substance"]


def fail(message: str) -> NoReturn:
    sys.exit(f"corpora.py: error: {message}")


def run(*cmd: str) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        fail(f"{' '.join(cmd)} failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    return proc.stdout


def installed_version(pkg: str) -> str | None:
    proc = subprocess.run(["dpkg-query", "-W", "-f", "${Status} ${Version}", pkg], capture_output=True, text=True)
    fields = proc.stdout.split()
    return fields[-1] if proc.returncode == 0 and fields[:3] == ["install", "ok", "installed"] else None


def ensure_packages(*pkgs: str) -> dict[str, str]:
    """Install the Debian packages that are missing (apt-get update first if apt does not know them)."""
    missing = [p for p in pkgs if installed_version(p) is None]
    if missing:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing]
        if subprocess.run(install, capture_output=True, env=env).returncode != 0:
            subprocess.run(APT_UPDATE, capture_output=True, env=env)
            proc = subprocess.run(install, capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                fail(f"cannot install {' '.join(missing)} with apt-get (root and deb.debian.org needed): "
                     f"{(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    return {p: installed_version(p) for p in pkgs}


def norm_key(text: str) -> str:
    return " ".join(re.findall(r"\w+", text.lower()))


def shingles(text: str, n: int = 5) -> set[str]:
    words = norm_key(text).split()
    return {" ".join(words[i:i + n]) for i in range(max(1, len(words) - n + 1))}


def near_duplicates(shared: int, a: int, b: int) -> bool:
    """Two texts of a and b shingles sharing `shared`: Jaccard 0.5+, or 80% of one of 8+ shingles in the other."""
    return 2 * shared >= a + b - shared or (min(a, b) >= 8 and shared >= 0.8 * min(a, b))


def build(name: str, docs: list[tuple[str, str, str | None]], out: Path, info: dict,
          max_per_class: int = MAX_PER_CLASS) -> None:
    """docs: (group, text, label or None), in a deterministic order. Samples the labeled set by class with
    at most one text per group (its first usable labeled text); every other group's texts go to the
    unlabeled set unless they equal or nearly equal a labeled text."""
    rng = random.Random(SEED)
    labels_of = collections.defaultdict(set)
    for _, text, label in docs:
        if label is not None:
            labels_of[norm_key(text)].add(label)
    by_class = collections.defaultdict(dict)  # label -> {group: text}; first usable text of a group
    taken, used_groups = set(), set()
    for group, text, label in docs:
        key = norm_key(text)
        if (label is None or not MIN_CHARS <= len(text) <= MAX_CHARS or len(labels_of[key]) > 1
                or key in taken or group in used_groups):
            continue
        by_class[label][group] = text
        taken.add(key)
        used_groups.add(group)
    cap = min(max_per_class, 3 * min(len(g) for g in by_class.values()))
    labeled, labeled_groups = [], set()
    for label in sorted(by_class):
        groups = sorted(by_class[label])
        rng.shuffle(groups)
        for group in groups[:cap]:
            labeled.append((by_class[label][group], label))
            labeled_groups.add(group)
    labeled.sort()
    rng.shuffle(labeled)
    # Near-duplicates of labeled texts (by their 5-word shingles) stay out of the unlabeled set too.
    index, sizes = collections.defaultdict(list), []
    for i, (text, _) in enumerate(labeled):
        sizes.append(len(shingles(text)))
        for s in shingles(text):
            index[s].append(i)
    unlabeled, seen, near = [], {norm_key(t) for t, _ in labeled}, 0
    for group, text, _ in docs:
        key = norm_key(text)
        if group in labeled_groups or key in seen or len(text) < 20:
            continue
        seen.add(key)
        own = shingles(text)
        hits = collections.Counter(i for s in own for i in index.get(s, ()))
        if any(near_duplicates(c, sizes[i], len(own)) for i, c in hits.items()):
            near += 1
        else:
            unlabeled.append(text)
    rng.shuffle(unlabeled)
    directory = out / name
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "labeled.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"text": t, "label": label}, ensure_ascii=False) + "\n" for t, label in labeled)
    with open(directory / "unlabeled.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in unlabeled)
    counts = collections.Counter(label for _, label in labeled)
    info = {"corpus": name, **info, "seed": SEED, "classes": dict(sorted(counts.items())),
            "labeled": {"texts": len(labeled), "bytes": (directory / "labeled.jsonl").stat().st_size},
            "unlabeled": {"texts": len(unlabeled), "bytes": (directory / "unlabeled.jsonl").stat().st_size,
                          "near_duplicates_of_labeled_dropped": near}}
    (directory / "info.json").write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"{name}: {len(labeled)} labeled texts in {len(counts)} classes ({min(counts.values())}-"
          f"{max(counts.values())} per class, {info['labeled']['bytes'] / 1e6:.2f} MB), {len(unlabeled)} "
          f"unlabeled texts ({info['unlabeled']['bytes'] / 1e6:.2f} MB, {near} near-duplicates of labeled ones "
          f"dropped) -> {directory}")


def apt_index_files(created_by: str, *extra: str) -> list[str]:
    return run("apt-get", "-o", "Acquire::Languages=en", "indextargets", "--format", "$(FILENAME)",
               f"Created-By: {created_by}", *extra).split()


def release_of(index_file: str) -> str:
    """'bookworm 12.15 (<date>)': the release an apt index file comes from, read from its InRelease."""
    prefix = re.match(r"(.*_dists_[^_]+)_", index_file)
    for suffix in ("_InRelease", "_Release"):
        if prefix and os.path.exists(prefix.group(1) + suffix):
            head = open(prefix.group(1) + suffix, encoding="utf-8", errors="replace").read(4000)
            fields = dict(re.findall(r"^(Suite|Codename|Version|Date): (.*)$", head, re.M))
            return f"{fields.get('Codename', '?')} {fields.get('Version', '')} ({fields.get('Date', '?')})"
    return "?"


def debian_text(short: str, long: str) -> str:
    """The short description, then a line per paragraph of the long one (whose lines start with a space;
    " ." separates paragraphs, and a line indented further, such as a list item, is a line of its own)."""
    lines, joinable = [short], False
    for line in long.split("\n"):
        line = line[1:]
        if not line.strip() or line.strip() == ".":
            joinable = False
        elif line.startswith((" ", "\t")):
            lines.append(line.strip())
            joinable = False
        elif joinable:
            lines[-1] += " " + line.strip()
        else:
            lines.append(line.strip())
            joinable = True
    return "\n".join(re.sub(r"\s+", " ", line).strip() for line in lines)


def debian_corpus(out: Path) -> None:
    translations = apt_index_files("Translations", "Language: en")
    if not translations or not all(os.path.exists(f) for f in translations):
        print(f"debian: fetching the long descriptions ({' '.join(APT_UPDATE)})", file=sys.stderr)
        run(*APT_UPDATE)
        translations = [f for f in apt_index_files("Translations", "Language: en") if os.path.exists(f)]
    long_desc = {}
    for path in translations:
        for rec in run("/usr/lib/apt/apt-helper", "cat-file", path).split("\n\n"):
            md5 = re.search(r"^Description-md5: (\S+)$", rec, re.M)
            desc = re.search(r"^Description-en: .*((?:\n .*)*)", rec, re.M)
            if md5 and desc:
                long_desc[md5.group(1)] = desc.group(1)
    docs = []
    for rec in run("apt-cache", "dumpavail").split("\n\n"):
        f = dict(re.findall(r"^([\w-]+): (.*)$", rec, re.M))
        if "Package" not in f or "Description" not in f:
            continue
        text = debian_text(f["Description"], long_desc.get(f.get("Description-md5"), ""))
        section = f.get("Section", "").split("/")[-1]
        source = f.get("Source", f["Package"]).split()[0]
        label = section if section in DEBIAN_SECTIONS else None
        # A source's labeled text: the binary named after the source first, then the shortest name.
        docs.append(((source, f["Package"] != source, len(f["Package"]), f["Package"]), text, label))
    docs = [(rank[0], text, label) for rank, text, label in sorted(docs)]
    files = apt_index_files("Packages") + translations
    build("debian", docs, out, {
        "source": "Debian package descriptions (apt-cache dumpavail + Translation-en), labeled by Section",
        "packages": {"apt": installed_version("apt")},
        "apt_lists": {os.path.basename(p): release_of(p) for p in files}})


def fortunes_corpus(out: Path) -> None:
    versions = ensure_packages("fortunes", "fortunes-min")
    docs = []
    for path in sorted(FORTUNES_DIR.iterdir()):
        if "." in path.name or path.is_symlink() or not path.is_file():
            continue
        raw = path.read_text(encoding="utf-8", errors="replace")
        raw = re.sub(r".\x08", "", raw)  # overstriking (underlined or bold text)
        for i, entry in enumerate(re.split(r"(?m)^%\s*$", raw)):
            lines = [re.sub(r"[ \t]+", " ", line).strip() for line in entry.splitlines()]
            text = re.sub(r"[^\S\n]+|[\x00-\x09\x0b-\x1f]", " ", "\n".join(line for line in lines if line)).strip()
            if text:
                label = path.name if path.name in FORTUNE_FILES else None
                docs.append((f"{path.name}:{i:05d}", text, label))
    build("fortunes", docs, out, {
        "source": f"Debian fortune cookie files ({FORTUNES_DIR}), labeled by file", "packages": versions})


def wordnet_corpus(out: Path) -> None:
    versions = ensure_packages("wordnet-base")
    docs = []
    for pos in ("noun", "verb", "adj", "adv"):
        for line in open(WORDNET_DIR / f"data.{pos}", encoding="utf-8", errors="replace"):
            if line.startswith("  ") or " | " not in line:  # the license header
                continue
            fields, gloss = line.split(" | ", 1)
            offset, lexfile, _, count, *rest = fields.split()
            words = [rest[2 * i].replace("_", " ") for i in range(int(count, 16))]
            words = [re.sub(r"\((?:a|p|ip)\)$", "", w) for w in words]  # adjective markers
            text = f"{', '.join(words)}: {gloss.strip()}"
            lexname = LEXNAMES[int(lexfile)]
            label = lexname[5:] if lexname.startswith("noun.") and lexname[5:] in WORDNET_CLASSES else None
            docs.append((f"{pos}:{offset}", text, label))
    build("wordnet", docs, out, {
        "source": f"WordNet 3.0 synsets ({WORDNET_DIR}/data.*): words and gloss, labeled by the noun "
                  "lexicographer file (supersense)", "packages": versions})


CORPORA = {"debian": debian_corpus, "fortunes": fortunes_corpus, "wordnet": wordnet_corpus}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="output directory (one folder per corpus)")
    parser.add_argument("--only", choices=sorted(CORPORA), help="build this corpus alone")
    args = parser.parse_args()
    for tool in ("apt-get", "apt-cache", "dpkg-query"):
        if shutil.which(tool) is None:
            fail(f"{tool} not found: the corpora come from Debian packages, so this needs Debian or a derivative")
    for name in [args.only] if args.only else list(CORPORA):
        CORPORA[name](args.out)


if __name__ == "__main__":
    main()
