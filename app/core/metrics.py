"""Prometheus metrics of one app instance (own registry, so several apps can live in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, Info

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("covidseg_requests_total", "HTTP requests by route template, method and status",
                                ["route", "method", "status"], registry=self.registry)
        self.latency = Histogram("covidseg_request_duration_seconds", "HTTP request latency by route template",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.inference = Histogram("covidseg_inference_duration_seconds", "ONNX Runtime time per model run",
                                   buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_size = Histogram("covidseg_inference_batch_size", "images per model run",
                                    buckets=(1, 2, 4, 8, 16, 32, 64), registry=self.registry)
        self.queue_wait = Histogram("covidseg_inference_queue_wait_seconds",
                                    "time a request's images waited to be batched with others (micro-batching)",
                                    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1), registry=self.registry)
        self.admission_wait = Histogram("covidseg_admission_wait_seconds",
                                        "time a request waited to be admitted to work on its full-size images "
                                        "(those refused 503 overloaded not included)",
                                        buckets=LATENCY_BUCKETS, registry=self.registry)
        self.images = Counter("covidseg_images_total", "images segmented", registry=self.registry)
        self.model = Info("covidseg_model", "the loaded model", registry=self.registry)

    def record_run(self, images: int, seconds: float) -> None:
        """One model run of ``images`` images that took ``seconds``."""
        self.inference.observe(seconds)
        self.batch_size.observe(images)
        self.images.inc(images)
