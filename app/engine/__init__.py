"""The synchronous segmentation engine every front end shares: the loaded model and its card, and the
pipeline's steps composed once (no asyncio, no FastAPI); ``results``: what one segmentation gives."""

from app.engine.engine import Engine
from app.engine.results import (
    Measurements,
    OutputFormat,
    PngOutput,
    SegmentationResults,
)

__all__ = ["Engine", "Measurements", "OutputFormat", "PngOutput", "SegmentationResults"]
