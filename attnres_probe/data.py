"""Byte-level corpora: the default one already on every machine, or the user's own text files.

The default corpus is the Python standard library's ``.py`` sources, found at run time; nothing
is downloaded. Sequences are bytes (vocab 256), so no tokenizer is needed.
"""

from __future__ import annotations

import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

DEFAULT_MAX_BYTES = 8 * 1024 * 1024
HELD_OUT_FRACTION = 0.05


class DataError(ValueError):
    """The corpus cannot be used; the message names the path and what to do."""


def default_corpus_files() -> list[Path]:
    """The standard library's ``.py`` files in a stable order (tests and site-packages excluded)."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = [
        p
        for p in stdlib.rglob("*.py")
        if "site-packages" not in p.parts and "test" not in p.parts and "tests" not in p.parts
    ]
    return sorted(files, key=lambda p: p.relative_to(stdlib).as_posix())


def _text_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    return files


def load_corpus(path: str | Path | None = None, max_bytes: int = DEFAULT_MAX_BYTES) -> np.ndarray:
    """The corpus as a uint8 array of at most ``max_bytes`` bytes.

    path: a text file or a folder of text files; None picks the default corpus.
    """
    if path is None:
        files = default_corpus_files()
        where = "the Python standard library"
        if not files:
            raise DataError(
                f"no .py files found under {sysconfig.get_paths()['stdlib']}; "
                "pass --data with a text file or folder"
            )
    else:
        path = Path(path).expanduser()
        where = str(path)
        if not path.exists():
            raise DataError(f"data path {path} does not exist; pass a text file or a folder")
        files = _text_files(path)
    chunks: list[bytes] = []
    total = 0
    for f in files:
        try:
            raw = f.read_bytes()
        except OSError as err:
            raise DataError(f"cannot read {f}: {err.strerror}") from err
        if b"\x00" in raw[:4096]:  # binary, not text
            continue
        chunks.append(raw)
        total += len(raw)
        if total >= max_bytes:
            break
    data = np.frombuffer(b"\n".join(chunks)[:max_bytes], dtype=np.uint8).copy()
    if data.size < 2:
        raise DataError(f"the corpus at {where} is empty; give a path holding text")
    return data


def _train_bytes(total: int) -> int:
    """How many of ``total`` corpus bytes are for training (the rest is held out)."""
    return int(total * (1 - HELD_OUT_FRACTION))


def corpus_bytes_needed(seq_len: int) -> int:
    """The smallest corpus whose training and held-out parts both fit a ``seq_len`` batch."""
    need = seq_len + 2
    total = max(2 * need, int(need / HELD_OUT_FRACTION) - 25)  # truncation moves the cut by < 21
    while total - _train_bytes(total) < need or _train_bytes(total) < need:
        total += 1
    return total


@dataclass
class ByteCorpus:
    """A corpus split into training bytes and held-out bytes (the last 5 %)."""

    train: np.ndarray
    held_out: np.ndarray
    source: str

    @classmethod
    def load(cls, path: str | Path | None = None, max_bytes: int = DEFAULT_MAX_BYTES) -> ByteCorpus:
        data = load_corpus(path, max_bytes)
        cut = _train_bytes(len(data))
        source = "python-stdlib" if path is None else str(path)
        return cls(train=data[:cut], held_out=data[cut:], source=source)

    def check_fits(self, seq_len: int) -> None:
        """DataError unless both parts hold a window of ``seq_len + 1`` bytes with a choice of
        start (``seq_len + 2`` bytes each), the size a batch of ``seq_len`` needs."""
        for split in ("train", "held_out"):
            have = len(self.train if split == "train" else self.held_out)
            if have < seq_len + 2:
                part = "training part" if split == "train" else "held-out part (the last 5 %)"
                raise DataError(
                    f"the {part} of the corpus {self.source} has {have} bytes, fewer than the "
                    f"{seq_len + 2} a --seq-len of {seq_len} needs; use a corpus of at least "
                    f"{corpus_bytes_needed(seq_len)} bytes or a shorter --seq-len"
                )

    def batch(self, split: str, batch_size: int, seq_len: int, generator):
        """A (B, T+1) int64 tensor of random windows from ``split`` ('train' or 'held_out')."""
        self.check_fits(seq_len)
        data = self.train if split == "train" else self.held_out
        starts = torch.randint(0, len(data) - seq_len - 1, (batch_size,), generator=generator)
        view = torch.from_numpy(data)
        return torch.stack([view[s : s + seq_len + 1] for s in starts.tolist()]).long()
