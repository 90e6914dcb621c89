"""Free-text DICOM fields without the patient data that sites type into them.

SeriesDescription is what a radiologist recognises a series by ("AX FLAIR",
"T1 POST GAD"), but scanners and technologists also put names, MRNs and dates
there ("SMITH^JOHN MRN 12345678 T2"). Path pseudonyms do not cover it, and it
reaches all three tables, flagged_studies.csv and the report. So it is reduced
to the words of an allow-list of MRI vocabulary (planes, sequences, contrast,
anatomy, technique) and short numbers; every other word is dropped, not
masked, so its length does not leak either. `--keep-series-descriptions`
keeps the text as the scanner wrote it (inside a hospital that wants it).
"""
import re

_WORDS = """
ax axi axial sag sagittal cor coronal tra trans transverse obl oblique 2d 3d mpr mip minip recon reformat reformats
t1 t2 t1w t2w t1ce t2star pd pdw flair stir dwi dti adc trace swi swan gre ffe tse fse se ir mprage spgr bravo vibe
space cube epi perfusion perf dsc dce asl mra tof mrv ciss fiesta blade propeller haste ssfse localizer localiser loc
scout survey calibration cal tof3d diffusion weighted weighting
post pre gad gd ce c contrast with without w wo dotarem gadavist multihance prohance enhanced enh
brain head iac iacs orbit orbits pituitary sella fossa posterior anterior whole neck cervical spine cerebral
fs fatsat fat sat water hr hires highres thin thick fast moco nav repeat rpt delayed early late sub subtraction map
maps sense asset nd norm dis2d dis3d iso isotropic volume vol bh fl fl3d fl2d tirm tir hemo hemosiderin
and of to mm b bvalue avg average ave series scan seq sequence sequences mri mr
""".split()
_KEEP = frozenset(_WORDS)
_TOKEN = re.compile(r"[A-Za-z0-9]+[+*]?|[+*]")
_SHORT_NUMBER = re.compile(r"^\d{1,3}(mm)?$", re.I)
_B_VALUE = re.compile(r"^b\d{1,4}$", re.I)
_SEQ_NUMBER = re.compile(r"^(t[12]|pd)(w|ce|star)?[+*]?$", re.I)


def _kept(token):
    t = token.rstrip("+*").lower()
    return (t in _KEEP or token in "+*" or bool(_SHORT_NUMBER.match(t)) or bool(_B_VALUE.match(t))
            or bool(_SEQ_NUMBER.match(token)))


def scrub_description(text):
    """The allow-listed words of a free-text field, in order, upper-cased; None for None, "" when none is left."""
    if text is None:
        return None
    return " ".join(t.upper() for t in _TOKEN.findall(str(text)) if _kept(t))


_QUOTED = re.compile(r"'[^'\n]{0,200}'|\"[^\"\n]{0,200}\"")
_DESCRIPTIONS: set = set()


def _attribute_names():
    """DICOM attribute names ('Photometric Interpretation'): safe to quote, unlike the values beside them."""
    if not _DESCRIPTIONS:
        from pydicom.datadict import DicomDictionary
        _DESCRIPTIONS.update(entry[2] for entry in DicomDictionary.values())
        _DESCRIPTIONS.update(entry[4] for entry in DicomDictionary.values())
    return _DESCRIPTIONS


def scrub_message(text):
    """An error message without the values a decoder quoted from the file ("... value 'SMITH^JOHN'").

    Libraries quote header values, file names and member names in their messages; every quoted
    string except a DICOM attribute's name becomes '<withheld>'."""
    if not text:
        return text
    names = _attribute_names()
    return _QUOTED.sub(lambda m: m.group(0) if m.group(0)[1:-1] in names else "'<withheld>'", str(text))
