"""BitNet b1.58 linear layers (Ma et al. 2024, "The Era of 1-bit LLMs", arXiv 2402.17764).

Training (``BitLinear``) uses fake quantisation: the layer keeps full-precision weights, and
every forward pass quantises both operands and multiplies the dequantised values:

    weights      γ = mean|W|                 W̃ = RoundClip(W / (γ + ε), −1, 1)   -> W̃ · γ
    activations  s = 127 / max|x| per token  x̃ = clip(round(x · s), −128, 127)   -> x̃ / s
    output       y = (x̃ / s) @ (W̃ · γ)ᵀ

Rounding has zero gradient almost everywhere, so the backward pass uses the straight-through
estimator: gradients flow as if the quantisers were the identity.

Inference (``PackedBitLinear``) stores only the ternary W̃, four values per byte, and γ; its
forward gives exactly the numbers ``BitLinear`` gives. ``pack_model`` swaps the layers in.

Choices, and where they differ from the paper:
  * No extra RMSNorm inside the layer. BitNet b1.58 normalises the input of every BitLinear
    (SubLN). Our blocks already normalise the inputs of the q/k/v, gate/up and shared K/V
    projections (pre-norm), and the activation quantiser scales each token by its own absmax,
    so it is invariant to any per-token scale: an added weightless norm would only rescale each
    token's output, not reduce its quantisation error. Skipping it keeps the state_dict keys of
    the full-precision model, so one checkpoint format serves both. The inputs of o_proj and
    down_proj stay un-normalised, as in Llama.
  * Scales are per token (activations) and per tensor (weights), as in the paper. A per-tensor
    activation scale, a known mistake in some ports, would make a token's output depend on the
    other tokens in the batch, and cached decoding could then never match the full forward.
  * Only the linear layers inside the decoder blocks are converted; the embedding and the LM
    head stay full precision, as in the paper.
  * The quantisation maths runs in float32 whatever the model dtype; the matrix product runs
    in the input's dtype (or autocast's), and the output has the input's dtype.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from yoco.layers.linear import Linear

EPS = 1e-5  # keeps the scales finite for an all-zero weight matrix or token (official code's value)
ACTIVATION_MAX = 127  # 8-bit activations: integers in [-128, 127]

# Parent-module names whose linears belong to the decoder blocks: the Transformer's and RetNet's
# ``layers``, YOCO's two decoders and its one K/V projection.
DECODER_PARTS = ("layers", "self_decoder", "cross_decoder", "shared_kv")
# Small projections whose outputs are decisions rather than features stay full precision: an
# MoE router (its argmax picks the experts) and gated retention's decay projection (one scalar
# per head, exponentiated into the decay). Together they hold a few thousandths of the weights.
FULL_PRECISION = ("router", "decay_proj")


def weight_quant(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Absmean ternary quantisation of a weight matrix (out, in).

    Returns the ternary matrix as int8 in {-1, 0, 1} and the scalar float32 scale γ = mean|W|;
    ``ternary * γ`` is the dequantised weight.
    """
    w32 = w.detach().float()
    scale = w32.abs().mean()
    ternary = (w32 / (scale + EPS)).round().clamp(-1, 1).to(torch.int8)
    return ternary, scale


def activation_quant(x: torch.Tensor) -> torch.Tensor:
    """Per-token absmax 8-bit fake quantisation of x (..., features), returned dequantised in float32.

    Each token (row along the last dimension) is scaled so that its largest magnitude maps to 127,
    rounded, clipped to the int8 range and scaled back.
    """
    x32 = x.detach().float()
    scale = ACTIVATION_MAX / x32.abs().amax(dim=-1, keepdim=True).clamp(min=EPS)  # (..., 1)
    return (x32 * scale).round().clamp(-ACTIVATION_MAX - 1, ACTIVATION_MAX) / scale


