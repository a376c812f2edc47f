"""The training-side commands: quickstart, tokenizer training, plot, the LM-quality benchmark."""

import json

import pytest

from yoco.bench.lm_quality import learning_rates, same_experiment
from yoco.bench.lm_quality import main as lm_quality
from yoco.cli import main
from yoco.tokenizer import load_tokenizer


def test_quickstart_trains_generates_and_reports(tmp_path, capsys):
    main(["quickstart", "--out", str(tmp_path / "qs"), "--max-steps", "4", "--no-bench"])
    out = capsys.readouterr().out
    assert "trained 4 steps" in out and "loss curve" in out and "def __init__(self" in out
    assert (tmp_path / "qs" / "loss.png").exists()


def test_quickstart_reruns_into_a_new_folder_each_time(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default run folder is relative: runs/quickstart-DATE-TIME
    for _ in range(2):
        main(["quickstart", "--max-steps", "2", "--no-bench"])
    runs = sorted((tmp_path / "runs").iterdir())
    assert len(runs) == 2 and all(r.name.startswith("quickstart-") for r in runs)
    assert all((r / "loss.png").exists() for r in runs)
    assert f"all outputs of this demo are in {runs[-1].relative_to(tmp_path)}/" in capsys.readouterr().out


def test_tokenizer_train_command(tmp_path, capsys):
    source = tmp_path / "code.txt"
    source.write_text(
        "".join(f"def add_{i}(alpha, beta):\n    return alpha * {i} + beta\n" for i in range(300))
    )
    main(
        ["tokenizer", "train", "--out", str(tmp_path / "tok"), "--vocab-size", "300", "--source", str(source)]
    )
    size = int(capsys.readouterr().out.split("trained a ")[1].split("-token")[0])
    assert 258 < size <= 300  # merges were learned, within the requested vocabulary
    assert len(load_tokenizer(tmp_path / "tok")) == size


def test_plot_command_redraws_the_curve(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(
        "\n".join(
            json.dumps({"step": s, "loss": 5 - s * 0.1, **({"val_loss": 5.0} if s == 3 else {})})
            for s in range(1, 6)
        )
    )
    main(["plot", str(run)])
    assert (run / "loss.png").stat().st_size > 0


def test_lm_quality_matches_parameters_and_reports(tmp_path):
    doc = tmp_path / "BENCHMARKS.md"
    argv = [
        "--hidden-size",
        "32",
        "--layers",
        "4",
        "--heads",
        "4",
        "--intermediate-size",
        "64",
        "--window",
        "8",
        "--seq-len",
        "32",
        "--batch-size",
        "4",
        "--steps",
        "3",
        "--out",
        str(tmp_path / "q"),
        "--benchmarks-md",
        str(doc),
        "--systems",
        "transformer",
        "yoco-swa",
        "yoco-gret",
        "yoco-gret+mhmoe",
        "--lr",
        "2e-3",
        "yoco-gret=1e-3",
    ]
    results = lm_quality(argv)
    target = results["transformer"]["non_embedding_parameters"]
    for system in ("yoco-swa", "yoco-gret"):
        assert abs(results[system]["non_embedding_parameters"] - target) / target < 0.03
        assert results[system]["val_loss"] > 0
    # MoE matches activated compute: the dense width split over the 2 experts a token uses.
    dense_width = results["yoco-gret"]["intermediate_size"]
    assert abs(results["yoco-gret+mhmoe"]["intermediate_size"] - dense_width / 2) <= 4
    assert "YOCO-gRet + MH-MoE" in doc.read_text()
    assert "YOCO-gRet" in doc.read_text() and (tmp_path / "bench" / "lm_quality.png").exists()
    assert results["yoco-gret"]["lr"] == 1e-3 and results["yoco-swa"]["lr"] == 2e-3
    assert results["yoco-swa"]["tokens"] == 3 * 4 * 32
    # Each row's machine is named: kept systems may come from another CPU than the others.
    assert f"Trained on {results['yoco-swa']['trained_on']}: Transformer, YOCO-SWA" in doc.read_text()

    # Rerun: finished systems are kept, not trained again; a changed recipe trains anew.
    log = tmp_path / "q" / "yoco-swa" / "metrics.jsonl"
    before = log.stat().st_mtime_ns
    again = lm_quality(argv)
    assert log.stat().st_mtime_ns == before
    assert again["yoco-swa"]["val_loss"] == results["yoco-swa"]["val_loss"]


def test_lm_quality_learning_rates():
    systems = ["transformer", "yoco-gret"]
    assert learning_rates(["2e-3", "yoco-gret=1e-3"], systems) == {"transformer": 2e-3, "yoco-gret": 1e-3}
    with pytest.raises(SystemExit, match="no learning rate for transformer"):
        learning_rates(["yoco-gret=1e-3"], systems)
    with pytest.raises(SystemExit, match="not among --systems"):
        learning_rates(["2e-3", "yoco-swa=1e-3"], systems)
    with pytest.raises(SystemExit, match="neither a number"):
        learning_rates(["fast"], systems)


def test_lm_quality_knows_a_kept_result_by_its_model_not_its_name():
    recipe = ['model.name="yoco-gret+conv"', "train.seed=0"]
    model = {"architecture": "yoco", "self_decoder": "gret", "short_conv_size": 4}
    kept = {"recipe": recipe, "model": model}
    # The same model under another name (a kind whose default became this part): kept.
    assert same_experiment(kept, ['model.name="yoco-gret"', "train.seed=0"], model)
    # The same name meaning another model (a kind's default changed): trained anew.
    assert not same_experiment(kept, recipe, {"architecture": "yoco", "self_decoder": "gret"})
    assert not same_experiment(kept, ['model.name="yoco-gret+conv"', "train.seed=1"], model)
    assert not same_experiment({"recipe": recipe}, recipe, model)  # what it trained is unknown


def test_lm_quality_keeps_results_across_checkouts(tmp_path):
    """With --results apart from --out, a finished system survives losing its run folder (as on
    a fresh clone, where runs/ is not kept) and is not trained again."""
    tiny = ["--hidden-size", "32", "--layers", "2", "--heads", "4", "--intermediate-size", "64"]
    argv = tiny + ["--seq-len", "32", "--batch-size", "2", "--steps", "2", "--lr", "1e-3"]
    argv += ["--systems", "transformer", "--dtype", "float32", "--results", str(tmp_path / "kept")]
    first = lm_quality(argv + ["--out", str(tmp_path / "run1")])
    assert (tmp_path / "kept" / "transformer" / "metrics.jsonl").is_file()
    again = lm_quality(argv + ["--out", str(tmp_path / "run2")])
    assert not (tmp_path / "run2" / "transformer").exists()  # kept, not trained
    assert again["transformer"]["val_loss"] == first["transformer"]["val_loss"]
    assert (tmp_path / "run2" / "lm_quality.png").stat().st_size > 0
    # Another recipe (here the precision) is a different experiment: trained anew.
    lm_quality([a if a != "float32" else "bfloat16" for a in argv] + ["--out", str(tmp_path / "run3")])
    assert (tmp_path / "run3" / "transformer" / "metrics.jsonl").is_file()
