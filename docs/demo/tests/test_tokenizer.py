"""Fast unit tests: the tokenizer's contract (ids are stable, encoding is total, decoding inverts it)."""

from tinymodels import CharTokenizer


def test_round_trip_over_known_characters() -> None:
    tok = CharTokenizer("abc ")
    assert tok.decode(tok.encode("a cab")) == "a cab"


def test_unknown_characters_map_to_the_reserved_id() -> None:
    tok = CharTokenizer("ab")
    assert tok.encode("axb") == [1, CharTokenizer.UNK, 2]
    assert tok.decode(tok.encode("axb")) == "a?b"


def test_vocab_counts_the_unknown_token_and_deduplicates() -> None:
    assert CharTokenizer("abca").vocab_size == 4


def test_ids_do_not_depend_on_character_order_in_the_text() -> None:
    assert CharTokenizer.from_text("cab").encode("abc") == CharTokenizer.from_text("bca").encode("abc")
