"""Select: is a DICOM instance a chest X-ray this model is for? (the node, the bridge and the service)

The model was trained on frontal chest radiographs for presentation; a knee, a lateral view or
a raw detector image ("FOR PROCESSING") would get a meaningless result, so they are skipped
with the reason (the node, the bridge) or refused (the HTTP service, :func:`check_selected`),
never segmented. They read the header only: the HTTP service and the batch job judge a DICOM before
its pixels are decoded, the node when it is received, the bridge before it is downloaded.

Values are compared stripped and upper-cased: a Code String is upper case, and its leading and trailing
spaces are not significant (PS3.5 6.2), but modalities write ``chest`` and pad values with spaces.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import pydicom

from app.pipeline.errors import PipelineError, Problem

#: The defaults of the selection (and so of ``COVIDSEG_SELECT_*``): frontal chest radiographs.
CHEST_XRAY_MODALITIES = ("CR", "DX")
#: CHEST and THORAX are both Defined Terms of Body Part Examined for the same region (PS3.16 Annex L maps
#: both to SNOMED CT 43799004), and modalities write either; "" admits instances without the attribute
#: (Type 3, often left empty). Other terms of the chest region (LUNG, CHESTABDOMEN, TSPINE, RIB...) name
#: other examinations than the frontal chest radiograph the model was trained on; a site whose modalities
#: write a local term (TORAX, PORT CHEST) adds it to COVIDSEG_SELECT_BODY_PARTS. README, "DICOM".
CHEST_BODY_PARTS = ("CHEST", "THORAX", "")
FRONTAL_VIEWS = ("PA", "AP", "")  # "" admits instances without ViewPosition
#: The code of the service's refusal.
NOT_SELECTED = "not_selected"
#: A Code String (PS3.5 6.2). A refusal shows a value only in this form, so free text a modality put
#: into one of these attributes (a name, an ID) is not echoed.
CODE_STRING = re.compile(r"[A-Z0-9 _]{1,16}")


@dataclass(frozen=True)
class Unmet:
    """The first rule an instance fails: the attribute, its value ("" absent or empty), the setting
    that decides it and the values that setting admits ("" for absent)."""

    keyword: str
    value: str
    setting: str
    admitted: tuple[str, ...]
    noun: str  # the node's and the bridge's name for it: "body part"

    def reason(self) -> str:
        """The node's and the bridge's wording (their logs, audit records and state file)."""
        if self.keyword == "PresentationIntentType":
            return "a FOR PROCESSING (raw detector) image"
        shown = self.value if not self.value or CODE_STRING.fullmatch(self.value) else "(not a code string)"
        return f"{self.noun} {shown or '(none)'} is not one of {', '.join(v or '(none)' for v in self.admitted)}"

    def shown_value(self) -> str:
        """The value as a refusal shows it: a code string, never free text."""
        if not self.value:
            return "(absent or empty)"
        return self.value if CODE_STRING.fullmatch(self.value) else "(a value that is not a code string)"

    def refusal(self) -> str:
        """The service's wording: attribute, value and setting, no identifier."""
        value = self.shown_value()
        if self.keyword == "PresentationIntentType":
            return f"{self.keyword} {value} is segmented only with {self.setting}=true"
        admitted = ", ".join(v or "absent" for v in self.admitted) or "none"
        return f"{self.keyword} {value} is not among {self.setting} ({admitted})"


@dataclass(frozen=True)
class SelectionRules:
    modalities: tuple[str, ...] = CHEST_XRAY_MODALITIES
    body_parts: tuple[str, ...] = CHEST_BODY_PARTS
    views: tuple[str, ...] = FRONTAL_VIEWS
    for_processing: bool = False

    @classmethod
    def from_settings(cls, settings) -> "SelectionRules":
        return cls(code_values(settings.select_modalities), code_values(settings.select_body_parts),
                   code_values(settings.select_views), settings.select_for_processing)

    def unmet(self, ds: pydicom.Dataset) -> Unmet | None:
        """The first rule ``ds`` fails, or None when it is selected."""
        checks = (("Modality", self.modalities, "COVIDSEG_SELECT_MODALITIES", "modality"),
                  ("BodyPartExamined", self.body_parts, "COVIDSEG_SELECT_BODY_PARTS", "body part"),
                  ("ViewPosition", self.views, "COVIDSEG_SELECT_VIEWS", "view"))
        for keyword, admitted, setting, noun in checks:
            value = code_value(ds.get(keyword, ""))
            if value not in admitted:
                return Unmet(keyword, value, setting, admitted, noun)
        intent = code_value(ds.get("PresentationIntentType", ""))
        if intent == "FOR PROCESSING" and not self.for_processing:
            return Unmet("PresentationIntentType", intent, "COVIDSEG_SELECT_FOR_PROCESSING", (), "intent")
        return None

    def reason_to_skip(self, ds: pydicom.Dataset) -> str | None:
        """Why ``ds`` is not segmented, or None when it is selected. The reason names no identifier."""
        unmet = self.unmet(ds)
        return None if unmet is None else unmet.reason()


def code_value(value: object) -> str:
    """A Code String as compared: without its padding, upper case (``'chest '`` is ``CHEST``)."""
    return str(value if value is not None else "").strip().upper()


def code_values(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(code_value(v) for v in values)


def check_selected(rules: SelectionRules, ds: pydicom.Dataset) -> None:
    """Refuse ``ds`` (``PipelineError``, ``not_selected``) when the rules leave it out, naming the
    attribute, its value and the setting."""
    unmet = rules.unmet(ds)
    if unmet is not None:
        raise PipelineError(Problem.INVALID, NOT_SELECTED,
                            f"not segmented: {unmet.refusal()}; this model is for frontal chest X-rays")
