"""Multinomial logistic regression with L2, in numpy.

Written here rather than taken from scikit-learn: the daemon retrains heads in the background ("retrain" on the
page), and scikit-learn would bring scipy and joblib into a process meant to stay small for ~40 lines of a
convex fit. Features are standardised for conditioning, then the scaling is folded back into the weights, so
the head is a plain linear layer on raw features (which keeps class activation maps exact).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LinearSoftmax:
    weight: np.ndarray      # (C, D) float32, on raw features
    bias: np.ndarray        # (C,) float32
    iterations: int
    loss: float


def fit_softmax(x: np.ndarray, y: np.ndarray, classes: int, l2: float = 1e-3, iterations: int = 400,
                balanced: bool = True, tol: float = 1e-6) -> LinearSoftmax:
    """Minimise mean (class-balanced) cross-entropy + l2/2 * |W|^2 by Nesterov-accelerated gradient descent.

    The objective is convex and smooth: a step of 1/L with L = 0.5 * lambda_max(X^T X / n) + l2 (the softmax
    Hessian is bounded by half the feature covariance) converges without line searches."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.intp)
    n, d = x.shape
    if n == 0 or classes < 2:
        raise ValueError("fit_softmax needs examples of at least two classes")
    mu = x.mean(axis=0)
    sd = x.std(axis=0)
    sd[sd < 1e-8] = 1.0
    xs = np.hstack([(x - mu) / sd, np.ones((n, 1))])       # last column: the bias, not penalised
    onehot = np.zeros((n, classes))
    onehot[np.arange(n), y] = 1.0
    counts = np.bincount(y, minlength=classes).astype(np.float64)
    if balanced:  # "none" usually outnumbers the classes of interest; each class weighs the same in the loss
        sample_w = (n / (classes * np.maximum(counts, 1.0)))[y]
    else:
        sample_w = np.ones(n)
    sample_w /= sample_w.sum()
    penalty = np.ones((d + 1, 1))
    penalty[-1] = 0.0
    lipschitz = 0.5 * _largest_eigenvalue(xs, sample_w) + l2
    step = 1.0 / lipschitz
    w = np.zeros((d + 1, classes))
    v = w.copy()
    t = 1.0
    prev_loss = np.inf
    loss = np.inf
    it = 0
    for it in range(1, iterations + 1):
        grad, loss = _gradient(xs, onehot, sample_w, v, l2, penalty)
        w_next = v - step * grad
        t_next = (1.0 + np.sqrt(1.0 + 4.0 * t * t)) / 2.0
        v = w_next + ((t - 1.0) / t_next) * (w_next - w)
        w, t = w_next, t_next
        if abs(prev_loss - loss) < tol * max(1.0, abs(loss)):
            break
        prev_loss = loss
    coef, intercept = w[:-1].T, w[-1]
    weight = coef / sd                                      # fold standardisation back: W x_raw + b
    bias = intercept - weight @ mu
    return LinearSoftmax(weight.astype(np.float32), bias.astype(np.float32), it, float(loss))


def _gradient(xs: np.ndarray, onehot: np.ndarray, sample_w: np.ndarray, w: np.ndarray, l2: float,
              penalty: np.ndarray) -> tuple[np.ndarray, float]:
    z = xs @ w
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    loss = -float(sample_w @ np.log(np.maximum((p * onehot).sum(axis=1), 1e-300)))
    loss += 0.5 * l2 * float(((w * penalty) ** 2).sum())
    grad = xs.T @ ((p - onehot) * sample_w[:, None]) + l2 * w * penalty
    return grad, loss


def _largest_eigenvalue(xs: np.ndarray, sample_w: np.ndarray, rounds: int = 30) -> float:
    """lambda_max of X^T diag(w) X by power iteration (a bound within a few percent is all the step needs)."""
    rng = np.random.default_rng(0)
    v = rng.standard_normal(xs.shape[1])
    lam = 1.0
    for _ in range(rounds):
        u = xs.T @ (sample_w * (xs @ v))
        lam = float(np.linalg.norm(u))
        if lam == 0.0:
            return 1.0
        v = u / lam
    return lam * 1.05
