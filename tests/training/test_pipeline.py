"""End to end on a slice of the 10K sample: artifact round trip, determinism, atomic writes, CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from contract import artifact as artifact_module
from contract.artifact import ArtifactError, load_artifact, write_artifact
from contract.model import pad_batch, predict_proba
from contract.text import TextEncoder
from tests.tolerance import SERVED_ATOL
from tests.training.conftest import small_csv
from training import fitting, pipeline
from training.__main__ import main
from training.calibration import fit_temperature
from training.config import DEFAULT_DATA_URL, TrainConfig, build_parser
from training.pipeline import run

ROOT = Path(__file__).resolve().parents[2]
TITLES = ["Stocks rally as oil prices fall", "Yankees beat Red Sox in extra innings", "New chip doubles battery life"]


def tiny_config(data: Path, artifacts: Path, **overrides) -> TrainConfig:
    values = dict(
        data=str(data), artifacts_dir=str(artifacts), epochs=2, batch_size=32, embedding_dim=16, hidden_dim=16,
        fc_dim=16, threads=1, quiet=True, baseline_c=10.0, seed=3,
    )  # fmt: skip
    return TrainConfig(**{**values, **overrides})


@pytest.fixture(scope="module")
def tiny_csv(news_csv, tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "tiny.csv"
    small_csv(news_csv, path, 600, extra=[("", "World"), ("   ", "Sports"), ("Orphan title", "")])
    return path


@pytest.fixture(scope="module")
def tiny_run(tiny_csv, tmp_path_factory):
    """Every split (the shipped model on the random one), subword embeddings and calibration."""
    return run(tiny_config(tiny_csv, tmp_path_factory.mktemp("artifacts"), split="both", subword_buckets=300))


def test_artifact_reproduces_the_in_memory_model(tiny_run):
    loaded = load_artifact(tiny_run.artifact_path)
    encoder = loaded.text_encoder()
    ids, lengths = pad_batch(encoder.encode_many(TITLES))
    tiny_run.model.eval()
    device = next(tiny_run.model.parameters()).device  # trained on CUDA when there is one
    # The loaded model has its vocabulary folded; the trained one reads every word's n-grams.
    assert loaded.model.folded is not None and not encoder.known_word_grams
    assert loaded.config.linear_gram_buckets == 4 * 300  # the head's own n-gram buckets (the default)
    full = TextEncoder(loaded.preprocessing, loaded.vocab, loaded.config.subword_hasher())
    full_ids, full_lengths = pad_batch(full.encode_many(TITLES))
    expected = predict_proba(tiny_run.model, full_ids.to(device), full_lengths).cpu()
    assert torch.allclose(predict_proba(loaded.model, ids, lengths), expected, atol=SERVED_ATOL)
    assert loaded.vocab.itos == tiny_run.vocab.itos
    assert loaded.labels.classes == ["Business", "Sci/Tech", "Sports", "World"]


def test_a_gru_with_the_wide_ngram_head_ships_and_reloads(tiny_csv, tmp_path):
    config = tiny_config(
        tiny_csv, tmp_path, plots=False, epochs=2, temperature_rows="own", subword_buckets=300,
        subword_embeddings=False, subword_head=True, head_lr_scale=10.0, linear_head=False,
    )  # fmt: skip
    result = run(config)
    loaded = load_artifact(result.artifact_path)
    assert loaded.model.head_grams is not None and loaded.model.subword_embedding is None
    assert torch.count_nonzero(loaded.model.head_grams.weight) > 0  # the head trained
    ids, lengths = pad_batch(loaded.text_encoder().encode_many(TITLES))
    device = next(result.model.parameters()).device
    expected = predict_proba(result.model, ids.to(device), lengths).cpu()
    assert torch.allclose(predict_proba(loaded.model, ids, lengths), expected, atol=SERVED_ATOL)


def test_metrics_report_shape_and_dropped_rows(tiny_run):
    metrics = json.loads((tiny_run.artifact_path / "metrics.json").read_text())
    assert metrics == json.loads(json.dumps(tiny_run.metrics))
    assert metrics["data"] == {"rows": 600, "train": 420, "val": 90, "test": 90, "dropped_empty_titles": 3}
    assert metrics["split"] == "random" and list(metrics["splits"]) == ["time", "unseen", "random"]
    for summary in metrics["splits"].values():
        assert set(summary) == {
            "test_f1", "baseline_test_f1", "baseline_train_only_test_f1", "anchor_test_f1", "test_oov_token_rate",
            "best_epoch", "data", "calibration",
        }  # fmt: skip
        assert set(summary["calibration"]) == {
            "temperature", "ece_before", "ece_after", "nll_before", "nll_after", "ece_noise_floor",
        }  # fmt: skip
    assert metrics["splits"]["random"]["test_f1"] == metrics["test"]["overall"]["f1"]
    assert metrics["splits"]["time"]["test_f1"] != metrics["splits"]["random"]["test_f1"]
    unseen = metrics["splits"]["unseen"]
    assert metrics["proxy"] == {
        "split": "unseen",
        "test_rows": unseen["data"]["test"],
        "test_oov_token_rate": unseen["test_oov_token_rate"],
        "f1": unseen["test_f1"],
        "ece": unseen["calibration"]["ece_after"],
        "temperature": unseen["calibration"]["temperature"],
        "anchor": {"name": "tfidf_word_char_linear_svm", "f1": unseen["anchor_test_f1"]},
        "baseline": {"name": "tfidf_logreg", "f1": unseen["baseline_test_f1"]},
    }
    assert unseen["test_oov_token_rate"] > metrics["splits"]["random"]["test_oov_token_rate"]
    calibration = metrics["calibration"]
    # The shipped temperature is the one fitted on the proxy's shifted validation rows; the
    # random split's own fit is reported beside it.
    assert calibration["fitted_on"] == "unseen split val" and calibration["bins"] == 15
    assert calibration["temperature"] == unseen["calibration"]["temperature"]
    assert set(calibration["own_val"]) == {"temperature", "test_ece"}
    assert calibration["val_logits_from"] == "first_model"  # the default (bench/calibration_study.py)
    assert (
        calibration["temperature"]
        == json.loads((tiny_run.artifact_path / "model_config.json").read_text())["temperature"]
    )
    assert sum(calibration["reliability_after"]["counts"]) == 90
    reference = metrics["reference"]
    assert (reference["split"], reference["texts"]) == ("test", 90)
    assert 0 < reference["oov_token_rate"] < 0.5 and sum(reference["confidence_histogram"]) == pytest.approx(1.0)
    for perf in (metrics["test"], metrics["baseline"]["test"]):
        assert set(perf) == {"overall", "class"}
        assert set(perf["overall"]) == {"precision", "recall", "f1", "num_samples"}
        assert perf["overall"]["num_samples"] == 90
        assert sum(c["num_samples"] for c in perf["class"].values()) == 90
    assert metrics["baseline"]["name"] == "tfidf_logreg"
    assert metrics["anchor"]["fitted_on"] == "train+val" and metrics["anchor"]["test"]["overall"]["num_samples"] == 90
    cm = metrics["confusion_matrix"]
    assert cm["labels"] == list(metrics["test"]["class"]) and sum(map(sum, cm["matrix"])) == 90
    assert [h["epoch"] for h in metrics["history"]] == [1, 2]
    assert set(metrics["history"][0]) == {"epoch", "train_loss", "val_loss", "val_f1", "lr", "seconds"}
    assert 1 <= metrics["best_epoch"] <= 2
    assert metrics["timing"]["threads"] == 1


def test_artifact_holds_config_plots_and_provenance(tiny_run, tiny_csv):
    folder = tiny_run.artifact_path
    for name in ("plots/loss.png", "plots/lr.png", "plots/confusion_matrix.png", "plots/reliability.png"):
        assert (folder / name).read_bytes().startswith(b"\x89PNG")
    assert TrainConfig.from_dict(json.loads((folder / "train_config.json").read_text())).hidden_dim == 16
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["data_sha256"] == artifact_module.sha256_file(tiny_csv)
    assert "git_commit" in manifest


def test_same_seed_gives_identical_metrics(tiny_run, tiny_csv, tmp_path):
    again = run(tiny_config(tiny_csv, tmp_path, plots=False, split="both", subword_buckets=300))

    def strip_time(metrics):
        history = [{k: v for k, v in h.items() if k != "seconds"} for h in metrics["history"]]
        return history, metrics["test"], metrics["best_epoch"]

    assert (
        strip_time(again.metrics) == strip_time(tiny_run.metrics)
        and again.metrics["splits"] == tiny_run.metrics["splits"]
    )
    for name, tensor in tiny_run.model.state_dict().items():
        assert torch.equal(tensor, again.model.state_dict()[name]), name


def test_interrupted_write_leaves_nothing(tiny_run, tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise OSError("disk full")

    # Fails after every file is in the temporary folder, before the manifest and rename.
    monkeypatch.setattr(artifact_module, "sha256_file", fail)
    with pytest.raises(OSError, match="disk full"):
        write_artifact(
            tmp_path, model=tiny_run.model, vocab=tiny_run.vocab, labels=tiny_run.labels,
            preprocessing=tiny_run.preprocessing, metrics=tiny_run.metrics, train_config={},
        )  # fmt: skip
    assert list(tmp_path.iterdir()) == []


def test_tampered_artifact_is_refused(tiny_run, tmp_path):
    copy = tmp_path / tiny_run.artifact_path.name
    shutil.copytree(tiny_run.artifact_path, copy)
    metrics = copy / "metrics.json"
    metrics.write_text(metrics.read_text().replace('"best_epoch"', '"best_epoch_"'))
    with pytest.raises(ArtifactError, match="checksum mismatch"):
        load_artifact(copy)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "file not found"),
        (b"title,category\nok,A\nbad \xff,B\n", "line 3, column 5"),
        (b"headline,category\nx,A\n", "missing column(s) title"),
        (b"title,category\n" + b"x,A\n" * 20 + b"y,B\n", "category 'B' has only 1 row(s)"),
    ],
)
def test_cli_reports_data_errors_in_one_line(tmp_path, capsys, content, message):
    data = tmp_path / "data.csv"
    if content is not None:
        data.write_bytes(content)
    code = main(["--data", str(data), "--artifacts-dir", str(tmp_path / "a"), "--threads", "1", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err
    assert not (tmp_path / "a").exists()


def test_cli_process_exits_2_without_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "training", "--data", str(tmp_path / "missing.csv"), "--artifacts-dir", str(tmp_path)],
        capture_output=True, text=True, cwd=ROOT, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr == f"error: {tmp_path / 'missing.csv'}: file not found\n"


def test_cli_help_documents_defaults(monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")
    text = build_parser().format_help()
    for flag in ("--data", "--artifacts-dir", "--model", "--epochs", "--seed", "--device", "--threads", "--patience"):
        assert flag in text
    assert f"(default: {DEFAULT_DATA_URL})" in text and "(default: bigru)" in text and "(default: artifacts)" in text


def test_config_from_args_round_trip():
    config = TrainConfig.from_args(["--data", "x.csv", "--model", "gru", "--no-stopwords", "--max-vocab", "none"])
    assert (config.data, config.model, config.remove_stopwords, config.max_vocab) == ("x.csv", "gru", False, None)
    assert TrainConfig.from_dict(config.to_dict()) == config
    assert TrainConfig.from_args(["--stopwords"]).remove_stopwords is True


def test_class_weights_favour_rare_classes():
    import numpy as np

    from training.fitting import class_weight_tensor

    weights = class_weight_tensor(np.array([0, 0, 0, 1, 2, 2]), 3)
    assert weights.mean().item() == pytest.approx(1.0)
    assert weights[1] > weights[2] > weights[0]


def test_lsa_embeddings_put_co_occurring_words_together():
    from contract.text import Vocabulary
    from training.embeddings import lsa_embeddings

    docs = [["stocks", "shares", "market"], ["shares", "market"], ["goal", "match", "team"], ["match", "team"]] * 5
    vocab = Vocabulary.fit(docs)
    vectors = lsa_embeddings(docs, vocab, dim=4, std=0.1, seed=0)
    assert vectors.shape == (len(vocab), 4)
    assert torch.count_nonzero(vectors[0]) == 0  # <PAD>
    assert vectors[2:].std().item() == pytest.approx(0.1, rel=0.05)

    def cos(a, b):
        return torch.cosine_similarity(vectors[vocab.stoi[a]], vectors[vocab.stoi[b]], dim=0).item()

    assert cos("stocks", "shares") > cos("stocks", "team") + 0.5


def test_vocabulary_is_fitted_on_the_training_rows_only(tiny_run, tiny_csv):
    from contract.text import Normalizer
    from training.data import read_dataset, sample_rows, split_rows

    config = tiny_config(tiny_csv, Path("unused"))
    data = read_dataset(tiny_csv)
    keep = sample_rows(len(data), config.limit_rows, config.seed)
    labels = [data.labels[i] for i in keep]
    tokens = [Normalizer(tiny_run.preprocessing).tokens(data.titles[i]) for i in keep]
    train, val, test = split_rows("random", labels, tokens, config.seed, config.fractions)
    # With --refit the shipped model's training rows are train + val; never test.
    fit_rows = (*train, *val) if config.refit else tuple(train)
    train_words = {t for i in fit_rows for t in tokens[i]}
    held_out_only = {t for i in (*val, *test) if i not in fit_rows for t in tokens[i]} - train_words
    assert held_out_only  # the check below means something
    assert set(tiny_run.vocab.itos[2:]) == train_words


def test_served_probabilities_are_the_calibrated_ones(tiny_run):
    """The service's Predictor divides by the stored temperature: what metrics.json describes."""
    from contract.model import probabilities
    from service.inference.predictor import Predictor

    loaded = load_artifact(tiny_run.artifact_path)
    # With the linear head its fitted scales calibrate the logits and the temperature comes out
    # near 1: a stored temperature of 1.7 shows that it is the one divided by.
    loaded.config = loaded.model.config = replace(loaded.config, temperature=1.7)
    temperature = loaded.temperature
    served = Predictor(loaded, torch.device("cpu")).predict(TITLES).probabilities
    ids, lengths = pad_batch(loaded.text_encoder().encode_many(TITLES))
    with torch.inference_mode():
        logits = loaded.model(ids, lengths)
    assert torch.allclose(torch.from_numpy(served), probabilities(logits, temperature), atol=1e-6)
    assert not torch.allclose(torch.from_numpy(served), probabilities(logits), atol=1e-4)


