"""Parallel text and token pairs: the data of translation models.

* :func:`read_parallel` / :func:`multi30k` read raw sentence pairs from the standard files
  (one sentence a line, UTF-8, plain or gzipped, line numbers aligned across the two
  languages): Multi30k's ``{train,val,test_2016_flickr}.{en,de}[.gz]``.
* :class:`TokenPairs` holds pairs of token-id sequences (what a tokenizer made of the
  text) and collates any subset into a padded :class:`TokenBatch`;
  :class:`TokenPairDataset` is a trainer dataset (see :mod:`dqkernels.data.examples`) of
  such splits. :func:`encode_pairs` turns raw pairs into :class:`TokenPairs` with any
  tokenizer's ``encode`` functions.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from dqkernels.data.examples import DataFileError
from dqkernels.data.files import read_bounded
from dqkernels.data.images import _find_data_file, default_data_dir

__all__ = [
    "ParallelText",
    "TokenBatch",
    "TokenPairs",
    "TokenPairDataset",
    "MULTI30K_SPLITS",
    "encode_pairs",
    "multi30k",
    "read_parallel",
    "read_text_lines",
]

#: Multi30k (task 1) file stems of our split names
MULTI30K_SPLITS = {"train": "train", "valid": "val", "test": "test_2016_flickr"}
#: the most (decompressed bytes, lines) a Multi30k file of each split may hold: about four
#: times the real files' (train: 2.1 MB and 29,000 lines in German, 1.8 MB in English;
#: val and test_2016_flickr: 76 KB / 1,014 lines and 71 KB / 1,000 lines at the most)
_MULTI30K_LIMITS = {
    "train": (8 << 20, 116_000),
    "valid": (320 << 10, 4_056),
    "test": (320 << 10, 4_000),
}


# ----------------------------------------------------------------------------- raw text


#: the most bytes (decompressed) and lines :func:`read_text_lines` accepts from a file by
#: default: a generic cap; the loaders of a known corpus pass their own
_TEXT_MAX_BYTES = 256 << 20
_TEXT_MAX_LINES = 4_000_000


def read_text_lines(
    path: str, max_bytes: int = _TEXT_MAX_BYTES, max_lines: int = _TEXT_MAX_LINES
) -> list[str]:
    """The lines of a UTF-8 text file (``.gz`` is decompressed as it is read), without
    line endings. A file of more than ``max_bytes`` bytes (decompressed; reading stops
    there) or ``max_lines`` lines, a truncated or corrupt gzip stream, or bytes that are
    not UTF-8 raise :class:`~dqkernels.data.DataFileError` naming the file (and the line,
    for bad UTF-8)."""
    path = os.fspath(path)
    raw = read_bounded(path, max_bytes, "this text file")
    lines = raw.count(b"\n") + (not raw.endswith(b"\n") and bool(raw))
    if lines > max_lines:
        raise DataFileError(
            f"{path}: {lines:,} lines, more than the {max_lines:,} this file may hold"
        )
    out = []
    for lineno, line in enumerate(raw.split(b"\n")[:lines], start=1):
        try:
            out.append(line.decode("utf-8").rstrip("\r"))
        except UnicodeDecodeError as exc:
            raise DataFileError(
                f"{path}, line {lineno}: not UTF-8 text ({exc.reason} at byte {exc.start})"
            ) from None
    return out


def _text_path(data_dir: str, stem: str, lang: str, what: str) -> str:
    return _find_data_file(data_dir, f"{stem}.{lang}", what)


def read_parallel(
    data_dir: str,
    stem: str,
    src_lang: str,
    tgt_lang: str,
    what: str = "parallel text",
    max_bytes: int = _TEXT_MAX_BYTES,
    max_lines: int = _TEXT_MAX_LINES,
) -> list[tuple[str, str]]:
    """Sentence pairs from ``<stem>.<src_lang>[.gz]`` and ``<stem>.<tgt_lang>[.gz]`` in
    ``data_dir``; the two files must have the same number of lines, each at most
    ``max_lines`` lines and ``max_bytes`` bytes (see :func:`read_text_lines`)."""
    src_path = _text_path(data_dir, stem, src_lang, what)
    tgt_path = _text_path(data_dir, stem, tgt_lang, what)
    src, tgt = (read_text_lines(p, max_bytes, max_lines) for p in (src_path, tgt_path))
    if len(src) != len(tgt):
        raise DataFileError(
            f"{src_path} has {len(src)} lines but {tgt_path} has {len(tgt)}; the lines of "
            f"a parallel corpus ({what}) must align"
        )
    return list(zip(src, tgt))


@dataclass
class ParallelText:
    """Raw sentence pairs per split (``"train"``, ``"valid"``, ``"test"``)."""

    name: str
    src_lang: str
    tgt_lang: str
    splits: dict[str, list[tuple[str, str]]]


def multi30k(
    data_dir: str | None = None, src_lang: str = "en", tgt_lang: str = "de"
) -> ParallelText:
    """Multi30k task 1 (29,000 / 1,014 / 1,000 pairs: train / val / test_2016_flickr) from
    ``data_dir`` (default ``../shared/data/multi30k``), raw and untokenised. A file larger
    than about four times the real one raises :class:`~dqkernels.data.DataFileError`."""
    data_dir = default_data_dir("multi30k") if data_dir is None else os.fspath(data_dir)
    splits = {
        name: read_parallel(data_dir, stem, src_lang, tgt_lang, "multi30k", *_MULTI30K_LIMITS[name])
        for name, stem in MULTI30K_SPLITS.items()
    }
    return ParallelText("multi30k", src_lang, tgt_lang, splits)


# ----------------------------------------------------------------------------- token pairs


@dataclass
class TokenBatch:
    """Padded token ids of ``B`` pairs: ``src`` int64 ``[B, S]``, ``tgt`` int64 ``[B, T]``
    (each padded with ``pad_id`` after its sequence) and their lengths int64 ``[B]``."""

    src: torch.Tensor
    src_lengths: torch.Tensor
    tgt: torch.Tensor
    tgt_lengths: torch.Tensor
    pad_id: int = 0

    def __len__(self) -> int:
        return self.src.shape[0]

    def to(self, device: torch.device | str) -> TokenBatch:
        return TokenBatch(
            self.src.to(device),
            self.src_lengths.to(device),
            self.tgt.to(device),
            self.tgt_lengths.to(device),
            self.pad_id,
        )


def _pad(seqs: list[torch.Tensor], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([s.numel() for s in seqs], dtype=torch.int64)
    out = torch.full((len(seqs), int(lengths.max()) if seqs else 0), pad_id, dtype=torch.int64)
    for i, s in enumerate(seqs):
        out[i, : s.numel()] = s
    return out, lengths


class TokenPairs:
    """Pairs of token-id sequences (1-D int64 tensors), a split of a translation dataset.
    ``take(index)`` collates the pairs at ``index`` into a :class:`TokenBatch` on the
    device given to :meth:`to` (the sequences stay on the CPU until then)."""

    def __init__(
        self,
        src: Sequence[torch.Tensor],
        tgt: Sequence[torch.Tensor],
        pad_id: int = 0,
        device: torch.device | str = "cpu",
    ):
        if len(src) != len(tgt):
            raise ValueError(f"TokenPairs: {len(src)} source but {len(tgt)} target sequences")
        for name, seqs in (("source", src), ("target", tgt)):
            for i, s in enumerate(seqs):
                if not isinstance(s, torch.Tensor) or s.dim() != 1 or s.dtype != torch.int64:
                    raise ValueError(
                        f"TokenPairs: {name} sequence {i} must be a 1-D int64 "
                        f"tensor; got {getattr(s, 'dtype', type(s).__name__)} "
                        f"{tuple(getattr(s, 'shape', ()))}"
                    )
        self.src, self.tgt = list(src), list(tgt)
        self.pad_id = int(pad_id)
        self.device = torch.device(device)

    def __len__(self) -> int:
        return len(self.src)

    def take(self, index: torch.Tensor | slice) -> TokenBatch:
        rows = range(len(self))[index] if isinstance(index, slice) else index.tolist()
        src, src_len = _pad([self.src[i] for i in rows], self.pad_id)
        tgt, tgt_len = _pad([self.tgt[i] for i in rows], self.pad_id)
        return TokenBatch(src, src_len, tgt, tgt_len, self.pad_id).to(self.device)

    def to(self, device: torch.device | str) -> TokenPairs:
        return TokenPairs(self.src, self.tgt, self.pad_id, device)

    def head(self, n: int) -> TokenPairs:
        return TokenPairs(self.src[:n], self.tgt[:n], self.pad_id, self.device)

    def num_tokens(self) -> tuple[int, int]:
        """Total source and target tokens."""
        return sum(s.numel() for s in self.src), sum(t.numel() for t in self.tgt)


def encode_pairs(
    pairs: Sequence[tuple[str, str]],
    encode_src: Callable[[str], list[int]],
    encode_tgt: Callable[[str], list[int]],
    pad_id: int = 0,
) -> TokenPairs:
    """:class:`TokenPairs` of raw ``(source, target)`` sentences, each side encoded by its
    tokenizer's ``encode`` (a function from a string to token ids; add BOS/EOS there)."""
    src = [torch.tensor(encode_src(s), dtype=torch.int64) for s, _ in pairs]
    tgt = [torch.tensor(encode_tgt(t), dtype=torch.int64) for _, t in pairs]
    return TokenPairs(src, tgt, pad_id)


@dataclass
class TokenPairDataset:
    """A trainer dataset of token pairs: ``splits`` maps ``"train"``, ``"test"`` (and
    optionally ``"valid"``) to :class:`TokenPairs`; the vocabularies' sizes and the
    languages describe it."""

    name: str
    splits: dict[str, TokenPairs]
    src_vocab_size: int
    tgt_vocab_size: int
    src_lang: str = "src"
    tgt_lang: str = "tgt"
    extra_info: dict = field(default_factory=dict)

    noun = ("pairs", "pairs")

    def examples(self, split: str) -> TokenPairs:
        if split not in self.splits:
            raise ValueError(f"{self.name} has no {split!r} split")
        return self.splits[split]

    def describe(self) -> str:
        return (
            f"sentence pairs ({self.src_lang} -> {self.tgt_lang}, vocabularies "
            f"{self.src_vocab_size} / {self.tgt_vocab_size})"
        )

    def info(self) -> dict:
        return {
            "kind": "token_pairs",
            "src_lang": self.src_lang,
            "tgt_lang": self.tgt_lang,
            "src_vocab_size": self.src_vocab_size,
            "tgt_vocab_size": self.tgt_vocab_size,
            **self.extra_info,
        }
