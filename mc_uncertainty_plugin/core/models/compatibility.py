"""What MC dropout can and cannot do with a given network (the README's compatibility table, as behaviour).

| model | verdict |
|---|---|
| dropout layers with p > 0 (SMP with decoder_dropout, DeepLabV3/V3+ ASPP, PSPNet, DPT head, custom UNets, HRNet-OCR) | works |
| no active dropout (plain SMP models) | degenerate: all samples identical, MI = 0 -> warning |
| evidential (EDL) wrappers | two uncertainty sources with conflicting semantics -> warning |
| mixture of experts | router noise and dropout may interact -> warning |
| timm DropPath / functional dropout | cannot be switched on per module; not sampled -> warning |
| several spatial output maps (detection, polygon mappers, crossfield) | aggregation undefined -> error at run time |
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass

from torch import nn

from .dropout import find_dropout_layers

__all__ = ["CompatibilityNote", "check_mc_compatibility"]

# class names, CamelCase: "EDL" / "MoE" as a word of the name, or the long forms
_EVIDENTIAL = re.compile(r"(^|(?<=[a-z_]))(EDL|Edl)(?=[A-Z_]|$)|Evidential|Dirichlet")
_MIXTURE = re.compile(r"(^|(?<=[a-z_]))(MoE|Moe)(?=[A-Z_]|$)|MixtureOfExperts|ExpertRouter|TopKGate|NoisyTopK")
_FUNCTIONAL_DROPOUT = re.compile(
    r"\b(F|functional)\.(dropout|dropout1d|dropout2d|dropout3d|alpha_dropout|feature_alpha_dropout)\("
)


@dataclass(frozen=True)
class CompatibilityNote:
    """``kind`` is ``degenerate``, ``evidential``, ``mixture_of_experts``, ``drop_path`` or ``functional_dropout``."""

    kind: str
    message: str


def _class_names(model: nn.Module) -> list[tuple[str, str]]:
    return [(name, str(getattr(m, "original_name", type(m).__name__))) for name, m in model.named_modules()]


def _uses_functional_dropout(module: nn.Module) -> bool:
    forward = getattr(type(module), "forward", None)
    if forward is None or type(module).__module__.startswith("torch."):
        return False
    try:
        source = inspect.getsource(forward)
    except (OSError, TypeError):
        return False
    return bool(_FUNCTIONAL_DROPOUT.search(source))


def check_mc_compatibility(model: nn.Module) -> list[CompatibilityNote]:
    """Notes on how MC dropout will behave on ``model`` (empty when it simply works)."""
    notes: list[CompatibilityNote] = []
    if not find_dropout_layers(model):
        notes.append(
            CompatibilityNote(
                "degenerate",
                "MC dropout: the model has no active dropout layer (none, or all p = 0); all samples are identical "
                "and mutual information is 0 everywhere (degenerate). Set decoder_dropout in the model config.",
            )
        )
    names = _class_names(model)
    evidential = sorted({cls for _, cls in names if _EVIDENTIAL.search(cls)})
    if evidential:
        notes.append(
            CompatibilityNote(
                "evidential",
                f"MC dropout on an evidential (EDL) model ({', '.join(evidential)}) is not recommended: the Dirichlet "
                "evidence and the dropout samples are two uncertainty sources with conflicting semantics.",
            )
        )
    mixture = sorted({cls for _, cls in names if _MIXTURE.search(cls)})
    if mixture:
        notes.append(
            CompatibilityNote(
                "mixture_of_experts",
                f"MC dropout on a mixture-of-experts model ({', '.join(mixture)}) is risky: router noise and dropout "
                "may interact unpredictably; check the uncertainty on known data first.",
            )
        )
    drop_path = [
        name
        for name, m in model.named_modules()
        if type(m).__name__ == "DropPath" and float(getattr(m, "drop_prob", 0.0) or 0.0) > 0
    ]
    if drop_path:
        notes.append(
            CompatibilityNote(
                "drop_path",
                f"{len(drop_path)} timm DropPath (stochastic depth) layer(s), e.g. {drop_path[0]}, stay off at inference: "
                "they cannot be switched on per module and are not sampled.",
            )
        )
    functional = sorted({type(m).__name__ for _, m in model.named_modules() if _uses_functional_dropout(m)})
    if functional:
        notes.append(
            CompatibilityNote(
                "functional_dropout",
                f"{', '.join(functional)} call(s) functional dropout (F.dropout) in forward(): it cannot be switched on "
                "per module and is not sampled (use nn.Dropout modules to make it part of MC dropout).",
            )
        )
    return notes
