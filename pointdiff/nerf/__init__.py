"""Rendering implicit fields: NeRF volume rendering along camera rays (``volume``), pan cameras
(``cameras``) and STF mesh extraction (``stf``). Takes field callables, never models."""

from pointdiff.nerf.cameras import Cameras, camera_rays, pan_cameras
from pointdiff.nerf.stf import extract_mesh
from pointdiff.nerf.volume import render_rays, render_views

__all__ = ["Cameras", "camera_rays", "extract_mesh", "pan_cameras", "render_rays", "render_views"]
