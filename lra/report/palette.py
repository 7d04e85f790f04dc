"""One colour and one marker per variant, the same in every figure of every report.

The twelve colours come from Paul Tol's colour-blind-safe qualitative schemes (*bright*, *vibrant*,
*muted*, https://personal.sron.nl/~pault/) plus black and a mid grey, chosen so that every pair is far
apart both in normal vision and under each simulated dichromacy. Measured by :func:`delta_e` (CIEDE2000)
and :func:`simulate` (Machado, Oliveira & Fernandes 2009, severity 1):

- normal vision: every pair at least 18 apart (the closest: olive / sand);
- protanopia, deuteranopia, tritanopia: every pair at least 8 apart (ΔE ≈ 2 is a just-noticeable
  difference), and the pairs a reader compares most (``full``/``flash``, ``local``/``linformer``,
  ``reformer``/``bigbird``, ``random_feature``/``nystrom``, ``hedgehog``/``taylor``) at least 10;
- every colour at least 20 from the white background.

Twelve colours cannot all stay far apart under a full dichromacy, so each variant also has its own
marker: no two variants share both. ``X+distill`` is drawn in X's colour and marker, dashed; a variant
the table does not know (a plugin) is drawn dashed, its colour and marker taken in name order among the
unknown ones (stable for a given set of names, and never mistaken for a registered variant's solid line).
"""
from __future__ import annotations

from typing import Iterable, NamedTuple

import numpy as np

#: the 12 colours, in the order they are handed out
COLORS = ("#000000", "#0077BB", "#33BBEE", "#999933", "#CC3311", "#EECC66",
          "#EE3377", "#44AA99", "#228833", "#332288", "#882255", "#777777")
#: matplotlib markers, one per colour slot (filled shapes that stay readable at 5 pt)
MARKERS = ("o", "s", "^", "v", "D", "P", "X", "<", ">", "p", "h", "*")
#: the registered variants' fixed slots (index into COLORS and MARKERS)
FIXED = {"full": 0, "flash": 1, "local": 2, "bigbird": 3, "reformer": 4, "linformer": 5, "linear": 6,
         "performer": 7, "random_feature": 8, "nystrom": 9, "hedgehog": 10, "taylor": 11}


class Style(NamedTuple):
    color: str
    marker: str
    dashed: bool = False   # ``X+distill`` and variants outside :data:`FIXED` are drawn dashed


def styles(variants: Iterable[str]) -> dict[str, Style]:
    """``{variant: Style}``: the fixed slot for a registered variant; ``X+distill`` takes X's colour and
    marker, dashed; other names are dashed, with colour k and marker k + 6 (mod 12) for the k-th of
    them in name order."""
    names = sorted({str(v) for v in variants})
    out: dict[str, Style] = {}
    for v in names:
        base = v.removesuffix("+distill")
        if base in FIXED:
            i = FIXED[base]
            out[v] = Style(COLORS[i], MARKERS[i], v != base)
    for k, v in enumerate(v for v in names if v not in out):
        out[v] = Style(COLORS[k % len(COLORS)], MARKERS[(k + 6) % len(MARKERS)], dashed=True)
    return out


# ---------------------------------------------------------------------------------------------- colour science
# (a few lines of standard formulas, so the claims above are tested rather than asserted)

def hex_rgb(color: str) -> np.ndarray:
    """"#RRGGBB" -> sRGB in [0, 1], shape (3,)."""
    h = color.lstrip("#")
    return np.array([int(h[i:i + 2], 16) / 255 for i in (0, 2, 4)])


def _linear(rgb: np.ndarray) -> np.ndarray:
    return np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)


def _gamma(lin: np.ndarray) -> np.ndarray:
    lin = np.clip(lin, 0.0, 1.0)
    return np.where(lin <= 0.0031308, 12.92 * lin, 1.055 * lin ** (1 / 2.4) - 0.055)


def lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB (D65) -> CIELAB, shape (3,)."""
    m = np.array([[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750],
                  [0.0193339, 0.1191920, 0.9503041]])
    xyz = m @ _linear(np.asarray(rgb, float)) / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


#: Machado et al. 2009, severity 1.0, applied to linear RGB
DICHROMACY = {
    "protanopia": ((0.152286, 1.052583, -0.204868), (0.114503, 0.786281, 0.099216), (-0.003882, -0.048116, 1.051998)),
    "deuteranopia": ((0.367322, 0.860646, -0.227968), (0.280085, 0.672501, 0.047413), (-0.011820, 0.042940, 0.968881)),
    "tritanopia": ((1.255528, -0.076749, -0.178779), (-0.078411, 0.930809, 0.147602), (0.004733, 0.691367, 0.303900)),
}


def simulate(rgb: np.ndarray, kind: str) -> np.ndarray:
    """How ``rgb`` looks under the dichromacy ``kind`` (a key of :data:`DICHROMACY`), as sRGB."""
    return _gamma(np.array(DICHROMACY[kind]) @ _linear(np.asarray(rgb, float)))


def delta_e(a: str | np.ndarray, b: str | np.ndarray) -> float:
    """CIEDE2000 colour difference of two colours ("#RRGGBB" or sRGB arrays). O(1)."""
    return delta_e_lab(*(lab(hex_rgb(x) if isinstance(x, str) else x) for x in (a, b)))


def delta_e_lab(first: np.ndarray, second: np.ndarray) -> float:
    """CIEDE2000 (Sharma, Wu & Dalal 2005) between two CIELAB colours."""
    (l1, a1, b1), (l2, a2, b2) = first, second
    c1, c2 = np.hypot(a1, b1), np.hypot(a2, b2)
    g = 0.5 * (1 - np.sqrt(((c1 + c2) / 2) ** 7 / (((c1 + c2) / 2) ** 7 + 25 ** 7)))
    a1p, a2p = (1 + g) * a1, (1 + g) * a2
    c1p, c2p = np.hypot(a1p, b1), np.hypot(a2p, b2)
    h1p, h2p = np.degrees(np.arctan2(b1, a1p)) % 360, np.degrees(np.arctan2(b2, a2p)) % 360
    dh = 0.0 if c1p * c2p == 0 else (h2p - h1p + 180) % 360 - 180
    d_big_h = 2 * np.sqrt(c1p * c2p) * np.sin(np.radians(dh / 2))
    lb, cbp = (l1 + l2) / 2, (c1p + c2p) / 2
    if c1p * c2p == 0:
        hb = h1p + h2p
    elif abs(h1p - h2p) <= 180:
        hb = (h1p + h2p) / 2
    else:
        hb = (h1p + h2p + (360 if h1p + h2p < 360 else -360)) / 2
    t = (1 - 0.17 * np.cos(np.radians(hb - 30)) + 0.24 * np.cos(np.radians(2 * hb))
         + 0.32 * np.cos(np.radians(3 * hb + 6)) - 0.20 * np.cos(np.radians(4 * hb - 63)))
    rc = 2 * np.sqrt(cbp ** 7 / (cbp ** 7 + 25 ** 7))
    sl = 1 + 0.015 * (lb - 50) ** 2 / np.sqrt(20 + (lb - 50) ** 2)
    sc, sh = 1 + 0.045 * cbp, 1 + 0.015 * cbp * t
    rt = -np.sin(np.radians(60 * np.exp(-((hb - 275) / 25) ** 2))) * rc
    dl, dc = l2 - l1, c2p - c1p
    return float(np.sqrt((dl / sl) ** 2 + (dc / sc) ** 2 + (d_big_h / sh) ** 2 + rt * (dc / sc) * (d_big_h / sh)))