def dequantised_weight(ternary: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """W̃ · γ in float32; the one place both layers turn ternary weights back into numbers."""
    return ternary.float() * scale


def straight_through(x: torch.Tensor, quantised: torch.Tensor) -> torch.Tensor:
    """``quantised`` in the forward pass, the identity's gradient (with respect to x) backward.

    The same estimator as the paper's ``x + (q(x) - x).detach()``, written so that the forward
    value is exactly q(x): ``x - x.detach()`` is exactly zero, whereas ``x + (q - x)`` can be off
    by one rounding, which would make the training layer and the packed layer disagree.
    """
    return quantised.detach() + (x - x.detach())


def quantised_linear(
    x_quantised: torch.Tensor, w_quantised: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype
) -> torch.Tensor:
    """The matrix product shared by BitLinear and PackedBitLinear, so both round alike."""
    out = F.linear(x_quantised.to(dtype), w_quantised.to(dtype), None if bias is None else bias.to(dtype))
    return out.to(dtype)  # autocast may have run the product in another dtype


class BitLinear(nn.Linear):
    """``nn.Linear`` whose forward quantises weights to {-1, 0, 1}·γ and inputs to 8 bits per token.

    x (..., in_features) -> (..., out_features), same dtype as x. The parameters are those of
    ``nn.Linear`` (``weight``, optional ``bias``), so state_dicts load either way.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight32 = self.weight.float()
        w_quantised = straight_through(weight32, dequantised_weight(*weight_quant(weight32)))
        x_quantised = straight_through(x.float(), activation_quant(x))
        return quantised_linear(x_quantised, w_quantised, self.bias, x.dtype)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "BitLinear":
        """A BitLinear sharing ``linear``'s parameters (no copy)."""
        # Built on the meta device so nothing is allocated or initialised twice; this also
        # works inside from_pretrained, which builds models on the meta device.
        bit = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
        bit.weight = linear.weight
        bit.bias = linear.bias
        return bit


def pack_ternary(ternary: torch.Tensor) -> torch.Tensor:
    """Ternary values {-1, 0, 1} of any shape -> uint8 (ceil(numel / 4),), four 2-bit codes a byte.

    Value i (in flattened order) is stored as ``value + 1`` in bits 2·(i mod 4) of byte i // 4;
    the last byte is padded with zeros when numel is not a multiple of 4.
    """
    codes = (ternary.flatten().to(torch.int16) + 1).to(torch.uint8)  # {0, 1, 2}
    codes = F.pad(codes, (0, -codes.numel() % 4)).view(-1, 4)  # (bytes, 4)
    return codes[:, 0] | (codes[:, 1] << 2) | (codes[:, 2] << 4) | (codes[:, 3] << 6)


def unpack_ternary(packed: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """The inverse of ``pack_ternary``: uint8 (bytes,) -> int8 tensor of ``shape`` in {-1, 0, 1}."""
    shifts = torch.tensor([0, 2, 4, 6], dtype=torch.uint8, device=packed.device)
    codes = (packed[:, None] >> shifts) & 3  # (bytes, 4)
    return (codes.flatten()[: math.prod(shape)].to(torch.int8) - 1).view(shape)


class PackedBitLinear(nn.Module):
    """Inference-only BitLinear: 2-bit packed ternary weights and their scale, no float weights.

    x (..., in_features) -> (..., out_features), equal to ``BitLinear``'s output for the weights it
    was packed from. The weights are unpacked at every call: memory is what this layer saves,
    not time.
    """

    def __init__(self, bit_linear: BitLinear) -> None:
        super().__init__()
        self.in_features, self.out_features = bit_linear.in_features, bit_linear.out_features
        ternary, scale = weight_quant(bit_linear.weight)
        self.register_buffer("packed_weight", pack_ternary(ternary))  # uint8 (ceil(out·in / 4),)
        self.register_buffer("weight_scale", scale)  # float32 scalar γ
        bias = bit_linear.bias
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ternary = unpack_ternary(self.packed_weight, (self.out_features, self.in_features))
        w_quantised = dequantised_weight(ternary, self.weight_scale.float())
        return quantised_linear(activation_quant(x), w_quantised, self.bias, x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bits=2"


def is_in_decoder_blocks(module_name: str) -> bool:
    """True for names such as ``layers.0.mlp.up_proj`` or ``model.shared_kv.k_proj``, except the
    projections kept in full precision (``FULL_PRECISION``)."""
    parts = module_name.split(".")
    return any(part in DECODER_PARTS for part in parts) and parts[-1] not in FULL_PRECISION


def replace_modules(root: nn.Module, replacements: dict[str, nn.Module]) -> None:
    """Set each dotted name in ``replacements`` (relative to ``root``) to its new module."""
    for name, new in replacements.items():
        parent_name, _, child_name = name.rpartition(".")
        setattr(root.get_submodule(parent_name), child_name, new)


def convert_to_bitlinear(module: nn.Module) -> int:
    """Turn every ``nn.Linear`` inside the decoder blocks of ``module`` into a ``BitLinear`` in
    place (sharing its parameters); the embedding and LM head are left alone. Returns how many
    layers were converted."""
    linears = {
        name: child
        for name, child in module.named_modules()
        if type(child) in (nn.Linear, Linear) and is_in_decoder_blocks(name)  # not BitLinear already
    }
    replace_modules(module, {name: BitLinear.from_linear(linear) for name, linear in linears.items()})
    return len(linears)


def pack_model(model: nn.Module) -> int:
    """Replace every ``BitLinear`` in ``model`` by a ``PackedBitLinear`` in place, for inference.

    Returns the bytes saved: the converted float weights minus the packed bytes and the scales.
    """
    bit_linears = {name: child for name, child in model.named_modules() if isinstance(child, BitLinear)}
    packed = {name: PackedBitLinear(layer) for name, layer in bit_linears.items()}
    replace_modules(model, packed)
    before = sum(layer.weight.numel() * layer.weight.element_size() for layer in bit_linears.values())
    after = sum(layer.packed_weight.nbytes + layer.weight_scale.nbytes for layer in packed.values())
    return before - after
