"""Inference: the tile grid and its weights, stochastic passes and test-time transforms, the streaming blend, the
uncertainty formulas, and the engine that streams a raster through them."""
