"""Offline converters: mesh collections → pointdiff training shards (see data_tools/README.md).

``python -m data_tools <shapenet|objaverse|sweethome3d|folder|merge|preview> --help``. Sources
list ``Job``s (``jobs.py``), ``convert.py`` turns one job into a record, ``runner.py`` runs jobs
in parallel with resumable per-object work files and packs them into shards.
"""
