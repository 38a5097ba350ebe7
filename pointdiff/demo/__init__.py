"""A local web demo: prompt -> coloured point cloud and mesh in an interactive 3D view.

``pointdiff demo`` (``command``) loads one pipeline and serves a page (``static/``: HTML, CSS,
JavaScript and a vendored three.js, so it works with no network) through the standard
library's HTTP server (``server``). Requests wait in a bounded queue and run one at a time
(``jobs``); ``generate`` checks a request and turns it into result files held in memory.
"""
