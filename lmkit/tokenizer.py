"""Tokenizers: lmkit's own SentencePiece models (trained here, special tokens at fixed ids) and
tokenizers imported from Hugging Face (``tokenizer.json``, read with the ``tokenizers`` package, with
the special ids they came with: see ``lmkit/interop/tokenizers.py`` and ``lmkit.vocab.Specials``).

A tokenizer artifact holds either ``tokenizer.model`` (SentencePiece) or ``tokenizer.json`` and
``specials.json``; ``load(directory)`` returns the matching class, each with ``encode``,
``encode_batch``, ``decode``, ``id_to_piece``, ``vocab_size`` and ``specials``.

Every tokenizer lmkit trains has the same seven special tokens at the same ids, so later
stages never have to look them up:

    id  piece    use
    0   <pad>    padding (batched finetuning and generation)
    1   <unk>    never produced for text: byte fallback spells any unknown character in bytes
    2   <s>      beginning of sequence
    3   </s>     end of sequence; separates documents packed into one training window
    4   [MASK]   masked-LM corruption (BERT)
    5   [CLS]    start of an encoder input; its vector is pooled for classification
    6   [SEP]    end of an encoder segment

[MASK], [CLS] and [SEP] are control symbols: they are only ever inserted as ids, never
matched in text, so ``decode(encode(x)) == x`` for every string but one character: U+2581,
SentencePiece's space marker, decodes as a space (lmkit's cleaner maps it to a space first). SentencePiece's own
normalization is off ("identity") because lmkit's cleaner has already normalized the text.

Added tokens (``added_tokens.json``, a tokenizer artifact of format 2): tokens appended after the SentencePiece
vocabulary, at ids ``piece_size``, ``piece_size + 1`` ..., as Hugging Face's added tokens are. lmkit adds its
chat tokens (``<|im_start|>``, ``<|im_end|>``) this way, so that a tokenizer trained before chat existed gains
them without retraining. ``encode`` reads them as text, like every special token; ``encode_chat`` (the text a
chat template rendered) splits the text on the special and added tokens' strings first and encodes each piece
between them with SentencePiece, as transformers' tokenizer of the exported model does.
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import sentencepiece as spm

from lmkit import artifacts
from lmkit.errors import UserError
from lmkit.vocab import BOS_ID, CLS_ID, EOS_ID, LMKIT, MASK_ID, PAD_ID, SEP_ID, SPECIAL_TOKENS, UNK_ID, Specials

MODEL_FILE = "tokenizer.model"
HF_FILE = "tokenizer.json"           # an imported tokenizer (Hugging Face tokenizers' format)
SPECIALS_FILE = "specials.json"      # its special ids (lmkit.vocab.Specials)
ADDED_FILE = "added_tokens.json"     # tokens added after a SentencePiece vocabulary: {"tokens": [{content, id}]}
ADDED_FORMAT = 2                     # the tokenizer artifact format that has them (an older lmkit refuses it)

TOKENIZER_TYPES = ("bpe", "unigram")
# Byte fallback needs 256 byte pieces, plus the specials, plus room for real pieces.
MIN_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS) + 64
_TRAIN_THREADS = 4
# SentencePiece skips training sentences longer than this many bytes; we cut lines to fit.
_MAX_SENTENCE_BYTES = 4096


@dataclass(frozen=True)
class TrainSettings:
    type: str = "bpe"
    vocab_size: int = 8000
    character_coverage: float = 0.9995
    max_sentences: int = 5_000_000   # a last guard; callers bound the sample in bytes
    seed: int = 0


def training_sentences(texts: Iterable[str]) -> Iterator[str]:
    """Documents split into non-empty lines no longer than SentencePiece accepts."""
    for text in texts:
        for line in text.split("\n"):
            if not line.strip():
                continue
            while len(line.encode("utf-8")) > _MAX_SENTENCE_BYTES:
                cut = _MAX_SENTENCE_BYTES // 4  # characters; at most 4 bytes each in UTF-8
                yield line[:cut]
                line = line[cut:]
            yield line


def train(texts: Iterable[str], out_dir: Path, settings: TrainSettings) -> dict:
    """Train a model into ``out_dir/tokenizer.model``; returns training statistics."""
    counter = {"sentences": 0}
    sentences = training_sentences(texts)
    first = next(sentences, None)
    if first is None:  # SentencePiece would fail with an internal error
        raise UserError("no training text for the tokenizer (every document was dropped or empty)")

    def counted() -> Iterator[str]:
        for sentence in itertools.chain([first], sentences):
            counter["sentences"] += 1
            yield sentence

    spm.set_random_generator_seed(settings.seed)
    model = io.BytesIO()
    specials = SPECIAL_TOKENS
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=counted(),
            model_writer=model,  # not model_prefix: the model file would record that temporary path
            model_type=settings.type,
            vocab_size=settings.vocab_size,
            character_coverage=settings.character_coverage,
            byte_fallback=True,
            pad_id=specials["pad"][1], pad_piece=specials["pad"][0],
            unk_id=specials["unk"][1], unk_piece=specials["unk"][0],
            bos_id=specials["bos"][1], bos_piece=specials["bos"][0],
            eos_id=specials["eos"][1], eos_piece=specials["eos"][0],
            control_symbols=[specials[name][0] for name in ("mask", "cls", "sep")],
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            split_digits=True,
            allow_whitespace_only_pieces=True,
            input_sentence_size=settings.max_sentences,
            shuffle_input_sentence=True,
            max_sentence_length=_MAX_SENTENCE_BYTES * 2,
            hard_vocab_limit=False,
            # Fixed, not --workers: unigram training sums in thread order, so the thread count
            # changes the model, and the output must not depend on the machine.
            num_threads=_TRAIN_THREADS,
            minloglevel=2,
        )
    except RuntimeError as exc:
        message = " ".join(str(exc).split()) or repr(exc)
        if "smaller than required_chars" in message:
            raise UserError(f"--vocab-size {settings.vocab_size} is too small for the characters of this corpus "
                            f"(sentencepiece: {message}); raise --vocab-size or lower --character-coverage") from None
        if "Vocabulary size" in message or "vocab_size" in message:
            raise UserError(f"--vocab-size {settings.vocab_size} is too large for this corpus "
                            f"(sentencepiece: {message}); lower --vocab-size") from None
        raise UserError(f"tokenizer training failed (sentencepiece: {message})") from None
    (out_dir / MODEL_FILE).write_bytes(model.getvalue())
    tokenizer = Tokenizer(out_dir / MODEL_FILE)
    return {"training_sentences_seen": counter["sentences"], "vocab_size": tokenizer.vocab_size}


class Tokenizer:
    """A loaded SentencePiece model with lmkit's special ids, and the tokens added after its vocabulary."""

    pad_id, unk_id, bos_id, eos_id, mask_id, cls_id, sep_id = PAD_ID, UNK_ID, BOS_ID, EOS_ID, MASK_ID, CLS_ID, SEP_ID
    specials = LMKIT

    def __init__(self, model_path: str | Path, added: tuple[str, ...] = ()):
        self.model_path = Path(model_path)
        self.sp = spm.SentencePieceProcessor(model_file=str(self.model_path))
        for name, (piece, token_id) in SPECIAL_TOKENS.items():
            if self.sp.id_to_piece(token_id) != piece:
                raise UserError(f"{self.model_path}: not an lmkit tokenizer (id {token_id} is "
                                f"{self.sp.id_to_piece(token_id)!r}, expected {piece!r} for {name})")
        self.pieces = self.sp.get_piece_size()  # ids below this are SentencePiece's; added tokens follow
        self.added = tuple(added)
        if self.added:
            self.specials = dataclasses.replace(LMKIT, others=tuple(range(self.pieces, self.pieces + len(added))))
        # The strings encode_chat reads as tokens: the special pieces, then the added tokens (longest first).
        self._chat_ids = {piece: token_id for piece, token_id in SPECIAL_TOKENS.values()}
        self._chat_ids.update((token, self.pieces + i) for i, token in enumerate(self.added))
        self._chat_split = re.compile("(" + "|".join(map(re.escape, sorted(self._chat_ids, key=len, reverse=True)))
                                      + ")")

    @classmethod
    def from_artifact(cls, path: str | Path) -> "Tokenizer | HFTokenizer":
        """The tokenizer of a verified tokenizer artifact, lmkit's or imported."""
        return load(artifacts.load(path, kind="tokenizer").path)

    @property
    def vocab_size(self) -> int:
        return self.pieces + len(self.added)

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text)

    def token_id(self, text: str) -> int | None:
        """The id of the special or added token written ``text`` (what a chat template writes), else None."""
        return self._chat_ids.get(text)

    def encode_chat(self, text: str) -> list[int]:
        """The ids of a chat template's rendering: special and added tokens written in it are those tokens."""
        return self.encode_chat_offsets(text)[0]

    def encode_chat_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """``encode_chat``'s ids and each token's character span in ``text``. The text between two tokens is
        encoded alone, its dummy prefix included (transformers' Metaspace with prepend_scheme "always" after an
        added token: the exported tokenizer gives the same ids)."""
        ids: list[int] = []
        spans: list[tuple[int, int]] = []
        at = 0
        for part in self._chat_split.split(text):
            if not part:
                continue
            if part in self._chat_ids:
                ids.append(self._chat_ids[part])
                spans.append((at, at + len(part)))
            else:
                piece_ids, piece_spans = self.encode_offsets(part)
                ids += piece_ids
                spans += [(at + start, at + end) for start, end in piece_spans]
            at += len(part)
        return ids, spans

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.sp.encode(texts)

    def encode_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """The ids of ``text`` and each token's character span ``[start, end)`` in it (a token's leading
        space included, as in the text). Spans are aligned from the pieces themselves (no protobuf, the
        same in every sentencepiece version): normalization is identity, so a piece spells its text, "\u2581"
        a space (or a literal U+2581) and the first piece's leading "\u2581" the dummy prefix, which covers
        nothing; the byte pieces of one character each cover that character."""
        ids = self.sp.encode(text)
        spans: list[tuple[int, int]] = []
        at, pending, waiting = 0, bytearray(), 0
        for index, token in enumerate(ids):
            piece = self.sp.id_to_piece(token)
            if self.sp.is_byte(token):  # "<0xC3>": one byte of a character spelled in bytes
                pending.append(int(piece[3:-1], 16))
                waiting += 1
                try:
                    pending.decode("utf-8")
                except UnicodeDecodeError:  # not a whole character yet
                    continue
                spans += [(at, at + 1)] * waiting
                at, pending, waiting = at + 1, bytearray(), 0
                continue
            start = at
            for position, char in enumerate(piece):
                if char == "\u2581" and index == 0 and position == 0:
                    continue  # the dummy prefix
                if at >= len(text) or (text[at] != char and not (char == "\u2581" and text[at] == " ")):
                    raise ValueError(f"cannot align piece {piece!r} with the text at character {at}")  # a bug
                at += 1
            spans.append((start, at))
        return ids, spans

    def decode(self, ids: Iterable[int]) -> str:
        ids = list(ids)
        if not self.added or all(i < self.pieces for i in ids):
            return self.sp.decode(ids)
        text, run = [], []  # SentencePiece decodes its own ids; an added token is its string
        for token_id in ids:
            if token_id < self.pieces:
                run.append(token_id)
                continue
            if run:
                text.append(self.sp.decode(run))
                run = []
            text.append(self.added[token_id - self.pieces])
        if run:
            text.append(self.sp.decode(run))
        return "".join(text)

    def id_to_piece(self, token_id: int) -> str:
        if token_id >= self.pieces:
            return self.added[token_id - self.pieces]
        return self.sp.id_to_piece(token_id)


