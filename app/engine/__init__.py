"""The synchronous segmentation engine every front end shares: the loaded model and its card, and the
pipeline's steps composed once (no asyncio, no FastAPI)."""

from app.engine.engine import Engine, Measurements

__all__ = ["Engine", "Measurements"]