def _spy_fits(monkeypatch) -> tuple[list[tuple], list[tuple]]:
    """Record every model fit (rows trained on, rows scored, lr schedule, the fit) and every cross-fit."""
    fits: list[tuple] = []
    crossfits: list[tuple] = []
    real_fit, real_crossfit = fitting.fit_model, pipeline.crossfit_val_logits

    def fit_model(config, dist, corpus, fit_idx, val_idx, say, lr_schedule=None, linear_c=None):
        fitted = real_fit(config, dist, corpus, fit_idx, val_idx, say, lr_schedule, linear_c=linear_c)
        fits.append((set(fit_idx.tolist()), set(val_idx.tolist()), lr_schedule, fitted, val_idx, corpus))
        return fitted

    def crossfit(config, dist, corpus, train_idx, val_idx, schedule, say):
        logits = real_crossfit(config, dist, corpus, train_idx, val_idx, schedule, say)
        crossfits.append((logits, corpus.targets[val_idx]))
        return logits

    monkeypatch.setattr(pipeline, "fit_model", fit_model)
    monkeypatch.setattr(fitting, "fit_model", fit_model)  # the cross-fit's own fits
    monkeypatch.setattr(pipeline, "crossfit_val_logits", crossfit)
    return fits, crossfits


def _stored_temperature(result) -> float:
    return json.loads((result.artifact_path / "model_config.json").read_text())["temperature"]


