"""Start Debian's Orthanc with a configuration made from the environment, as the orthancteam/orthanc image does:

- ``ORTHANC__DICOM_AET=X`` sets ``"DicomAet": "X"`` (each ``_``-separated word capitalised; ``__`` nests:
  ``ORTHANC__DICOM_WEB__ROOT`` is ``DicomWeb.Root``); a value that parses as JSON is taken as JSON.
- ``DICOM_WEB_PLUGIN_ENABLED=true`` loads the DICOMweb plugin at ``/dicom-web/``.

Defaults as that image's: storage in /var/lib/orthanc/db, reachable from other containers, DICOM on 4242.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile

DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"


def key(words: str) -> str:
    return "".join(word.capitalize() for word in words.lower().split("_"))


def value(text: str) -> object:
    try:
        return json.loads(text)
    except ValueError:
        return text


def configuration(environ: dict[str, str]) -> dict:
    config: dict = {"Name": "Orthanc", "StorageDirectory": "/var/lib/orthanc/db",
                    "IndexDirectory": "/var/lib/orthanc/db", "RemoteAccessAllowed": True, "HttpPort": 8042,
                    "DicomPort": 4242, "StorageCompression": False, "Plugins": []}
    if environ.get("DICOM_WEB_PLUGIN_ENABLED", "").lower() == "true":
        config["Plugins"].append(DICOMWEB_PLUGIN)
        config["DicomWeb"] = {"Enable": True, "Root": "/dicom-web/"}
    for name, text in sorted(environ.items()):
        if not name.startswith("ORTHANC__"):
            continue
        *parents, last = [key(part) for part in name.removeprefix("ORTHANC__").split("__")]
        target = config
        for parent in parents:
            target = target.setdefault(parent, {})
        target[last] = value(text)
    return config


if __name__ == "__main__":
    path = os.path.join(tempfile.mkdtemp(prefix="orthanc-"), "orthanc.json")
    with open(path, "w") as f:
        json.dump(configuration(dict(os.environ)), f, indent=2)
    os.execv("/usr/sbin/Orthanc", ["Orthanc", *sys.argv[1:], path])
