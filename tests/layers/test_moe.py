"""Mixture-of-experts feed-forwards: routing on a hand-worked example, the sparse dispatch against
a token-by-token reference written in this file, routing per position, the load-balancing loss
against its formula, the MH-MoE parity sizing, and whole models (cached decoding, the
cross-entropy loss with the aux loss beside it, the training objective with the aux term,
training, expert statistics in the logs)."""

import json

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode
from transformers.modeling_outputs import MoeCausalLMOutputWithPast

import yoco
from tests.helpers import (
    MODEL_KINDS,
    cached_logits,
    greedy_by_full_forward,
    sharpen_attention,
    tiny_config,
    tiny_model,
    train_briefly,
)
from yoco.layers.moe import MHMoE, MoE, expert_statistics, mhmoe_intermediate_size
from yoco.models.base import DecoderConfig
from yoco.train.loop import train, training_objective

# (experts, top k): k = 1, k = E, and the usual in between; E = 1 is a dense SwiGLU.
ROUTINGS = [(1, 1), (4, 1), (4, 2), (4, 4), (8, 2)]
SHAPES = [(1, 1), (2, 7), (3, 33)]


def make_ffn(kind: str, experts: int, top_k: int, hidden: int = 32, heads: int = 2):
    torch.manual_seed(0)
    if kind == "moe":
        return MoE(hidden, 48, experts, top_k)
    return MHMoE(hidden, 48, experts, top_k, heads)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


def expert_by_hand(expert, x: torch.Tensor) -> torch.Tensor:
    """A SwiGLU expert written out on one vector: down(silu(gate·x) ⊙ up·x)."""
    gate = expert.gate_proj.weight @ x
    return expert.down_proj.weight @ (gate * torch.sigmoid(gate) * (expert.up_proj.weight @ x))


def one_token_by_hand(moe: MoE, x: torch.Tensor) -> torch.Tensor:
    """Mixtral routing for one token x (hidden,): softmax of the router's logits in float32, the
    k most probable experts by sorting, their probabilities divided by their sum as gates."""
    logits = moe.router.weight.float() @ x.float()
    probabilities = logits.exp() / logits.exp().sum()
    values = probabilities.detach().tolist()
    chosen = sorted(range(moe.num_experts), key=lambda e: -values[e])[: moe.top_k]
    gates = probabilities[chosen] / probabilities[chosen].sum()
    return sum(g * expert_by_hand(moe.experts[e], x) for g, e in zip(gates, chosen, strict=True))


def moe_by_hand(module: MoE | MHMoE, x: torch.Tensor) -> torch.Tensor:
    """The test's own MoE / MH-MoE over x (..., hidden), one token at a time. MH-MoE: head
    projection, the token cut into h consecutive slices, each routed alone, slices rejoined in
    order, merge projection."""
    rows = []
    for token in x.reshape(-1, x.shape[-1]):
        if isinstance(module, MoE):
            rows.append(one_token_by_hand(module, token))
            continue
        projected = module.head_proj.weight @ token
        width = projected.shape[0] // module.heads
        slices = [projected[h * width : (h + 1) * width] for h in range(module.heads)]
        rejoined = torch.cat([one_token_by_hand(module.moe, piece) for piece in slices])
        rows.append(module.merge_proj.weight @ rejoined)
    return torch.stack(rows).reshape(x.shape)


# Hand-worked routing: an identity router over 4 experts (hidden 4), so a token's logits are the
# token. Token 0 = log(0.4, 0.3, 0.2, 0.1) has exactly these probabilities; token 1 =
# log(0.1, 0.5, 0.15, 0.25). The k largest, renormalised (gates per expert 0..3):
PROBABILITIES = [[0.4, 0.3, 0.2, 0.1], [0.1, 0.5, 0.15, 0.25]]
HAND_GATES = {
    1: [[1, 0, 0, 0], [0, 1, 0, 0]],
    2: [[4 / 7, 3 / 7, 0, 0], [0, 2 / 3, 0, 1 / 3]],  # 0.4/0.7, 0.3/0.7; 0.5/0.75, 0.25/0.75
    3: [[4 / 9, 3 / 9, 2 / 9, 0], [0, 5 / 9, 1 / 6, 5 / 18]],  # over 0.9 both
    4: PROBABILITIES,  # all experts: the probabilities themselves
}


