"""The provider, its algorithms and the parameter contract of docs/contract.md, as QGIS sees them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from qgis.core import (
    QgsProcessingAlgorithm,
    QgsProcessingException,
    QgsProcessingParameterBand,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFile,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
)

REPO_ROOT = Path(__file__).resolve().parents[2]

# key: (class, default, optional, advanced) -- the parameter table of docs/contract.md
EXPECTED_PARAMETERS = {
    "INPUT": (QgsProcessingParameterRasterLayer, None, False, False),
    "MODEL": (QgsProcessingParameterFile, None, False, False),
    "CHECKPOINT": (QgsProcessingParameterFile, None, True, False),
    "BANDS": (QgsProcessingParameterBand, None, True, False),
    "NUM_CLASSES": (QgsProcessingParameterNumber, 0, False, False),
    "MODEL_INPUT_SHAPE": (QgsProcessingParameterString, "512,512", False, False),
    "STEP_SHAPE": (QgsProcessingParameterString, "256,256", False, False),
    "TILE_WEIGHT": (QgsProcessingParameterEnum, "gaussian", False, True),
    "UNCERTAINTY_MODE": (QgsProcessingParameterEnum, "entropy", False, False),
    "EXPORT_UNCERTAINTY_MAP": (QgsProcessingParameterBoolean, True, False, False),
    "CONFIDENT_THRESHOLD": (QgsProcessingParameterNumber, 0.5, False, False),
    "N_SAMPLES": (QgsProcessingParameterNumber, 10, False, False),
    "TTA_MODE": (QgsProcessingParameterEnum, "none", False, False),
    "SEED": (QgsProcessingParameterNumber, 0, False, True),
    "BATCH_SIZE": (QgsProcessingParameterNumber, 0, False, True),
    "DEVICE": (QgsProcessingParameterEnum, "auto", False, True),
    "STRETCH_UNCERTAINTY": (QgsProcessingParameterBoolean, False, True, True),
    "SCHEDULER": (QgsProcessingParameterString, "", True, True),
    "BLOCK_SIZE": (QgsProcessingParameterNumber, 0, False, True),
    "OUTPUT": (QgsProcessingParameterRasterDestination, None, False, False),
    "OUTPUT_UNCERTAINTY": (QgsProcessingParameterRasterDestination, None, True, False),
    "OUTPUT_CONFIDENCE": (QgsProcessingParameterRasterDestination, None, True, False),
    "PROBABILITIES_DATA_TYPE": (QgsProcessingParameterEnum, "float32", False, True),
    "OUTPUT_PROBABILITIES": (QgsProcessingParameterRasterDestination, None, True, False),
    "OUTPUT_CONFIDENT": (QgsProcessingParameterRasterDestination, None, True, False),
}
OUTPUTS = {"OUTPUT", "OUTPUT_UNCERTAINTY", "OUTPUT_CONFIDENCE", "OUTPUT_PROBABILITIES", "OUTPUT_CONFIDENT"}


def test_provider_is_registered_with_its_algorithm(registry: Any) -> None:
    provider = registry.providerById("mc_uncertainty")
    assert provider is not None
    assert provider.name() == "MC Uncertainty"
    assert not provider.icon().isNull()
    assert Path(provider.svgIconPath()).is_file()
    assert sorted(alg.id() for alg in provider.algorithms()) == [
        "mc_uncertainty:evaluate",
        "mc_uncertainty:mc_dropout",
        "mc_uncertainty:review_regions",
        "mc_uncertainty:tta",
    ]
    algorithm = registry.algorithmById("mc_uncertainty:mc_dropout")
    assert algorithm.displayName() == "MC Dropout segmentation with uncertainty"
    assert "Monte Carlo Dropout" in algorithm.shortHelpString()
    assert provider.supportedOutputRasterLayerExtensions() == ["tif", "vrt"]  # vrt: with a SCHEDULER only
    tta = registry.algorithmById("mc_uncertainty:tta")
    assert tta.displayName() == "TTA segmentation with uncertainty"
    assert "horizontal flip, vertical flip" in tta.shortHelpString() and "non-square" in tta.shortHelpString()


def test_tta_parameters_are_those_of_mc_dropout_without_n_samples(registry: Any) -> None:
    algorithm = registry.createAlgorithmById("mc_uncertainty:tta")
    definitions = {d.name(): d for d in algorithm.parameterDefinitions()}
    assert list(definitions) == [key for key in EXPECTED_PARAMETERS if key != "N_SAMPLES"]
    assert definitions["TTA_MODE"].defaultValue() == "d4"
    assert "_uncertainty.tif" in definitions["OUTPUT_UNCERTAINTY"].description()
    assert not algorithm.flags() & QgsProcessingAlgorithm.FlagNoThreading


def test_parameters_follow_the_product_table(registry: Any) -> None:
    algorithm = registry.createAlgorithmById("mc_uncertainty:mc_dropout")
    definitions = {d.name(): d for d in algorithm.parameterDefinitions()}
    assert list(definitions) == list(EXPECTED_PARAMETERS)
    for key, (kind, default, optional, advanced) in EXPECTED_PARAMETERS.items():
        definition = definitions[key]
        assert isinstance(definition, kind), key
        assert definition.defaultValue() == default, key
        assert bool(definition.flags() & QgsProcessingParameterDefinition.FlagOptional) == optional, key
        assert bool(definition.flags() & QgsProcessingParameterDefinition.FlagAdvanced) == advanced, key
        assert len(definition.help()) > 20, f"{key} has no help"
    assert definitions["BANDS"].allowMultiple()
    assert definitions["BANDS"].parentLayerParameterName() == "INPUT"
    assert definitions["N_SAMPLES"].minimum() == 1
    assert not definitions["OUTPUT_UNCERTAINTY"].createByDefault()
    # outputs exist for the Modeler to chain
    assert {o.name() for o in algorithm.outputDefinitions()} == OUTPUTS
    # background thread: no FlagNoThreading
    assert not algorithm.flags() & QgsProcessingAlgorithm.FlagNoThreading


def test_enum_options_match_the_core(registry: Any) -> None:
    from mc_uncertainty_plugin.core import config

    algorithm = registry.createAlgorithmById("mc_uncertainty:mc_dropout")
    assert tuple(algorithm.parameterDefinition("TILE_WEIGHT").options()) == config.TILE_WEIGHTS
    assert tuple(algorithm.parameterDefinition("UNCERTAINTY_MODE").options()) == config.UNCERTAINTY_MODES
    assert tuple(algorithm.parameterDefinition("TTA_MODE").options()) == config.TTA_MODES
    assert tuple(algorithm.parameterDefinition("DEVICE").options()) == config.DEVICES
    from mc_uncertainty_plugin.core.inference.output_specs import PROBABILITY_DTYPES
    from mc_uncertainty_plugin.processing_provider import parameters

    assert parameters.TTA_TRANSFORMS == config.TTA_TRANSFORMS
    assert tuple(algorithm.parameterDefinition("PROBABILITIES_DATA_TYPE").options()) == PROBABILITY_DTYPES


def test_tta_mode_takes_a_subset_of_transforms_by_name(registry: Any, raster_path: str, torchscript_model: str) -> None:
    from qgis.core import QgsProcessingContext

    algorithm = registry.createAlgorithmById("mc_uncertainty:tta")
    base = {"INPUT": raster_path, "MODEL": torchscript_model, "OUTPUT": "out.tif"}
    context = QgsProcessingContext()
    for value, accepted in (("identity,hflip", True), ("rot90", True), ("d4", True), (2, True), ("3", False)):
        ok, _message = algorithm.checkParameterValues({**base, "TTA_MODE": value}, context)
        assert ok == accepted, value
    clone = algorithm.parameterDefinition("TTA_MODE").clone()
    assert clone.checkValueIsAcceptable("hflip,vflip") and not clone.checkValueIsAcceptable("mirror")
    assert "identity,hflip,vflip,rot180,rot90,rot270,transpose,antitranspose" in clone.help()


def test_enums_accept_names_and_indices(registry: Any, raster_path: str, torchscript_model: str) -> None:
    from qgis.core import QgsProcessingContext

    algorithm = registry.createAlgorithmById("mc_uncertainty:mc_dropout")
    base = {"INPUT": raster_path, "MODEL": torchscript_model, "OUTPUT": "out.tif"}
    context = QgsProcessingContext()
    for value, accepted in (("pyramid", True), (1, True), ("2", True), ("3", False), ("Pyramid", False), ("x", False)):
        ok, _message = algorithm.checkParameterValues({**base, "TILE_WEIGHT": value}, context)
        assert ok == accepted, value
    clone = algorithm.parameterDefinition("TILE_WEIGHT").clone()
    assert clone.checkValueIsAcceptable("1") and clone.checkValueIsAcceptable("mean")
    assert clone.flags() & QgsProcessingParameterDefinition.FlagAdvanced


def test_missing_torch_fails_with_install_message(
    run_mc_dropout: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from mc_uncertainty_plugin import python_env

    monkeypatch.setattr(python_env, "ensure_torch", lambda plugin_dir=None: False)
    with pytest.raises(QgsProcessingException) as raised:
        run_mc_dropout(OUTPUT=str(tmp_path / "classes.tif"))
    message = str(raised.value)
    assert "pip install torch==2.14.1 torchvision==0.29.1 segmentation-models-pytorch==0.6.0" in message
    assert "MC_UNCERTAINTY_PYTHON_ENV" in message and "Plugins ▸ MC Uncertainty ▸ Install PyTorch…" in message
    assert "Traceback" not in message
    assert not (tmp_path / "classes.tif").exists()


def test_plugin_loads_without_torch(raster_path: str, torchscript_model: str, tmp_path: Path) -> None:
    """In a fresh Python where ``import torch`` fails: the provider loads, torch is never imported, and the
    algorithm fails with the install message."""
    script = textwrap.dedent(
        f"""
        import json, sys
        class BlockTorch:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ModuleNotFoundError("No module named 'torch' (blocked by the test)")
                return None
        sys.meta_path.insert(0, BlockTorch())
        sys.path.insert(0, {str(REPO_ROOT)!r})
        from qgis.core import QgsApplication, QgsProcessingContext, QgsProcessingException, QgsProcessingFeedback
        app = QgsApplication([], False)
        app.initQgis()
        import mc_uncertainty_plugin
        plugin = mc_uncertainty_plugin.classFactory(None)
        plugin.initProcessing()
        registry = QgsApplication.processingRegistry()
        report = {{"algorithms": [a.id() for a in registry.providerById("mc_uncertainty").algorithms()],
                   "torch_imported": "torch" in sys.modules}}
        algorithm = registry.createAlgorithmById("mc_uncertainty:mc_dropout")
        try:
            algorithm.processAlgorithm({{"INPUT": {raster_path!r}, "MODEL": {torchscript_model!r},
                                         "OUTPUT": {str(tmp_path / "out.tif")!r}}},
                                       QgsProcessingContext(), QgsProcessingFeedback())
        except QgsProcessingException as error:
            report["error"] = str(error)
        plugin.unload()
        print("REPORT" + json.dumps(report))
        """
    )
    env = {k: v for k, v in os.environ.items() if k not in ("MC_UNCERTAINTY_PYTHON_ENV", "PYTHONPATH")}
    env["QGIS_CUSTOM_CONFIG_PATH"] = str(tmp_path / "settings")  # no python_env setting there
    env.setdefault("QT_QPA_PLATFORM", "offscreen")
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("REPORT")]
    assert lines, done.stdout + done.stderr
    report = json.loads(lines[-1][len("REPORT") :])
    assert report["algorithms"] == [
        "mc_uncertainty:evaluate",
        "mc_uncertainty:mc_dropout",
        "mc_uncertainty:review_regions",
        "mc_uncertainty:tta",
    ]
    assert report["torch_imported"] is False
    assert "pip install torch==2.14.1" in report.get("error", ""), report
