"""Byte-level tokenisation: the default, needing no training and no files.

Token ids 0..255 are the UTF-8 bytes; ``BOS``/``EOS`` follow. Models meant for this tokenizer
use ``vocab_size >= BYTE_VOCAB_SIZE``.
"""

BOS_ID = 256
EOS_ID = 257
BYTE_VOCAB_SIZE = 258


def encode_bytes(text: str) -> list[int]:
    return list(text.encode("utf-8"))


def decode_bytes(ids: list[int]) -> str:
    return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")
