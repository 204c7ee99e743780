"""A character tokenizer: the smallest thing that still has a vocabulary, ids and an unknown token."""

from __future__ import annotations


class CharTokenizer:
    """Maps each character of an alphabet to an id; id 0 stands for every character outside it.

    Reserving an unknown id keeps encoding total (any text encodes), which is what models downstream
    rely on when they index tables by token id.
    """

    UNK = 0
    UNK_TEXT = "?"

    def __init__(self, alphabet: str) -> None:
        chars = list(dict.fromkeys(alphabet))  # first occurrence wins, order kept: ids are stable
        self._ids = {ch: i + 1 for i, ch in enumerate(chars)}
        self._chars = [self.UNK_TEXT, *chars]

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        """A tokenizer over the characters of ``text``, sorted so the same text always gives the same ids."""
        return cls("".join(sorted(set(text))))

    @property
    def vocab_size(self) -> int:
        return len(self._chars)

    def encode(self, text: str) -> list[int]:
        return [self._ids.get(ch, self.UNK) for ch in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(self._chars[i] for i in ids)