class HFTokenizer:
    """An imported Hugging Face tokenizer (byte-level BPE, WordPiece, SentencePiece-derived ...), read with
    the ``tokenizers`` package. ``encode`` gives the text's tokens only: the special tokens a model's
    inputs need ([CLS] ... [SEP], <s>) are added by the stage that frames them, from ``specials``, as for
    lmkit's own tokenizers. Special-token strings written in text are text, as in lmkit."""

    def __init__(self, path: str | Path, specials: Specials):
        try:
            from tokenizers import Tokenizer as Backend
        except ImportError:
            raise UserError(f"{path}: an imported tokenizer needs the tokenizers package: "
                            "pip install 'lmkit[hf]'") from None
        self.model_path = Path(path)
        try:
            self.backend = Backend.from_file(str(self.model_path))
        except Exception as exc:  # tokenizers raises a bare Exception on malformed JSON
            raise UserError(f"{self.model_path}: not a Hugging Face tokenizer.json ({exc})") from None
        self.backend.encode_special_tokens = True
        self._chat_backend = None  # the same tokenizer reading special tokens in text: see chat_backend
        self.specials = specials
        self.pad_id, self.eos_id, self.bos_id, self.unk_id = specials.pad, specials.eos, specials.bos, specials.unk
        self.mask_id, self.cls_id, self.sep_id = specials.mask, specials.cls, specials.sep

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return self.backend.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        # encode_batch_fast (tokenizers >= 0.20.2) skips the character offsets no caller of this needs. Its gain is
        # small and not steady: 1.05-1.2x on 6,000 documents alternating, within noise over a whole 44 MB corpus
        # (benchmarks/preprocess_peer.py's ceiling line measures both).
        encode = getattr(self.backend, "encode_batch_fast", self.backend.encode_batch)
        return [encoding.ids for encoding in encode(texts, add_special_tokens=False)]

    def encode_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """The ids of ``text`` and each token's character span ``[start, end)`` in it (the tokenizer's own
        offsets, into the text as given)."""
        encoding = self.backend.encode(text, add_special_tokens=False)
        return encoding.ids, [(int(start), int(end)) for start, end in encoding.offsets]

    def decode(self, ids: Iterable[int]) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=False)

    def id_to_piece(self, token_id: int) -> str:
        return self.backend.id_to_token(token_id) or ""

    @property
    def chat_backend(self):
        """The tokenizer as transformers uses it by default (``split_special_tokens=False``): a special token's
        string in the text is that token. A copy, so that ``encode`` keeps reading them as text."""
        if self._chat_backend is None:
            from tokenizers import Tokenizer as Backend

            self._chat_backend = Backend.from_str(self.backend.to_str())
            self._chat_backend.encode_special_tokens = False
        return self._chat_backend

    def token_id(self, text: str) -> int | None:
        """The id of the added (or special) token written ``text``, else None."""
        for token_id, token in self.backend.get_added_tokens_decoder().items():
            if token.content == text:
                return int(token_id)
        return None

    def encode_chat(self, text: str) -> list[int]:
        """The ids of a chat template's rendering, as transformers' apply_chat_template tokenizes it."""
        return self.chat_backend.encode(text, add_special_tokens=False).ids

    def encode_chat_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        encoding = self.chat_backend.encode(text, add_special_tokens=False)
        return encoding.ids, [(int(start), int(end)) for start, end in encoding.offsets]

    def frame(self, text: str) -> list[int]:
        """``text`` as the model's own tokenizer frames a prompt: transformers' ``tokenizer(text)`` with its
        default special-token handling (its post-processor's tokens, e.g. Llama's <s>; GPT-2 adds none)."""
        return self.chat_backend.encode(text, add_special_tokens=True).ids


