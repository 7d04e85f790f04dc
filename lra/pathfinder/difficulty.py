"""How hard are Pathfinder images? Shortcut solvers and image statistics, for any image set.

Pathfinder asks whether two markers are joined by one dashed path. A generated set is only
LRA-equivalent if the shortcuts that fail on the LRA release fail on it too:

* **Flood fill**: threshold the image (pixels >= ``threshold``), join foreground pixels at
  most ``reach`` px apart (reach 1 = 8-connectivity; 2 and 3 jump 1- and 2-px gaps) and
  answer "connected" iff both markers lie in one blob. On the reference generator's images
  this is at chance (48-52%) at every threshold and reach; unbroken strokes make it win.
* **Simple features** (pixel counts, the intensity histogram, the marker distance, blob
  counts) fed to a logistic regression, cross-validated: at chance on both.
* **Statistics** that say whether the rendering matches: blobs per image, grey levels per
  image, the share of black, faint (1-15, Lanczos ringing) and bright pixels.

Markers are found in the pixels alone (the two brightest discs after a box filter), so the
same measures run on generated images, the release's PNGs or a cached dataset. Everything
is vectorised over the image batch; labelling is O(n H W (2 reach + 1)^2) per propagation
round, with pointer jumping so that rounds grow with the log of a blob's length.
"""
from __future__ import annotations

import math

import numpy as np

THRESHOLDS = (16, 64, 128)
REACHES = (1, 2, 3)


def _box_sum(img: np.ndarray, r: int) -> np.ndarray:
    """Sum over the (2r+1)^2 box around each pixel of (n, H, W), zero outside."""
    c = np.pad(img.astype(np.int64), ((0, 0), (r + 1, r), (r + 1, r))).cumsum(1).cumsum(2)
    k = 2 * r + 1
    return c[:, k:, k:] - c[:, :-k, k:] - c[:, k:, :-k] + c[:, :-k, :-k]


def find_markers(images: np.ndarray, marker_radius: float = 1.5) -> np.ndarray:
    """(n, H, W) uint8 -> (n, 2, 2) int pixels of the two markers (brightest disc-sized blobs).

    The box filter's largest response, then the largest at least ``2 * marker_radius + 1``
    px (Chebyshev) away from it; a marker is a filled disc, paths are thin.
    """
    r = max(1, int(math.ceil(marker_radius)) - 1)
    s = _box_sum(images, r)
    n, H, W = images.shape
    flat = s.reshape(n, -1)
    first = flat.argmax(1)
    y0, x0 = np.divmod(first, W)
    yy, xx = np.mgrid[:H, :W]
    sep = int(math.ceil(2 * marker_radius)) + 1
    near = (np.abs(yy[None] - y0[:, None, None]) < sep) & (np.abs(xx[None] - x0[:, None, None]) < sep)
    second = np.where(near.reshape(n, -1), -1, flat).argmax(1)
    y1, x1 = np.divmod(second, W)
    return np.stack([np.stack([y0, x0], 1), np.stack([y1, x1], 1)], 1)


def _window_min(a: np.ndarray, r: int, fill: int) -> np.ndarray:
    """Minimum over the (2r+1)^2 window around each pixel of (n, H, W): a row pass, then a column pass."""
    H, W = a.shape[1:]
    p = np.pad(a, ((0, 0), (0, 0), (r, r)), constant_values=fill)
    out = p[:, :, :W].copy()
    for d in range(1, 2 * r + 1):
        np.minimum(out, p[:, :, d:d + W], out=out)
    p = np.pad(out, ((0, 0), (r, r), (0, 0)), constant_values=fill)
    out = p[:, :H].copy()
    for d in range(1, 2 * r + 1):
        np.minimum(out, p[:, d:d + H], out=out)
    return out


def label_blobs(fg: np.ndarray, reach: int = 1) -> np.ndarray:
    """(n, H, W) bool -> int64 labels (-1 background): pixels <= ``reach`` apart (Chebyshev) share a label.

    A blob's label is the flat index of its first pixel: minimum-label propagation over the
    (2 reach + 1)^2 window (separable), with pointer jumping, until nothing changes.
    """
    n, H, W = fg.shape
    big = n * H * W
    dtype = np.int32 if big < 2 ** 31 - 1 else np.int64
    lab = np.where(fg, np.arange(big, dtype=dtype).reshape(n, H, W), dtype(big))
    on = np.nonzero(fg.reshape(-1))[0]
    while True:
        new = np.where(fg, _window_min(lab, int(reach), big), dtype(big))
        flat = new.reshape(-1)
        for _ in range(8):  # pointer jumping: a label is a pixel of the same blob with a smaller label
            flat[on] = flat[flat[on]]
        if np.array_equal(new, lab):
            return np.where(fg, lab, -1).astype(np.int64)
        lab = new


