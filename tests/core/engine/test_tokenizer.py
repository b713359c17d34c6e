"""Byte tokenizer and UTF-8-safe incremental decoding."""

from __future__ import annotations

import pytest

from core.engine.tokenizer import ByteTokenizer, IncrementalDecoder

REPLACEMENT = "\ufffd"


def stream(data: bytes) -> tuple[list[str], str]:
    """Push `data` byte by byte; return what each push emitted and what flush emitted."""
    decoder = IncrementalDecoder()
    pieces = [decoder.push(b) for b in data]
    return pieces, decoder.flush()


def test_encode_is_utf8_bytes_and_decode_round_trips() -> None:
    tokenizer = ByteTokenizer()
    text = "héllo 日本 🐉"
    ids = tokenizer.encode(text)
    assert ids == list(text.encode("utf-8"))
    assert tokenizer.vocab_size == 256
    assert tokenizer.decode(ids) == text
    assert tokenizer.decode_bytes(ids) == text.encode("utf-8")


def test_decode_replaces_invalid_bytes() -> None:
    assert ByteTokenizer().decode([0x61, 0xFF, 0x62, 0xE6]) == f"a{REPLACEMENT}b{REPLACEMENT}"


@pytest.mark.parametrize("bad", [-1, 256])
def test_out_of_vocabulary_ids_are_rejected(bad: int) -> None:
    with pytest.raises(ValueError, match="outside the byte vocabulary"):
        ByteTokenizer().decode([bad])
    with pytest.raises(ValueError, match="outside the byte vocabulary"):
        IncrementalDecoder().push(bad)


@pytest.mark.parametrize(
    ("token_id", "shown"),
    [(ord("a"), "a"), (ord(" "), " "), (ord("\n"), "\n"), (0x00, "bytes:\\x00"),
     (0x7F, "bytes:\\x7f"), (0xC3, "bytes:\\xc3"), (0xFF, "bytes:\\xff")],
)  # fmt: skip
def test_token_text(token_id: int, shown: str) -> None:
    assert ByteTokenizer().token_text(token_id) == shown


@pytest.mark.parametrize("char", ["é", "日", "本", "🐉"])
def test_multibyte_character_appears_only_with_its_last_byte(char: str) -> None:
    data = char.encode("utf-8")
    pieces, tail = stream(data)
    assert pieces == [""] * (len(data) - 1) + [char]
    assert tail == ""


def test_mixed_text_streams_whole_characters_in_order() -> None:
    text = "a é 日本 🐉!"
    pieces, tail = stream(text.encode("utf-8"))
    assert "".join(pieces) + tail == text
    assert tail == ""
    for piece in pieces:
        # A half character would have been replaced or would fail to re-encode.
        assert REPLACEMENT not in piece
        piece.encode("utf-8")


def test_pending_bytes_counts_the_unfinished_character() -> None:
    decoder = IncrementalDecoder()
    counts = []
    for byte in "🐉".encode():
        decoder.push(byte)
        counts.append(decoder.pending_bytes)
    assert counts == [1, 2, 3, 0]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"a\xffb", ["a", REPLACEMENT, "b"]),  # never valid
        (b"\x80", [REPLACEMENT]),  # stray continuation byte
        (b"\xc0", [REPLACEMENT]),  # overlong lead
        (b"\xe6A", ["", f"{REPLACEMENT}A"]),  # lead interrupted by ASCII
        (b"\xe0\x80", ["", REPLACEMENT * 2]),  # overlong 3-byte form
        (b"\xed\xa0", ["", REPLACEMENT * 2]),  # surrogate: CPython alone would wait here
        (b"\xf4\x90", ["", REPLACEMENT * 2]),  # above U+10FFFF
    ],
)
def test_invalid_bytes_become_replacement_at_once(data: bytes, expected: list[str]) -> None:
    pieces, tail = stream(data)
    assert pieces == expected
    assert tail == ""


def test_flush_releases_an_incomplete_tail_as_replacement() -> None:
    decoder = IncrementalDecoder()
    assert decoder.push(ord("x")) == "x"
    assert [decoder.push(b) for b in "日".encode()[:2]] == ["", ""]
    assert decoder.pending_bytes == 2
    assert decoder.flush() == REPLACEMENT
    assert decoder.pending_bytes == 0
    # The decoder starts over cleanly after a flush.
    assert [decoder.push(b) for b in "é".encode()] == ["", "é"]
    assert decoder.flush() == ""


def test_stream_matches_one_shot_decoding_on_awkward_bytes() -> None:
    data = b"ok\xe6\x97\xa5\xe6\x97X\xf0\x9f\x90\x89\xed\xa0\x80\xc3"
    pieces, tail = stream(data)
    assert "".join(pieces) + tail == data.decode("utf-8", errors="replace")
    assert tail == REPLACEMENT  # only the final lone lead byte waited for the flush
