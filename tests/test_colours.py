import numpy as np
import pytest

from pointdiff.colours import (
    BASIC_COLOURS,
    SYNONYMS,
    colour_index,
    colour_shares,
    describe_colours,
    lab_to_lch,
    srgb_to_lab,
)

# The tuning chart: CSS named colours and furniture tones seen in Sweet Home 3D clouds (e.g.
# (204, 204, 204): a white chair of Kd 0.8; (81, 26, 26): a burgundy vanity), with their word.
CHART = {
    "black": [(0, 0, 0), (30, 30, 30), (25, 25, 25), (40, 26, 16)],
    "white": [(255, 255, 255), (245, 245, 220), (211, 211, 211), (204, 204, 204), (245, 245, 245),
              (250, 240, 230), (255, 250, 240), (250, 235, 215), (240, 248, 255), (255, 255, 240),
              (230, 230, 230)],
    "grey": [(128, 128, 128), (47, 79, 79), (192, 192, 192), (169, 169, 169), (105, 105, 105),
             (112, 128, 144), (64, 64, 64), (180, 180, 185), (119, 136, 153)],
    "red": [(255, 0, 0), (220, 20, 60), (128, 0, 0), (178, 34, 34), (139, 0, 0), (255, 99, 71),
            (200, 30, 30), (165, 42, 42), (100, 0, 40), (81, 26, 26)],
    "orange": [(255, 69, 0), (255, 165, 0), (255, 140, 0), (230, 120, 30), (255, 127, 80)],
    "yellow": [(255, 255, 0), (255, 215, 0), (240, 230, 140), (255, 255, 102), (212, 175, 55),
               (201, 168, 3)],
    "green": [(0, 128, 0), (0, 255, 0), (34, 139, 34), (144, 238, 144), (107, 142, 35),
              (128, 128, 0), (0, 100, 0), (46, 139, 87), (60, 179, 113), (154, 205, 50)],
    "blue": [(0, 0, 255), (0, 0, 128), (0, 0, 205), (65, 105, 225), (100, 149, 237),
             (30, 144, 255), (135, 206, 235), (70, 130, 180), (0, 128, 128), (0, 255, 255),
             (64, 224, 208), (25, 25, 112), (173, 216, 230), (106, 90, 205)],
    "purple": [(128, 0, 128), (147, 112, 219), (138, 43, 226), (148, 0, 211), (75, 0, 130),
               (102, 51, 153), (238, 130, 238), (221, 160, 221), (218, 112, 214), (255, 0, 255)],
    "pink": [(255, 192, 203), (255, 182, 193), (255, 105, 180), (255, 20, 147), (240, 128, 128),
             (250, 128, 114), (219, 112, 147)],
    "brown": [(139, 69, 19), (160, 82, 45), (205, 133, 63), (210, 105, 30), (101, 67, 33),
              (77, 51, 32), (160, 110, 60), (120, 80, 50), (103, 44, 30), (128, 70, 27),
              (92, 64, 51), (150, 75, 0), (110, 60, 60), (54, 43, 32), (202, 153, 104),
              (184, 134, 11), (120, 100, 40)],
    "beige": [(222, 184, 135), (210, 180, 140), (245, 222, 179), (255, 253, 208),
              (238, 232, 170), (200, 160, 110), (255, 228, 196), (230, 200, 150),
              (189, 183, 107), (201, 184, 115), (188, 171, 155), (169, 159, 86),
              (177, 169, 131)],
}  # fmt: skip
_CASES = [(name, c) for name, cols in CHART.items() for c in cols]


def _cloud(*parts: tuple[tuple[int, int, int], int]) -> np.ndarray:
    """[N, 3] float sRGB from (byte colour, count) parts."""
    return np.concatenate([np.tile(np.array(c, float) / 255, (n, 1)) for c, n in parts])


def test_names_cover_the_chart():
    assert set(CHART) == set(BASIC_COLOURS)
    assert len(BASIC_COLOURS) == len(set(BASIC_COLOURS)) == 12


@pytest.mark.parametrize("name,rgb", _CASES, ids=[f"{n}-{c}" for n, c in _CASES])
def test_chart_colours_get_their_names(name, rgb):
    idx = colour_index(np.array([rgb], float) / 255)
    assert idx.shape == (1,) and idx.dtype.kind == "i"
    assert BASIC_COLOURS[idx[0]] == name


