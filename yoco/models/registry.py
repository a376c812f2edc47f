"""Every model the library builds, named in one table.

A model name is a *kind*, optionally followed by *part* suffixes joined with ``+``:

* kinds: ``transformer``, ``yoco-swa``, ``yoco-gret``, ``yoco-retention``, ``yoco-dilated``,
  ``retnet``, and the controls ``swa-only`` / ``gret-only`` (a YOCO without its cross-decoder:
  the self-decoder layer in every layer); each is an *architecture* (the config and model
  classes) plus the fields that define it;
* parts: ``diff`` (differential attention), ``moe`` / ``mhmoe`` (mixture of experts),
  ``nope`` / ``crosspos`` (a cross-decoder without positions, or with the model's own;
  YOCO only), ``xpos``, ``bitnet``, ``conv`` / ``noconv`` (a short convolution before each
  self-decoder mixer, or none; YOCO only); each is a set of config fields, applied after the
  kind's. Two parts that set one field differently are refused. ``yoco-swa+diff`` is Diff-YOCO
  with SWA.

Where our measurements showed a YOCO kind learning better with an option the paper's model
lacks, the kind has it by default (``KIND_DEFAULTS``): ``yoco-gret`` and its control
``gret-only`` have a short convolution, ``yoco-swa`` a cross-decoder without positions. A
default is not part of the name: a config field overrides it, and a part gives the paper's
model back (``yoco-gret+noconv``, ``yoco-swa+crosspos``).

:func:`build` makes a freshly initialised model from a name, an optional named preset shape
and any config fields. A field the kind's config does not have is refused with its name,
never dropped (``PretrainedConfig`` would otherwise keep it as an unused attribute).
"""

import dataclasses
import json

from yoco.models.retnet import RetNetConfig, RetNetForCausalLM
from yoco.models.transformer import TransformerConfig, TransformerForCausalLM
from yoco.models.yoco import SELF_DECODERS, YocoConfig, YocoForCausalLM
from yoco.tokenizer import BYTE_VOCAB_SIZE

ARCHITECTURES = {
    "transformer": (TransformerConfig, TransformerForCausalLM),
    "yoco": (YocoConfig, YocoForCausalLM),
    "retnet": (RetNetConfig, RetNetForCausalLM),
}
# What a YOCO kind has by default beyond the paper's model, where we measured it learning better
# (docs/EVALUATION.md, MQAR and needle; docs/BENCHMARKS.md, LM quality):
# - yoco-gret: a width-4 causal convolution before the retention. With it YOCO-gRet learned
#   multi-query recall at both goal settings at all three seeds (without it, one seed: 5.9% at
#   the harder one) and its validation loss after 1M tokens was 7.5% lower.
# - yoco-swa: a cross-decoder without positions. With it YOCO-SWA learned multi-query recall at
#   both settings at all three seeds (with rotary: 14.0% / 99.1% / 15.0% at the easier one), and
#   a needle model retrieves at 4x its training length (with rotary: 0.04). Its validation loss
#   after 13.1M tokens was 0.7% above the rotary one's (1.3134 against 1.3038, one seed each),
#   both 7-8% below the Transformer's: a small price for recall that does not depend on distance.
GRET_DEFAULTS = {"short_conv_size": 4}
KIND_DEFAULTS = {
    "yoco-gret": GRET_DEFAULTS,
    "gret-only": GRET_DEFAULTS,  # the control is yoco-gret without its cross-decoder
    "yoco-swa": {"cross_decoder_positions": False},
}
KINDS = {
    "transformer": ("transformer", {}),
    **{f"yoco-{name}": ("yoco", {"self_decoder": name}) for name in SELF_DECODERS},
    "retnet": ("retnet", {}),
    # Controls for recall: the YOCO kind's self-decoder layer in every layer, no global cache.
    **{f"{name}-only": ("yoco", {"self_decoder": name, "cross_decoder": False}) for name in ("swa", "gret")},
}
PARTS = {
    "diff": {"attention_type": "differential"},
    "moe": {"ffn_type": "moe", "num_experts": 4, "num_experts_per_tok": 2},
    "mhmoe": {"ffn_type": "mhmoe", "num_experts": 4, "num_experts_per_tok": 2, "mhmoe_heads": 2},
    "nope": {"cross_decoder_positions": False},
    "crosspos": {"cross_decoder_positions": True},
    "xpos": {"position_embedding": "xpos"},
    "bitnet": {"bitnet": True},
    "conv": {"short_conv_size": 4},
    "noconv": {"short_conv_size": 0},
}
PRESETS = {
    # A randomly initialised shape for trying the engine before any training (yoco generate
    # --config tiny) and for the copy and needle recipes: width 128, 4 layers, byte vocabulary.
    "tiny": dict(
        vocab_size=BYTE_VOCAB_SIZE,
        hidden_size=128,
        intermediate_size=344,
        num_hidden_layers=4,
        num_attention_heads=4,
        max_position_embeddings=8192,
    ),
    # Twice as wide and deep, grouped key/value heads: the untrained side-by-side of `yoco compare`.
    "small": dict(
        vocab_size=BYTE_VOCAB_SIZE,
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=4,
        max_position_embeddings=8192,
    ),
}


