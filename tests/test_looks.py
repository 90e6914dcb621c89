"""screening_core.looks: the MRI look a series description, folder or file name names."""
import pytest


@pytest.mark.parametrize("text, look", [
    ("AX T2 FLAIR", "flair"), ("Subj1_FL.nii.gz", "flair"), ("lgg/flair/tumor", "flair"),
    ("T1 POST GAD", "t1ce"), ("T1+C", "t1ce"), ("AX T1 +C", "t1ce"), ("T2 +C", "t2"), ("lgg/t1-post", "t1ce"), ("brats-sample/t1ce", "t1ce"),
    ("AX T1 PRE GAD", "t1"), ("lgg/t1-pre", "t1"), ("SAG T1 MPRAGE", "t1"), ("sub-01_T1w.nii.gz", "t1"),
    ("AX T2 TSE", "t2"), ("T2 POST", "t2"), ("COR STIR", "t2"), ("healthy_t2.nii.gz", "t2"),
    ("AX PD", "pd"), ("chris_pd.nii.gz", "pd"),
    ("AX DWI B1000", "dwi"), ("ADC", "dwi"), ("SWI", "swi"), ("T2*", "swi"),
    ("AX POST", "other"), ("head.nii.gz", "other"), ("", "other"), (None, "other"), ("series 4", "other"),
])
def test_the_look_is_read_from_the_words_of_a_name(text, look):
    from screening_core import looks
    assert looks.look_of(text) == look
    assert look in looks.NAMES


def test_an_images_look_is_read_from_its_description_else_the_names_near_it_before_pseudonyms():
    from types import SimpleNamespace as NS

    from beam_pipeline.stages.decode import _DecodeChunk
    look = _DecodeChunk._look
    assert look(NS(source_uri="/a/t1/x.dcm"), NS(path=None), {"series_description": "AX FLAIR"}) == "flair"
    assert look(NS(source_uri="/home/t2/archive.zip"), NS(path="FLAIR/s1.png"), {}) == "flair"
    assert look(NS(source_uri="/data/sub-01_T2w.nii.gz"), NS(path=None), {}) == "t2"
    assert look(NS(source_uri="C:\\scans\\PD\\img.png"), NS(path=None), {}) == "pd"
    assert look(NS(source_uri="/t2/archive/p1/img.png"), NS(path=None), {}) is None  # only the nearest names count
    assert look(NS(source_uri="/scans/p1/img.png"), NS(path=None), None) is None


@pytest.mark.parametrize("text, plane", [
    ("flair-coronal", "coronal"), ("healthy-planes/t1-sagittal", "sagittal"), ("SAG T1 MPRAGE", "sagittal"),
    ("COR STIR", "coronal"), ("flair", "axial"), ("AX T2 TSE", "axial"), ("", "axial"), (None, "axial"),
])
def test_the_plane_is_axial_unless_a_name_says_sagittal_or_coronal(text, plane):
    from screening_core import looks
    assert looks.plane_of(text) == plane
