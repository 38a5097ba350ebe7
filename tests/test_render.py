import numpy as np
import pytest

from pointdiff.pointcloud import PointCloud
from pointdiff.render import render_cloud, render_grid, render_views


def test_render_puts_colour_where_points_are_and_nearest_wins():
    # a red point in front of a blue one on the same ray: red must win the pixel
    c = PointCloud(
        np.array([[0.0, -0.2, 0.0], [0.0, 0.2, 0.0]]), np.array([[1, 0, 0], [0, 0, 1.0]])
    )
    img = render_cloud(c, azimuth=0, elevation=0, size=65, point_radius=0, shade=False)
    assert img[32, 32].tolist() == [255, 0, 0]
    assert (img == 255).all(-1).mean() > 0.99  # the rest is background
    v = render_views(c, views=3, size=32)
    assert v.size == (96, 32)


def test_grid_shapes_and_errors():
    c = PointCloud(np.zeros((4, 3)), np.ones((4, 3)))
    g = render_grid([c] * 5, ["a"] * 5, cols=2, size=40)
    assert g.size == (80, 3 * (40 + 18))
    with pytest.raises(ValueError):
        render_grid([])
