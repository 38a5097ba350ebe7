"""Triangle meshes from point clouds: the mesh type and its files (``mesh``, ``export``),
coarse-to-fine marching cubes over an SDF callable (``marching``), and the reconstructions with
the choice between them (``reconstruct``). Takes SDF callables, never models."""

from pointdiff.meshing.marching import evaluate_grid, marching_cubes
from pointdiff.meshing.mesh import MeshError, NoSurfaceError, TriMesh, check_mesh_output
from pointdiff.meshing.reconstruct import (
    METHODS,
    MeshResult,
    check_meshable,
    mesh_from_cloud,
    poisson_mesh,
    sample_surface,
    snap_to_cloud,
    surface_fit,
    vertex_colors_from_cloud,
)

__all__ = [
    "METHODS",
    "MeshError",
    "MeshResult",
    "NoSurfaceError",
    "TriMesh",
    "check_mesh_output",
    "check_meshable",
    "evaluate_grid",
    "marching_cubes",
    "mesh_from_cloud",
    "poisson_mesh",
    "sample_surface",
    "snap_to_cloud",
    "surface_fit",
    "vertex_colors_from_cloud",
]
