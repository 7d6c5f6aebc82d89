"""The bridge's client of the segmentation service (HTTP)."""

from __future__ import annotations

import httpx

from app.pipeline.dicom.common import ModelRef
from app.pipeline.dicom.multipart import multipart_parts


class ServiceRefused(Exception):
    """The service answered 4xx for an instance: that instance is bad, not the connection.

    ``detail`` may quote the instance's own values, so logs at info level take ``status`` and ``code``."""

    def __init__(self, status: int, code: str, detail: str):
        super().__init__(f"{status} {code}: {detail}")
        self.status, self.code, self.detail = status, code, detail


#: 4xx answers about the moment, not the request (timeout, too many requests): worth retrying.
RETRYABLE_4XX = frozenset({408, 429})


def is_retryable_status(status: int) -> bool:
    """An HTTP status worth retrying (5xx, 408, 429): the one rule of the bridge and the node's STOW-RS."""
    return status >= 500 or status in RETRYABLE_4XX


def is_transient(exc: BaseException) -> bool:
    """Worth retrying: the service or PACS unreachable, or a retryable status."""
    if isinstance(exc, httpx.TransportError):
        return True
    if isinstance(exc, httpx.HTTPStatusError):
        return is_retryable_status(exc.response.status_code)
    return False


class ServiceClient:
    def __init__(self, url: str, api_key: str | None = None, timeout: float = 120.0):
        headers = {"X-API-Key": api_key} if api_key else {}
        self.url = url.rstrip("/")
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def model(self) -> tuple[ModelRef, float, str]:
        """The loaded model, its default threshold and the service's default TTA (``GET /model``)."""
        r = self.http.get("/model")
        r.raise_for_status()
        body = r.json()
        loaded = body["loaded"]
        return (ModelRef(loaded["name"], loaded["version"], loaded["sha256"]), float(body["default_threshold"]),
                str(loaded.get("tta_default", "none")))

    def results(self, dicom: bytes, kinds: list[str], threshold: float, tta: str = "none") -> dict[str, bytes]:
        """The DICOM results ``kinds`` (seg, sc, sr) of one instance, from one request (one model run):
        ``format=dicom&outputs=...`` answers one multipart/related part per kind, in the order asked. The TTA is
        sent, so the results' UIDs are the ones the bridge expects (they name it)."""
        # The bridge applied its own selection rules to this file (the service's environment may differ).
        params = {"format": "dicom", "outputs": ",".join(kinds), "threshold": threshold, "selection": "ignore",
                  "tta": tta}
        r = self.http.post("/segment", params=params,
                           files={"file": ("image.dcm", dicom, "application/dicom")})
        body = self._content(r)
        try:
            parts = multipart_parts(body, r.headers.get("content-type", ""))
        except ValueError:  # not multipart at all
            parts = []
        if len(parts) != len(kinds):  # not the instance's fault: the run stops, the rest stays pending
            raise httpx.DecodingError(f"the service answered {len(parts)} part(s) for {len(kinds)} result(s)",
                                      request=r.request)
        return dict(zip(kinds, parts))

    @staticmethod
    def _content(r: httpx.Response) -> bytes:
        """The answer's body; a refusal of the instance (4xx) is :class:`ServiceRefused`, other failures raise."""
        if 400 <= r.status_code < 500 and not is_retryable_status(r.status_code):
            try:
                body = r.json()
            except ValueError:
                body = {}
            raise ServiceRefused(r.status_code, body.get("code", "error"), body.get("detail", r.text))
        r.raise_for_status()
        return r.content
