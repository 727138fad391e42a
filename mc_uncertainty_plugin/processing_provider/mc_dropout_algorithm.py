"""Processing algorithm ``mc_uncertainty:mc_dropout``: MC Dropout segmentation with an uncertainty map."""

from __future__ import annotations

from typing import Any

from qgis.core import QgsProcessingContext

from ..map_layers.result_layers import MC_DROPOUT
from .parameters import N_SAMPLES, given
from .run_guards import raw_number
from .segmentation_algorithm import SegmentationAlgorithm

__all__ = ["McDropoutAlgorithm"]

_HELP = "\n".join(
    (
        "Semantic segmentation of a raster with a trained model, plus a per-pixel uncertainty map, by Monte Carlo "
        "Dropout (Gal & Ghahramani, 2016).",
        "The model's dropout layers stay active at inference and every tile is predicted T times (\"Number of "
        'stochastic passes") with different random dropout masks. The mean of the T class probabilities p̄ gives the '
        'class raster (argmax); their spread gives the uncertainty ("Uncertainty measure"):',
        "• entropy: H[p̄] = −Σc p̄c ln p̄c, the total uncertainty;",
        "• mutual_information (BALD): H[p̄] − mean over t of H[pt], the disagreement between the samples "
        "(epistemic uncertainty);",
        "• expected_entropy: mean over t of H[pt], the noise each sample sees (aleatoric uncertainty);",
        "• variation_ratio: 1 − the share of the T samples that vote for the most voted class;",
        "• normalized_entropy: H[p̄] / ln C, the entropy on a 0 .. 1 scale whatever C;",
        "• margin: p̄1 − p̄2, the gap between the two most probable classes — here low = unsure.",
        "The entropies lie in [0, ln C] for C classes, the variation ratio in [0, 1 − 1/C], normalized_entropy "
        "and margin in [0, 1]; except for the margin, low = confident, high = uncertain. The model must contain dropout (for SMP models set decoder_dropout in the config); without "
        "it all passes agree (mutual information and variation ratio are 0, entropy is that of one pass) and a warning "
        'is shown. The raster is processed in overlapping tiles ("Tile size", "Tile stride") blended as '
        '"Tile weighting" says; run time grows linearly with T, and with the 4 (flip) or 8 (d4) transforms of '
        '"Test-time augmentation".',
        "Choosing T (cost relative to one standard pass; less when the dropout sits near the head, since "
        "the part of the network before the first dropout runs once per tile): 5 ≈ 5×, a coarse estimate; "
        "10 ≈ 10×, good for most uses (default); 30 ≈ 30×, a high-quality estimate; 50 and more, diminishing "
        "returns. The class map converges sooner (10–20 samples).",
        "Which models work: SMP models with decoder_dropout > 0 in the config ✓ (also Unet & co., which get a "
        "Dropout2d before the head); SMP models without decoder_dropout: degenerate, all samples identical, "
        "mutual information 0 (a warning is shown); a custom UNet with Dropout2d ✓; HRNet-OCR ✓ (internal Dropout2d); "
        "evidential (EDL) models: not recommended (two uncertainty sources with conflicting meanings); mixture of "
        "experts: risky (router noise and dropout interact); detection and multi-head models (e.g. PolygonMapper): "
        "out of scope.",
        'Outputs: the "Class raster", uint8 (255 = nodata), and the "Uncertainty raster", float32, which, left '
        "empty, is written beside the class raster with _mc_uncertainty added to its name (classes.tif: "
        "classes_mc_uncertainty.tif). Both have the input's grid and CRS. Both are loaded in one group named after "
        "the input, T and the measure (a repeated run gets a number): the uncertainty in viridis from 0 to its "
        "maximum (ln C), the classes with the config's class names and colours. Optional: the \"Class probability "
        'raster" (p̄ of every class, one band each) and the "Confident class raster" (the classes with the pixels '
        'whose uncertainty passes "Uncertainty threshold of the confident class raster" set to nodata). "Run as '
        'Batch Process…" runs it on several rasters. The first run of a session loads PyTorch and the model (the '
        "log times each stage); later runs on the same model reuse it.",
    )
)
_COMMAND_LINE = (
    "Command line: qgis_process run mc_uncertainty:mc_dropout -- INPUT=image.tif MODEL=model.yaml "
    "CHECKPOINT=model.ckpt OUTPUT=classes.tif N_SAMPLES=10 UNCERTAINTY_MODE=entropy (parameter keys: "
    "qgis_process help mc_uncertainty:mc_dropout)"
)


class McDropoutAlgorithm(SegmentationAlgorithm):
    """MC Dropout segmentation: T stochastic passes per tile, mean prediction and uncertainty."""

    ALGORITHM_ID = "mc_dropout"
    DISPLAY_NAME = "MC Dropout segmentation with uncertainty"
    SHORT_DESCRIPTION = "Segment a raster with a trained model and map its uncertainty by Monte Carlo Dropout."
    TAGS = ("segmentation", "uncertainty", "dropout", "monte carlo", "deep learning", "pytorch", "entropy")
    HELP = _HELP
    COMMAND_LINE = _COMMAND_LINE
    UNCERTAINTY_SUFFIX = "_mc_uncertainty"
    WITH_N_SAMPLES = True
    TTA_DEFAULT = "none"
    METHOD = MC_DROPOUT

    def extra_processor_kwargs(self, parameters: dict[str, Any], context: QgsProcessingContext) -> dict[str, Any]:
        """N_SAMPLES; left out, the config's inference_processor (or 10) decides."""
        return {"n_samples": raw_number(self, parameters, N_SAMPLES, context) if given(parameters, N_SAMPLES) else None}
