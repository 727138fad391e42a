"""The parameters of the segmentation algorithms (``mc_dropout``, ``tta``), in groups as the dialog shows them.

Each group is a function returning parameter definitions with their help (:func:`~.parameters.with_help`);
:func:`add_common_parameters` adds them in order. Keys, choices and the readers live in :mod:`.parameters`.
"""

from __future__ import annotations

from qgis.core import (
    QgsProcessingAlgorithm,
    QgsProcessingParameterBand,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterFile,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
)

from ..i18n import tr
from .parameters import (
    BANDS,
    BATCH_SIZE,
    BLOCK_SIZE,
    CHECKPOINT,
    CHECKPOINT_FILE_FILTER,
    CONFIDENT_THRESHOLD,
    DEVICE,
    DEVICES,
    EXPORT_UNCERTAINTY_MAP,
    INPUT,
    MODEL,
    MODEL_FILE_FILTER,
    MODEL_INPUT_SHAPE,
    N_SAMPLES,
    NUM_CLASSES,
    OUTPUT,
    OUTPUT_CONFIDENCE,
    OUTPUT_CONFIDENT,
    OUTPUT_PROBABILITIES,
    OUTPUT_UNCERTAINTY,
    PROBABILITIES_DATA_TYPE,
    PROBABILITY_DTYPES,
    SCHEDULER,
    SEED,
    STEP_SHAPE,
    STRETCH_UNCERTAINTY,
    TILE_WEIGHT,
    TILE_WEIGHTS,
    TTA_MODE,
    TTA_MODES,
    UNCERTAINTY_MODE,
    UNCERTAINTY_MODES,
    TtaModeParameter,
    choices_help,
    named_enum,
    tta_help,
    with_help,
)

__all__ = ["add_common_parameters"]

Definitions = list[QgsProcessingParameterDefinition]


def add_common_parameters(
    algorithm: QgsProcessingAlgorithm,
    *,
    with_n_samples: bool,
    tta_default: str,
    uncertainty_suffix: str,
) -> None:
    """Add the segmentation parameters to ``algorithm`` (inside its ``initAlgorithm``).

    Args:
        algorithm: the algorithm being initialised.
        with_n_samples: add ``N_SAMPLES`` (MC dropout only).
        tta_default: default of ``TTA_MODE`` (``none`` for mc_dropout, ``d4`` for tta).
        uncertainty_suffix: file-name suffix of the default uncertainty raster, e.g. ``_mc_uncertainty``.
    """
    for definition in (
        _input_and_model()
        + _tiles()
        + _sampling(with_n_samples, tta_default)
        + _advanced()
        + _outputs(uncertainty_suffix)
    ):
        algorithm.addParameter(definition)


