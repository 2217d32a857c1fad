"""Drift scores between a reference histogram and a window's, on the same bins (pure).

PSI (population stability index) says how much mass moved between bins; the two-sample
Kolmogorov-Smirnov test on the binned CDFs says whether the move is more than sampling noise.
A feature is flagged when both agree (PSI at or over its threshold and p under the p-value):
PSI alone is noisy on small windows, and a p-value alone flags tiny shifts on large ones.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

_SMOOTH = 0.5  # pseudo-count per bin, so an empty bin does not make PSI infinite


def psi(reference: np.ndarray, current: np.ndarray) -> float:
    """Population stability index: sum over bins of (c - r) * ln(c / r), on smoothed proportions."""
    r = np.asarray(reference, np.float64) + _SMOOTH
    c = np.asarray(current, np.float64) + _SMOOTH
    r /= r.sum()
    c /= c.sum()
    return float(np.sum((c - r) * np.log(c / r)))


def ks_statistic(reference: np.ndarray, current: np.ndarray) -> float:
    """The largest distance between the two binned empirical CDFs."""
    r = np.asarray(reference, np.float64)
    c = np.asarray(current, np.float64)
    if r.sum() <= 0 or c.sum() <= 0:
        return 0.0
    return float(np.max(np.abs(np.cumsum(r) / r.sum() - np.cumsum(c) / c.sum())))


def ks_p_value(d: float, n: int, m: int) -> float:
    """Asymptotic two-sample KS p-value for statistic `d` on samples of sizes n and m.

    Binning can only lower D, so on binned data the test is conservative (fewer false alarms).
    """
    if n <= 0 or m <= 0 or d <= 0:
        return 1.0
    ne = n * m / (n + m)
    lam = (math.sqrt(ne) + 0.12 + 0.11 / math.sqrt(ne)) * d
    if lam < 0.2:
        return 1.0
    total = 0.0
    for k in range(1, 101):
        term = 2.0 * (-1) ** (k - 1) * math.exp(-2.0 * k * k * lam * lam)
        total += term
        if abs(term) < 1e-12:
            break
    return float(min(1.0, max(0.0, total)))


@dataclasses.dataclass(frozen=True)
class Score:
    psi: float
    ks: float  # the KS statistic D (0..1): exported as the `ks` drift score
    p_value: float
    drifted: bool


def score(reference: np.ndarray, current: np.ndarray, psi_threshold: float, p_value: float) -> Score:
    """Both scores of one feature's window against its reference, and the verdict."""
    s = psi(reference, current)
    d = ks_statistic(reference, current)
    p = ks_p_value(d, int(np.sum(reference)), int(np.sum(current)))
    return Score(s, d, p, s >= psi_threshold and p < p_value)


def scores(reference: np.ndarray, current: np.ndarray, valid: np.ndarray, psi_threshold: float,
           p_value: float) -> list[Score]:
    """`score` for many features at once: rows are features, columns their bins; `valid` marks
    each row's real bins (features have different bin counts, rows are padded)."""
    r = np.where(valid, reference + _SMOOTH, 0.0)
    c = np.where(valid, current + _SMOOTH, 0.0)
    r /= r.sum(axis=1, keepdims=True)
    c /= c.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        psis = np.where(valid, (c - r) * np.log(np.where(valid, c / np.where(r > 0, r, 1.0), 1.0)), 0.0).sum(axis=1)
    n_ref, n_cur = reference.sum(axis=1), current.sum(axis=1)
    cdf_r = np.cumsum(reference, axis=1) / np.maximum(n_ref, 1)[:, None]
    cdf_c = np.cumsum(current, axis=1) / np.maximum(n_cur, 1)[:, None]
    both = (n_ref > 0) & (n_cur > 0)
    ds = np.where(both, np.abs(cdf_r - cdf_c).max(axis=1), 0.0)
    ps = ks_p_values(ds, n_ref, n_cur)
    flagged = (psis >= psi_threshold) & (ps < p_value)
    return [Score(s, d, p, f) for s, d, p, f in zip(psis.tolist(), ds.tolist(), ps.tolist(), flagged.tolist())]


_K = np.arange(1, 101, dtype=np.float64)
_SIGNS = 2.0 * (-1.0) ** (_K - 1)


def ks_p_values(d: np.ndarray, n: np.ndarray, m: np.ndarray) -> np.ndarray:
    """`ks_p_value` for many features in a few numpy calls (the series summed to 100 terms;
    the terms `ks_p_value` stops at are under 1e-12, so the two agree to that)."""
    d, n, m = (np.asarray(a, np.float64) for a in (d, n, m))
    with np.errstate(divide="ignore", invalid="ignore"):
        ne = np.where((n > 0) & (m > 0), n * m / np.maximum(n + m, 1), 0.0)
        lam = (np.sqrt(ne) + 0.12 + 0.11 / np.sqrt(np.where(ne > 0, ne, 1.0))) * d
    total = (_SIGNS * np.exp(-2.0 * _K * _K * (lam * lam)[:, None])).sum(axis=1)
    p = np.clip(total, 0.0, 1.0)
    return np.where((ne > 0) & (d > 0) & (lam >= 0.2), p, 1.0)
