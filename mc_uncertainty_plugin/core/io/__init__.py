"""Raster input and crash-safe output: reading windows with their validity, tiled GeoTIFF writers with streamed
overviews, and the rules that keep outputs from clobbering inputs (temporaries, identities, publishing)."""
