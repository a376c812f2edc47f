"""What every causal LM in the library shares: the Llama-named config fields with their checks,
and the Hugging Face plumbing (embedding, final norm, LM head, loss, weight init).

A concrete model supplies only its *body*: how hidden states flow from the embedding to the
final norm. See :mod:`yoco.models.transformer` and :mod:`yoco.models.yoco`.
"""

import torch
import torch.nn.functional as F
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from yoco.layers.norm import RMSNorm
from yoco.layers.rotary import RotaryEmbedding


@strict
class DecoderConfig(PretrainedConfig):
    """Fields and defaults shared by all our configs; names follow ``LlamaConfig``.

    The defaults are a small model (58M parameters at vocab 32000) that runs on a laptop CPU.
    """

    vocab_size: int = 32000
    hidden_size: int = 512
    intermediate_size: int = 1376
    num_hidden_layers: int = 8
    num_attention_heads: int = 8
    num_key_value_heads: int | None = None
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    max_position_embeddings: int = 32768
    initializer_range: float = 0.02
    tie_word_embeddings: bool = False
    use_cache: bool = True
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None

    def __post_init__(self, **kwargs):
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        super().__post_init__(**kwargs)
        self.check()

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def check(self) -> None:
        """Raise ``ValueError`` naming the field and the rule it breaks."""
        for name in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "max_position_embeddings",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                f"({self.num_attention_heads})"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be divisible by "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        if self.head_dim % 2:
            raise ValueError(
                f"hidden_size / num_attention_heads = {self.head_dim} must be even for rotary embeddings"
            )


class DecoderPreTrainedModel(PreTrainedModel):
    base_model_prefix = "model"
    supports_gradient_checkpointing = False
    _no_split_modules = ["DecoderLayer"]


class CausalLM(DecoderPreTrainedModel, GenerationMixin):
    """Token ids -> ``self.model`` (embedding + body + final norm) -> LM head -> logits, loss."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: DecoderConfig, model: nn.Module) -> None:
        super().__init__(config)
        self.model = model
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    def check_input_ids(self, input_ids: torch.Tensor) -> None:
        if input_ids.numel() == 0:
            raise ValueError("input_ids is empty")
        low, high = int(input_ids.min()), int(input_ids.max())
        if low < 0 or high >= self.config.vocab_size:
            bad = low if low < 0 else high
            raise ValueError(f"token id {bad} is outside the vocabulary [0, {self.config.vocab_size})")

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values=None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        if attention_mask is not None and not bool(attention_mask.all()):
            raise ValueError(
                "padded attention_mask is not supported by the plain forward; "
                "use yoco.generate for batches of unequal prompts"
            )
        if input_ids is not None:
            self.check_input_ids(input_ids)
            inputs_embeds = self.model.embed_tokens(input_ids)
        b, n, _ = inputs_embeds.shape
        if position_ids is None:
            position_ids = torch.arange(n, device=inputs_embeds.device).expand(b, n)
        if int(position_ids.max()) >= self.config.max_position_embeddings:
            raise ValueError(
                f"sequence reaches position {int(position_ids.max())}, past "
                f"max_position_embeddings={self.config.max_position_embeddings}"
            )
        hidden = self.model(inputs_embeds, position_ids)  # (B, N, hidden)
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.lm_head(hidden)
        loss = None
        if labels is not None:
            loss = causal_lm_loss(logits, labels)
        return CausalLMOutputWithPast(loss=loss, logits=logits)


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy: position t predicts labels[t + 1]; -100 is ignored."""
    shifted = logits[:, :-1].float().reshape(-1, logits.shape[-1])
    return F.cross_entropy(shifted, labels[:, 1:].reshape(-1), ignore_index=-100)


class DecoderBackbone(nn.Module):
    """Embedding, rotary tables and final norm; subclasses define ``body``."""

    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.rotary_emb = RotaryEmbedding(config.head_dim, config.rope_theta)
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def body(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, inputs_embeds: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        rope = self.rotary_emb(position_ids, inputs_embeds.dtype)
        return self.norm(self.body(inputs_embeds, rope))