def blob_counts(images: np.ndarray, threshold: int = 64, reach: int = 1) -> np.ndarray:
    """(n,) number of blobs of pixels >= ``threshold`` per image."""
    fg = images >= threshold
    lab = label_blobs(fg, reach)
    own = lab == np.arange(lab.size).reshape(lab.shape)
    return own.reshape(len(images), -1).sum(1)


def same_blob(images: np.ndarray, markers: np.ndarray, threshold: int, reach: int = 1) -> np.ndarray:
    """(n,) True where both markers (n, 2, 2) lie in one blob of pixels >= ``threshold``."""
    lab = label_blobs(images >= threshold, reach)
    i = np.arange(len(images))
    a = lab[i, markers[:, 0, 0], markers[:, 0, 1]]
    b = lab[i, markers[:, 1, 0], markers[:, 1, 1]]
    return (a >= 0) & (a == b)


def flood_fill(images: np.ndarray, labels: np.ndarray, markers: np.ndarray, thresholds=THRESHOLDS,
               reaches=REACHES) -> dict[str, dict[str, float]]:
    """Accuracy of "connected iff the markers share a blob" per threshold and reach.

    Returns ``{"t<threshold>_r<reach>": {"accuracy", "same_if_positive", "same_if_negative"}}``.
    """
    out = {}
    pos = labels == 1
    for t in thresholds:
        for r in reaches:
            same = same_blob(images, markers, t, r)
            out[f"t{t}_r{r}"] = {"accuracy": float((same == pos).mean()),
                                 "same_if_positive": float(same[pos].mean()) if pos.any() else float("nan"),
                                 "same_if_negative": float(same[~pos].mean()) if (~pos).any() else float("nan")}
    return out


def gray_levels(images: np.ndarray) -> np.ndarray:
    """(n,) number of distinct pixel values per image."""
    flat = np.sort(images.reshape(len(images), -1), axis=1)
    return 1 + (np.diff(flat.astype(np.int16), axis=1) != 0).sum(1)


def pixel_stats(images: np.ndarray, markers: np.ndarray) -> dict[str, float]:
    """Means over images of: intensity, share of black / faint (1-15) / bright (>= 128) pixels, max, marker peak."""
    x = images.reshape(len(images), -1)
    i = np.arange(len(images))
    peak = np.maximum(images[i, markers[:, 0, 0], markers[:, 0, 1]], images[i, markers[:, 1, 0], markers[:, 1, 1]])
    return {"mean": float(x.mean()), "black": float((x == 0).mean()), "faint_1_15": float(((x >= 1) & (x <= 15)).mean()),
            "bright_128": float((x >= 128).mean()), "max": float(x.max(1).mean()), "marker_peak": float(peak.mean())}


def _binned(x: np.ndarray, bins: int) -> np.ndarray:
    """One-hot quantile bins of a scalar feature (lets a linear model fit any shape of dependence)."""
    edges = np.unique(np.quantile(x, np.linspace(0, 1, bins + 1)[1:-1]))
    return np.eye(len(edges) + 1)[np.searchsorted(edges, x, side="right")]