def _input_and_model() -> Definitions:
    """The raster, the model and its weights, the bands fed to it, the class count check."""
    return [
        with_help(
            QgsProcessingParameterRasterLayer(INPUT, tr("Input raster")),
            "Any GDAL-readable raster (GeoTIFF, VRT, ...). Its pixel values are normalised as the model config says "
            "(default: ImageNet mean/std on 0..255 data).",
        ),
        with_help(
            QgsProcessingParameterFile(
                MODEL,
                tr("Model (config YAML or TorchScript)"),
                behavior=QgsProcessingParameterFile.File,
                fileFilter=MODEL_FILE_FILTER,
            ),
            "A model config YAML in pytorch_segmentation_models_trainer style (model: _target_: "
            "segmentation_models_pytorch.FPN, in_channels, classes, decoder_dropout ...) or a TorchScript file "
            "(.pt/.torchscript/.jit). Nothing is downloaded: weights come from the checkpoint.",
        ),
        with_help(
            QgsProcessingParameterFile(
                CHECKPOINT,
                tr("Checkpoint (weights for a YAML model)"),
                behavior=QgsProcessingParameterFile.File,
                fileFilter=CHECKPOINT_FILE_FILTER,
                optional=True,
            ),
            "Weights of a YAML model: a plain state_dict (.pth/.pt), a Lightning .ckpt or a .safetensors file, read "
            "without running code from it. Overrides checkpoint_path of the config; leave empty when the config "
            "names its weights, and for TorchScript models (their weights are inside).",
        ),
        with_help(
            QgsProcessingParameterBand(
                BANDS,
                tr("Input bands (in model order)"),
                parentLayerParameterName=INPUT,
                optional=True,
                allowMultiple=True,
            ),
            "The bands of the input raster fed to the model, in the model's channel order (e.g. 3, 2, 1 for a "
            "model trained on BGR; a band may be repeated to feed a 1-band raster to a 3-band model). Empty: the "
            "first in_channels bands.",
        ),
        with_help(
            QgsProcessingParameterNumber(
                NUM_CLASSES,
                tr("Number of classes (0 = from the model)"),
                type=QgsProcessingParameterNumber.Integer,
                defaultValue=0,
                minValue=0,
                maxValue=255,
            ),
            "Expected number of classes C, as a check: 0 takes the model's output channels; a value different from "
            "the model's is an error. The uncertainty lies in [0, ln C] (variation_ratio: [0, 1 − 1/C]).",
        ),
    ]


def _tiles() -> Definitions:
    """How the raster is cut into tiles and the tiles blended."""
    return [
        with_help(
            QgsProcessingParameterString(
                MODEL_INPUT_SHAPE, tr("Tile size (H,W or one integer)"), defaultValue="512,512"
            ),
            'Size of the tiles the model sees, "H,W" (e.g. "512,512") or one integer for square tiles.',
        ),
        with_help(
            QgsProcessingParameterString(STEP_SHAPE, tr("Tile stride (H,W or one integer)"), defaultValue="256,256"),
            'Distance between tile origins, "H,W" or one integer; at most the tile size. Smaller strides overlap more '
            "tiles (smoother, slower).",
        ),
        with_help(
            named_enum(TILE_WEIGHT, "Tile weighting", TILE_WEIGHTS, "gaussian"),
            "How overlapping tiles are blended: gaussian (default, σ = tile/8), pyramid or mean. "
            f"{choices_help(TILE_WEIGHTS)}.",
            advanced=True,
        ),
    ]


def _sampling(with_n_samples: bool, tta_default: str) -> Definitions:
    """What is measured and from how many passes: the measure, T, the test-time transforms."""
    definitions = [
        with_help(
            named_enum(UNCERTAINTY_MODE, "Uncertainty measure", UNCERTAINTY_MODES, "entropy"),
            "entropy: predictive entropy of the mean prediction (total uncertainty). mutual_information: BALD, "
            "the disagreement between the samples (epistemic only). expected_entropy: the mean entropy of the "
            "samples (aleatoric only; entropy = mutual_information + expected_entropy). These three lie in [0, ln C]. "
            "variation_ratio: 1 − the share of samples voting for the most voted class, in [0, 1 − 1/C]. "
            "normalized_entropy: entropy / ln C, in [0, 1] whatever the number of classes. margin: p̄1 − p̄2, the "
            "gap between the two most probable classes, in [0, 1]; low = unsure (it is drawn with the colours "
            f"reversed). {choices_help(UNCERTAINTY_MODES)}.",
        ),
        with_help(
            QgsProcessingParameterBoolean(
                EXPORT_UNCERTAINTY_MAP, tr("Write the uncertainty raster"), defaultValue=True
            ),
            'Unchecked: only the class raster is written, by the faster mean-prediction path; the "Uncertainty '
            'raster" output is then ignored (a "Confident class raster" still computes the uncertainty it needs).',
        ),
        with_help(
            QgsProcessingParameterNumber(
                CONFIDENT_THRESHOLD,
                tr("Uncertainty threshold of the confident class raster"),
                type=QgsProcessingParameterNumber.Double,
                defaultValue=0.5,
            ),
            'Used by the "Confident class raster": its pixels whose uncertainty is above this value (margin: below '
            "it, low margin = unsure) are nodata (255); the others keep their class. In the units of the measure: "
            "entropy, mutual_information and expected_entropy 0 .. ln C; variation_ratio 0 .. 1 − 1/C; "
            "normalized_entropy and margin 0 .. 1; a value outside the range is an error. The default 0.5 lies in "
            "every range.",
        ),
    ]
    if with_n_samples:
        definitions.append(
            with_help(
                QgsProcessingParameterNumber(
                    N_SAMPLES,
                    tr("Number of stochastic passes (T)"),
                    type=QgsProcessingParameterNumber.Integer,
                    defaultValue=10,
                    minValue=1,
                ),
                "T forward passes with dropout kept active; time grows linearly with T (the part of the network "
                "before the first dropout runs once). 10 suits most uses, 30 gives a finer uncertainty estimate.",
            )
        )
    definitions.append(
        with_help(
            TtaModeParameter(TTA_MODE, tr("Test-time augmentation"), list(TTA_MODES), tta_default),
            tta_help(with_n_samples) + f" {choices_help(TTA_MODES)}.",
        )
    )
    return definitions


