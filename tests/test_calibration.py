"""Tests for anomaly.calibration: conformal p-values, FPR/FDR flagging, shift alarm, save/load."""

import json
import math
import warnings

import numpy as np
import pytest
from scipy.stats import betabinom, false_discovery_control
from sklearn.exceptions import NotFittedError

from anomaly.calibration import Calibrator, ShiftCheck, beta_binomial_sf


def fitted(cal: np.ndarray, **kwargs) -> Calibrator:
    """Fit without the small-n_cal warning (tiny hand-made examples)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return Calibrator(**kwargs).fit(cal)


def bh_reference(p, alpha):
    """Textbook Benjamini–Hochberg, written with plain Python loops."""
    p = [float(v) for v in p]
    m = len(p)
    ranked = sorted(p)
    k_max = 0
    for rank, value in enumerate(ranked, start=1):
        if value <= alpha * rank / m:
            k_max = rank
    if k_max == 0:
        return np.zeros(m, dtype=bool)
    cutoff = ranked[k_max - 1]
    return np.array([v <= cutoff for v in p], dtype=bool)


# ---------------------------------------------------------------------- p-values
def test_p_values_small_example_by_hand():
    cal = fitted(np.array([3.0, 1.0, 2.0, 4.0]))  # n_cal = 4, denominator 5
    np.testing.assert_array_equal(cal.scores_, [1.0, 2.0, 3.0, 4.0])
    scores = np.array([0.0, 1.0, 1.5, 2.0, 3.5, 4.0, 9.0])
    # #{cal >= s}:       4    4    3    3    1    1    0
    expected = np.array([5, 5, 4, 4, 2, 2, 1]) / 5
    np.testing.assert_allclose(cal.p_values(scores), expected, rtol=0, atol=1e-15)


def test_p_values_ties_count_as_at_least_as_extreme():
    cal = fitted(np.array([1.0, 2.0, 2.0, 2.0, 3.0]))  # denominator 6
    p = cal.p_values(np.array([2.0, np.nextafter(2.0, np.inf), np.nextafter(2.0, -np.inf)]))
    np.testing.assert_allclose(p, [(1 + 4) / 6, (1 + 1) / 6, (1 + 4) / 6])
    # a score equal to the largest calibration score is not the most extreme possible
    assert cal.p_values(np.array([3.0]))[0] == pytest.approx(2 / 6)


def test_p_values_monotone_in_range_and_shape_preserving():
    rng = np.random.default_rng(1)
    cal = Calibrator().fit(rng.normal(size=300))
    scores = np.concatenate([np.sort(rng.normal(scale=3, size=5000)), [-np.inf, np.inf]])
    scores.sort()
    p = cal.p_values(scores)
    assert p.dtype == np.float64
    assert np.all(np.diff(p) <= 0), "p-values must not increase with the score"
    assert p.min() > 0
    assert p.max() <= 1
    assert p[0] == 1.0
    assert p[-1] == pytest.approx(1 / 301)
    grid = rng.normal(size=(7, 11))
    np.testing.assert_array_equal(cal.p_values(grid), cal.p_values(grid.ravel()).reshape(7, 11))


def test_p_values_match_brute_force_count():
    rng = np.random.default_rng(2)
    raw = rng.integers(0, 20, size=200).astype(float)  # many ties
    cal = Calibrator().fit(raw)
    scores = rng.integers(-2, 23, size=500).astype(float)
    brute = np.array([(1 + np.sum(raw >= s)) / (raw.size + 1) for s in scores])
    np.testing.assert_allclose(cal.p_values(scores), brute, rtol=0, atol=1e-15)


def test_threshold_matches_fpr_flags_exactly():
    rng = np.random.default_rng(3)
    for n_cal, alpha in [(99, 0.01), (100, 0.01), (2000, 0.05), (57, 0.1), (1, 0.5)]:
        cal = Calibrator(alpha=alpha).fit(rng.integers(0, 40, size=n_cal).astype(float))
        near = np.concatenate(
            [cal.scores_, np.nextafter(cal.scores_, np.inf), np.nextafter(cal.scores_, -np.inf)]
        )
        scores = np.concatenate([near, rng.uniform(-5, 45, size=1000)])
        flags = cal.flag(cal.p_values(scores))
        np.testing.assert_array_equal(flags, scores >= cal.threshold_)
        assert flags.any(), (n_cal, alpha)
        # the threshold itself is flagged and the next float below it is not
        p_at = cal.p_values(np.array([cal.threshold_, np.nextafter(cal.threshold_, -np.inf)]))
        assert p_at[0] <= alpha < p_at[1]


def test_threshold_is_inf_and_warns_when_alpha_unreachable():
    with pytest.warns(UserWarning, match=r"at least 99 calibration rows"):
        cal = Calibrator(alpha=0.01).fit(np.arange(50.0))
    assert cal.threshold_ == math.inf
    assert not cal.flag(cal.p_values(np.array([1e9]))).any()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Calibrator(alpha=0.01).fit(np.arange(99.0))  # 1/100 == alpha: reachable, no warning


def test_p_values_large_batch():
    rng = np.random.default_rng(4)
    cal = Calibrator().fit(rng.normal(size=1000))
    scores = rng.normal(size=2_000_000)
    p = cal.p_values(scores)
    idx = rng.integers(0, scores.size, size=200)
    brute = [(1 + np.sum(cal.scores_ >= scores[i])) / 1001 for i in idx]
    np.testing.assert_allclose(p[idx], brute, rtol=0, atol=1e-15)


# ---------------------------------------------------------------------- FPR validity
@pytest.mark.parametrize("alpha", [0.01, 0.05])
def test_fpr_rule_is_calibrated(alpha):
    n_trials, n_cal, n_test = 200, 2000, 2000
    rng = np.random.default_rng(12345)
    fprs = np.empty(n_trials)
    for t in range(n_trials):
        cal = Calibrator(alpha=alpha).fit(rng.standard_normal(n_cal))
        fprs[t] = cal.flag(cal.p_values(rng.standard_normal(n_test))).mean()
    # Exact conformal rate for continuous scores: floor(alpha (n+1)) / (n+1) <= alpha.
    exact = math.floor(alpha * (n_cal + 1)) / (n_cal + 1)
    # Per-trial sd: calibration-set scatter (beta) plus test-set scatter (binomial).
    sd_trial = math.sqrt(alpha * (1 - alpha) * (1 / (n_cal + 2) + 1 / n_test))
    se_mean = sd_trial / math.sqrt(n_trials)
    mean = fprs.mean()
    assert mean <= alpha + 4 * se_mean, f"mean FPR {mean:.5f} above alpha={alpha}"
    assert mean >= exact - 4 * se_mean, f"mean FPR {mean:.5f} too conservative for {alpha}"
    assert mean >= 0.9 * alpha
    assert fprs.max() <= alpha + 6 * sd_trial, f"one trial had FPR {fprs.max():.4f}"
    assert fprs.min() >= max(alpha - 6 * sd_trial, 0.0)
    assert fprs.std() == pytest.approx(sd_trial, rel=0.25)


def test_fpr_rule_stays_valid_with_tied_scores():
    rng = np.random.default_rng(7)
    alpha = 0.05
    fprs = []
    for _ in range(100):
        cal = Calibrator(alpha=alpha).fit(rng.poisson(3.0, size=1000).astype(float))
        fprs.append(cal.flag(cal.p_values(rng.poisson(3.0, size=1000).astype(float))).mean())
    assert np.mean(fprs) <= alpha  # ties make conformal p-values conservative


# ---------------------------------------------------------------------- FDR (BH)
def test_bh_controls_fdr_on_planted_mixture():
    alpha, n_trials, n_cal, n_test, pi1 = 0.1, 200, 2000, 1000, 0.05
    rng = np.random.default_rng(2024)
    fdps, powers = [], []
    for _ in range(n_trials):
        cal = Calibrator(rule="fdr", alpha=alpha).fit(rng.standard_normal(n_cal))
        is_anomaly = rng.random(n_test) < pi1
        scores = rng.standard_normal(n_test) + 4.0 * is_anomaly
        flags = cal.flag(cal.p_values(scores))
        n_flags = flags.sum()
        fdps.append((flags & ~is_anomaly).sum() / max(n_flags, 1))
        powers.append((flags & is_anomaly).sum() / max(is_anomaly.sum(), 1))
    # BH guarantees FDR <= pi0 * alpha; slack covers Monte Carlo error of the mean FDP.
    assert np.mean(fdps) <= alpha + 0.015, f"mean FDP {np.mean(fdps):.4f}"
    assert np.mean(fdps) > 0.02, "BH should use some of its error budget"
    assert np.mean(powers) >= 0.6, f"BH found only {np.mean(powers):.2%} of anomalies"


def test_fpr_rule_does_not_control_fdr_where_bh_does():
    # Sanity check that the FDR test above can fail: rows flagged at p <= alpha are mostly
    # false discoveries when anomalies are rare and weak.
    rng = np.random.default_rng(5)
    cal_scores = rng.standard_normal(2000)
    is_anomaly = rng.random(5000) < 0.01
    scores = rng.standard_normal(5000) + 1.0 * is_anomaly
    fpr = Calibrator(rule="fpr", alpha=0.1).fit(cal_scores)
    flags = fpr.flag(fpr.p_values(scores))
    assert (flags & ~is_anomaly).sum() / flags.sum() > 0.5


@pytest.mark.parametrize("alpha", [0.01, 0.05, 0.2])
def test_bh_matches_reference_implementations(alpha):
    rng = np.random.default_rng(11)
    cal = Calibrator(rule="fdr", alpha=alpha).fit(np.arange(1000.0))
    for size in [1, 2, 5, 50, 400]:
        for _ in range(25):
            p = rng.uniform(size=size)
            p[rng.random(size) < 0.3] *= 1e-3  # plant some signals
            expected = bh_reference(p, alpha)
            got = cal.flag(p)
            np.testing.assert_array_equal(got, expected)
            np.testing.assert_array_equal(got, false_discovery_control(p) <= alpha)
    # realistic discrete conformal p-values with many ties
    p = cal.p_values(rng.normal(990.0, 15.0, size=300))
    np.testing.assert_array_equal(cal.flag(p), bh_reference(p, alpha))


def test_bh_edge_cases():
    cal = Calibrator(rule="fdr", alpha=0.05).fit(np.arange(1000.0))
    assert cal.flag(np.array([])).shape == (0,)
    assert cal.flag(np.array([])).dtype == bool
    np.testing.assert_array_equal(cal.flag(np.full(10, 0.04)), np.ones(10, dtype=bool))
    np.testing.assert_array_equal(cal.flag(np.full(10, 0.06)), np.zeros(10, dtype=bool))
    for value in (0.04, 0.06, 0.5, 1.0):
        p = np.full(37, value)
        np.testing.assert_array_equal(cal.flag(p), bh_reference(p, 0.05))
    # step-up: 0.03 > 0.05 * 1/2 alone, but rank 2 passes so both are rejected
    np.testing.assert_array_equal(cal.flag(np.array([0.03, 0.04])), [True, True])
    np.testing.assert_array_equal(cal.flag(np.array([0.03, 0.9])), [False, False])
    grid = np.array([[0.001, 0.9], [0.2, 0.002]])
    np.testing.assert_array_equal(cal.flag(grid), bh_reference(grid.ravel(), 0.05).reshape(2, 2))


# ---------------------------------------------------------------------- shift alarm
def test_shift_alarm():
    cal = Calibrator(alpha=0.01, shift_pvalue=0.001).fit(np.arange(5000.0))
    calm = cal.shift_alarm(1000, 100_000)
    assert isinstance(calm, ShiftCheck)
    assert calm.flag_rate == pytest.approx(0.01)
    assert calm.expected_rate == 0.01
    assert calm.p_value > 0.1
    assert not calm.alarm
    loud = cal.shift_alarm(10_000, 100_000)
    assert loud.alarm
    assert loud.p_value < 1e-30
    assert loud.flag_rate == pytest.approx(0.1)
    empty = cal.shift_alarm(0, 0)
    assert empty == ShiftCheck(flag_rate=0.0, expected_rate=0.01, p_value=1.0, alarm=False)
    # one-sided: flagging far fewer than expected is no alarm
    assert not cal.shift_alarm(0, 100_000).alarm
    assert cal.shift_alarm(0, 100_000).p_value == 1.0
    # a modest excess on a small batch is not significant
    assert not cal.shift_alarm(3, 100).alarm
    with pytest.raises(AttributeError):
        calm.alarm = True  # frozen
    with pytest.raises(ValueError, match=r"n_flagged=11, n_rows=10"):
        cal.shift_alarm(11, 10)
    with pytest.raises(ValueError, match=r"n_flagged=-1"):
        cal.shift_alarm(-1, 10)
    with pytest.raises(TypeError):
        cal.shift_alarm(1.5, 10)


@pytest.mark.parametrize("n", [1, 10, 1_000, 100_000])
def test_beta_binomial_sf_gives_scipys_numbers(n):
    """The shift test's tail probability, computed without importing scipy.stats, is the
    number ``scipy.stats.betabinom.sf`` gives, to the last bit."""
    rng = np.random.default_rng(n)
    for a, b in [(1, 100), (3, 297), (50, 4951), (7, 2)]:
        for k in {0, n - 1, n // 2, *rng.integers(0, n, 10).tolist()}:
            assert beta_binomial_sf(k, n, a, b) == float(betabinom.sf(k, n, a, b)), (k, n, a, b)


def test_shift_alarm_fdr_rule_uses_alpha():
    cal = Calibrator(rule="fdr", alpha=0.05).fit(np.arange(5000.0))
    assert not cal.shift_alarm(50, 1000).alarm
    assert cal.shift_alarm(500, 1000).alarm


# ---------------------------------------------------------------------- persistence
def test_save_load_round_trip(tmp_path):
    rng = np.random.default_rng(8)
    cal = Calibrator(rule="fdr", alpha=0.05, shift_pvalue=0.01).fit(rng.normal(size=777))
    out = cal.save(tmp_path / "calib")
    assert out == tmp_path / "calib"
    loaded = Calibrator.load(out)
    assert loaded.to_dict() == cal.to_dict() == {"rule": "fdr", "alpha": 0.05, "shift_pvalue": 0.01}
    np.testing.assert_array_equal(loaded.scores_, cal.scores_)
    assert loaded.threshold_ == cal.threshold_
    scores = rng.normal(size=5000) * 2
    np.testing.assert_array_equal(loaded.p_values(scores), cal.p_values(scores))
    np.testing.assert_array_equal(
        loaded.flag(loaded.p_values(scores)), cal.flag(cal.p_values(scores))
    )

    meta = json.loads((out / "calibration.json").read_text())
    assert meta["n_cal"] == 777
    assert meta["params"] == cal.to_dict()
    assert meta["threshold"] == cal.threshold_
    with np.load(out / "calibration.npz", allow_pickle=False) as data:
        assert data.files == ["scores"]
        assert data["scores"].dtype == np.float64
        np.testing.assert_array_equal(data["scores"], cal.scores_)


def test_save_load_unreachable_threshold_is_strict_json(tmp_path):
    with pytest.warns(UserWarning, match="calibration rows"):
        cal = Calibrator(alpha=0.001).fit(np.arange(10.0))
    cal.save(tmp_path)
    text = (tmp_path / "calibration.json").read_text()
    assert "Infinity" not in text
    assert json.loads(text)["threshold"] is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert Calibrator.load(tmp_path).threshold_ == math.inf


def test_load_rejects_mismatched_files(tmp_path):
    Calibrator().fit(np.arange(200.0)).save(tmp_path)
    meta = json.loads((tmp_path / "calibration.json").read_text())
    meta["n_cal"] = 5
    (tmp_path / "calibration.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"n_cal=5 .* 200 scores"):
        Calibrator.load(tmp_path)
    meta["format_version"] = 99
    (tmp_path / "calibration.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"format_version 99"):
        Calibrator.load(tmp_path)


def test_to_dict_is_json_serialisable_params_only():
    cal = Calibrator(alpha=np.float64(0.02)).fit(np.arange(100.0))
    d = cal.to_dict()
    assert d == {"rule": "fpr", "alpha": 0.02, "shift_pvalue": 0.001}
    json.dumps(d)


# ---------------------------------------------------------------------- errors
def test_constructor_is_keyword_only_and_does_not_validate():
    with pytest.raises(TypeError):
        Calibrator("fpr")  # type: ignore[misc]
    cal = Calibrator(alpha=5.0)  # stored as-is, validated at fit (scikit-learn style)
    assert cal.alpha == 5.0
    assert not hasattr(cal, "scores_")
    assert not hasattr(cal, "threshold_")


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (np.array([1.0, np.nan, 2.0]), r"1 of 3 calibration scores are NaN or inf"),
        (np.array([1.0, np.inf]), r"NaN or inf"),
        (np.array([]), r"at least 1"),
        (np.ones((3, 2)), r"1-D .* shape \(3, 2\)"),
    ],
)
def test_fit_rejects_bad_scores(bad, match):
    with pytest.raises(ValueError, match=match):
        Calibrator().fit(bad)


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_fit_rejects_alpha_out_of_range(alpha):
    with pytest.raises(ValueError, match=r"alpha must be in \(0, 1\)"):
        Calibrator(alpha=alpha).fit(np.arange(10.0))


def test_fit_rejects_bad_params():
    with pytest.raises(ValueError, match=r"rule must be one of \('fpr', 'fdr'\), got 'fwer'"):
        Calibrator(rule="fwer").fit(np.arange(10.0))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"shift_pvalue must be in \(0, 1\)"):
        Calibrator(shift_pvalue=0.0).fit(np.arange(10.0))
    with pytest.raises(ValueError, match=r"alpha must be a number"):
        Calibrator(alpha="0.01").fit(np.arange(10.0))  # type: ignore[arg-type]


def test_use_before_fit_raises(tmp_path):
    cal = Calibrator()
    with pytest.raises(NotFittedError, match=r"not fitted yet: call fit"):
        cal.p_values(np.array([1.0]))
    with pytest.raises(NotFittedError, match=r"not fitted yet"):
        cal.flag(np.array([0.5]))
    with pytest.raises(NotFittedError, match=r"not fitted yet"):
        cal.save(tmp_path)
    with pytest.raises(NotFittedError, match=r"not fitted yet"):
        cal.shift_alarm(1, 10)
    assert not (tmp_path / "calibration.json").exists()


def test_nan_scores_and_bad_p_values_raise():
    cal = Calibrator().fit(np.arange(100.0))
    with pytest.raises(ValueError, match=r"1 of 3 scores are NaN"):
        cal.p_values(np.array([1.0, np.nan, 2.0]))
    with pytest.raises(ValueError, match=r"p-values are NaN"):
        cal.flag(np.array([0.1, np.nan]))
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\], got min=-0.1"):
        cal.flag(np.array([-0.1, 0.5]))
    with pytest.raises(ValueError, match=r"max=1.5"):
        cal.flag(np.array([0.5, 1.5]))


def test_shift_alarm_false_alarm_rate_on_large_batches():
    """Normal batches 25x larger than the calibration set raise alarms at about shift_pvalue."""
    rng = np.random.default_rng(7)
    trials, n_cal, m, alpha, level = 300, 2000, 50_000, 0.01, 0.01
    alarms = 0
    for _ in range(trials):
        cal = Calibrator(alpha=alpha, shift_pvalue=level).fit(rng.normal(size=n_cal))
        # the flag count of a normal batch given the calibration set
        k = rng.binomial(m, float(np.mean(rng.normal(size=200_000) >= cal.threshold_)))
        alarms += cal.shift_alarm(int(k), m).alarm
    assert alarms / trials <= level + 3 * np.sqrt(level * (1 - level) / trials)
