"""Dirty DICOM sources: values written as the bytes a modality sent, not as pydicom would write them.

pydicom converts a value it is given (a DS "70,5" raises, a multi-valued string is split), so the
invalid values under test are put in as raw elements, encoded by hand, and pydicom writes their bytes
as they are; the service then reads them back as it reads a modality's file."""

from __future__ import annotations

import io

import pydicom
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag

#: Python codecs of the character sets the tests declare; a source without one is written in Latin-1,
#: as a modality that ignores SpecificCharacterSet writes it.
CODECS = {None: "latin-1", "ISO_IR 100": "latin-1", "ISO_IR 192": "utf-8"}


def raw_element(keyword: str, value: bytes) -> RawDataElement:
    """An explicit VR little endian element holding ``value``, padded to an even length."""
    tag = Tag(tag_for_keyword(keyword))
    vr = dictionary_VR(keyword)
    if len(value) % 2:
        value += b"\x00" if vr == "UI" else b" "
    return RawDataElement(tag, vr, len(value), value, 0, False, True)


def set_raw(ds: pydicom.Dataset, keyword: str, value: str | bytes | None, charset: str | None = None) -> None:
    """``keyword`` in ``ds`` holding exactly ``value`` (text encoded in ``charset``'s codec; ``None``: removed)."""
    tag = Tag(tag_for_keyword(keyword))
    if tag in ds:
        del ds[tag]
    if value is not None:
        data = value if isinstance(value, bytes) else value.encode(CODECS[charset])
        ds._dict[tag] = raw_element(keyword, data)  # pydicom's public setters convert the value


def shallow_copy(ds: pydicom.Dataset) -> pydicom.Dataset:
    """A dataset of its own holding ``ds``'s elements (shared), with its file meta."""
    copy = pydicom.Dataset()
    for element in ds:
        copy.add(element)
    copy.file_meta = ds.file_meta
    return copy


def part10(ds: pydicom.Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def reread(ds: pydicom.Dataset) -> pydicom.Dataset:
    """``ds`` written and read back, every value converted, as the service's reader leaves it."""
    back = pydicom.dcmread(io.BytesIO(part10(ds)))
    for element in back.iterall():  # pydicom converts a value on its first access
        pass
    return back
