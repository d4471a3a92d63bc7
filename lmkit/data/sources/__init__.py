"""Reading documents from raw inputs: plain text, JSON Lines, JSON arrays, CSV/TSV, Parquet and
Arrow, optionally gzip/bzip2/xz/zstd-compressed, streamed with memory bounded by --max-record-bytes.

Cleaning happens later; this package finds the input files, decodes them, and turns bad input into
one ``UserError`` line naming the file and line (or skips and counts it with --skip-bad-records).
Its modules, in the order data flows: ``options`` (ReadOptions, RawDocument), ``inputs`` (finding
inputs, format by suffix), ``streams`` (opening, decompression, lines, decoding, bad records), the
readers ``text``, ``records`` (JSON, CSV/TSV) and ``columnar`` (Parquet/Arrow), and ``documents``
(iter_documents, dispatching one input to its reader).
"""

from lmkit.data.sources.documents import iter_documents
from lmkit.data.sources.inputs import COMPRESSION_SUFFIXES, SUPPORTED_SUFFIXES, resolve_inputs
from lmkit.data.sources.options import ENCODING_ERRORS, INPUT_FORMATS, SPLIT_MODES, RawDocument, ReadOptions

__all__ = ["COMPRESSION_SUFFIXES", "ENCODING_ERRORS", "INPUT_FORMATS", "SPLIT_MODES", "SUPPORTED_SUFFIXES",
           "RawDocument", "ReadOptions", "iter_documents", "resolve_inputs"]
