"""Loading a saved model for inference or evaluation, with errors that name the file at fault.

``AutoModelForCausalLM.from_pretrained`` alone is too forgiving for a command-line user: a
missing relative path is taken for a Hub id, a config of another model type builds that model
and fills the weights it cannot find with random values, and a truncated weights file fails
with a message that does not say which file. :func:`load_pretrained` checks each of these
first and raises ``ValueError`` / ``FileNotFoundError`` with one line saying what is wrong.
Weights are read from safetensors only, never unpickled.
"""

import argparse
import json
from collections.abc import Iterable
from pathlib import Path

import torch
from huggingface_hub.errors import StrictDataclassError
from safetensors import SafetensorError
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from yoco.models.retnet import RetNetConfig
from yoco.models.transformer import TransformerConfig
from yoco.models.yoco import YocoConfig
from yoco.tokenizer import BYTE_VOCAB_SIZE, byte_tokenizer
from yoco.train.checkpoint import find_weights

OUR_MODEL_TYPES = (YocoConfig.model_type, TransformerConfig.model_type, RetNetConfig.model_type)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def add_config_overrides_argument(parser: argparse.ArgumentParser) -> None:
    """``--set FIELD=VALUE``, repeatable: a model config field for this command only."""
    parser.add_argument(
        "--set",
        dest="config_overrides",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="a model config field for this command only, e.g. cross_decoder_logn_base=1024 "
        "(log-n attention scaling beyond that length)",
    )


def parse_config_overrides(items: Iterable[str]) -> dict:
    """``FIELD=VALUE`` items -> {field: value}, each value parsed as TOML (else kept as text);
    ``none`` or ``null`` is None, so an option can be turned off (TOML has no null)."""
    from yoco.train.config import parse_value

    overrides = {}
    for item in items:
        field, equals, value = item.partition("=")
        if not equals or not field.strip():
            raise ValueError(f"--set takes FIELD=VALUE, got {item!r}")
        value = value.strip()
        overrides[field.strip()] = None if value.lower() in ("none", "null") else parse_value(value)
    return overrides


def load_pretrained(
    path: str | Path, dtype: torch.dtype = torch.float32, config_overrides: dict | None = None
):
    """(model in eval mode, tokenizer) from a ``save_pretrained`` folder, a checkpoint folder, or
    a run folder (its latest checkpoint). The tokenizer is the one saved beside the weights (a
    training run saves it in every checkpoint), or the byte-level tokenizer for a model of the
    byte vocabulary saved without one; any other model without a tokenizer is refused.

    ``config_overrides`` sets config fields before the model is built, for options that change
    inference and not the weights (e.g. ``cross_decoder_logn_base``); an unknown field or a bad
    value is refused, and so is a field that changes which weights the model has or their
    shapes (the saved weights must fill the model exactly)."""
    folder = find_weights(Path(path))
    config_file, weights_file = folder / "config.json", folder / "model.safetensors"
    if not config_file.is_file():
        raise FileNotFoundError(f"{folder} has model.safetensors but no config.json")
    try:
        model_type = json.loads(config_file.read_text()).get("model_type")
    except (json.JSONDecodeError, AttributeError) as error:
        raise ValueError(f"{config_file} is not a JSON object of config fields ({error})") from None
    if model_type not in OUR_MODEL_TYPES:
        raise ValueError(
            f"{config_file} describes a {model_type!r} model; yoco loads {', '.join(OUR_MODEL_TYPES)}"
        )
    try:
        config = AutoConfig.from_pretrained(folder)
    except (ValueError, TypeError, StrictDataclassError) as error:
        raise ValueError(f"{config_file}: {error}") from None
    overrides = config_overrides or {}
    for field in overrides:
        if field not in config.to_dict():
            raise ValueError(f"{config_file}: a {model_type!r} model has no config field {field!r}")
    changed = ", ".join(f"{field}={value!r}" for field, value in overrides.items())
    try:  # all set before one check: fields that must change together can
        for field, value in overrides.items():
            setattr(config, field, value)
        config.check()
    except (ValueError, TypeError, StrictDataclassError) as error:
        raise ValueError(f"{changed}: {error}") from None
    try:
        model, info = AutoModelForCausalLM.from_pretrained(
            folder, config=config, dtype=dtype, output_loading_info=True, ignore_mismatched_sizes=True
        )
    except SafetensorError as error:
        raise ValueError(f"{weights_file} is not a readable safetensors file ({error})") from None
    # transformers lists a mismatched weight as (name, saved shape, model shape).
    mismatched = [key if isinstance(key, str) else key[0] for key in info["mismatched_keys"]]
    wrong = sorted(info["missing_keys"]) + sorted(mismatched) + sorted(info["unexpected_keys"])
    if wrong:
        raise ValueError(
            f"{weights_file} does not hold the weights {config_file} describes"
            f"{', with ' + changed if changed else ''} ({len(wrong)} missing, of the wrong shape "
            f"or left over, e.g. {wrong[0]})"
        )
    if any((folder / name).is_file() for name in TOKENIZER_FILES):
        return model.eval(), AutoTokenizer.from_pretrained(folder)
    if config.vocab_size != BYTE_VOCAB_SIZE:
        raise ValueError(
            f"{folder} has no tokenizer saved and its vocabulary of {config.vocab_size} tokens is not "
            f"the byte-level one ({BYTE_VOCAB_SIZE}); save the tokenizer it was trained with beside it "
            "(tokenizer.save_pretrained)"
        )
    return model.eval(), byte_tokenizer()
