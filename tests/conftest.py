"""Root test configuration, shared by ``tests/core`` and ``tests/qgis``; deliberately light.

Layout:

- ``tests/core/``: the pure core (numpy, torch, GDAL); no QGIS fixtures are needed there.
- ``tests/qgis/``: the QGIS layer, with the fixtures of pytest-qgis (``qgis_app``, ``qgis_processing``,
  ``qgis_iface``) and the fixtures in ``tests/qgis/conftest.py`` (tiny models, synthetic GeoTIFFs, the
  registered provider).

pytest-qgis is active for every test: it starts one ``QgsApplication`` before any conftest is imported and
points ``QGIS_CUSTOM_CONFIG_PATH`` at ``<rootdir>/.qgis-settings`` so the user's QGIS profile is never touched.
On a machine without a display run the tests with ``QT_QPA_PLATFORM=offscreen`` (the Makefile exports it).

Test files have no ``__init__.py`` (pytest's default "prepend" import mode), so test module names must be unique
across ``tests/core`` and ``tests/qgis``; the QGIS ones are named ``test_qgis_*.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

# Import the plugin package from this checkout, whatever the working directory.
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