def config_fields(architecture: str) -> frozenset[str]:
    return frozenset(f.name for f in dataclasses.fields(ARCHITECTURES[architecture][0]))


def kind_defaults(kind: str) -> dict:
    """The fields ``kind`` has by default (``KIND_DEFAULTS``); config fields override them."""
    return dict(KIND_DEFAULTS.get(kind, {}))


def named_fields(name: str) -> tuple[str, str, dict]:
    """``"yoco-swa+diff"`` -> ``("yoco-swa", "yoco", {"self_decoder": "swa", "attention_type": ...})``:
    the kind, its architecture and the fields the name fixes (the kind's and its parts')."""
    kind, *parts = name.split("+")
    if kind not in KINDS:
        raise ValueError(f"unknown model kind {kind!r} in {name!r}; kinds: {', '.join(KINDS)}")
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise ValueError(f"unknown part {unknown[0]!r} in {name!r}; parts: {', '.join(PARTS)}")
    architecture, fields = KINDS[kind]
    fields, set_by = dict(fields), {}
    for part in parts:
        for field, value in PARTS[part].items():
            if field in set_by and fields[field] != value:
                raise ValueError(
                    f"parts {set_by[field]!r} and {part!r} of {name!r} contradict each other ({field})"
                )
            fields[field], set_by[field] = value, part
    check_fields(architecture, fields, name)
    return kind, architecture, fields


def resolve(name: str) -> tuple[str, dict]:
    """``"yoco-gret+diff"`` -> ``("yoco", {"short_conv_size": 4, "self_decoder": "gret", ...})``:
    the architecture and every field the name stands for, the kind's defaults included."""
    kind, architecture, fields = named_fields(name)
    return architecture, {**kind_defaults(kind), **fields}


def model_identity(name: str) -> dict:
    """What ``name`` builds, as JSON data: the architecture and every field the name stands for.
    Stored beside a finished result, it lets a command reuse the result while the name still
    means that model, and train again once a kind's defaults change what the name means."""
    architecture, fields = resolve(name)
    return json.loads(json.dumps({"architecture": architecture, **fields}))


def check_fields(architecture: str, fields: dict, name: str | None = None) -> None:
    """Raise ValueError naming the first field that ``architecture``'s config does not have."""
    if architecture not in ARCHITECTURES:
        raise ValueError(f"architecture must be one of {', '.join(ARCHITECTURES)}, got {architecture!r}")
    unknown = sorted(set(fields) - config_fields(architecture))
    if unknown:
        raise ValueError(f"{unknown[0]} is not an option of {name or architecture} models")


def build_config(architecture: str, fields: dict, name: str | None = None):
    """The config of ``architecture`` with ``fields``, every one checked to belong to it
    (errors name the model as ``name`` when given)."""
    check_fields(architecture, fields, name)
    return ARCHITECTURES[architecture][0](**fields)


def model_config(name: str, preset: str | None = None, where_applicable: dict | None = None, **fields):
    """The config :func:`build` initialises a model from: the kind's defaults, the ``preset``
    shape, then ``fields``, each overriding the one before; the fields ``name`` fixes (its kind's
    and parts') cannot be overridden. ``where_applicable``
    holds fields given only to the kinds whose config has them, for commands that compare kinds
    (a sliding window for the SWA kinds, say); every other field must belong to the kind."""
    kind, architecture, named = named_fields(name)
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; presets: {', '.join(PRESETS)}")
    known = config_fields(architecture)
    optional = {k: v for k, v in (where_applicable or {}).items() if k in known}
    fields = {**(PRESETS[preset] if preset else {}), **optional, **fields}
    clash = sorted(k for k in set(named) & set(fields) if named[k] != fields[k])
    if clash:
        raise ValueError(f"{clash[0]}={fields[clash[0]]!r} contradicts the model name {name!r}")
    return build_config(architecture, {**kind_defaults(kind), **fields, **named}, name)


def model_from_config(config):
    """A freshly initialised model of ``config``'s architecture."""
    for config_class, model_class in ARCHITECTURES.values():
        if type(config) is config_class:
            return model_class(config)
    raise ValueError(f"{type(config).__name__} is not a config of yoco models")


def build(name: str, preset: str | None = None, where_applicable: dict | None = None, **fields):
    """A freshly initialised model; the arguments are those of :func:`model_config`."""
    return model_from_config(model_config(name, preset, where_applicable, **fields))
