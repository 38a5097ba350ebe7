"""pointdiff: text -> coloured point cloud -> mesh, trainable and fast (Point-E architecture)."""

from pointdiff.pointcloud import PointCloud

__all__ = ["PointCloud"]
__version__ = "0.1.0"
