"""The model card of the loaded model."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from app.api.deps import ServiceDep, SettingsDep
from app.core.config import Settings
from app.pipeline.judge import JUDGEMENT_CODES
from app.pipeline.load import MIN_IMAGE_SIDE
from app.pipeline.postprocess import severity_ranges

router = APIRouter(tags=["model"])


@router.get("/model", summary="Model card of the loaded model, with the runtime's view of it")
async def model_card(service: ServiceDep, settings: SettingsDep) -> dict[str, Any]:
    engine = service.engine
    info = engine.model.info
    card = engine.card.public() if engine.card is not None else {}
    return {
        **card,
        "loaded": {"name": info.name, "version": info.version, "sha256": info.sha256,
                   "providers": list(info.providers), "input_size": info.input_size,
                   "precision": "int8" if info.quantization else "fp32", "quantization": info.quantization,
                   "tta_default": engine.default_tta, "chosen_by": engine.model_choice},
        "default_threshold": engine.default_threshold,
        "region_peak_threshold": engine.region_peak_threshold,
        "input_judgement": {**card.get("input_judgement", {}), "limits": engine.judge_limits.as_dict(),
                            "outputs": engine.model.judgement_scores,
                            "codes": list(JUDGEMENT_CODES)},
        "severity_bins": severity_bins_doc(),
        "input_limits": input_limits(settings),
    }


def input_limits(settings: Settings) -> dict[str, int]:
    """What an upload may be, so an integration can check before sending (4xx above or below)."""
    return {"max_upload_bytes": settings.max_upload_bytes, "max_pixels": settings.max_pixels,
            "min_image_side": MIN_IMAGE_SIDE, "max_batch_files": settings.max_batch_files}


def severity_bins_doc() -> list[dict[str, Any]]:
    """The severity grades and their ranges of infected lung share."""
    return [{"grade": grade, "infected_lung_share": span} for grade, span in severity_ranges()]
