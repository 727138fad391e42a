"""Known answers of the uncertainty measures, computed by hand here."""

import math

import numpy as np
import pytest

from mc_uncertainty_plugin.core.inference.uncertainty import (
    entropy,
    mutual_information,
    predictive_entropy,
    uncertainty_from_accumulators,
    uncertainty_maximum,
    variation_ratio,
)


@pytest.mark.parametrize("classes", [2, 3, 5, 17])
def test_uniform_distribution_has_entropy_ln_c(classes):
    probs = np.full((classes, 4, 3), 1.0 / classes, dtype=np.float32)
    np.testing.assert_allclose(entropy(probs), math.log(classes), rtol=1e-6)


def test_one_hot_has_zero_entropy_and_no_nan():
    probs = np.zeros((4, 2, 2), dtype=np.float32)
    probs[2] = 1.0
    result = entropy(probs)
    assert np.all(np.isfinite(result))
    np.testing.assert_array_equal(result, 0.0)


def test_entropy_of_a_known_distribution():
    p = np.array([0.5, 0.25, 0.25], dtype=np.float32)[:, None, None]
    expected = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))  # 1.0397...
    np.testing.assert_allclose(entropy(p)[0, 0], expected, rtol=1e-6)


def test_single_sample_has_zero_mutual_information():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(1, 4, 5, 5))
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(mutual_information(probs), 0.0, atol=1e-6)
    np.testing.assert_allclose(predictive_entropy(probs), entropy(probs[0]), rtol=1e-5)


def test_two_confident_samples_that_disagree_have_mi_ln2():
    # sample 1 says class 0, sample 2 says class 1: mean = (0.5, 0.5), each sample has entropy 0
    probs = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)[:, :, None, None]
    np.testing.assert_allclose(mutual_information(probs)[0, 0], math.log(2), rtol=1e-6)
    np.testing.assert_allclose(predictive_entropy(probs)[0, 0], math.log(2), rtol=1e-6)


def test_agreeing_uncertain_samples_have_high_entropy_but_zero_mi():
    probs = np.full((5, 3, 1, 1), 1.0 / 3.0, dtype=np.float32)
    np.testing.assert_allclose(predictive_entropy(probs), math.log(3), rtol=1e-6)
    np.testing.assert_allclose(mutual_information(probs), 0.0, atol=1e-6)


def test_accumulator_form_matches_sample_form():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(6, 4, 3, 3)) * 2
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    mean = probs.mean(axis=0)
    expected_entropy = np.mean([entropy(p) for p in probs], axis=0)
    np.testing.assert_allclose(
        uncertainty_from_accumulators(mean, expected_entropy, "mutual_information"),
        mutual_information(probs),
        atol=1e-6,
    )
    np.testing.assert_allclose(
        uncertainty_from_accumulators(mean, None, "entropy"), predictive_entropy(probs), atol=1e-6
    )


def test_variation_ratio_known_answers():
    # 4 samples, 3 classes, one pixel: votes 0, 0, 1, 2 -> modal share 2/4 -> 0.5
    logits = np.array([[5, 0, 0], [4, 1, 0], [0, 3, 0], [0, 0, 2]], dtype=np.float32)[:, :, None]
    np.testing.assert_allclose(variation_ratio(logits), [0.5])
    unanimous = np.array([[0.2, 0.7, 0.1]] * 5, dtype=np.float32)[:, :, None]
    np.testing.assert_allclose(variation_ratio(unanimous), [0.0])


def test_expected_entropy_is_entropy_minus_mutual_information():
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(7, 3, 4)) * 2
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    mean = probs.mean(axis=0)
    expected = np.mean([entropy(p) for p in probs], axis=0)
    np.testing.assert_allclose(uncertainty_from_accumulators(mean, expected, "expected_entropy"), expected, rtol=1e-6)
    np.testing.assert_allclose(
        uncertainty_from_accumulators(mean, expected, "expected_entropy")
        + uncertainty_from_accumulators(mean, expected, "mutual_information"),
        uncertainty_from_accumulators(mean, None, "entropy"),
        atol=1e-6,
    )
    votes = np.stack([(probs.argmax(axis=1) == c).mean(axis=0) for c in range(3)])
    np.testing.assert_allclose(
        uncertainty_from_accumulators(mean, None, "variation_ratio", votes), variation_ratio(probs)
    )


