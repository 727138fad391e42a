"""The desktop side: the "MC uncertainty on the active layer…" background task and its dialog, and the
"Install PyTorch…" dialog. Used only when QGIS runs with a window (never by qgis_process)."""
