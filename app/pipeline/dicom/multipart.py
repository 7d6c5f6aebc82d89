"""multipart/related bodies of DICOM objects (PS3.18: STOW-RS requests, WADO-RS answers, and the service's
answer with several results of one image): one encoder and one decoder for every end that speaks it."""

from __future__ import annotations

import uuid

from app.pipeline.dicom.read import DICOM_MEDIA_TYPE

#: The media type of a multipart/related body of DICOM parts, without its boundary.
DICOM_MULTIPART = f'multipart/related; type="{DICOM_MEDIA_TYPE}"'


def multipart_related(parts: list[bytes]) -> tuple[bytes, str]:
    """A multipart/related body of DICOM parts, in order, and its Content-Type."""
    boundary = uuid.uuid4().hex
    body = b"".join(b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + part + b"\r\n"
                    for part in parts) + b"--" + boundary.encode() + b"--\r\n"
    return body, f"{DICOM_MULTIPART}; boundary={boundary}"


def multipart_parts(body: bytes, content_type: str) -> list[bytes]:
    """The payloads of a multipart/related body, in order."""
    params = dict(p.strip().split("=", 1) for p in content_type.split(";")[1:] if "=" in p)
    boundary = params.get("boundary", "").strip('"').encode()
    if not boundary:
        raise ValueError("multipart answer without a boundary")
    parts = []
    for chunk in body.split(b"--" + boundary)[1:]:
        if chunk.startswith(b"--"):
            break
        _headers, _, payload = chunk.partition(b"\r\n\r\n")
        parts.append(payload[:-2] if payload.endswith(b"\r\n") else payload)
    return parts