def test_lab_reference_values():
    lab = srgb_to_lab(np.array([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]))
    np.testing.assert_allclose(lab[0], [100.0, 0.0, 0.0], atol=1e-3)
    np.testing.assert_allclose(lab[1], [0.0, 0.0, 0.0], atol=1e-9)
    # Published values (e.g. Lindbloom's calculator, sRGB, D65)
    ref = {
        (1.0, 0.0, 0.0): (53.2408, 80.0925, 67.2032),
        (0.0, 1.0, 0.0): (87.7347, -86.1827, 83.1793),
        (0.0, 0.0, 1.0): (32.2970, 79.1875, -107.8602),
        (0.5, 0.5, 0.5): (53.3889, 0.0, 0.0),
    }
    for rgb, want in ref.items():
        np.testing.assert_allclose(srgb_to_lab(np.array(rgb)), want, atol=0.02)


def test_lch_hue_and_chroma():
    lch = lab_to_lch(np.array([[50.0, 0.0, 10.0], [50.0, -3.0, -4.0]]))
    np.testing.assert_allclose(lch[0], [50.0, 10.0, 90.0])
    np.testing.assert_allclose(lch[1, :2], [50.0, 5.0])
    assert 180 < lch[1, 2] < 270


def test_shares_sum_to_one_and_are_sorted():
    rgb = np.random.default_rng(0).random((5000, 3))
    shares = colour_shares(rgb)
    assert abs(sum(shares.values()) - 1.0) < 1e-9
    assert list(shares.values()) == sorted(shares.values(), reverse=True)
    assert all(v > 0 for v in shares.values()) and set(shares) <= set(BASIC_COLOURS)
    assert colour_shares(_cloud(((255, 0, 0), 3), ((0, 0, 255), 1))) == {"red": 0.75, "blue": 0.25}


def test_permutation_invariance_and_determinism():
    g = np.random.default_rng(1)
    rgb = g.random((2000, 3))
    perm = g.permutation(len(rgb))
    np.testing.assert_array_equal(colour_index(rgb)[perm], colour_index(rgb[perm]))
    assert colour_shares(rgb) == colour_shares(rgb[perm])
    assert describe_colours(rgb) == describe_colours(rgb[perm]) == describe_colours(rgb.copy())


def test_describe_one_and_two_colours():
    assert describe_colours(_cloud(((200, 30, 30), 100))) == ["red"]
    assert describe_colours(_cloud(((250, 250, 250), 60), ((110, 70, 40), 40))) == [
        "white",
        "brown",
    ]
    # A small second colour is not worth a word.
    assert describe_colours(_cloud(((250, 250, 250), 90), ((110, 70, 40), 10))) == ["white"]
    # Shading of one material stays one word.
    g = np.random.default_rng(2)
    red = np.clip(np.array([0.8, 0.1, 0.1]) * g.uniform(0.7, 1.1, (500, 1)), 0, 1)
    assert describe_colours(red) == ["red"]


def test_describe_multicoloured_and_unknown():
    six = [((255, 0, 0), 1), ((0, 128, 0), 1), ((0, 0, 255), 1), ((255, 255, 0), 1),
           ((128, 0, 128), 1), ((255, 165, 0), 1)]  # fmt: skip
    assert describe_colours(_cloud(*[(c, 100) for c, _ in six])) == []
    # Four hues, one of them dominant (a rainbow paddling pool): still multicoloured.
    pool = _cloud(
        ((0, 90, 204), 53), ((255, 36, 238), 21), ((255, 219, 37), 16), ((81, 255, 51), 10)
    )
    assert describe_colours(pool) == []
    # Untextured faces: grey 128 is "no information", not grey.
    assert describe_colours(_cloud(((128, 128, 128), 100))) == []
    assert describe_colours(_cloud(((128, 128, 128), 70), ((255, 0, 0), 30))) == []
    assert describe_colours(_cloud(((128, 128, 128), 30), ((255, 0, 0), 70))) == ["red"]
    assert describe_colours(_cloud(((128, 128, 128), 100)), ignore_default_grey=False) == ["grey"]
    assert describe_colours(_cloud(((129, 129, 129), 100))) == ["grey"]


def test_synonyms_map_to_basic_names():
    assert set(SYNONYMS.values()) <= set(BASIC_COLOURS)
    assert all(SYNONYMS[name] == name for name in BASIC_COLOURS)
    for word, name in [("gray", "grey"), ("navy", "blue"), ("tan", "beige"), ("cream", "beige"),
                       ("violet", "purple"), ("silver", "grey"), ("crimson", "red")]:  # fmt: skip
        assert SYNONYMS[word] == name
    assert all(k == k.lower().strip() for k in SYNONYMS)
