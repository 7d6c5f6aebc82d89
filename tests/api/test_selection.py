"""POST /segment and /segment/batch apply the node's and the bridge's selection rules (COVIDSEG_SELECT_*) to
DICOM inputs: a knee or a lateral view is refused with 422 not_selected naming the attribute, its value and the
setting, unless the request says selection=ignore; chest images and PNG/JPEG inputs are answered as before."""

from __future__ import annotations

import io
import warnings

import pydicom
import pytest

from app.pipeline.errors import PipelineError
from app.pipeline.select import SelectionRules, check_selected
from tests.conftest import fixture_images, make_client
from tests.dicom_fixtures import make_cxr_dicom, mammogram, read, with_garbage_frame

COVID = fixture_images("Val", "COVID-19")[0]
SECRET_NAME, SECRET_ID = "SECRET^PATIENT", "PID-SECRET-77"
FIGURES = ("ppar", "infection_pixels", "lung_pixels", "infected_lung_share", "severity")


def dicom(**kw) -> bytes:
    return make_cxr_dicom(COVID, patient_name=SECRET_NAME, patient_id=SECRET_ID, **kw)


def post(client, data: bytes, params: str = "", name: str = "x.dcm", media_type: str = "application/dicom"):
    return client.post(f"/segment?{params}", files={"file": (name, data, media_type)})


def assert_refused(r, data: bytes, *named: str) -> str:
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["code"] == "not_selected"
    for text in named:
        assert text in body["detail"], body["detail"]
    assert "selection=ignore" in body["detail"]
    ds = read(data)  # nothing that identifies the patient or the instance is echoed
    for secret in (SECRET_NAME, SECRET_ID, "SECRET", ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID):
        assert secret not in r.text
    return body["detail"]


def test_a_knee_cr_is_refused_naming_the_attribute(service_client):
    data = dicom(body_part="KNEE")
    detail = assert_refused(post(service_client[0], data), data, "BodyPartExamined KNEE",
                            "COVIDSEG_SELECT_BODY_PARTS (CHEST, THORAX, absent)")
    assert detail.startswith("not segmented: BodyPartExamined KNEE is not among")


def test_a_lateral_cr_is_refused_naming_the_attribute(service_client):
    data = dicom(view="LL")
    assert_refused(post(service_client[0], data, "format=dicom-sr"), data, "ViewPosition LL",
                   "COVIDSEG_SELECT_VIEWS (PA, AP, absent)")


@pytest.mark.parametrize("attributes", [{"body_part": "KNEE"}, {"view": "LL"}], ids=["knee", "lateral"])
def test_with_the_override_they_are_segmented(service_client, attributes):
    client = service_client[0]
    data = dicom(**attributes)
    r = post(client, data, "selection=ignore&threshold=0.4")
    assert r.status_code == 200, r.text
    chest = post(client, dicom(), "threshold=0.4").json()  # the same pixels as a chest PA
    assert {k: r.json()[k] for k in FIGURES} == {k: chest[k] for k in FIGURES}
    sr = post(client, data, "selection=ignore&format=dicom-sr")
    assert sr.status_code == 200 and pydicom.dcmread(io.BytesIO(sr.content)).Modality == "SR"


def test_a_chest_cr_and_a_png_are_answered_as_before(service_client):
    client = service_client[0]
    for data, name, media_type in ((dicom(), "x.dcm", "application/dicom"), (COVID.read_bytes(), "x.png", "image/png")):
        applied = post(client, data, "threshold=0.4", name, media_type)
        ignored = post(client, data, "threshold=0.4&selection=ignore", name, media_type)
        assert applied.status_code == ignored.status_code == 200, applied.text
        assert {k: applied.json()[k] for k in FIGURES} == {k: ignored.json()[k] for k in FIGURES}
    png = post(client, COVID.read_bytes(), "format=png", "x.png", "image/png")
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"


def test_a_png_named_like_a_knee_is_not_judged(service_client):
    """PNG and JPEG carry no DICOM attributes: nothing to refuse, whatever the file is called."""
    r = post(service_client[0], COVID.read_bytes(), "", "KNEE_LL.png", "image/png")
    assert r.status_code == 200, r.text


def test_a_batch_with_one_knee_names_its_index(service_client):
    client = service_client[0]
    knee = dicom(body_part="KNEE")
    files = [("files", ("a.dcm", dicom(), "application/dicom")), ("files", ("b.png", COVID.read_bytes(), "image/png")),
             ("files", ("c.dcm", knee, "application/dicom"))]
    r = client.post("/segment/batch", files=files)
    detail = assert_refused(r, knee, "BodyPartExamined KNEE")
    assert detail.startswith("file 2: not segmented")
    r = client.post("/segment/batch?selection=ignore", files=files)
    assert r.status_code == 200, r.text
    assert [res["index"] for res in r.json()["results"]] == [0, 1, 2]


@pytest.mark.parametrize("body_part", ["THORAX", "chest ", " Chest", "Thorax"])
def test_the_chest_as_modalities_write_it_is_segmented(service_client, body_part):
    """THORAX (PS3.16 Annex L's other term for the chest), and CHEST in lower case or padded with spaces."""
    client = service_client[0]
    with warnings.catch_warnings():  # pydicom warns of a lower-case Code String, which is what is tested
        warnings.simplefilter("ignore")
        data = dicom(body_part=body_part)
    assert read(data).BodyPartExamined.strip() == body_part.strip()
    r = post(client, data, "threshold=0.4")
    assert r.status_code == 200, r.text
    chest = post(client, dicom(), "threshold=0.4").json()
    assert {k: r.json()[k] for k in FIGURES} == {k: chest[k] for k in FIGURES}