def simple_features(images: np.ndarray, markers: np.ndarray,
                    blobs: dict[int, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Named (n, f) feature sets that carry no path information beyond their summary (``blobs``:
    :func:`blob_counts` per threshold of :data:`THRESHOLDS`, when already counted)."""
    x = images.reshape(len(images), -1)
    counts = np.concatenate([_binned((x >= t).sum(1), 5) for t in (1, 16, 64, 128, 192)], 1)
    hist = np.stack([((x >= lo) & (x < lo + 16)).mean(1) for lo in range(0, 256, 16)], 1)
    dist = np.linalg.norm((markers[:, 0] - markers[:, 1]).astype(np.float64), axis=1)
    blobs = blobs or {t: blob_counts(images, t) for t in THRESHOLDS}
    feats = {"pixel_counts": counts, "histogram": hist, "marker_distance": _binned(dist, 8),
             "blob_counts": np.concatenate([_binned(blobs[t], 5) for t in THRESHOLDS], 1)}
    feats["all"] = np.concatenate(list(feats.values()), 1)
    return feats


def logistic_accuracy(features: np.ndarray, labels: np.ndarray, l2: float = 1.0, folds: int = 2) -> float:
    """Cross-validated accuracy of an L2-regularised logistic regression (Newton steps), folds by index mod ``folds``."""
    x = np.asarray(features, np.float64)
    y = np.asarray(labels, np.float64)
    fold = np.arange(len(y)) % folds
    correct = 0
    for f in range(folds):
        tr, te = fold != f, fold == f
        mu, sd = x[tr].mean(0), x[tr].std(0) + 1e-9
        a = np.concatenate([np.ones((tr.sum(), 1)), (x[tr] - mu) / sd], 1)
        b = np.concatenate([np.ones((te.sum(), 1)), (x[te] - mu) / sd], 1)
        w = np.zeros(a.shape[1])
        reg = l2 * np.eye(len(w))
        reg[0, 0] = 0
        for _ in range(25):
            p = 1 / (1 + np.exp(-a @ w))
            g = a.T @ (p - y[tr]) + reg @ w
            h = (a * (p * (1 - p))[:, None]).T @ a + reg + 1e-9 * np.eye(len(w))
            step = np.linalg.solve(h, g)
            w -= step
            if np.abs(step).max() < 1e-8:
                break
        correct += int(((b @ w > 0) == (y[te] > 0.5)).sum())
    return correct / len(y)


def summary(images: np.ndarray, labels: np.ndarray, markers: np.ndarray | None = None,
            marker_radius: float = 1.5) -> dict:
    """Every difficulty figure of an image set (n, H, W) uint8 with labels (n,): a JSON-ready dict.

    ``markers`` (n, 2, 2) default to :func:`find_markers`.
    """
    images = np.asarray(images, np.uint8)
    labels = np.asarray(labels)
    if markers is None:
        markers = find_markers(images, marker_radius)
    markers = np.asarray(markers, np.int64)
    ff = flood_fill(images, labels, markers)
    accs = [v["accuracy"] for v in ff.values()]
    blobs = {t: blob_counts(images, t) for t in THRESHOLDS}
    feats = simple_features(images, markers, blobs)
    return {
        "images": int(len(images)),
        "flood_fill": ff,
        "flood_fill_max_accuracy": max(accs),
        "blobs": {f"t{t}": float(blobs[t].mean()) for t in THRESHOLDS},
        "gray_levels": float(gray_levels(images).mean()),
        "pixels": pixel_stats(images, markers),
        "feature_accuracy": {k: logistic_accuracy(v, labels) for k, v in feats.items()},
    }


def format_summary(s: dict) -> str:
    """A few lines of text for a :func:`summary`."""
    ff = s["flood_fill"]
    rows = [f"{s['images']} images; flood fill (connected iff the markers share a blob), accuracy by threshold and "
            f"reach (chance 0.50):"]
    for t in THRESHOLDS:
        rows.append(f"  >= {t:3d}: " + "  ".join(f"reach {r}: {ff[f't{t}_r{r}']['accuracy']:.3f}" for r in REACHES))
    rows.append("blobs per image (8-connected, >= 16/64/128): "
                + " / ".join(f"{s['blobs'][f't{t}']:.1f}" for t in THRESHOLDS)
                + f"; grey levels per image: {s['gray_levels']:.1f}")
    px = s["pixels"]
    rows.append(f"pixels: mean {px['mean']:.1f}, black {px['black']:.3f}, faint 1-15 {px['faint_1_15']:.3f}, "
                f">= 128 {px['bright_128']:.3f}, max {px['max']:.0f}, marker peak {px['marker_peak']:.0f}")
    rows.append("simple features -> logistic regression, 2-fold accuracy: "
                + ", ".join(f"{k} {v:.3f}" for k, v in s["feature_accuracy"].items()))
    return "\n".join(rows)


__all__ = ["find_markers", "label_blobs", "blob_counts", "same_blob", "flood_fill", "gray_levels", "pixel_stats",
           "simple_features", "logistic_accuracy", "summary", "format_summary", "THRESHOLDS", "REACHES"]
