"""Tokenizers: byte-level by default (no training, no files), BPE when trained.

Both are Hugging Face ``tokenizers`` objects wrapped in ``PreTrainedTokenizerFast``, so a model
saved with its tokenizer loads with ``AutoTokenizer`` beside ``AutoModelForCausalLM``.

The byte-level tokenizer maps each UTF-8 byte to its own id (0..255), then ``<bos>`` = 256
and ``<eos>`` = 257: ``encode_bytes(text) == byte_tokenizer()(text)["input_ids"]``.
"""

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

BOS_ID = 256
EOS_ID = 257
BYTE_VOCAB_SIZE = 258
SPECIAL_TOKENS = ["<bos>", "<eos>"]


def encode_bytes(text: str) -> list[int]:
    return list(text.encode("utf-8"))


def decode_bytes(ids: list[int]) -> str:
    return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


def _byte_to_char() -> dict[int, str]:
    """The byte -> printable character table of byte-level BPE (GPT-2's convention): printable
    Latin-1 bytes stand for themselves, the others are shifted past U+0100."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table, shifted = {}, 0
    for byte in range(256):
        if byte in printable:
            table[byte] = chr(byte)
        else:
            table[byte] = chr(256 + shifted)
            shifted += 1
    return table


def _wrap(tokenizer: Tokenizer) -> PreTrainedTokenizerFast:
    tokenizer.decoder = decoders.ByteLevel()
    # split_special_tokens: a text that spells "<eos>" is encoded as its bytes, not as the
    # end-of-sequence id (a document quoting it must not end there, nor a prompt inject it).
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<bos>", eos_token="<eos>", split_special_tokens=True
    )


def byte_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {char: byte for byte, char in _byte_to_char().items()}
    vocab.update({token: BOS_ID + i for i, token in enumerate(SPECIAL_TOKENS)})
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.add_special_tokens(SPECIAL_TOKENS)
    return _wrap(tokenizer)


def train_bpe(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on ``texts`` (every byte stays representable)."""
    if vocab_size < BYTE_VOCAB_SIZE:
        raise ValueError(
            f"vocab_size must be >= {BYTE_VOCAB_SIZE} (256 bytes + 2 specials), got {vocab_size}"
        )
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=True,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return _wrap(tokenizer)


def load_tokenizer(spec: str | Path) -> PreTrainedTokenizerFast:
    """``"bytes"`` for the byte-level tokenizer, else a folder written by ``save_pretrained``."""
    if str(spec) == "bytes":
        return byte_tokenizer()
    path = Path(spec)
    if not path.is_dir():
        raise FileNotFoundError(f"tokenizer {spec!r}: not 'bytes' and not a folder")
    return AutoTokenizer.from_pretrained(path)