def _advanced() -> Definitions:
    """Reproducibility, speed and display settings (Advanced Parameters in the dialog)."""
    return [
        with_help(
            QgsProcessingParameterNumber(
                SEED, tr("Random seed"), type=QgsProcessingParameterNumber.Integer, defaultValue=0, minValue=0
            ),
            "The dropout masks are drawn from this seed (and the window, the pass and the layer): the same seed and "
            "the same inputs give identical outputs; another seed gives another sample of the same uncertainty. No "
            "effect without dropout (TTA alone). Any integer in 0 .. 2^64 − 1 (the dialog's box stops at 2^31 − 1; "
            "qgis_process and scripts take the full range).",
            advanced=True,
        ),
        with_help(
            QgsProcessingParameterNumber(
                BATCH_SIZE,
                tr("Batch size (0 = automatic)"),
                type=QgsProcessingParameterNumber.Integer,
                defaultValue=0,
                minValue=0,
            ),
            "Tiles per forward pass. 0 chooses from the available memory (on a GPU, from its free memory). Changes "
            "speed and memory use; the dropout masks do not depend on it and the outputs are equal up to float32 "
            "rounding.",
            advanced=True,
        ),
        with_help(
            named_enum(DEVICE, "Device", DEVICES, "auto"),
            "auto (CUDA when available, else CPU), cpu or cuda. The device used is reported in the log. "
            f"{choices_help(DEVICES)}.",
            advanced=True,
        ),
        with_help(
            QgsProcessingParameterBoolean(
                STRETCH_UNCERTAINTY,
                tr("Stretch the uncertainty colours to the data (2–98 %)"),
                defaultValue=False,
                optional=True,
            ),
            "How the loaded uncertainty layer is coloured. Unchecked (default): from 0 to the measure's maximum "
            "(ln C), the same scale on every map, so maps can be compared. Checked: over the data's 2–98 % range, "
            "for maps whose values all sit near 0 (typical of TTA); the layer's name then says \"colours stretched "
            '2–98 %" and its legend gives the range. Only the display changes, not the file.',
            advanced=True,
        ),
        with_help(
            QgsProcessingParameterString(
                SCHEDULER, tr("Scheduler (empty = this process)"), defaultValue="", optional=True
            ),
            "Where the run happens. Empty (default): in this process. local:N: N worker processes on this machine "
            "(started with the configured Python environment, one torch thread each: outputs bit for bit equal to "
            "a one-thread run in this process). tcp://host:8786 or tls://…: an existing Dask scheduler (a laptop "
            "cluster, dask-jobqueue on HPC, dask-kubernetes). The raster is cut into blocks; the class raster "
            "may then end in .vrt (a mosaic of the block files, in a folder beside it) or .tif (assembled into "
            "one GeoTIFF). The workers must read the input raster and the model by the same paths (or /vsicurl/, "
            "/vsis3/).",
            advanced=True,
        ),
        with_help(
            QgsProcessingParameterNumber(
                BLOCK_SIZE,
                tr("Block size in pixels (0 = automatic; with a scheduler)"),
                type=QgsProcessingParameterNumber.Integer,
                defaultValue=0,
                minValue=0,
            ),
            "With a scheduler: the side of the blocks the raster is cut into, aligned to the outputs' 256 px tiles "
            "and to the tile stride. 0 chooses from the raster, the tiles and the workers (few blocks for little "
            "overlap, enough to keep every worker busy). Ignored without a scheduler.",
            advanced=True,
        ),
    ]


