"""Colour names for coloured point clouds, decided in CIELAB / LCh.

sRGB [0, 1] → linear light (IEC 61966-2-1) → XYZ (D65) → CIELAB (CIE 15:2004) → LCh
(lightness L ∈ [0, 100], chroma C, hue h in degrees). Each point gets one of ``BASIC_COLOURS``
by rules on L, C and h (``colour_index``); ``describe_colours`` turns the shares into the one or
two words a person would use for the whole object ("a white and brown table").

The rules are tuned on the CSS named colours (``tests/test_colours.py`` holds the chart) and on
Sweet Home 3D furniture: dark and mid wood is brown, light wood and cream beige, chrome and steel
grey, white plastic white, navy blue, maroon red.
"""

from __future__ import annotations

import numpy as np

BASIC_COLOURS: tuple[str, ...] = (
    "black",
    "white",
    "grey",
    "red",
    "orange",
    "yellow",
    "green",
    "blue",
    "purple",
    "pink",
    "brown",
    "beige",
)
_IDX = {name: i for i, name in enumerate(BASIC_COLOURS)}

# Colour words people type → the basic name they mean (lower case; multi-word keys allowed).
SYNONYMS: dict[str, str] = {
    **{name: name for name in BASIC_COLOURS},
    "gray": "grey",
    "silver": "grey",
    "charcoal": "grey",
    "chrome": "grey",
    "ivory": "white",
    "off-white": "white",
    "off white": "white",
    "snow": "white",
    "ebony": "black",
    "jet": "black",
    "crimson": "red",
    "scarlet": "red",
    "maroon": "red",
    "burgundy": "red",
    "wine": "red",
    "cherry": "red",
    "amber": "orange",
    "tangerine": "orange",
    "coral": "orange",
    "gold": "yellow",
    "golden": "yellow",
    "lemon": "yellow",
    "mustard": "yellow",
    "olive": "green",
    "lime": "green",
    "emerald": "green",
    "mint": "green",
    "teal": "blue",
    "turquoise": "blue",
    "cyan": "blue",
    "aqua": "blue",
    "navy": "blue",
    "azure": "blue",
    "cobalt": "blue",
    "violet": "purple",
    "lilac": "purple",
    "lavender": "purple",
    "magenta": "purple",
    "plum": "purple",
    "mauve": "purple",
    "indigo": "purple",
    "fuchsia": "pink",
    "rose": "pink",
    "salmon": "pink",
    "chocolate": "brown",
    "walnut": "brown",
    "mahogany": "brown",
    "chestnut": "brown",
    "bronze": "brown",
    "copper": "brown",
    "dark brown": "brown",
    "light brown": "brown",
    "tan": "beige",
    "cream": "beige",
    "sand": "beige",
    "khaki": "beige",
    "ecru": "beige",
    "taupe": "beige",
}

# ----------------------------------------------------------------------------------------------
# Thresholds (CIELAB units: L in [0, 100], chroma C, hue h in degrees)

GREY_CHROMA = 13.0  # C below this is achromatic (black / grey / white by L)
WARM_HUES = (20.0, 100.0)  # wood, leather, sand: a warm tint reads as colour sooner, so …
WARM_CHROMA = 8.0  # … their grey limit is lower (greige upholstery is beige) …
WARM_L = 40.0  # … and falls with L below this (to half at L = 20): dark leather stays brown
WHITE_CHROMA = 14.0  # near-white tints (linen, antique white) up to this C still read as white
BLACK_L = 22.0  # achromatic points darker than this are black
DARK_L = 14.0  # any point darker than this is black unless clearly chromatic (navy, maroon)
DARK_CHROMA = 30.0  # … where "clearly chromatic" means C at least this
WHITE_L = 80.0  # achromatic points lighter than this are white (materials of Kd 0.8 included)
BROWN_L = 60.0  # warm hues darker than this are brown (unless very chromatic: red/orange)
BEIGE_CHROMA = 33.0  # light warm hues below this chroma are beige
RED_CHROMA = 45.0  # red hues below this chroma (and dark) are brown: mahogany, walnut …
RED_SATURATION = 1.4  # … unless C >= this × L on the red side (h < 35): burgundy, oxblood
ORANGE_CHROMA = 60.0  # orange hues need this chroma (and L >= ORANGE_L) to be orange, not brown
ORANGE_L = 60.0  # (the orange lightness floor)
VIVID_CHROMA = 80.0  # … or at least this chroma at any L (orange-red, burnt orange)
YELLOW_L = 70.0  # yellow hues darker than this are brown (dark gold) or green (olive) …
YELLOW_CHROMA, YELLOW_DARK_L = 50.0, 55.0  # … unless this vivid and light (mustard, forklift)
YELLOW_BEIGE_CHROMA = 45.0  # light yellow hues below this chroma are beige (cream, straw)
PINK_L = 60.0  # light red hues at most PINK_CHROMA are pink (light coral, rose)
PINK_CHROMA = 60.0
PURPLE_L = 48.0  # hue 298–310 is purple above this L, blue below (CIELAB's blue bends to purple)