def hand_routed_moe(top_k: int) -> MoE:
    torch.manual_seed(0)
    moe = MoE(4, 8, 4, top_k)
    with torch.no_grad():
        moe.router.weight.copy_(torch.eye(4))
    return moe


@pytest.mark.parametrize("top_k", [1, 2, 3, 4])
def test_routing_on_a_hand_worked_example(top_k):
    moe = hand_routed_moe(top_k)
    x = torch.tensor(PROBABILITIES).log()
    gates = torch.tensor(HAND_GATES[top_k], dtype=torch.float32)
    with torch.no_grad():
        probabilities, weights, indices = moe.route(x)
        torch.testing.assert_close(probabilities, torch.tensor(PROBABILITIES))
        torch.testing.assert_close(torch.zeros(2, 4).scatter(1, indices, weights), gates)
        # The dispatch puts each expert's weighted output back on its own token.
        expected = torch.stack([sum(gates[t, e] * moe.experts[e](x[t]) for e in range(4)) for t in range(2)])
        torch.testing.assert_close(moe(x), expected)


def test_mhmoe_routes_each_slice_of_a_token_on_its_own():
    """Identity head and merge projections, hidden 8, h = 2: slice 0 of the token is token 0 of
    the hand example, slice 1 is token 1. The inner MoE has h·E = 4 experts of width 4 and an
    identity router, so slice 0 goes to experts 0, 1 (gates 4/7, 3/7), slice 1 to 1, 3 (2/3, 1/3)."""
    torch.manual_seed(0)
    mh = MHMoE(8, 16, 2, 2, 2)
    with torch.no_grad():
        for linear in (mh.head_proj, mh.merge_proj, mh.moe.router):
            linear.weight.copy_(torch.eye(linear.weight.shape[0]))
        x = torch.tensor(PROBABILITIES).log().flatten()  # one token of width 8
        first, second = x[:4], x[4:]
        experts = mh.moe.experts
        expected = torch.cat(
            [
                4 / 7 * experts[0](first) + 3 / 7 * experts[1](first),
                2 / 3 * experts[1](second) + 1 / 3 * experts[3](second),
            ]
        )
        torch.testing.assert_close(mh(x[None])[0], expected)


# Sparse dispatch against the token-by-token reference, over the routings and shapes: outputs of
# spread (std) 0.03-0.13 (MoE), 0.01-0.03 (MH-MoE); max difference measured 2.1e-7 / 4.7e-8.
# Parameter gradients (magnitudes up to 3.0 / 0.11): 7.2e-7 / 3.0e-8. Bounds: 3x.
MOE_TOLERANCE = {"moe": 6.3e-7, "mhmoe": 1.4e-7}
GRADIENT_TOLERANCE = {"moe": 2.2e-6, "mhmoe": 9e-8}


