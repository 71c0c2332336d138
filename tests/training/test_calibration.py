"""Temperature scaling, ECE, NLL and the drift reference, on data whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from contract.drift import CONFIDENCE_BUCKETS
from training.calibration import (
    calibration_report,
    ece_noise_floor,
    expected_calibration_error,
    fit_temperature,
    nll,
    reliability,
)
from training.reference import drift_reference


def _calibrated_sample(n: int, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    """Logits and labels drawn from softmax(logits): calibrated by construction at T = 1."""
    rng = np.random.default_rng(seed)
    logits = torch.from_numpy(rng.normal(0, 2.0, size=(n, 4)))
    probs = torch.softmax(logits, dim=1).numpy()
    labels = np.array([rng.choice(4, p=p) for p in probs])
    return logits, labels


@pytest.mark.parametrize("scale", [0.5, 1.0, 3.0])
def test_fit_temperature_recovers_the_scale_of_over_or_under_confident_logits(scale):
    logits, labels = _calibrated_sample(20000, 0)
    assert fit_temperature(logits * scale, labels) == pytest.approx(scale, rel=0.05)


def test_temperature_scaling_lowers_ece_and_nll_on_held_out_data():
    val_logits, val_y = _calibrated_sample(5000, 1)
    test_logits, test_y = _calibrated_sample(5000, 2)
    report = calibration_report(val_logits * 3, val_y, test_logits * 3, test_y)
    test = report["test"]
    assert report["temperature"] == pytest.approx(3.0, rel=0.1)
    assert test["ece_before"] > 0.05 and test["ece_after"] < 0.02
    assert test["nll_after"] < test["nll_before"]
    assert test["nll_after"] == pytest.approx(nll(test_logits, test_y), rel=0.02)


def test_ece_uses_fifteen_equal_width_bins():
    # Two predictions: confidence 0.5 (bin 7) right, confidence 0.9 (bin 13) wrong.
    probs = np.array([[0.5, 0.3, 0.2], [0.05, 0.05, 0.9]])
    y = np.array([0, 0])
    table = reliability(probs, y)
    assert len(table["counts"]) == 15
    assert [i for i, c in enumerate(table["counts"]) if c] == [7, 13]
    assert expected_calibration_error(probs, y) == pytest.approx(0.5 * 0.5 + 0.5 * 0.9)
    # A confidence on a bin edge (2/15) belongs to the lower bin.
    edge = np.array([[2 / 15, 1 - 2 / 15]])
    assert reliability(edge, np.array([1]))["counts"][12] == 1


def test_drift_reference_has_the_shared_shape_and_values():
    tokens = [["oil", "prices"], [], ["zzz", "oil", "qqq", "rally"]]
    vocab = {"<PAD>": 0, "<UNK>": 1, "oil": 2, "prices": 3, "rally": 4}
    probs = np.array([[0.9, 0.1], [0.55, 0.45], [0.2, 0.8]])
    ref = drift_reference(tokens, vocab, probs, ["Business", "World"])
    assert list(ref) == [
        "split", "texts", "tokens", "oov_token_rate", "empty_rate", "token_length_quantiles",
        "predicted_label_distribution", "confidence_buckets", "confidence_histogram",
    ]  # fmt: skip
    assert (ref["split"], ref["texts"], ref["tokens"]) == ("test", 3, 6)
    assert ref["oov_token_rate"] == pytest.approx(2 / 6) and ref["empty_rate"] == pytest.approx(1 / 3)
    assert ref["token_length_quantiles"] == {"0.5": 2.0, "0.9": pytest.approx(3.6), "0.99": pytest.approx(3.96)}
    assert ref["predicted_label_distribution"] == {"Business": pytest.approx(2 / 3), "World": pytest.approx(1 / 3)}
    assert ref["confidence_buckets"] == list(CONFIDENCE_BUCKETS)
    histogram = ref["confidence_histogram"]
    assert len(histogram) == len(CONFIDENCE_BUCKETS) and sum(histogram) == pytest.approx(1.0)
    assert histogram[CONFIDENCE_BUCKETS.index(0.6)] == pytest.approx(1 / 3)  # 0.55
    assert histogram[CONFIDENCE_BUCKETS.index(0.8)] == pytest.approx(1 / 3)  # 0.8 is upper-inclusive
    assert histogram[CONFIDENCE_BUCKETS.index(0.9)] == pytest.approx(1 / 3)


def test_ece_noise_floor_matches_the_ece_of_calibrated_samples():
    logits, labels = _calibrated_sample(1500, 3)
    probs = torch.softmax(logits, dim=1).numpy()
    floor = ece_noise_floor(probs)
    assert 0.005 < floor < 0.04
    # Labels drawn from the probabilities themselves: the measured ECE is noise of that size.
    assert expected_calibration_error(probs, labels) < 2.5 * floor
