"""Batch segmentation of whole archives (folders, manifests, PACS) on Ray Data: ``python -m app.batch``.

Needs the ``batch`` extra (Ray); the service and the node do not import this package."""
