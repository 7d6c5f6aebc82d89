"""Whether a source's value may be written into a result as it is: its VR's form, length and characters,
its attribute's value multiplicity and enumerated values, in the character set the result declares.

pydicom's own validators (:func:`pydicom.valuerep.validate_value` in ``RAISE`` mode) come first; they let
through what DICOM (and ``dciodvfy``) do not allow, so these checks are added:

- DA is exactly ``YYYYMMDD``, a real date (pydicom's DA also reads the ACR-NEMA ``1993.02.24``, and its
  check takes a query's range); TM and DT take no range either; IS fits 32 bits; DS is finite;
- the VRs of the default repertoire (AE, AS, CS, DA, DS, DT, IS, TM, UI, UR) are ASCII (Python's ``\\d``
  matches any Unicode digit);
- PN has at most five components in each of its (at most three) groups;
- lengths are counted in the bytes the result writes, as ``dciodvfy`` counts them (64 "ü" are 128 bytes
  in UTF-8, too long for a LO);
- no control character but CR, LF and FF in LT, ST and UT; none a decoder put in for bytes it could not
  read (U+FFFD); beyond ASCII only in a character set the result declares and that can write it;
- the data dictionary's value multiplicity (a backslash splits a value in two);
- the enumerated values of the copied attributes that have them (:data:`ENUMERATED`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from highdicom.valuerep import _check_specific_character_set
from pydicom import config
from pydicom.charset import convert_encodings, encode_string, python_encoding
from pydicom.datadict import dictionary_VM
from pydicom.dataelem import DataElement
from pydicom.multival import MultiValue
from pydicom.valuerep import validate_value

#: VRs whose values are text, and those of them limited to the default repertoire.
TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI",
                      "UR", "UT"})
DEFAULT_REPERTOIRE_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "TM", "UI", "UR"})
#: Maximum value length in bytes (PS3.5 Table 6.2-1); a PN's limit is per component group.
MAX_BYTES = {"AE": 16, "AS": 4, "CS": 16, "DA": 8, "DS": 16, "DT": 26, "IS": 12, "LO": 64, "LT": 10240, "PN": 64,
             "SH": 16, "ST": 1024, "TM": 14, "UI": 64}
#: The control characters a free text VR may hold (ESC only as part of an ISO 2022 escape sequence,
#: which pydicom removes when it decodes).
TEXT_CONTROLS = {"LT": "\r\n\f", "ST": "\r\n\f", "UT": "\r\n\f"}
#: Enumerated values of the attributes the results copy (PS3.3), which ``dciodvfy`` checks.
ENUMERATED: dict[str, frozenset[Any]] = {
    "PatientSex": frozenset({"M", "F", "O"}), "PatientIdentityRemoved": frozenset({"YES", "NO"}),
    "QualityControlSubject": frozenset({"YES", "NO"}), "SmokingStatus": frozenset({"YES", "NO", "UNKNOWN"}),
    "PregnancyStatus": frozenset({1, 2, 3, 4}), "LongitudinalTemporalEventType": frozenset({"ENROLLMENT", "BASELINE"}),
    "ImageLaterality": frozenset({"R", "L", "U", "B"}), "Laterality": frozenset({"R", "L"}),
    "LossyImageCompression": frozenset({"00", "01"}),
}
DIGITS = re.compile(r"[0-9]+")
TIME = re.compile(r"([01][0-9]|2[0-3])([0-5][0-9](([0-5][0-9]|60)(\.[0-9]{1,6})?)?)?")
DATETIME = re.compile(r"([0-9]{4})((0[1-9]|1[0-2])(([0-2][0-9]|3[01])(([01][0-9]|2[0-3])([0-5][0-9](([0-5][0-9]|60)"
                      r"(\.[0-9]{1,6})?)?)?)?)?)?([+-](0[0-9]|1[0-4])[0-5][0-9])?")  # offset -1400 to +1400
#: The character sets of the default repertoire, as the results' checks encode them (pydicom's own
#: default is Latin-1, which would let "é" through).
ASCII_TERMS = frozenset({"", "ISO_IR 6", "ISO 2022 IR 6"})


def valid_date(value: object) -> bool:
    """A DA value: exactly eight digits that name a day of the calendar."""
    text = str(value or "")
    if len(text) != 8 or not DIGITS.fullmatch(text):
        return False
    try:
        datetime.strptime(text, "%Y%m%d")
    except ValueError:
        return False
    return True


def valid_time(value: object) -> bool:
    """A TM value: ``HH[MM[SS[.F{1,6}]]]``, no range."""
    return bool(TIME.fullmatch(str(value or "")))


def valid_datetime(value: str) -> bool:
    """A DT value without a range, whose date part (when it has a day) is a real date."""
    match = DATETIME.fullmatch(value)
    return bool(match) and (match.group(5) is None or valid_date(value[:8]))


def _valid_integer(value: str) -> bool:
    return -2 ** 31 <= int(value) <= 2 ** 31 - 1  # the form is pydicom's check, which does not bound it


def _valid_decimal(value: str) -> bool:
    return math.isfinite(float(value))


def _valid_name(value: str) -> bool:
    return all(group.count("^") <= 4 for group in value.split("="))


#: The checks beyond pydicom's, by VR, on a value that passed pydicom's.
STRICTER = {"DA": valid_date, "TM": valid_time, "DT": valid_datetime, "IS": _valid_integer, "DS": _valid_decimal,
            "PN": _valid_name}


def result_charsets(value: object) -> list[str] | None:
    """The terms of a source's SpecificCharacterSet when a result can declare them too: highdicom
    accepts them (it refuses the rest, which would cost the image its results) and pydicom decoded
    the source by them. ``[]`` for none (the default repertoire), ``None`` for a value that cannot be."""
    terms = [str(v).strip() for v in value] if isinstance(value, (MultiValue, list)) else [str(value or "").strip()]
    if terms == [""]:
        return []
    if not all(term in python_encoding for term in terms):
        return None
    try:
        _check_specific_character_set(terms if len(terms) > 1 else terms[0])
    except (ValueError, TypeError):
        return None
    return terms


def encoded(text: str, charsets: Sequence[str]) -> bytes | None:
    """``text`` as a result declaring ``charsets`` writes it, or ``None`` when it cannot."""
    if text.isascii():
        return text.encode("ascii")
    encodings = ["ascii" if term in ASCII_TERMS else python_encoding[term] for term in charsets]
    for character in {c for c in text if not c.isascii()}:
        if not any(_encodes(character, encoding) for encoding in encodings):
            return None
    return encode_string(text, convert_encodings(list(charsets)))


def _encodes(character: str, encoding: str) -> bool:
    try:
        character.encode(encoding)
    except (UnicodeError, LookupError):
        return False
    return True


def _allowed_characters(vr: str, text: str) -> bool:
    controls = TEXT_CONTROLS.get(vr, "")
    for character in text:
        code = ord(character)
        if (code < 0x20 or 0x7F <= code < 0xA0) and character not in controls:
            return False
        if code > 0x7E and (vr in DEFAULT_REPERTOIRE_VRS or character == "\ufffd"):
            return False
    return True


def _within_length(vr: str, text: str, charsets: Sequence[str]) -> bool:
    data = encoded(text, charsets)
    if data is None:
        return False
    if vr == "PN":
        return all(len(encoded(group, charsets) or b"") <= MAX_BYTES["PN"] for group in text.split("="))
    return len(data) <= MAX_BYTES.get(vr, len(data))


def valid_text(vr: str, text: str, charsets: Sequence[str] = ()) -> bool:
    """One value of a text VR, in a result declaring ``charsets`` (none: the default repertoire)."""
    if not _allowed_characters(vr, text) or not _within_length(vr, text, charsets):
        return False
    try:
        validate_value(vr, text, config.RAISE)
    except ValueError:
        return False
    check = STRICTER.get(vr)
    return check is None or check(text)


def vm_allows(vm: str, count: int) -> bool:
    """Whether a data dictionary VM (``1``, ``2``, ``1-3``, ``1-n``, ``2-2n``) allows ``count`` values."""
    low, _, high = vm.partition("-")
    if not low.isdigit() or not (high.rstrip("n").isdigit() or high in ("", "n")):
        return True  # a dictionary VM of another form ("1-n or 1"): not judged
    if not high:
        return count == int(low)
    if high.endswith("n"):
        return count >= int(low) and count % int(high[:-1] or 1) == 0
    return int(low) <= count <= int(high)


def texts(value: object) -> list[str]:
    """An element's values as the strings they were written (pydicom's DS and IS keep them)."""
    values = list(value) if isinstance(value, (MultiValue, list, tuple)) else [value]
    out = []
    for v in values:
        original = getattr(v, "original_string", None)
        out.append(original if isinstance(original, str) else str(v))
    return out


def _dictionary_vm(element: DataElement) -> str:
    try:
        return dictionary_VM(element.tag)
    except KeyError:  # private or unknown: as many values as it has
        return "1-n"


def valid_element(element: DataElement, charsets: Sequence[str] = ()) -> bool:
    """Whether ``element`` (not a sequence) may be written as it is into a result declaring ``charsets``.
    An empty value is valid here: whether it may be empty is its module's rule, not its VR's."""
    if element.is_empty:
        return True
    allowed = ENUMERATED.get(element.keyword)
    if element.VR not in TEXT_VRS:
        values = element.value if isinstance(element.value, (MultiValue, list)) else [element.value]
        return allowed is None or all(v in allowed for v in values)
    if isinstance(element.value, bytes):  # a text value pydicom could not decode
        return False
    values = texts(element.value)
    return (vm_allows(_dictionary_vm(element), len(values))
            and all(valid_text(element.VR, v, charsets) for v in values)
            and (allowed is None or all(v in allowed for v in values)))
