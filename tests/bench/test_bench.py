"""`yoco bench --quick` as a smoke test: every cell measured, outputs written. No timing asserts."""

import json
import platform

import pytest
import torch
import transformers

from yoco.bench import llamacpp
from yoco.bench.command import main
from yoco.bench.environment import describe, environment
from yoco.bench.flops import Shape, cache_bytes, parameter_count, prefill_flops
from yoco.bench.profile import QUICK_SHAPE
from yoco.bench.report import update_section
from yoco.bench.systems import build_model


def test_quick_bench_measures_every_cell_and_writes_outputs(tmp_path):
    doc = tmp_path / "BENCHMARKS.md"
    doc.write_text("# Benchmarks\n\nintro stays\n")
    main(["--quick", "--out", str(tmp_path / "bench"), "--benchmarks-md", str(doc), "--no-progress"])
    results = json.loads((tmp_path / "bench" / "profile.json").read_text())
    cells = results["cells"]
    assert len(cells) == 2 * 2 * 4  # dtypes x lengths x systems
    for cell in cells:
        assert cell["prefill_s"] > 0 and cell["decode_tokens_per_s"] > 0 and cell["budget_batch"] >= 1
        # Measured cache bytes must be exactly what the analytical count says.
        assert cell["cache_bytes"] == cell["theory_cache_bytes"], cell
    for name in ("prefill_latency.png", "memory.png", "throughput.png", "profile.md"):
        assert (tmp_path / "bench" / name).stat().st_size > 0
    text = doc.read_text()
    assert "intro stays" in text and "<!-- profile:start -->" in text and "HF Llama" in text
    assert "![memory](bench/memory.png)" in text  # the plots, relative to the document
    env = results["meta"]["environment"]
    assert f"torch {torch.__version__}, transformers {transformers.__version__}" in text
    assert f"Python {platform.python_version()}" in text and env["cpu"] in text and env["date"] in text


def test_quick_bench_takes_a_registry_name_and_counts_its_costs(tmp_path):
    """The paper's YOCO-gRet (no convolution) beside today's: each one's measured cache is its
    analytic count, which differs by exactly the convolution's state, and the report labels it."""
    out = tmp_path / "bench"
    argv = ["--quick", "--lengths", "64", "--dtypes", "float32", "--out", str(out), "--no-progress"]
    main([*argv, "--systems", "yoco-gret+noconv", "yoco-gret", "transformer"])
    cells = {c["system"]: c for c in json.loads((out / "profile.json").read_text())["cells"]}
    for cell in cells.values():
        assert cell["cache_bytes"] == cell["theory_cache_bytes"], cell
    conv_state = QUICK_SHAPE.self_layers * 3 * QUICK_SHAPE.hidden_size * 4  # K-1 inputs, float32
    assert cells["yoco-gret"]["cache_bytes"] - cells["yoco-gret+noconv"]["cache_bytes"] == conv_state
    report = (out / "profile.md").read_text()
    assert "YOCO-gRet+noconv vs Transformer" in report and "YOCO-gRet vs Transformer" in report


@pytest.mark.parametrize(
    "name",
    ["yoco-swa+diff", "swa-only", "transformer+xpos", "retnet", "yoco-retention", "yoco-dilated", "llama"],
)
def test_bench_refuses_a_model_its_cost_model_does_not_describe(name, capsys):
    with pytest.raises(SystemExit):
        main(["--quick", "--systems", name])
    assert name in capsys.readouterr().err


def test_long_bench_quick_measures_yoco_and_an_int8_cache_and_extrapolates_the_transformer(tmp_path):
    doc = tmp_path / "BENCHMARKS.md"
    doc.write_text("# Benchmarks\n")
    # A zero budget: the Transformer runs its first length only, and the next is extrapolated.
    argv = ["--long", "--quick", "--transformer-budget-s", "0", "--out", str(tmp_path / "bench")]
    main([*argv, "--benchmarks-md", str(doc), "--no-progress"])
    results = json.loads((tmp_path / "bench" / "long.json").read_text())
    rows = {(r["system"], r["kv_cache_dtype"], r["length"]): r for r in results["rows"]}
    for n in (256, 512):
        for system in ("yoco-gret", "yoco-swa"):
            row = rows[(system, "auto", n)]
            assert row["measured"] and row["prefill_s"] > 0 and row["step_s"] > 0
        assert rows[("yoco-gret", "int8", n)]["cache_bytes"] < rows[("yoco-gret", "auto", n)]["cache_bytes"]
    transformer = rows[("transformer", "auto", 256)], rows[("transformer", "auto", 512)]
    assert transformer[0]["measured"] and not transformer[1]["measured"]
    # Its cache grows linearly: the extrapolated one is exactly twice the measured one.
    assert transformer[1]["cache_bytes"] == 2 * transformer[0]["cache_bytes"]
    text = doc.read_text()
    assert "<!-- long:start -->" in text and "(extrapolated)" in text and "(int8 cache)" in text
    kept = rows[("yoco-gret", "auto", 512)]  # the longest context is also saved, loaded and continued
    assert kept["file_bytes"] > kept["cache_bytes"] and kept["load_and_step_s"] > 0 and "Kept context" in text
    assert (tmp_path / "bench" / "long.png").stat().st_size > 0
    versus = results["versus_llamacpp"]
    ours = {(r["dtype"], r["length"]) for r in versus["rows"] if r["engine"] == "yoco"}
    assert ours == {(dtype, n) for dtype in ("float32", "bfloat16") for n in (128, 256)}
    if llamacpp.available() is None:  # `make bench-deps`: llama.cpp ran beside, after its logits check
        theirs = [r for r in versus["rows"] if r["engine"] == "llama.cpp"]
        assert {r["dtype"] for r in theirs} == {"f32", "f16"} and all(r["step_s"] > 0 for r in theirs)
        assert "YOCO ÷ llama.cpp decode, 16-bit" in text
    else:
        assert versus["llamacpp_missing"] and "llama.cpp was not run: " in text