# describe_colours
DOMINANT_SHARE = 0.30  # the first word needs this share of the informative points
SECOND_SHARE = 0.20  # a second word is added at this share or more
COVER_SHARE = 0.50  # the words must cover this share together, else the object is "multicoloured"
RAINBOW_COLOURS, RAINBOW_SHARE = 4, 0.08  # this many hues at this share each: multicoloured
INFORMED_SHARE = 0.50  # at least this share of points must carry colour information
DEFAULT_GREY = 128 / 255  # the converter's colour for faces without colour information

# sRGB (linear) → XYZ, D65 (IEC 61966-2-1); the white point is its row sums, so white is a=b=0.
_RGB_TO_XYZ = np.array(
    [
        [0.4124564, 0.3575761, 0.1804375],
        [0.2126729, 0.7151522, 0.0721750],
        [0.0193339, 0.1191920, 0.9503041],
    ]
)
_WHITE = _RGB_TO_XYZ.sum(axis=1)


# ----------------------------------------------------------------------------------------------
# Colour space


def srgb_to_linear(c: np.ndarray) -> np.ndarray:
    """sRGB-encoded values → linear RGB (IEC 61966-2-1); clipped to [0, 1], float dtype kept."""
    c = np.clip(np.asarray(c, dtype=np.result_type(c, np.float32)), 0.0, 1.0)
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4).astype(c.dtype)


def linear_to_srgb(c: np.ndarray) -> np.ndarray:
    """Linear RGB → sRGB-encoded (inverse of ``srgb_to_linear``); clipped to [0, 1]."""
    c = np.clip(np.asarray(c, dtype=np.result_type(c, np.float32)), 0.0, 1.0)
    return np.where(c <= 0.0031308, c * 12.92, 1.055 * c ** (1 / 2.4) - 0.055).astype(c.dtype)


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB → CIELAB (D65).

    :param rgb: [..., 3] float sRGB in [0, 1] (values outside are clipped).
    :return: [..., 3] float64 (L, a, b).
    """
    lin = srgb_to_linear(np.asarray(rgb, dtype=np.float64))
    t = (lin @ _RGB_TO_XYZ.T) / _WHITE
    eps = (6 / 29) ** 3  # CIE: cube root above, linear segment below
    f = np.where(t > eps, np.cbrt(t), t / (3 * (6 / 29) ** 2) + 4 / 29)
    L = 116 * f[..., 1] - 16
    a = 500 * (f[..., 0] - f[..., 1])
    b = 200 * (f[..., 1] - f[..., 2])
    return np.stack([L, a, b], axis=-1)


def lab_to_lch(lab: np.ndarray) -> np.ndarray:
    """CIELAB [..., 3] → LCh [..., 3] (hue in degrees, [0, 360))."""
    lab = np.asarray(lab, dtype=np.float64)
    C = np.hypot(lab[..., 1], lab[..., 2])
    h = np.degrees(np.arctan2(lab[..., 2], lab[..., 1])) % 360.0
    return np.stack([lab[..., 0], C, h], axis=-1)


# ----------------------------------------------------------------------------------------------
# Naming


def colour_index(rgb: np.ndarray) -> np.ndarray:
    """Basic colour of each point.

    :param rgb: [N, 3] float sRGB in [0, 1].
    :return: [N] int64 indices into ``BASIC_COLOURS``.
    """
    L, C, h = np.moveaxis(lab_to_lch(srgb_to_lab(np.asarray(rgb).reshape(-1, 3))), -1, 0)
    warm = (h >= WARM_HUES[0]) & (h < WARM_HUES[1])
    grey_limit = np.where(warm, WARM_CHROMA * np.clip(L / WARM_L, 0.5, 1.0), GREY_CHROMA)
    achromatic = (C < grey_limit) | ((L >= WHITE_L) & (C < WHITE_CHROMA))
    black = (achromatic & (L < BLACK_L)) | ((L < DARK_L) & (C < DARK_CHROMA))
    light = L >= PINK_L
    burgundy = (h < 35) & (C >= RED_SATURATION * L)  # dark but saturated for its lightness
    # Hue bands, in CIELAB degrees: sRGB red sits at 40, orange at 73, yellow at 103, green at
    # 136, cyan at 196 (turquoise 185), blue at 306 (with navy and medium purple), magenta at 328.
    rules = [
        (black, "black"),
        (achromatic & (L >= WHITE_L), "white"),
        (achromatic, "grey"),
        # 345–20: pinks (hot pink 351, pink 8); dark and dull is brown, dark and vivid red
        (((h >= 345) | (h < 20)) & (L < BROWN_L) & (C < RED_CHROMA / 2), "brown"),
        ((h >= 345) | (h < 20), np.where(L >= 50, _IDX["pink"], _IDX["red"])),
        # 20–45: red; light and moderate chroma is pink, dark and dull is brown (mahogany)
        ((h < 45) & light & (C <= PINK_CHROMA), "pink"),
        ((h < 45) & (C < RED_CHROMA) & (L < BROWN_L) & ~burgundy, "brown"),
        (h < 45, "red"),
        # 45–85: wood. Light and dull is beige, chromatic and light enough is orange
        ((h < 85) & (L >= BROWN_L) & (C < BEIGE_CHROMA), "beige"),
        ((h < 85) & (((L >= ORANGE_L) & (C >= ORANGE_CHROMA)) | (C >= VIVID_CHROMA)), "orange"),
        (h < 85, "brown"),
        # 85–110: yellow when light and vivid; cream, straw and khaki are beige; dark and dull
        # is brown (dark gold), dark and vivid olive green
        ((h < 110) & (L >= BROWN_L) & (C < YELLOW_BEIGE_CHROMA), "beige"),
        ((h < 110) & ((L >= YELLOW_L) | ((L >= YELLOW_DARK_L) & (C >= YELLOW_CHROMA))), "yellow"),
        ((h < 110) & ((h < 95) | (C < YELLOW_BEIGE_CHROMA)), "brown"),
        (h < 180, "green"),
        (h < 298, "blue"),
        ((h < 310) & (L < PURPLE_L), "blue"),
        (h < 340, "purple"),
        # 340–345: magenta-pink
        (L >= 40, "pink"),
    ]
    out = np.full(L.shape, _IDX["purple"], dtype=np.int64)
    done = np.zeros(L.shape, dtype=bool)
    for cond, name in rules:
        take = cond & ~done
        out[take] = _IDX[name] if isinstance(name, str) else np.asarray(name)[take]
        done |= take
    return out


def colour_shares(rgb: np.ndarray) -> dict[str, float]:
    """Share of points per basic colour.

    :param rgb: [N, 3] float sRGB in [0, 1], N >= 1.
    :return: ``{name: share}``, shares > 0 only, largest first (ties in ``BASIC_COLOURS`` order).
    """
    idx = colour_index(rgb)
    counts = np.bincount(idx, minlength=len(BASIC_COLOURS))
    order = sorted(np.flatnonzero(counts), key=lambda i: (-counts[i], i))
    return {BASIC_COLOURS[i]: float(counts[i] / len(idx)) for i in order}


def default_grey_mask(rgb: np.ndarray) -> np.ndarray:
    """[N] bool: points with exactly the converter's no-colour grey (sRGB byte 128 each)."""
    return np.all(np.abs(np.asarray(rgb) - DEFAULT_GREY) < 0.5 / 255, axis=-1)


