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
from transformers.modeling_outputs import MoeCausalLMOutputWithPast

from yoco.cache import ModelCache, check_kv_cache_dtype
from yoco.layers.bitlinear import convert_to_bitlinear
from yoco.layers.linear import Linear
from yoco.layers.moe import moe_aux_loss
from yoco.layers.norm import RMSNorm
from yoco.layers.rotary import RotaryEmbedding
from yoco.models.hf_generation import MakesOwnCache

POSITION_EMBEDDINGS = ("rope", "xpos")
ATTENTION_TYPES = ("softmax", "differential")
FFN_TYPES = ("swiglu", "moe", "mhmoe")


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
    # Swappable parts (docs/ARCHITECTURES.md); the defaults give exactly Llama.
    position_embedding: str = "rope"  # "rope" | "xpos"
    xpos_scale_base: float = 512.0
    attention_type: str = "softmax"  # "softmax" | "differential"
    ffn_type: str = "swiglu"  # "swiglu" | "moe" | "mhmoe"
    num_experts: int = 8
    num_experts_per_tok: int = 2
    mhmoe_heads: int = 4  # MH-MoE: sub-tokens per token
    router_aux_loss_coef: float = 0.01
    bitnet: bool = False  # BitNet b1.58 ternary linear layers inside the decoder blocks

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
        choices = {
            "position_embedding": POSITION_EMBEDDINGS,
            "attention_type": ATTENTION_TYPES,
            "ffn_type": FFN_TYPES,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name in ("num_experts", "num_experts_per_tok", "mhmoe_heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_experts_per_tok > self.num_experts:
            raise ValueError(
                f"num_experts_per_tok ({self.num_experts_per_tok}) must be <= num_experts ({self.num_experts})"
            )
        if self.xpos_scale_base <= 0:
            raise ValueError(f"xpos_scale_base must be > 0, got {self.xpos_scale_base}")
        if self.head_dim % 2:
            raise ValueError(
                f"hidden_size / num_attention_heads = {self.head_dim} must be even for rotary embeddings"
            )


class DecoderPreTrainedModel(PreTrainedModel):
    base_model_prefix = "model"
    supports_gradient_checkpointing = False
    _no_split_modules = ["DecoderLayer"]


class CausalLM(MakesOwnCache, DecoderPreTrainedModel, GenerationMixin):
    """Token ids -> ``self.model`` (embedding + body + final norm) -> LM head -> logits, loss."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: DecoderConfig, model: nn.Module) -> None:
        super().__init__(config)
        self.model = model
        if config.bitnet:
            convert_to_bitlinear(self.model)  # before post_init, so BitLinear weights get the usual init
        self.lm_head = Linear(config.hidden_size, config.vocab_size, bias=False)
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

    def new_cache(self, batch_size: int = 1, capacity: int = 0, kv_cache_dtype: str = "auto") -> ModelCache:
        """An empty inference cache for this model, on the model's device. Keys and values are
        kept in the model's dtype (``kv_cache_dtype="auto"``) or in int8 with a scale per
        vector (``"int8"``: about half the bytes of bfloat16, dequantized as attention reads
        them); recurrent states are float32 either way."""
        check_kv_cache_dtype(kv_cache_dtype)
        return self.model.new_cache(batch_size, capacity, self.dtype, self.device, kv_cache_dtype)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: ModelCache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        past_key_values: ModelCache | None = None,
        **kwargs,
    ) -> MoeCausalLMOutputWithPast:
        """Logits for ``input_ids`` (B, N), continuing ``cache`` (from :meth:`new_cache`) when given.

        ``past_key_values`` is the name transformers used for ``cache`` before 5.24; it is still
        taken, so a caller using the old name does not silently start from an empty cache.

        ``logits_to_keep`` follows transformers: ``0`` keeps every position, ``k > 0`` the last
        k, a 1-D tensor the positions it lists, so an empty one (:data:`NO_LOGITS`) keeps none and
        only fills the cache. In YOCO the cross-decoder runs for the kept positions only
        (prefill early exit, exact). Everything is validated before any cache is touched.

        Returns transformers' ``MoeCausalLMOutputWithPast`` (for every model, so ``aux_loss``
        is always an attribute):

        * ``loss`` (with ``labels``): the mean next-token cross-entropy, and nothing else; its
          exp is the perplexity.
        * ``aux_loss``: the unscaled load-balancing loss of this forward, summed over the
          mixture-of-experts layers (:func:`yoco.layers.moe.moe_aux_loss`), with or without
          ``labels``; None for a model without MoE layers.

        The training objective is ``loss + config.router_aux_loss_coef * aux_loss``, which the
        trainer forms itself (``yoco.train.loop.training_objective``). This departs on purpose
        from ``MixtralForCausalLM``, whose ``loss`` includes that term when
        ``output_router_logits`` is on: here ``loss`` never does, so a reported loss or
        perplexity is always cross-entropy alone.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        if attention_mask is not None and not bool(attention_mask.all()):
            raise ValueError(
                "padded attention_mask is not supported by the forward pass; "
                "use yoco.generate for batches of unequal prompts"
            )
        if past_key_values is not None:
            if cache is not None:
                raise ValueError("pass the cache as cache= or past_key_values=, not both")
            cache = past_key_values
        if cache is not None and not isinstance(cache, ModelCache):
            raise ValueError(f"the cache must come from model.new_cache(), got {type(cache).__name__}")
        if input_ids is not None:
            self.check_input_ids(input_ids)
            inputs_embeds = self.model.embed_tokens(input_ids)
        b, n, _ = inputs_embeds.shape
        if cache is None and use_cache:
            cache = self.new_cache(b, n)
        if cache is not None:
            cache.check_step(b, n, inputs_embeds.dtype)
        if position_ids is None:
            start = torch.tensor(cache.lengths if cache is not None else [0] * b, device=inputs_embeds.device)
            position_ids = start[:, None] + torch.arange(n, device=inputs_embeds.device)
        if int(position_ids.max()) >= self.config.max_position_embeddings:
            raise ValueError(
                f"sequence reaches position {int(position_ids.max())}, past "
                f"max_position_embeddings={self.config.max_position_embeddings}"
            )
        keep_last, indices = positions_to_keep(logits_to_keep, n)
        hidden = self.model(inputs_embeds, position_ids, cache, keep_last=keep_last)
        logits = self.lm_head(hidden if indices is None else hidden[:, indices])
        loss = causal_lm_loss(logits, labels) if labels is not None else None
        # A dense model skips the walk over its modules: this runs on every decoding step.
        aux_loss = moe_aux_loss(self) if self.config.ffn_type != "swiglu" else None
        return MoeCausalLMOutputWithPast(loss=loss, aux_loss=aux_loss, logits=logits, cache=cache)


NO_LOGITS = torch.empty(0, dtype=torch.long)  # logits_to_keep that keeps no position: fill the cache only


def positions_to_keep(logits_to_keep: int | torch.Tensor, n: int) -> tuple[int | None, torch.Tensor | None]:
    """transformers' ``logits_to_keep`` as (how many last positions the body computes: None for
    all, 0 for none; the positions to pick from those, or None for all of them)."""
    if not isinstance(logits_to_keep, torch.Tensor):
        if logits_to_keep < 0:
            raise ValueError(f"logits_to_keep must be >= 0, got {logits_to_keep}")
        return (min(logits_to_keep, n) or None), None
    wanted = logits_to_keep.flatten().cpu()
    if wanted.numel() and not bool(((wanted >= -n) & (wanted < n)).all()):
        raise ValueError(f"logits_to_keep lists positions outside the {n} of this input")
    wanted = wanted.remainder(n) if n else wanted
    if torch.equal(wanted, torch.arange(n - wanted.numel(), n)):  # the last k, or none
        return wanted.numel(), None
    return None, wanted


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy: position t predicts labels[t + 1]; -100 is ignored."""
    shifted = logits[:, :-1].float().reshape(-1, logits.shape[-1])
    return F.cross_entropy(shifted, labels[:, 1:].reshape(-1), ignore_index=-100)


class DecoderBackbone(nn.Module):
    """Embedding, rotary tables and final norm; subclasses define ``body``."""

    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        xpos = config.position_embedding == "xpos"
        self.rotary_emb = RotaryEmbedding(
            config.head_dim,
            config.rope_theta,
            xpos_scale_base=config.xpos_scale_base if xpos else None,
            xpos_center=config.max_position_embeddings // 2,
        )
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def body(self, x, rope, cache, keep_last: int | None) -> torch.Tensor:
        """Hidden states (B, N, hidden) -> (B, keep_last or N, hidden), updating ``cache``."""
        raise NotImplementedError

    def new_cache(self, batch_size: int, capacity: int, dtype, device, kv_cache_dtype: str) -> ModelCache:
        raise NotImplementedError

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        position_ids: torch.Tensor,
        cache: ModelCache | None = None,
        keep_last: int | None = None,
    ) -> torch.Tensor:
        """Embeddings (B, N, hidden) -> normalised hidden states of the last ``keep_last``
        positions (all when None, none when 0)."""
        rope = self.rotary_emb(position_ids, inputs_embeds.dtype)
        return self.norm(self.body(inputs_embeds, rope, cache, keep_last))


def last_positions(x: torch.Tensor, keep_last: int | None) -> torch.Tensor:
    """The last ``keep_last`` positions of (B, N, ...) tensors along dim 1 (all when None)."""
    return x if keep_last is None else x[:, x.shape[1] - keep_last :]