def test_maximum_per_mode():
    assert uncertainty_maximum("entropy", 5) == pytest.approx(math.log(5))
    assert uncertainty_maximum("variation_ratio", 4) == pytest.approx(0.75)


def _softmax_samples(seed: int, shape: tuple[int, ...], scale: float = 2.0) -> np.ndarray:
    logits = np.random.default_rng(seed).normal(size=shape) * scale
    return np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)


def test_normalized_entropy_known_answers():
    # two samples of 4 classes at one pixel: p̄ = (0.5, 0.3, 0.2, 0), H = -Σ p ln p, divided by ln 4
    samples = np.array([[0.6, 0.2, 0.2, 0.0], [0.4, 0.4, 0.2, 0.0]], dtype=np.float32)[:, :, None, None]
    mean = samples.mean(axis=0)
    expected = -(0.5 * math.log(0.5) + 0.3 * math.log(0.3) + 0.2 * math.log(0.2)) / math.log(4)
    got = uncertainty_from_accumulators(mean, None, "normalized_entropy")
    np.testing.assert_allclose(got[0, 0], expected, rtol=1e-6)
    uniform = np.full((7, 2, 2), 1 / 7, dtype=np.float32)
    np.testing.assert_allclose(uncertainty_from_accumulators(uniform, None, "normalized_entropy"), 1.0, rtol=1e-6)


def test_normalized_entropy_is_entropy_over_ln_c_from_enumerated_samples():
    probs = _softmax_samples(11, (5, 6, 4, 3))  # T = 5 samples, C = 6
    mean = probs.mean(axis=0)
    by_hand = -(mean * np.log(mean)).sum(axis=0) / np.log(6)
    got = uncertainty_from_accumulators(mean.astype(np.float32), None, "normalized_entropy")
    np.testing.assert_allclose(got, by_hand, rtol=1e-5)
    assert got.dtype == np.float32 and got.min() >= 0 and got.max() <= 1


def test_margin_known_answers():
    # p̄ = (0.5, 0.3, 0.2): margin 0.2; a tie of the two best: 0; one-hot: 1
    probs = np.array([[0.5, 0.4, 0.0], [0.3, 0.4, 1.0], [0.2, 0.2, 0.0]], dtype=np.float32)[:, None, :]
    np.testing.assert_allclose(uncertainty_from_accumulators(probs, None, "margin")[0], [0.2, 0.0, 1.0], atol=1e-7)


def test_margin_is_top1_minus_top2_of_the_mean_from_enumerated_samples():
    probs = _softmax_samples(12, (4, 5, 6, 7))  # T = 4 samples, C = 5
    mean = probs.mean(axis=0)
    ordered = np.sort(mean, axis=0)
    by_hand = ordered[-1] - ordered[-2]
    got = uncertainty_from_accumulators(mean.astype(np.float32), None, "margin")
    np.testing.assert_allclose(got, by_hand, atol=1e-6)
    # the best class may sit anywhere: put it last, first, in the middle
    for order in ([4, 3, 2, 1, 0], [2, 0, 4, 1, 3]):
        np.testing.assert_allclose(uncertainty_from_accumulators(mean[order].astype(np.float32), None, "margin"), got)


def test_new_modes_have_maximum_one_and_margin_is_the_one_where_low_means_unsure():
    from mc_uncertainty_plugin.core.inference.uncertainty import low_means_unsure

    assert uncertainty_maximum("normalized_entropy", 5) == 1.0
    assert uncertainty_maximum("margin", 5) == 1.0
    assert low_means_unsure("margin")
    assert not any(low_means_unsure(m) for m in ("entropy", "normalized_entropy", "variation_ratio"))
