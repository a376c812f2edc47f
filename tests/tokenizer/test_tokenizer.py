"""Tokenizers: the byte-level one is exactly UTF-8 bytes; both round-trip through AutoTokenizer."""

from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

from yoco.tokenizer import BYTE_VOCAB_SIZE, EOS_ID, byte_tokenizer, decode_bytes, encode_bytes, train_bpe

BYTES = byte_tokenizer()


@settings(max_examples=50, deadline=None)
@given(st.text())
def test_byte_tokenizer_is_utf8_bytes(text):
    ids = BYTES(text)["input_ids"]
    assert ids == encode_bytes(text)
    assert BYTES.decode(ids) == text == decode_bytes(ids)


def test_text_that_spells_a_special_token_is_encoded_as_its_bytes(tmp_path):
    """A document quoting "<eos>" must not end there (found by hypothesis: "<bos>" became id 256)."""
    bpe = train_bpe(["def add(a, b):\n    return a + b\n"] * 50, vocab_size=300)
    for name, tokenizer in (("bytes", BYTES), ("bpe", bpe)):
        tokenizer.save_pretrained(tmp_path / name)
        for loaded in (tokenizer, AutoTokenizer.from_pretrained(tmp_path / name)):
            ids = loaded("x <eos> <bos>")["input_ids"]
            assert EOS_ID not in ids and loaded.bos_token_id not in ids
            assert loaded.decode(ids) == "x <eos> <bos>"


def test_special_ids_and_size():
    assert len(BYTES) == BYTE_VOCAB_SIZE and BYTES.eos_token_id == EOS_ID


def test_saved_tokenizers_load_with_auto_tokenizer(tmp_path):
    bpe = train_bpe(["def add(a, b):\n    return a + b\n"] * 50, vocab_size=300)
    for name, tokenizer in (("bytes", BYTES), ("bpe", bpe)):
        tokenizer.save_pretrained(tmp_path / name)
        loaded = AutoTokenizer.from_pretrained(tmp_path / name)
        text = "def add(a, b): return a + b  # é"
        assert loaded(text)["input_ids"] == tokenizer(text)["input_ids"]
        assert loaded.decode(loaded(text)["input_ids"]) == text
    assert len(bpe(" return a + b")["input_ids"]) < len(" return a + b")