def load(directory: str | Path) -> "Tokenizer | HFTokenizer":
    """The tokenizer stored in ``directory`` (an artifact's, already verified)."""
    directory = Path(directory)
    if (directory / HF_FILE).exists():
        return HFTokenizer(directory / HF_FILE, specials_in(directory))
    added = _added_tokens(directory)
    tokenizer = Tokenizer(directory / MODEL_FILE, tuple(token for token, _ in added))
    if any(token_id != tokenizer.pieces + i for i, (_, token_id) in enumerate(added)):
        raise UserError(f"{directory / ADDED_FILE}: the added tokens' ids do not follow the SentencePiece "
                        f"vocabulary of {tokenizer.pieces} pieces")
    return tokenizer


def _added_tokens(directory: Path) -> list[tuple[str, int]]:
    """(string, id) of each token added after the SentencePiece vocabulary in ``directory``, in id order."""
    path = directory / ADDED_FILE
    if not path.exists():
        return []
    try:
        return [(str(entry["content"]), int(entry["id"])) for entry in json.loads(path.read_text())["tokens"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{path}: not a list of added tokens ({exc})") from None


def specials_in(directory: str | Path) -> Specials:
    """The special ids of the tokenizer in ``directory``, without loading it: an imported tokenizer's
    specials.json, else lmkit's fixed ids (and its added tokens, as others)."""
    path = Path(directory) / SPECIALS_FILE
    if not path.exists():
        added = _added_tokens(Path(directory))
        return dataclasses.replace(LMKIT, others=tuple(i for _, i in added)) if added else LMKIT
    return Specials.from_dict(json.loads(path.read_text()))


def with_added_tokens(tokenizer: artifacts.Artifact, tokens: list[str], out: Path) -> artifacts.Artifact:
    """A tokenizer artifact at ``out`` (a new directory): ``tokenizer`` with ``tokens`` added after its vocabulary
    as special tokens. lmkit's SentencePiece tokenizers gain an ``added_tokens.json`` (format 2); an imported
    one's tokenizer.json gains them as added tokens, as transformers' ``add_special_tokens`` does."""
    loaded = load(tokenizer.path)
    out.mkdir(parents=True)
    if isinstance(loaded, HFTokenizer):
        from tokenizers import AddedToken

        backend = loaded.backend.__class__.from_str(loaded.backend.to_str())
        backend.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in tokens])
        backend.save(str(out / HF_FILE))
        ids = [backend.token_to_id(token) for token in tokens]
        specials = dataclasses.replace(loaded.specials, others=tuple(sorted({*loaded.specials.others, *ids})))
        (out / SPECIALS_FILE).write_text(json.dumps(specials.to_dict(), indent=2) + "\n")
        version = None
    else:
        shutil.copy2(tokenizer.path / MODEL_FILE, out / MODEL_FILE)
        entries = [{"content": token, "id": loaded.pieces + i} for i, token in enumerate([*loaded.added, *tokens])]
        (out / ADDED_FILE).write_text(json.dumps({"tokens": entries}, indent=2, ensure_ascii=False) + "\n")
        version = ADDED_FORMAT
    grown = load(out)
    config = {**tokenizer.config, "added_tokens": [*tokenizer.config.get("added_tokens", []), *tokens]}
    recipe = artifacts.make_recipe("tokenizer", {"base": tokenizer.id, "added_tokens": tokens}, [],
                                   [{"role": "base", "id": tokenizer.id}])
    parent = {"role": "base", "path": str(tokenizer.path.resolve()), "id": tokenizer.id}  # absolute: copies move
    artifacts.seal(out, "tokenizer", recipe, config, {"artifacts": [parent], "files": []},
                   {**tokenizer.stats, "vocab_size": grown.vocab_size}, version)
    return artifacts.load(out, kind="tokenizer")


def token_dtype_name(vocab_size: int) -> str:
    """The smallest unsigned integer type that holds every id."""
    return "uint16" if vocab_size <= 1 << 16 else "uint32"
