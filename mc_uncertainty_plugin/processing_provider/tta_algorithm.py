"""Processing algorithm ``mc_uncertainty:tta``: test-time-augmentation segmentation with an uncertainty map."""

from __future__ import annotations

from ..map_layers.result_layers import TTA
from .segmentation_algorithm import SegmentationAlgorithm

__all__ = ["TtaAlgorithm"]

_HELP = "\n".join(
    (
        "Semantic segmentation of a raster with a trained model, plus a per-pixel uncertainty map from test-time "
        "augmentation (TTA): every tile is predicted once per geometric transform, each prediction is mapped back "
        "exactly (inverse transform) and the K class probabilities are averaged. The mean p̄ gives the class raster "
        "(argmax); the spread across transforms gives the uncertainty — high where the model's output changes when "
        "the input is flipped or rotated (lack of geometric invariance).",
        "• entropy: H[p̄], total uncertainty; • mutual_information: H[p̄] − mean over k of H[pk], the disagreement "
        "between transforms; expected_entropy: mean over k of H[pk]; variation_ratio: 1 − the modal vote share; "
        "normalized_entropy: H[p̄] / ln C; margin: p̄1 − p̄2 of the two most probable classes (low = unsure). "
        "The entropies lie in [0, ln C], the variation ratio in [0, 1 − 1/C], normalized_entropy and margin in "
        "[0, 1]. The model runs deterministically "
        '(dropout off); for dropout sampling use MC Dropout segmentation, whose "Test-time augmentation" combines '
        "both.",
        'Outputs: the "Class raster", uint8 (255 = nodata), and the "Uncertainty raster", float32, which, left '
        "empty, is written beside the class raster with _uncertainty added to its name (classes.tif: "
        "classes_uncertainty.tif). Both are loaded in one group named after the input, the transforms and the measure: "
        'the uncertainty in viridis from 0 to ln C (TTA maps are often dark on that scale: "Stretch the uncertainty '
        "colours to the data\" spreads them over their 2–98 % range), the classes with the config's class names and "
        "colours. Optional: the class probabilities (one band per class) and the confident class raster (unsure "
        "pixels as nodata).",
    )
)
_COMMAND_LINE = (
    "Command line: qgis_process run mc_uncertainty:tta -- INPUT=image.tif MODEL=model.yaml TTA_MODE=d4 "
    "OUTPUT=classes.tif (parameter keys: qgis_process help mc_uncertainty:tta)"
)


class TtaAlgorithm(SegmentationAlgorithm):
    """TTA segmentation: K transforms per tile (deterministic model), mean prediction and uncertainty."""

    ALGORITHM_ID = "tta"
    DISPLAY_NAME = "TTA segmentation with uncertainty"
    SHORT_DESCRIPTION = "Segment a raster with a trained model and map its uncertainty by test-time augmentation."
    TAGS = ("segmentation", "uncertainty", "tta", "augmentation", "d4", "deep learning", "pytorch")
    HELP = _HELP
    COMMAND_LINE = _COMMAND_LINE
    UNCERTAINTY_SUFFIX = "_uncertainty"
    WITH_N_SAMPLES = False
    TTA_DEFAULT = "d4"
    METHOD = TTA
