"""The MRI look (sequence family) a series description, folder or file name names.

Why: the models flag a different share of tumor-free slices on each look (FLAIR, T1, T2, PD; measured on
real heads without a tumor by trainer.tumor_free_probe), and never saw some looks at all (diffusion,
susceptibility). A reader who sees that a flag sits on a T2 series, where half of a healthy head's slices
are flagged, weighs it differently. The look is read from words alone (the scrubbed SeriesDescription, a
folder such as `brats-sample/t2`, a file such as `healthy_t2.nii.gz`); nothing here looks at pixels, and
a name without such a word is "other".
"""
import re

# display names, in the order tables list them
NAMES = {"flair": "FLAIR", "t1ce": "T1ce", "t2": "T2", "pd": "PD", "t1": "T1", "dwi": "DWI", "swi": "SWI",
         "other": "other"}
# word -> look; a description naming two looks ("T2 FLAIR", "T1 POST GAD") takes the first rule that matches
_RULES = (
    ("dwi", {"dwi", "dti", "adc", "trace", "diffusion", "tensor"}),
    ("swi", {"swi", "swan", "t2star", "t2*", "hemo", "hemosiderin", "susceptibility"}),
    ("flair", {"flair", "fl", "tirm", "darkfluid"}),
    ("t1ce", {"t1ce", "t1c", "t1post", "t1gd", "t1+c", "t1+", "+c", "post", "gad", "gd", "ce", "contrast", "enhanced",
              "enh", "dotarem", "gadavist", "multihance", "prohance"}),
    ("pd", {"pd", "pdw"}),
    ("t2", {"t2", "t2w", "stir"}),
    ("t1", {"t1", "t1w", "t1pre", "mprage", "spgr", "bravo", "tfe", "mpr", "vibe"}),
)
_T1CE_WORDS = {"t1ce", "t1c", "t1post", "t1gd", "t1+c", "t1+"}
_T1_WORDS = {"t1", "t1w", "mprage", "spgr", "bravo", "tfe", "mpr", "vibe"}
_BEFORE_CONTRAST = {"pre", "wo", "without", "noncontrast", "nc"}
_WORD = re.compile(r"[a-z0-9]+(?:\+c?|\*)?")
_EXTENSIONS = re.compile(r"\.(nii\.gz|nii|dcm|png|jpe?g)$")


def words(text):
    """Lower-case words of a description, folder or file name (its extension left out); a detached "+C"
    ("AX T1 +C") is the contrast word "+c"."""
    text = _EXTENSIONS.sub("", (text or "").lower())
    return set(_WORD.findall(text)) | ({"+c"} if re.search(r"(^|[^a-z0-9])\+\s*c\b", text) else set())


def look_of(text):
    """'flair', 't1ce', 't2', 'pd', 't1', 'dwi', 'swi' or 'other' for a description, folder or file name.

    A contrast word ("post", "gad") makes T1ce only beside a T1 word and without a before-contrast word
    ("T1 PRE GAD" is T1); "T2 POST" stays T2."""
    w = words(text)
    for look, vocabulary in _RULES:
        if not w & vocabulary:
            continue
        if look == "t1ce" and not w & _T1CE_WORDS and (not w & _T1_WORDS or w & _BEFORE_CONTRAST):
            continue
        return look
    return "other"


_PLANE_WORDS = {"sagittal": {"sagittal", "sag"}, "coronal": {"coronal", "cor"}}


def plane_of(text):
    """'sagittal' or 'coronal' where a description, folder or file name says so, else 'axial': every training
    collection but the healthy planes' (`flair-coronal`, `t1-sagittal`) is axial and says nothing of it."""
    w = words(text)
    return next((plane for plane, vocabulary in _PLANE_WORDS.items() if w & vocabulary), "axial")
