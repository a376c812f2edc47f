"""yoco: decoder-decoder ("You Only Cache Once") language models in plain PyTorch.

Importing the package registers every model with the Hugging Face Auto classes, so
``AutoModelForCausalLM.from_pretrained(dir)`` loads a checkpoint saved by yoco.
"""

from transformers import AutoConfig, AutoModelForCausalLM

from yoco.inference import generate, load_cache, prefill, save_cache, stream_generate
from yoco.models.retnet import RetNetConfig, RetNetForCausalLM
from yoco.models.transformer import TransformerConfig, TransformerForCausalLM
from yoco.models.yoco import YocoConfig, YocoForCausalLM

__version__ = "0.1.0"

for _config, _model in (
    (YocoConfig, YocoForCausalLM),
    (TransformerConfig, TransformerForCausalLM),
    (RetNetConfig, RetNetForCausalLM),
):
    AutoConfig.register(_config.model_type, _config, exist_ok=True)
    AutoModelForCausalLM.register(_config, _model, exist_ok=True)

__all__ = [
    "RetNetConfig",
    "RetNetForCausalLM",
    "TransformerConfig",
    "TransformerForCausalLM",
    "YocoConfig",
    "YocoForCausalLM",
    "generate",
    "load_cache",
    "prefill",
    "save_cache",
    "stream_generate",
]