def test_a_transformer_converted_for_llama_cpp_keeps_its_rotary_attention_scores():
    """llama.cpp rotates adjacent pairs of dimensions where we rotate halves against each other;
    the q/k rows reordered by interleave_rotary_rows give the same scores under its rotation."""
    heads, d, n = 2, 8, 5
    gen = torch.Generator().manual_seed(0)
    wq, wk = torch.randn(heads * d, 16, generator=gen), torch.randn(heads * d, 16, generator=gen)
    x = torch.randn(n, 16, generator=gen)
    angles = torch.arange(n)[:, None] / 10000 ** (torch.arange(d // 2) / (d // 2))  # (n, d/2)
    cos, sin = angles.cos(), angles.sin()

    def rotate_halves(t):  # ours and transformers': (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin)
        t = t.view(n, heads, 2, d // 2)
        x1, x2 = t[:, :, 0], t[:, :, 1]
        c, s_ = cos[:, None], sin[:, None]
        return torch.stack([x1 * c - x2 * s_, x2 * c + x1 * s_], 2).view(n, heads, d)

    def rotate_pairs(t):  # llama.cpp's llama architecture: pairs (0, 1), (2, 3), ...
        t = t.view(n, heads, d // 2, 2)
        x1, x2 = t[..., 0], t[..., 1]
        c, s_ = cos[:, None], sin[:, None]
        return torch.stack([x1 * c - x2 * s_, x2 * c + x1 * s_], -1).view(n, heads, d)

    ours = torch.einsum("qhd,khd->hqk", rotate_halves(x @ wq.T), rotate_halves(x @ wk.T))
    q = rotate_pairs(x @ llamacpp.interleave_rotary_rows(wq, heads).T)
    k = rotate_pairs(x @ llamacpp.interleave_rotary_rows(wk, heads).T)
    torch.testing.assert_close(torch.einsum("qhd,khd->hqk", q, k), ours)
    assert not torch.allclose(
        torch.einsum("qhd,khd->hqk", rotate_pairs(x @ wq.T), rotate_pairs(x @ wk.T)), ours
    )


def test_theoretical_ratios_match_the_issue_figures():
    """The FLOP-count limits quoted for d=512, 8 layers: ~6x (gRet) / ~5.3x (SWA) at 16K."""
    shape = Shape(32000, 512, 1376, 8, 8, 8)
    ratio = {
        (s, n): prefill_flops("transformer", shape, n) / prefill_flops(s, shape, n)
        for s in ("yoco-gret", "yoco-swa")
        for n in (16384, 32768)
    }
    assert 5.5 < ratio["yoco-gret", 16384] < 6.5 and 10 < ratio["yoco-gret", 32768] < 11
    assert 5.0 < ratio["yoco-swa", 16384] < 5.7 and 8.8 < ratio["yoco-swa", 32768] < 9.6
    per_token_transformer = cache_bytes("transformer", shape, 2, 2) - cache_bytes("transformer", shape, 1, 2)
    per_token_yoco = cache_bytes("yoco-gret", shape, 2, 2) - cache_bytes("yoco-gret", shape, 1, 2)
    assert per_token_transformer == 8 * per_token_yoco


@pytest.mark.parametrize(
    "system, norms_outside_layers",
    [(s, 1) for s in ("transformer", "hf-llama")]
    + [(s, 2) for s in ("yoco-swa", "yoco-gret", "yoco-swa+crosspos", "yoco-gret+noconv")],
)
def test_the_analytic_parameter_count_is_the_built_models_but_its_last_norms(system, norms_outside_layers):
    """What a decode step reads as weights, counted from the shape, against the model itself:
    only the final norm (and YOCO's shared K/V norm) are left out, each ``hidden_size`` long."""
    shape = QUICK_SHAPE
    model = build_model(system, shape, torch.float32, 64)
    built = sum(p.numel() for p in model.parameters()) - model.get_input_embeddings().weight.numel()
    assert built - parameter_count(shape, system) == norms_outside_layers * shape.hidden_size


def test_update_section_replaces_only_its_own_block(tmp_path):
    doc = tmp_path / "B.md"
    env = describe(environment())
    update_section(doc, "a", f"first\n{env}", tmp_path)
    update_section(doc, "b", f"other\n{env}", tmp_path)
    update_section(doc, "a", f"second\n{env}", tmp_path)
    text = doc.read_text()
    assert "second" in text and "first" not in text and "other" in text
    with pytest.raises(ValueError, match="environment"):
        update_section(doc, "c", "a table with no word of the machine it was measured on", tmp_path)
