"""Offline converters: mesh collections → pointdiff data shards (see data_tools/README.md).

``python -m data_tools <shapenet|objaverse|sweethome3d|folder|clouds|merge|preview|captions>
--help``. Sources list ``Job``s (``jobs.py``; in job arrays once, ``listing.py``), ``convert.py``
turns one job into a record (meshes read by ``mesh_reader.py``, sampled by
``surface_sampling.py``; point clouds resampled by ``clouds.py``), ``runner.py`` runs jobs in
worker processes (``workers.py``) with resumable per-object work files (``work_files.py``) and
packs them into shards.
"""
