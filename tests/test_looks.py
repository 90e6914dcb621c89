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
