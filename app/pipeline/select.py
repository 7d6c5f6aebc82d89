"""Select: is a DICOM instance a chest X-ray this model is for? (the node and the bridge)

The model was trained on frontal chest radiographs for presentation; a knee, a lateral view or
a raw detector image ("FOR PROCESSING") would get a meaningless result, so they are skipped
with the reason, never segmented.
"""

from __future__ import annotations

from dataclasses import dataclass

import pydicom


@dataclass(frozen=True)
class SelectionRules:
    modalities: tuple[str, ...] = ("CR", "DX")
    body_parts: tuple[str, ...] = ("CHEST", "")  # "" admits instances without BodyPartExamined
    views: tuple[str, ...] = ("PA", "AP", "")  # "" admits instances without ViewPosition
    for_processing: bool = False

    @classmethod
    def from_settings(cls, settings) -> "SelectionRules":
        upper = lambda values: tuple(v.upper() for v in values)  # noqa: E731
        return cls(upper(settings.select_modalities), upper(settings.select_body_parts),
                   upper(settings.select_views), settings.select_for_processing)

    def reason_to_skip(self, ds: pydicom.Dataset) -> str | None:
        """Why ``ds`` is not segmented, or None when it is selected. The reason names no identifier."""
        modality = str(ds.get("Modality", "")).upper()
        if modality not in self.modalities:
            return f"modality {modality or '(none)'} is not one of {', '.join(self.modalities)}"
        body_part = str(ds.get("BodyPartExamined", "")).upper()
        if body_part not in self.body_parts:
            return f"body part {body_part or '(none)'} is not one of {self._shown(self.body_parts)}"
        view = str(ds.get("ViewPosition", "")).upper()
        if view not in self.views:
            return f"view {view or '(none)'} is not one of {self._shown(self.views)}"
        intent = str(ds.get("PresentationIntentType", "")).upper()
        if intent == "FOR PROCESSING" and not self.for_processing:
            return "a FOR PROCESSING (raw detector) image"
        return None

    @staticmethod
    def _shown(values: tuple[str, ...]) -> str:
        return ", ".join(v or "(none)" for v in values)
