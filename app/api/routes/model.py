"""The model card of the loaded model."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from app.api.deps import ServiceDep
from app.pipeline.postprocess import severity_ranges

router = APIRouter(tags=["model"])


@router.get("/model", summary="Model card of the loaded model, with the runtime's view of it")
async def model_card(service: ServiceDep) -> dict[str, Any]:
    info = service.model.info
    card = service.card.public() if service.card is not None else {}
    return {
        **card,
        "loaded": {"name": info.name, "version": info.version, "sha256": info.sha256,
                   "providers": list(info.providers), "input_size": info.input_size,
                   "precision": "int8" if info.quantization else "fp32", "quantization": info.quantization,
                   "tta_default": service.default_tta},
        "default_threshold": service.default_threshold,
        "region_peak_threshold": service.region_peak_threshold,
        "severity_bins": severity_bins_doc(),
    }


def severity_bins_doc() -> list[dict[str, Any]]:
    """The severity grades and their ranges of infected lung share."""
    return [{"grade": grade, "infected_lung_share": span} for grade, span in severity_ranges()]