def test_crossfit_temperature_comes_from_out_of_fold_models_trained_like_the_refit(tiny_csv, tmp_path, monkeypatch):
    """Each val row is scored by a model that never trained on it, with the refit's schedule."""
    fits, crossfits = _spy_fits(monkeypatch)
    result = run(
        tiny_config(
            tiny_csv, tmp_path, plots=False, epochs=3, temperature_fit="crossfit", temperature_rows="own",
            linear_head=False,
        )  # fmt: skip
    )
    (train, val, *_), (refit, _, schedule, *_), (fit_a, held_a, sched_a, *_), (fit_b, held_b, sched_b, *_) = fits
    assert refit == train | val and schedule is not None and len(schedule) == result.metrics["best_epoch"]
    assert sched_a == sched_b == schedule
    assert held_a | held_b == val and not held_a & held_b and abs(len(held_a) - len(held_b)) <= 4
    assert fit_a == train | held_b and fit_b == train | held_a
    calibration = result.metrics["calibration"]
    assert calibration["val_logits_from"] == "crossfit"
    ((logits, targets),) = crossfits
    assert calibration["temperature"] == fit_temperature(logits, targets) == _stored_temperature(result)


@pytest.mark.parametrize(
    ("overrides", "source", "models"), [({"refit": True}, "first_model", 2), ({"refit": False}, "shipped_model", 1)]
)
def test_first_model_temperature_is_fitted_on_its_own_held_out_validation_logits(
    tiny_csv, tmp_path, monkeypatch, overrides, source, models
):
    """``first``: the early-stopped model's val logits (the refit model trained on val, so not its own)."""
    fits, crossfits = _spy_fits(monkeypatch)
    result = run(
        tiny_config(tiny_csv, tmp_path, plots=False, temperature_fit="first", temperature_rows="own", **overrides)
    )
    assert len(fits) == models and not crossfits
    _, val_rows, _, first, val_idx, corpus = fits[0]
    assert not val_rows & fits[0][0]
    device = next(first.model.parameters()).device  # where training ran, as the pipeline computed them
    logits = first.logits(val_idx, device)
    calibration = result.metrics["calibration"]
    assert calibration["val_logits_from"] == source
    assert calibration["temperature"] == fit_temperature(logits, corpus.targets[val_idx]) == _stored_temperature(result)


def test_a_bug_is_not_reported_as_a_user_error(monkeypatch, tmp_path):
    """Only the project's own data/config errors get the one-line treatment; a ValueError from a
    bug propagates with its traceback."""
    import training.__main__ as cli

    def buggy(config):
        raise ValueError("bug deep inside")

    monkeypatch.setattr(cli, "run", buggy)
    with pytest.raises(ValueError, match="bug deep inside"):
        cli.main(["--data", str(tmp_path / "x.csv")])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--limit-rows", "0"], "limit-rows must be at least 1"),
        (["--max-vocab", "2"], "max-vocab must be at least 3"),
        (["--split", "time", "--val-fraction", "0.9"], "fractions"),
        (["--subword-buckets", "-1"], "subword buckets"),
        (["--linear-gram-factor", "0"], "linear-gram-factor must be at least 1"),
    ],
)
def test_cli_reports_config_errors_in_one_line(tmp_path, capsys, argv, message):
    code = main(["--data", str(tmp_path / "x.csv"), "--artifacts-dir", str(tmp_path / "a"), *argv])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: ") and message in err


def test_optional_int_keeps_zero():
    from training.config import _optional_int

    assert _optional_int("0") == 0 and _optional_int("none") is None and _optional_int("12") == 12
