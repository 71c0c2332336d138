"""Headlines to rows of a token table, in the reading process: the artifact's normaliser, no torch.

The model process keeps one vector per distinct token (what the model's ``embed`` gives that
token), so the reader sends each row as a list of table rows and each new token's text once.
A word's vector depends on the word alone, never on its neighbours, so looking it up gives the
same bits as embedding it inside a batch (a test holds this).
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from dataclasses import dataclass

from contract.text import Normalizer

EMPTY_ROW = 0  # the table row of a text with no tokens left (the encoder's lone <UNK>)
# Distinct tokens kept between chunks; past this the table starts again at the next chunk, so a
# file of endless distinct tokens (ids, numbers) costs bounded memory in both processes.
TABLE_CAPACITY = 16_384


@dataclass(frozen=True)
class EncodedChunk:
    """One chunk's rows as table rows: ``flat`` holds every row's entries, ``lengths`` how many each."""

    flat: array[int]
    lengths: array[int]
    empty: list[bool]
    new_tokens: list[str]
    reset: bool


class _Index(dict[str, int]):
    """Token → table row; a token seen for the first time gets the next row and is noted as new."""

    def __init__(self) -> None:
        super().__init__()
        self.new: list[str] = []

    def __missing__(self, token: str) -> int:
        row = self[token] = len(self) + 1  # row 0 is EMPTY_ROW
        self.new.append(token)
        return row


class TokenTable:
    """The reader's half of the token table: which rows the model process already holds."""

    def __init__(self, normalizer: Normalizer, capacity: int | None = None) -> None:
        self.tokens = normalizer.tokens
        self.capacity = TABLE_CAPACITY if capacity is None else capacity
        self.index = _Index()

    def encode(self, texts: Sequence[str]) -> EncodedChunk:
        """Table rows for ``texts``; the chunk carries the tokens the model process has not seen yet."""
        reset = len(self.index) > self.capacity
        if reset:
            self.index = _Index()
        index, tokens = self.index, self.tokens
        flat: array[int] = array("i")
        lengths: array[int] = array("i")
        empty: list[bool] = []
        for text in texts:
            found = tokens(text)
            if found:
                flat.extend([index[t] for t in found])
                lengths.append(len(found))
                empty.append(False)
            else:
                flat.append(EMPTY_ROW)
                lengths.append(1)
                empty.append(True)
        new, index.new = index.new, []
        return EncodedChunk(flat, lengths, empty, new, reset)
