"""A demo network whose predictions are not flat: its last layer fitted to clusters of real footage.

The random-init demo network's top classes win by a fraction of a logit (median 0.33 on the sample footage), well
inside INT8 rounding, so any two quantizations of it "disagree" on a fifth of the frames and an agreement figure
measured on it says nothing. Official ImageNet weights cannot be downloaded here; the stand-in keeps the demo's
random backbone (the part INT8 is applied to) and fits only the last layer, so that each group of similar frames
(k-means on the pooled features) gets its own ImageNet class by a clear margin, as a trained network's scenes do.
The classes stay meaningless: the artifact is still marked untrained.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import torch

from monitor.weights import backbones, model
from monitor.inference.heads.softmax import fit_softmax

# Other classes keep a fifth of their random weights: present, ranked, but never near the fitted classes' logits.
OTHER_CLASSES_SCALE = 0.2


def pooled_features(net: torch.nn.Module, batches: Iterable[np.ndarray]) -> np.ndarray:
    """(N, D) inputs of the last layer for prepared uint8 BGR batches through the float network: the pooled
    features (ResNet), or MobileNetV3's hidden layer output on them."""
    runtime = model.Runtime(net).eval()
    with torch.inference_mode():
        return np.concatenate([backbones.last_layer_input(net, runtime(torch.from_numpy(b))[1]).numpy()
                               for b in batches])


def kmeans(x: np.ndarray, k: int, seed: int = 0, iterations: int = 50, min_share: float = 0.04) -> np.ndarray:
    """Cluster labels of the rows of x (standardised), k-means++ seeding; deterministic for a seed. A cluster
    with under `min_share` of the frames is dissolved into the others: a class fitted to a couple of outlier
    frames would only add boundaries."""
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    rng = np.random.default_rng(seed)
    centres = [x[rng.integers(len(x))]]
    for _ in range(1, k):
        d2 = np.min([((x - c) ** 2).sum(1) for c in centres], axis=0)
        centres.append(x[rng.choice(len(x), p=d2 / d2.sum())])
    c = np.stack(centres)
    labels = np.zeros(len(x), dtype=np.intp)
    for _ in range(iterations):
        labels = ((x[:, None, :] - c[None]) ** 2).sum(-1).argmin(1)
        c = np.stack([x[labels == j].mean(0) if (labels == j).any() else c[j] for j in range(len(c))])
        sizes = np.bincount(labels, minlength=len(c))
        if sizes.min() < min_share * len(x) and len(c) > 2:
            c = np.delete(c, sizes.argmin(), axis=0)
    return ((x[:, None, :] - c[None]) ** 2).sum(-1).argmin(1)


def fit_last_layer(net: torch.nn.Module, batches: Iterable[np.ndarray], clusters: int = 6,
                   seed: int = 0) -> dict[str, object]:
    """Fit net.fc in place: k clusters of the frames' features, each mapped to the ImageNet class the random
    network already leaned to for it (distinct classes), by a softmax regression. Returns a summary."""
    features = pooled_features(net, batches)
    if len(features) < 4 * clusters:
        raise ValueError(f"fitting {clusters} classes needs at least {4 * clusters} frames, got {len(features)}")
    labels = kmeans(features, clusters, seed)
    present = np.unique(labels)
    labels = np.searchsorted(present, labels)
    with torch.no_grad():
        weight, bias = net.fc.weight, net.fc.bias
        logits = features @ weight.numpy().T + bias.numpy()
        classes: list[int] = []
        for j in range(len(present)):
            leaning = logits[labels == j].mean(0)
            leaning[classes] = -np.inf
            classes.append(int(leaning.argmax()))
        fit = fit_softmax(features, labels, len(present), l2=1e-4, iterations=500)
        weight.mul_(OTHER_CLASSES_SCALE)
        bias.zero_()
        weight[classes] = torch.from_numpy(fit.weight)
        bias[classes] = torch.from_numpy(fit.bias)
    return {"clusters": len(present), "frames": len(features), "classes": classes,
            "cluster_sizes": np.bincount(labels).tolist()}