@pytest.mark.parametrize("kind", ["moe", "mhmoe"])
@pytest.mark.parametrize("experts, top_k", ROUTINGS)
@pytest.mark.parametrize("shape", SHAPES)
def test_sparse_dispatch_equals_the_token_by_token_reference(kind, experts, top_k, shape):
    ffn = make_ffn(kind, experts, top_k)
    x = torch.randn(*shape, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert max_diff(ffn(x), moe_by_hand(ffn, x)) <= MOE_TOLERANCE[kind]


@pytest.mark.parametrize("kind", ["moe", "mhmoe"])
def test_sparse_dispatch_has_the_token_by_token_gradients(kind):
    ffn = make_ffn(kind, 4, 2)
    x = torch.randn(2, 9, 32, generator=torch.Generator().manual_seed(2))
    sparse = torch.autograd.grad(ffn(x).square().sum(), list(ffn.parameters()))
    by_hand = torch.autograd.grad(moe_by_hand(ffn, x).square().sum(), list(ffn.parameters()))
    for got, expected in zip(sparse, by_hand, strict=True):
        assert max_diff(got, expected) <= GRADIENT_TOLERANCE[kind]


@pytest.mark.parametrize("kind", ["moe", "mhmoe"])
def test_routing_is_per_position(kind):
    ffn = make_ffn(kind, 4, 2)
    x = torch.randn(2, 10, 32, generator=torch.Generator().manual_seed(3))
    changed = x.clone()
    changed[:, 4] = torch.randn(2, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        before, after = ffn(x), ffn(changed)
    others = [i for i in range(10) if i != 4]
    # MoE: the experts' batches change size, so products round differently, by an amount that
    # depends on the CPU's kernels: measured 7.5e-9 on an Intel Xeon, 6.0e-8 (one float32 ulp of
    # an output near 0.5) on an AMD EPYC; MH-MoE 0.0 on both. Bound: 4 ulps of the largest
    # output (4.8e-7 here); a position leaking into another moves outputs of spread 0.08.
    bound = 4 * torch.finfo(torch.float32).eps * float(before.abs().max())
    assert max_diff(before[:, others], after[:, others]) <= bound
    assert max_diff(before[:, 4], after[:, 4]) > 1e-3


def routed_by(probabilities: list[list[float]], top_k: int) -> MoE:
    """A MoE whose router probabilities for input rows log(p) are exactly p (identity router)."""
    experts = len(probabilities[0])
    moe = MoE(experts, 8, experts, top_k)
    with torch.no_grad():
        moe.router.weight.copy_(torch.eye(experts))
        moe(torch.tensor(probabilities).log())
    return moe


def test_aux_loss_is_the_switch_formula():
    # Top 2 of each row: {0, 1}, {1, 2}, {0, 3} -> counts (2, 2, 1, 1) of 6 slots;
    # mean probabilities (1.0, 1.0, 0.5, 0.5) / 3. E * sum f * P = 4 * (2/9 + 1/18) = 10/9.
    moe = routed_by([[0.4, 0.3, 0.2, 0.1], [0.1, 0.6, 0.2, 0.1], [0.5, 0.1, 0.1, 0.3]], top_k=2)
    assert moe.expert_counts.tolist() == [2, 2, 1, 1]
    assert abs(float(moe.aux_loss) - 10 / 9) < 1e-6
    # Everything on expert 0 with probability 0.7: f = (1, 0, 0, 0), loss = 4 * 0.7.
    collapsed = routed_by([[0.7, 0.1, 0.1, 0.1]] * 5, top_k=1)
    assert abs(float(collapsed.aux_loss) - 2.8) < 1e-6


@pytest.mark.parametrize("top_k", [1, 2, 4])
def test_uniform_routing_gives_aux_loss_one(top_k):
    # Each token is sure of a different expert: f_e = P_e = 1/E.
    balanced = routed_by([[0.97 if e == t else 0.01 for e in range(4)] for t in range(4)], top_k=1)
    assert abs(float(balanced.aux_loss) - 1.0) < 1e-6
    uniform = routed_by([[0.25] * 4] * 6, top_k=top_k)
    assert abs(float(uniform.aux_loss) - 1.0) < 1e-6


def test_the_aux_loss_trains_the_router():
    moe = make_ffn("moe", 4, 2)
    moe(torch.randn(5, 32))
    moe.aux_loss.backward()
    assert moe.router.weight.grad.abs().max() > 0


def test_mhmoe_v2_sizing_is_the_papers_relation():
    # The paper's d_mhmoe = d_moe - d/k for its two-matrix FFN experts ...
    for d, d_moe, k in [(512, 1376, 2), (768, 3072, 1), (1024, 2048, 4)]:
        assert mhmoe_intermediate_size(d, d_moe, k, matrices_per_expert=2) == d_moe - d // k
    # ... and the same balance for our three-matrix SwiGLU experts: d_moe - 2d/(3k), rounded.
    assert mhmoe_intermediate_size(512, 1376, 2) == round(1376 - 1024 / 6) == 1205
    with pytest.raises(ValueError, match="no expert width"):
        mhmoe_intermediate_size(512, 100, 1)


def routed_flops(ffn, tokens: int, hidden: int) -> tuple[int, int]:
    """Measured matrix-product FLOPs of one forward over ``tokens``: (all, router only)."""
    router = ffn.router if isinstance(ffn, MoE) else ffn.moe.router
    seen = []
    hook = router.register_forward_hook(lambda m, a, o: seen.append(2 * a[0].shape[0] * m.weight.numel()))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        ffn(torch.randn(tokens, hidden))
    hook.remove()
    return counter.get_total_flops(), sum(seen)


@pytest.mark.parametrize(
    "d, d_moe, experts, top_k, heads", [(32, 64, 4, 2, 2), (512, 1376, 8, 2, 4), (96, 256, 4, 1, 3)]
)
def test_mhmoe_has_the_flops_and_about_the_parameters_of_the_moe(d, d_moe, experts, top_k, heads):
    torch.manual_seed(0)
    moe, mh = MoE(d, d_moe, experts, top_k), MHMoE(d, d_moe, experts, top_k, heads)
    tokens = 16
    moe_all, moe_router = routed_flops(moe, tokens, d)
    mh_all, mh_router = routed_flops(mh, tokens, d)
    # FLOPs outside the routers: equal but for rounding d' to an integer (at most 1/2 per
    # expert column, 3 matrices, k experts, d/h rows, h sub-tokens, 2 FLOPs per multiply-add).
    assert abs((mh_all - mh_router) - (moe_all - moe_router)) <= tokens * 2 * 3 * top_k * d * 0.5
    assert abs(mh_all - moe_all) / moe_all < 0.02
    # Parameters: h·E experts of width d/h hold what E experts of width d hold, less the
    # 2·d²·(E/k − 1) that paid for the head and merge layers (plus rounding), and routers.
    d_prime = mhmoe_intermediate_size(d, d_moe, top_k)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(mh) == 3 * experts * d * d_prime + 2 * d * d + d * experts
    assert count(moe) == 3 * experts * d * d_moe + d * experts
    exact = 3 * experts * d * d_moe - 2 * d * d * (experts / top_k - 1) + d * experts
    assert abs(count(mh) - exact) <= 3 * experts * d * 0.5
    # Relative to the MoE that is 2d(E/k − 1) / (3E·d_moe) < 2d / (3k·d_moe): 9% for the default
    # config (512, 1376, 8, 2), 19% for top-1 here.
    assert abs(count(mh) - count(moe)) / count(moe) < 2 * d / (3 * top_k * d_moe)


def test_the_default_config_sizes_are_as_documented():
    config = DecoderConfig(ffn_type="mhmoe")
    d, d_moe, k = config.hidden_size, config.intermediate_size, config.num_experts_per_tok
    assert mhmoe_intermediate_size(d, d_moe, k) == 1205


FFNS = [("moe", {"num_experts": 4}), ("mhmoe", {"num_experts": 4, "mhmoe_heads": 2})]


def ffn_id(ffn) -> str:
    return ffn[0]


@pytest.mark.parametrize("ffn", FFNS, ids=ffn_id)
def test_every_block_of_every_model_takes_the_moe(ffn):
    ffn_type, fields = ffn
    for kind in MODEL_KINDS:
        model = tiny_model(kind, ffn_type=ffn_type, **fields)
        blocks = [m for m in model.modules() if hasattr(m, "post_attention_layernorm")]
        expected = MoE if ffn_type == "moe" else MHMoE
        assert blocks and all(isinstance(b.mlp, expected) for b in blocks), kind


@pytest.mark.parametrize("kind", ["transformer", "yoco-swa"])
@pytest.mark.parametrize("ffn", FFNS, ids=ffn_id)
def test_cached_prefill_and_steps_equal_the_full_forward(kind, ffn):
    ffn_type, fields = ffn
    model = sharpen_attention(tiny_model(kind, ffn_type=ffn_type, **fields))
    ids = torch.randint(0, 99, (2, 30), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = model(ids).logits
    # Sharpened attention, logits of spread (std) 0.11-0.12: max difference measured 5.1e-7
    # (transformer, MoE), 2.2e-7 - 3.4e-7 for the others. Bound: 3x the largest.
    torch.testing.assert_close(cached_logits(model, ids), full, atol=1.5e-6, rtol=0)
    prompt = ids[0, :12].tolist()
    expected = greedy_by_full_forward(model, prompt, 6)
    assert yoco.generate(model, [prompt], 6)[0] == expected


def switch_aux_by_hand(model, ids: torch.Tensor) -> torch.Tensor:
    """The load-balancing loss of a forward on ``ids``, from the routers' inputs: per MoE layer
    (an MH-MoE's inner one, over sub-tokens), float64 softmax of the router logits, the k most
    probable experts by sorting, f_e = share of the T·k slots, P_e = mean probability,
    E · Σ_e f_e · P_e; summed over layers."""
    routers = [m for m in model.modules() if isinstance(m, MoE)]
    inputs = []
    hooks = [m.router.register_forward_hook(lambda mod, a, o: inputs.append(a[0])) for m in routers]
    with torch.no_grad():
        model(ids)
    for hook in hooks:
        hook.remove()
    total = torch.zeros((), dtype=torch.float64)
    for moe, x in zip(routers, inputs, strict=True):
        probabilities = (x.double() @ moe.router.weight.double().T).softmax(dim=-1)
        chosen = probabilities.argsort(dim=-1, descending=True)[:, : moe.top_k]
        slots = torch.bincount(chosen.flatten(), minlength=moe.num_experts).double() / chosen.numel()
        total += moe.num_experts * (slots * probabilities.mean(dim=0)).sum()
    return total


@pytest.mark.parametrize("kind", ["transformer", "yoco-swa"])
@pytest.mark.parametrize("ffn", FFNS, ids=ffn_id)
def test_the_loss_is_cross_entropy_and_the_aux_loss_comes_beside_it(kind, ffn):
    """``loss`` is the next-token cross-entropy alone (never the balancing term), ``aux_loss``
    the unscaled Switch loss summed over layers, as transformers' MoeCausalLMOutputWithPast."""
    ffn_type, fields = ffn
    model = tiny_model(kind, ffn_type=ffn_type, router_aux_loss_coef=0.5, **fields)
    ids = torch.randint(0, 99, (2, 20), generator=torch.Generator().manual_seed(0))
    out = model(ids, labels=ids)
    assert isinstance(out, MoeCausalLMOutputWithPast)
    cross_entropy = F.cross_entropy(out.logits[:, :-1].reshape(-1, 99), ids[:, 1:].reshape(-1))
    assert out.loss.item() == cross_entropy.item()  # (measured: bit-equal)
    by_hand = switch_aux_by_hand(model, ids)
    # Four layers of aux near 1 each (measured 4.00-4.02); float32 against float64: measured
    # difference up to 4.6e-7. Bound: 3x.
    assert by_hand > 3.5 and abs(out.aux_loss.item() - by_hand.item()) <= 1.4e-6
    with torch.no_grad():  # the aux loss comes without labels too, and depends on ids only
        assert model(ids).aux_loss.item() == out.aux_loss.item()
    assert tiny_model(kind)(ids, labels=ids).aux_loss is None  # no MoE layers


@pytest.mark.parametrize("ffn", FFNS, ids=ffn_id)
def test_the_training_objective_adds_the_scaled_aux_loss(ffn):
    ffn_type, fields = ffn
    model = tiny_model("yoco-swa", ffn_type=ffn_type, router_aux_loss_coef=0.5, **fields)
    ids = torch.randint(0, 99, (2, 20), generator=torch.Generator().manual_seed(0))
    out = model(ids, labels=ids)
    objective = training_objective(out, model.config)
    assert objective.item() == (out.loss + 0.5 * out.aux_loss).item()
    routers = [m.router.weight for m in model.modules() if isinstance(m, MoE)]
    from_objective = torch.autograd.grad(objective, routers, retain_graph=True)
    from_loss = torch.autograd.grad(out.loss, routers, retain_graph=True)
    from_aux = torch.autograd.grad(out.aux_loss, routers)
    # The aux term reaches every router: the objective's router gradient is the cross-entropy's
    # plus 0.5 times the aux loss's, which is not zero (largest entry per router measured
    # 1.8e-3 to 0.045).
    for total, lm, aux in zip(from_objective, from_loss, from_aux, strict=True):
        assert aux.abs().max() > 1e-4
        torch.testing.assert_close(total, lm + 0.5 * aux)
    dense = tiny_model("yoco-swa")
    dense_out = dense(ids, labels=ids)
    assert training_objective(dense_out, dense.config) is dense_out.loss


@pytest.mark.parametrize("kind", ["transformer", "yoco-swa"])
@pytest.mark.parametrize("ffn", FFNS, ids=ffn_id)
def test_a_short_training_run_lowers_the_loss(kind, ffn):
    ffn_type, fields = ffn
    model = tiny_model(kind, ffn_type=ffn_type, **fields)
    ids = torch.arange(64).remainder(11).repeat(4, 1)  # a repeating pattern, learnable quickly
    losses = train_briefly(model, ids)
    assert losses[-1] < 0.7 * losses[0], losses


def test_expert_statistics_summarise_the_last_forward():
    model = tiny_model("transformer", ffn_type="moe", num_experts=4)
    assert expert_statistics(model) == {}  # nothing routed yet
    with torch.no_grad():
        model(torch.randint(0, 99, (2, 16)))
    stats = expert_statistics(model)
    for i in range(4):
        counts = model.model.layers[i].mlp.expert_counts.float()
        assert stats[f"moe_imbalance/{i}"] == pytest.approx(float(counts.max() / counts.mean()))
        assert int(counts.sum()) == 2 * 16 * 2  # every token's k slots
    assert stats["moe_imbalance_max"] == max(stats[f"moe_imbalance/{i}"] for i in range(4))
    assert stats["moe_aux_loss"] > 0  # its formula is checked in test_aux_loss_*
    assert expert_statistics(tiny_model("transformer")) == {}


def moe_run_config(corpus, steps: int, **more):
    return tiny_config(
        corpus,
        **{
            "train.max_steps": steps,
            "model.ffn_type": '"moe"',
            "model.num_experts": 4,
            "eval.every": 100,
            "eval.batches": 1,
            **more,
        },
    )


def records_of(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_the_training_loop_logs_expert_statistics(corpus, tmp_path):
    train(moe_run_config(corpus, 3), tmp_path / "run", show_progress=False)
    records = records_of(tmp_path / "run")
    assert [r["step"] for r in records] == [1, 2, 3]
    for record in records:  # tiny yoco: one self-decoder and one cross-decoder block
        for key in (
            "moe_imbalance/0",
            "moe_imbalance/1",
            "moe_unused/0",
            "moe_imbalance_max",
            "moe_aux_loss",
        ):
            assert key in record, key
        assert record["moe_imbalance_max"] == max(record["moe_imbalance/0"], record["moe_imbalance/1"])
        assert record["moe_aux_loss"] > 0


def test_moe_runs_resume_exactly(corpus, tmp_path):
    config = moe_run_config(corpus, 4)
    train(config, tmp_path / "straight", show_progress=False)
    train(config, tmp_path / "split", stop_at=2, show_progress=False)
    train(config, tmp_path / "split", resume=True, show_progress=False)

    def without_timing(run):
        # (a run stopped early also validates at its last step)
        return [
            {k: v for k, v in r.items() if k not in ("tokens_per_s", "val_loss")}
            for r in records_of(tmp_path / run)
        ]

    assert without_timing("split") == without_timing("straight")  # identical, expert statistics too


def test_the_trainer_logs_cross_entropy_and_trains_on_the_aux_term(corpus, tmp_path):
    """Runs that differ only in router_aux_loss_coef (0 and 1), which enters the training
    objective only. At learning rate 0 (the weights never move) the logged training and
    validation losses and expert statistics are the same, and would be larger by the aux loss
    (about 2 for two layers) if either included it, while the gradient norm differs: the aux
    term is in the objective. At the usual learning rate the first step's logged loss is the
    same, the second's differs, since the first update followed the aux term."""

    def run(name, coef, **more):
        config = moe_run_config(corpus, 2, **{"model.router_aux_loss_coef": coef, **more})
        assert config.model["router_aux_loss_coef"] == float(coef)
        train(config, tmp_path / name, show_progress=False)
        return [
            {k: v for k, v in r.items() if k not in ("tokens_per_s", "grad_norm")}
            for r in records_of(tmp_path / name)
        ], [r["grad_norm"] for r in records_of(tmp_path / name)]

    frozen, frozen_norms = run("frozen-0", "0.0", **{"optimizer.lr": "0.0"})
    frozen_balanced, frozen_balanced_norms = run("frozen-1", "1.0", **{"optimizer.lr": "0.0"})
    assert frozen_balanced == frozen and "val_loss" in frozen[-1]
    assert frozen[0]["moe_aux_loss"] > 1.5  # so including it would show
    assert frozen_balanced_norms[0] != frozen_norms[0]
    (plain, _), (balanced, _) = run("plain", "0.0"), run("balanced", "1.0")
    assert balanced[0] == plain[0]
    assert balanced[1]["loss"] != plain[1]["loss"]