def test_a_mammogram_with_damaged_pixels_is_refused_by_its_header_not_decoded(service_client):
    """Judged before any pixel is decoded: the header says MG, so its pixel data (noise no decoder reads)
    costs nothing and the refusal is the rule's, not a corrupt file's."""
    client = service_client[0]
    data = with_garbage_frame(mammogram(COVID, compress="jpeg-baseline", patient_name=SECRET_NAME,
                                        patient_id=SECRET_ID))
    assert_refused(post(client, data), data, "Modality MG", "COVIDSEG_SELECT_MODALITIES (CR, DX)")
    r = post(client, data, "selection=ignore")  # decoded only when asked to segment it anyway
    assert r.status_code == 400 and r.json()["code"] == "corrupt_dicom", r.text
    batch = client.post("/segment/batch", files=[("files", ("a.dcm", dicom(), "application/dicom")),
                                                 ("files", ("b.dcm", data, "application/dicom"))])
    assert batch.status_code == 422 and batch.json()["detail"].startswith("file 1: not segmented: Modality MG")


def test_a_bad_selection_value_is_a_422(service_client):
    r = post(service_client[0], dicom(), "selection=skip")
    assert r.status_code == 422 and r.json()["code"] == "invalid_parameter"
    assert "selection" in r.json()["detail"]


def test_the_override_is_documented_in_openapi(service_client):
    schema = service_client[0].get("/openapi.json").json()
    for path in ("/segment", "/segment/batch"):
        params = {p["name"]: p for p in schema["paths"][path]["post"]["parameters"]}
        assert params["selection"]["schema"]["enum"] == ["apply", "ignore"]
        assert "not_selected" in params["selection"]["description"]


def test_the_service_follows_the_sites_select_settings():
    """The rules come from the same COVIDSEG_SELECT_* settings as the node's and the bridge's."""
    with make_client(select_body_parts="CHEST,KNEE,", select_modalities="CR") as client:
        assert post(client, dicom(body_part="KNEE")).status_code == 200
        r = post(client, dicom(modality="DX"))
        assert r.status_code == 422 and "Modality DX is not among COVIDSEG_SELECT_MODALITIES (CR)" in r.json()["detail"]


# ---------------------------------------------------------------- the rule check on its own


def header(**attributes) -> pydicom.Dataset:
    ds = pydicom.Dataset()
    for keyword, value in {"Modality": "CR", **attributes}.items():
        setattr(ds, keyword, value)
    return ds


@pytest.mark.parametrize("attributes, refusal, reason", [
    ({"Modality": "MR"}, "Modality MR is not among COVIDSEG_SELECT_MODALITIES (CR, DX)",
     "modality MR is not one of CR, DX"),
    ({"Modality": ""}, "Modality (absent or empty) is not among COVIDSEG_SELECT_MODALITIES (CR, DX)",
     "modality (none) is not one of CR, DX"),
    ({"BodyPartExamined": "KNEE"},
     "BodyPartExamined KNEE is not among COVIDSEG_SELECT_BODY_PARTS (CHEST, THORAX, absent)",
     "body part KNEE is not one of CHEST, THORAX, (none)"),
    ({"ViewPosition": "LL"}, "ViewPosition LL is not among COVIDSEG_SELECT_VIEWS (PA, AP, absent)",
     "view LL is not one of PA, AP, (none)"),
    ({"Modality": "DX", "PresentationIntentType": "FOR PROCESSING"},
     "PresentationIntentType FOR PROCESSING is segmented only with COVIDSEG_SELECT_FOR_PROCESSING=true",
     "a FOR PROCESSING (raw detector) image"),
])
def test_each_rule_is_refused_by_name_and_skipped_with_the_nodes_wording(attributes, refusal, reason):
    rules = SelectionRules()
    with pytest.raises(PipelineError) as caught:
        check_selected(rules, header(**attributes))
    assert caught.value.code == "not_selected" and refusal in caught.value.message
    assert rules.reason_to_skip(header(**attributes)) == reason  # the node's, the bridge's: unchanged


def test_selected_instances_pass():
    for attributes in ({}, {"BodyPartExamined": "CHEST", "ViewPosition": "AP"}, {"Modality": "DX"}):
        check_selected(SelectionRules(), header(**attributes))
    check_selected(SelectionRules(for_processing=True), header(Modality="DX", PresentationIntentType="FOR PROCESSING"))


def test_free_text_in_a_code_string_is_not_echoed():
    with pytest.raises(PipelineError) as caught, pytest.warns(UserWarning):
        check_selected(SelectionRules(), header(BodyPartExamined="DOE^JANE 19610203"))
    assert "DOE" not in caught.value.message and "19610203" not in caught.value.message
    assert "BodyPartExamined (a value that is not a code string)" in caught.value.message


def test_values_are_compared_stripped_and_upper_cased():
    rules = SelectionRules()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lower case in a Code String
        for value in ("THORAX", "chest ", " thorax", "Chest"):
            check_selected(rules, header(BodyPartExamined=value, ViewPosition="pa "))
        with pytest.raises(PipelineError, match="BodyPartExamined KNEE is not among"):
            check_selected(rules, header(BodyPartExamined="knee "))


def test_the_default_body_parts_are_the_settings_and_the_settings_are_normalised():
    from app.core.config import Settings

    assert Settings().select_body_parts == ["CHEST", "THORAX", ""]
    assert SelectionRules.from_settings(Settings()).body_parts == SelectionRules().body_parts
    rules = SelectionRules.from_settings(Settings(select_body_parts=" chest , port chest,"))
    assert rules.body_parts == ("CHEST", "PORT CHEST", "")
    check_selected(rules, header(BodyPartExamined="PORT CHEST"))