def _outputs(uncertainty_suffix: str) -> Definitions:
    """The class raster, the uncertainty raster (beside it when left empty), and the optional confidence,
    probability and confident class rasters."""
    return [
        with_help(
            QgsProcessingParameterRasterDestination(OUTPUT, tr("Class raster")),
            "GeoTIFF, 1 band, uint8 class index, on the grid and CRS of the input; 255 = nodata.",
        ),
        with_help(
            QgsProcessingParameterRasterDestination(
                OUTPUT_UNCERTAINTY,
                tr("Uncertainty raster (empty: X{}.tif beside the class raster X.tif)").format(uncertainty_suffix),
                optional=True,
                createByDefault=False,
            ),
            "GeoTIFF, 1 band, float32 in [0, ln C] (variation_ratio: [0, 1 − 1/C]) on the grid of the input. Left "
            f"empty, it is written beside the class raster X.tif as X{uncertainty_suffix}.tif and loaded with it; to "
            'write no uncertainty raster, uncheck "Write the uncertainty raster".',
        ),
        with_help(
            QgsProcessingParameterRasterDestination(
                OUTPUT_CONFIDENCE,
                tr("Confidence raster (max class probability, optional)"),
                optional=True,
                createByDefault=False,
            ),
            "GeoTIFF, 1 band, float32: max over classes of the mean probability p̄, in [1/C, 1], on the grid of "
            'the input. Written only when given; "Evaluate uncertainty" uses it for calibration (ECE, '
            "reliability diagram).",
        ),
        with_help(
            named_enum(
                PROBABILITIES_DATA_TYPE, "Data type of the class probability raster", PROBABILITY_DTYPES, "float32"
            ),
            "float32: the mean probabilities p̄ as they are (-1 = nodata). uint8: a quarter of the size, "
            "round(254 × p̄) in 0 .. 254 (divide by 254 to read p̄), 255 = nodata as in the class raster. "
            f"{choices_help(PROBABILITY_DTYPES)}.",
            advanced=True,
        ),
        with_help(
            QgsProcessingParameterRasterDestination(
                OUTPUT_PROBABILITIES,
                tr("Class probability raster (one band per class, optional)"),
                optional=True,
                createByDefault=False,
            ),
            "GeoTIFF, one band per class, named after it: the mean probability p̄ of each class (the class raster is "
            'its argmax), as "Data type of the class probability raster" says, on the grid of the input. Written '
            "only when given.",
        ),
        with_help(
            QgsProcessingParameterRasterDestination(
                OUTPUT_CONFIDENT,
                tr("Confident class raster (unsure pixels as nodata, optional)"),
                optional=True,
                createByDefault=False,
            ),
            'GeoTIFF like the class raster, where the pixels whose uncertainty is above "Uncertainty threshold of '
            'the confident class raster" (margin: below it) are nodata (255): the predictions to keep when unsure '
            "ones must be left out. Written only when given, also when the uncertainty raster is not.",
        ),
    ]
