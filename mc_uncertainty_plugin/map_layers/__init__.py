"""Result layers on the map: how outputs are named, grouped and styled when QGIS loads them (Processing and the
desktop task alike)."""
