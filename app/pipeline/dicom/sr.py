"""Write: a TID 1500 Measurement Report (Comprehensive 3D SR) of one image.

Two measurement groups, each referencing its segment of the SEG made for the same request
(same UIDs, see :mod:`app.pipeline.dicom.common`): the infection (area, PPAR, infected share of
the lung, severity grade) and the lung field (area, share of the image). The model, its version
and the threshold are the algorithm identification of every group.
"""

from __future__ import annotations

import highdicom as hd
import pydicom
from highdicom.sr import CodedConcept
from pydicom.sr.codedict import codes
from pydicom.uid import SegmentationStorage

from app.pipeline.dicom import seg as seg_writer
from app.pipeline.dicom.common import MANUFACTURER, finish_result, result_uid
from app.pipeline.dicom.context import ResultContext
from app.pipeline.dicom.source import instance_number

KIND = "sr"
SCHEME = "99COVIDSEG"  # private coding scheme for what SNOMED and LOINC have no code for
#: The private scheme's identification (SOP Common, CodingSchemeIdentificationSequence): a "99" designator
#: is local, so the report says whose it is.
SCHEME_NAME = "covidseg private codes"
SCHEME_RESPONSIBLE_ORGANIZATION = "covidseg project"
PPAR = CodedConcept("PPAR", SCHEME, "Predicted positive area ratio")
INFECTED_LUNG_SHARE = CodedConcept("ILS", SCHEME, "Infected share of lung field")
LUNG_SHARE = CodedConcept("LFR", SCHEME, "Lung field share of image")
AREA = CodedConcept("42798000", "SCT", "Area")
SEVERITY = CodedConcept("246112005", "SCT", "Severity")
SEVERITY_VALUES = {
    "none": CodedConcept("260413007", "SCT", "None"),
    "mild": CodedConcept("255604002", "SCT", "Mild"),
    "moderate": CodedConcept("6736007", "SCT", "Moderate"),
    "severe": CodedConcept("24484000", "SCT", "Severe"),
    "critical": CodedConcept("CRIT", SCHEME, "Critical (75 % or more of the lung field)"),
}
CHEST_XRAY = CodedConcept("399208008", "SCT", "Plain chest X-ray")
PERCENT = CodedConcept("%", "UCUM", "percent")
SQUARE_MM = CodedConcept("mm2", "UCUM", "square millimeter")
PIXELS = CodedConcept("{pixels}", "UCUM", "pixels")


def algorithm_id(ctx: ResultContext) -> hd.sr.AlgorithmIdentification:
    return hd.sr.AlgorithmIdentification(name=ctx.model.name, version=ctx.model.version,
                                         parameters=[f"{k}={v}" for k, v in ctx.algorithm_parameters().items()])


def area(ctx: ResultContext, pixels: int) -> hd.sr.Measurement:
    """In mm2 when the source gives a pixel spacing, else in pixels."""
    spacing = ctx.pixel_spacing_mm()
    if spacing is None:
        return hd.sr.Measurement(name=AREA, value=float(pixels), unit=PIXELS)
    return hd.sr.Measurement(name=AREA, value=round(pixels * spacing[0] * spacing[1], 2), unit=SQUARE_MM)


def percent(name: CodedConcept, share: float) -> hd.sr.Measurement:
    return hd.sr.Measurement(name=name, value=round(100 * share, 4), unit=PERCENT)


def segment_group(ctx: ResultContext, segment: int, label: str, finding: CodedConcept,
                  measurements: list[hd.sr.Measurement],
                  evaluations: list[hd.sr.QualitativeEvaluation] | None = None
                  ) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    source = ctx.source
    seg_ident = ctx.identity(seg_writer.KIND)
    reference = hd.sr.ReferencedSegmentationFrame(
        sop_class_uid=SegmentationStorage, sop_instance_uid=seg_ident.sop_instance_uid, frame_number=segment,
        segment_number=segment, source_image=hd.sr.SourceImageForSegmentation(source.SOPClassUID, source.SOPInstanceUID))
    tracking = hd.sr.TrackingIdentifier(
        uid=result_uid(f"sr-tracking-{segment}", str(source.SOPInstanceUID), ctx.model.sha256, ctx.seg.threshold,
                       ctx.seg.tta),
        identifier=label)
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking, referenced_segment=reference, finding_type=finding,
        algorithm_id=algorithm_id(ctx), finding_sites=[hd.sr.FindingSite(codes.SCT.Lung)],
        measurements=measurements, qualitative_evaluations=evaluations)


def measurement_groups(ctx: ResultContext) -> list[hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations]:
    s = ctx.seg
    infection = segment_group(
        ctx, seg_writer.INFECTION_SEGMENT, "COVID-19 infection", codes.SCT.Lesion,
        [area(ctx, s.infection_pixels), percent(PPAR, s.ppar), percent(INFECTED_LUNG_SHARE, s.infected_lung_share)],
        [hd.sr.QualitativeEvaluation(SEVERITY, SEVERITY_VALUES[s.severity])])
    lung = segment_group(ctx, seg_writer.LUNG_SEGMENT, "Lung", codes.SCT.Lung,
                         [area(ctx, s.lung_pixels), percent(LUNG_SHARE, s.lung_fraction)])
    return [infection, lung]


def seg_evidence(ctx: ResultContext) -> pydicom.Dataset:
    """The SEG as the report's evidence: its identity is enough to reference it."""
    ident = ctx.identity(seg_writer.KIND)
    ds = pydicom.Dataset()
    ds.SOPClassUID = SegmentationStorage
    ds.SOPInstanceUID = ident.sop_instance_uid
    ds.SeriesInstanceUID = ident.series_instance_uid
    ds.StudyInstanceUID = ctx.source.StudyInstanceUID
    return ds


def drop_segment_numbers_beside_frames(items: pydicom.Sequence) -> None:
    """The Image SOP Instance Reference macro forbids a segment number beside a frame number
    (each frame of our binary SEG is one segment); highdicom writes both."""
    for item in items:
        for ref in item.get("ReferencedSOPSequence", []):
            if "ReferencedFrameNumber" in ref and "ReferencedSegmentNumber" in ref:
                del ref.ReferencedSegmentNumber
        drop_segment_numbers_beside_frames(item.get("ContentSequence", []))


def private_scheme_identification() -> pydicom.Dataset:
    item = pydicom.Dataset()
    item.CodingSchemeDesignator = SCHEME
    item.CodingSchemeName = SCHEME_NAME
    item.CodingSchemeResponsibleOrganization = SCHEME_RESPONSIBLE_ORGANIZATION
    return item


def write_measurement_report(ctx: ResultContext) -> pydicom.Dataset:
    source, ident = ctx.source, ctx.identity(KIND)
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=result_uid("device", ctx.model.name, ctx.model.sha256, 0.0), name=ctx.model.name,
            manufacturer_name=MANUFACTURER, model_name=f"{ctx.model.name} {ctx.model.version}"))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=CHEST_XRAY, imaging_measurements=measurement_groups(ctx))
    sr = hd.sr.Comprehensive3DSR(
        evidence=[source, seg_evidence(ctx)], content=report[0], series_instance_uid=ident.series_instance_uid,
        series_number=ctx.options.series_number(KIND), sop_instance_uid=ident.sop_instance_uid,
        instance_number=instance_number(source), manufacturer=MANUFACTURER,
        is_complete=True, is_final=False, is_verified=False)
    drop_segment_numbers_beside_frames(sr.ContentSequence)
    sr.CodingSchemeIdentificationSequence = [private_scheme_identification()]
    finish_result(sr, source, KIND, ctx.model, ctx.options)
    return sr
