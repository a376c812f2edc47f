"""Every model the library builds, named in one table.

A model name is a *kind*, optionally followed by *part* suffixes joined with ``+``:

* kinds: ``transformer``, ``yoco-swa``, ``yoco-gret``, ``yoco-retention``, ``yoco-dilated``,
  ``retnet``, and the controls ``swa-only`` / ``gret-only`` (a YOCO without its cross-decoder:
  the self-decoder mixer in every layer); each is an *architecture* (the config and model classes) plus fixed fields;
* parts: ``diff`` (differential attention), ``moe`` / ``mhmoe`` (mixture of experts),
  ``nope`` / ``rope`` (a position-free cross-decoder, or a rotary one; YOCO only), ``xpos``, ``bitnet``, ``conv`` /
  ``noconv`` (a short convolution before each self-decoder mixer, or none; YOCO only); each
  is a set of config fields, applied after the kind's. ``yoco-swa+diff`` is Diff-YOCO with SWA.

Where our measurements showed a YOCO kind learning better with an option the paper's model
lacks, the kind has it by default (``SELF_DECODER_DEFAULTS``) and a part gives the paper's
model back: ``yoco-gret`` has a short convolution, ``yoco-gret+noconv`` is the paper's YOCO-gRet.

:func:`build` makes a freshly initialised model from a name, an optional named preset shape
and any config fields. A field the kind's config does not have is refused with its name,
never dropped (``PretrainedConfig`` would otherwise keep it as an unused attribute).
"""

import dataclasses

from yoco.models.retnet import RetNetConfig, RetNetForCausalLM
from yoco.models.transformer import TransformerConfig, TransformerForCausalLM
from yoco.models.yoco import SELF_DECODERS, YocoConfig, YocoForCausalLM
from yoco.tokenizer import BYTE_VOCAB_SIZE

ARCHITECTURES = {
    "transformer": (TransformerConfig, TransformerForCausalLM),
    "yoco": (YocoConfig, YocoForCausalLM),
    "retnet": (RetNetConfig, RetNetForCausalLM),
}
# Fields a YOCO kind adds to its self-decoder choice. gRet: a width-4 causal convolution before
# the retention. With it YOCO-gRet learned multi-query recall at both settings of
# docs/EVALUATION.md at every seed tried (without it: 5.9% at the harder one) and reached a
# 7.5% lower validation loss on the embedded corpus after 1M tokens (docs/BENCHMARKS.md).
SELF_DECODER_DEFAULTS = {"gret": {"short_conv_size": 4}}
KINDS = {
    "transformer": ("transformer", {}),
    **{
        f"yoco-{name}": ("yoco", {"self_decoder": name, **SELF_DECODER_DEFAULTS.get(name, {})})
        for name in SELF_DECODERS
    },
    "retnet": ("retnet", {}),
    # Controls for recall: the YOCO kind's self-decoder layer in every layer, no global cache.
    "swa-only": ("yoco", {"self_decoder": "swa", "cross_decoder": False}),
    "gret-only": ("yoco", {"self_decoder": "gret", "cross_decoder": False, **SELF_DECODER_DEFAULTS["gret"]}),
}
PARTS = {
    "diff": {"attention_type": "differential"},
    "moe": {"ffn_type": "moe", "num_experts": 4, "num_experts_per_tok": 2},
    "mhmoe": {"ffn_type": "mhmoe", "num_experts": 4, "num_experts_per_tok": 2, "mhmoe_heads": 2},
    "nope": {"cross_decoder_positions": False},
    "rope": {"cross_decoder_positions": True},
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


def resolve(name: str) -> tuple[str, dict]:
    """``"yoco-swa+diff"`` -> ``("yoco", {"self_decoder": "swa", "attention_type": ...})``:
    the architecture and the config fields the name stands for."""
    kind, *parts = name.split("+")
    if kind not in KINDS:
        raise ValueError(f"unknown model kind {kind!r} in {name!r}; kinds: {', '.join(KINDS)}")
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise ValueError(f"unknown part {unknown[0]!r} in {name!r}; parts: {', '.join(PARTS)}")
    architecture, fields = KINDS[kind]
    fields = dict(fields)
    for part in parts:
        fields.update(PARTS[part])
    check_fields(architecture, fields, name)
    return architecture, fields


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
    """The config :func:`build` initialises a model from: ``name`` (kind and parts), then the
    ``preset`` shape, then ``fields``, each overriding the one before. ``where_applicable``
    holds fields given only to the kinds whose config has them, for commands that compare kinds
    (a sliding window for the SWA kinds, say); every other field must belong to the kind."""
    architecture, named = resolve(name)
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; presets: {', '.join(PRESETS)}")
    known = config_fields(architecture)
    optional = {k: v for k, v in (where_applicable or {}).items() if k in known}
    fields = {**(PRESETS[preset] if preset else {}), **optional, **fields}
    clash = sorted(k for k in set(named) & set(fields) if named[k] != fields[k])
    if clash:
        raise ValueError(f"{clash[0]}={fields[clash[0]]!r} contradicts the model name {name!r}")
    return build_config(architecture, {**fields, **named}, name)


def model_from_config(config):
    """A freshly initialised model of ``config``'s architecture."""
    for config_class, model_class in ARCHITECTURES.values():
        if type(config) is config_class:
            return model_class(config)
    raise ValueError(f"{type(config).__name__} is not a config of yoco models")


def build(name: str, preset: str | None = None, where_applicable: dict | None = None, **fields):
    """A freshly initialised model; the arguments are those of :func:`model_config`."""
    return model_from_config(model_config(name, preset, where_applicable, **fields))
