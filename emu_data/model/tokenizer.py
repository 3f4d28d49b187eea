"""Text tokens: open_clip's bundled BPE (works offline), mapped onto a compact LM vocabulary.

Why a compact vocabulary: the BPE has 49,408 ids, and at smoke scale the output softmax over
all of them would cost more than the rest of the model together, while a corpus uses a small
part of it. The LM vocabulary is the special tokens plus the `size` most frequent BPE ids of
the training texts; any other id reads as <unk>. `size=0` keeps the whole BPE (what a real
run on a GPU wants). The vocabulary is saved in the run, so eval reads text the same way.
"""

from __future__ import annotations

import json
from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import Iterable

from emu_data.core.errors import UsageError

PAD, BOS, EOS, UNK, IMG, END_IMG = range(6)
SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>", "[IMG]", "[/IMG]")


@lru_cache(maxsize=1)
def bpe():
    """open_clip's SimpleTokenizer: lowercases, cleans whitespace, byte-level BPE."""
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer()


def bpe_ids(text: str) -> list[int]:
    return bpe().encode(text)


class Vocab:
    """BPE id <-> LM id. LM ids 0..5 are the special tokens."""

    def __init__(self, bpe_ids_kept: list[int] | None):
        self.kept = bpe_ids_kept        # None: every BPE id, shifted past the specials
        self._to_lm = None if bpe_ids_kept is None else {b: i + len(SPECIALS) for i, b in enumerate(bpe_ids_kept)}

    @classmethod
    def build(cls, counts: Counter, size: int) -> "Vocab":
        """The `size` most frequent BPE ids (ties broken by id, so the same counts give the same vocab)."""
        if size <= 0:
            return cls(None)
        ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
        return cls(sorted(b for b, _ in ranked[:size]))

    def __len__(self) -> int:
        return len(SPECIALS) + (len(bpe().encoder) if self.kept is None else len(self.kept))

    def encode(self, text: str) -> list[int]:
        return self.from_bpe(bpe_ids(text))

    def from_bpe(self, ids: Iterable[int]) -> list[int]:
        if self._to_lm is None:
            return [b + len(SPECIALS) for b in ids]
        return [self._to_lm.get(b, UNK) for b in ids]

    def decode(self, ids: Iterable[int]) -> str:
        """LM ids to text; special tokens and <unk> are left out."""
        kept = [i - len(SPECIALS) for i in ids if i >= len(SPECIALS)]
        if self.kept is not None:
            kept = [self.kept[i] for i in kept]
        return bpe().decode(kept).strip()

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps({"specials": list(SPECIALS), "bpe": "open_clip SimpleTokenizer",
                                          "kept": self.kept}))

    @classmethod
    def load(cls, path: Path) -> "Vocab":
        data = json.loads(Path(path).read_text())
        if data.get("specials") != list(SPECIALS):
            raise UsageError(f"{path}: a vocabulary with other special tokens")
        return cls(data["kept"])
