"""COVID-19 lung-infection segmentation service for chest X-rays."""

__version__ = "0.1.0"
