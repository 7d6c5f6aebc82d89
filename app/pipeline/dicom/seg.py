"""Write: a binary DICOM Segmentation of the source image, segment 1 infection, segment 2 lung."""

from __future__ import annotations

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes

from app.pipeline.dicom.common import MANUFACTURER, finish_result, result_uid
from app.pipeline.dicom.context import ResultContext
from app.pipeline.dicom.source import instance_number, patient_orientation

KIND = "seg"
INFECTION_SEGMENT, LUNG_SEGMENT = 1, 2


def algorithm(ctx: ResultContext) -> hd.AlgorithmIdentificationSequence:
    return hd.AlgorithmIdentificationSequence(name=ctx.model.name, family=codes.cid7162.ArtificialIntelligence,
                                              version=ctx.model.version,
                                              parameters=ctx.algorithm_parameters())


def segment_descriptions(ctx: ResultContext) -> list[hd.seg.SegmentDescription]:
    algo = algorithm(ctx)
    return [
        hd.seg.SegmentDescription(
            segment_number=INFECTION_SEGMENT, segment_label="COVID-19 infection",
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Lesion,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algo,
            anatomic_regions=[codes.SCT.Lung]),
        hd.seg.SegmentDescription(
            segment_number=LUNG_SEGMENT, segment_label="Lung",
            segmented_property_category=codes.SCT.AnatomicalStructure,
            segmented_property_type=codes.SCT.Lung,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algo),
    ]


def derive_dimension_organization(seg: pydicom.Dataset, ctx: ResultContext) -> None:
    """highdicom makes a random DimensionOrganizationUID under its own root: derived instead, like every
    result UID, so the same inputs give the same bytes."""
    uid = result_uid("seg-dimension-organization", str(ctx.source.SOPInstanceUID), ctx.model.sha256,
                     ctx.seg.threshold, ctx.seg.tta)
    for keyword in ("DimensionOrganizationSequence", "DimensionIndexSequence"):
        for item in seg.get(keyword, []):
            if "DimensionOrganizationUID" in item:
                item.DimensionOrganizationUID = uid


def write_segmentation(ctx: ResultContext) -> pydicom.Dataset:
    source, ident = ctx.source, ctx.identity(KIND)
    pixel_array = np.stack([ctx.seg.infection_mask, ctx.seg.lung_mask], axis=-1)[None].astype(np.uint8)
    seg = hd.seg.Segmentation(
        source_images=[source], pixel_array=pixel_array, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segment_descriptions(ctx), series_instance_uid=ident.series_instance_uid,
        series_number=ctx.options.series_number(KIND), sop_instance_uid=ident.sop_instance_uid,
        instance_number=instance_number(source), manufacturer=MANUFACTURER,
        manufacturer_model_name=ctx.model.name, software_versions=ctx.model.version, device_serial_number="0",
        content_description=f"infection threshold {ctx.seg.threshold:g}", content_label="COVIDSEG",
        omit_empty_frames=False,
    )
    if "FrameOfReferenceUID" not in source:
        # A projection X-ray has no patient coordinate system: the SEG maps onto the source by
        # reference, and a Pixel Measures item without SliceThickness cannot be read back.
        shared = seg.SharedFunctionalGroupsSequence[0]
        if "PixelMeasuresSequence" in shared:
            del shared.PixelMeasuresSequence
        seg.PatientOrientation = patient_orientation(source)  # Type 2C without a frame of reference
    derive_dimension_organization(seg, ctx)
    finish_result(seg, source, KIND, ctx.model, ctx.options)
    return seg