def describe_colours(
    rgb: np.ndarray,
    dominant_share: float = DOMINANT_SHARE,
    second_share: float = SECOND_SHARE,
    ignore_default_grey: bool = True,
) -> list[str]:
    """The one or two colour words a person would use for the object, largest share first.

    ``["red"]``; ``["white", "brown"]`` when the second colour covers at least ``second_share``;
    ``[]`` when nothing is known (fewer than ``INFORMED_SHARE`` of the points carry colour) or the
    object is multicoloured (the words would cover less than ``COVER_SHARE``, or
    ``RAINBOW_COLOURS`` hues have ``RAINBOW_SHARE`` each).

    Grey 128 is what the converter writes for faces without colour information. With
    ``ignore_default_grey`` those points count as unknown, so an untextured cloud gives ``[]``;
    a real material of exactly sRGB (128, 128, 128) loses its "grey" with them (rare in practice:
    textures and lit materials vary by at least one byte), which costs a colour word, never a
    wrong one.

    :param rgb: [N, 3] float sRGB in [0, 1].
    """
    rgb = np.asarray(rgb, dtype=np.float64).reshape(-1, 3)
    if ignore_default_grey:
        known = ~default_grey_mask(rgb)
        if len(rgb) == 0 or known.mean() < INFORMED_SHARE:
            return []
        rgb = rgb[known]
    if len(rgb) == 0:
        return []
    shares = list(colour_shares(rgb).items())
    hues = [n for n, s in shares if s >= RAINBOW_SHARE and n not in ("black", "white", "grey")]
    if len(hues) >= RAINBOW_COLOURS:  # a rainbow pool, a toy: no one or two words fit
        return []
    words = []
    if shares[0][1] >= dominant_share:
        words.append(shares[0][0])
        if len(shares) > 1 and shares[1][1] >= second_share:
            words.append(shares[1][0])
    if sum(s for _, s in shares[: len(words)]) < COVER_SHARE:
        return []
    return words
