"""Generated sample "hospital archives" for the demo and the tests.

Everything here is synthetic: head-like ellipses (some with a bright lesion)
saved as PNG, JPEG and DICOM. DICOM patient fields are fabricated
("DEMO^PATIENT^n"); they exist to show that they never reach the output.
"""
import io
import os
import tarfile
import zipfile

import numpy as np
from PIL import Image


def synthetic_slice(seed, size=128, lesion=False):
    """uint8 slice: an elliptic head with texture, and a bright lesion if asked."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    cy, cx = 0.5 + rng.uniform(-0.04, 0.04, 2)
    ry, rx = rng.uniform(0.33, 0.42, 2)
    r2 = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2
    img = np.where(r2 <= 1, 70 + 35 * np.sin(xx * rng.uniform(10, 25)) * np.cos(yy * rng.uniform(10, 25)), 0)
    img = np.where((r2 > 0.85) & (r2 <= 1), 200, img)  # skull rim
    img = img + rng.normal(0, 5, img.shape) * (r2 <= 1)
    if lesion:
        ly, lx = cy + rng.uniform(-0.15, 0.15), cx + rng.uniform(-0.15, 0.15)
        rad = rng.uniform(0.06, 0.1)
        img = np.where((yy - ly) ** 2 + (xx - lx) ** 2 <= rad * rad, 235, img)
    return np.clip(img, 0, 255).astype(np.uint8)


def encode(arr, fmt):
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def dicom_bytes(arr, patient_index, study_uid, series_uid, instance, modality="MR",
                photometric="MONOCHROME2", window=(2048, 4096)):
    """A 16-bit grayscale DICOM with fabricated patient fields and real UIDs."""
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.Modality, ds.InstanceNumber = modality, instance
    ds.PatientName = f"DEMO^PATIENT^{patient_index}"
    ds.PatientID = f"FAKE-{patient_index:04d}"
    ds.PatientBirthDate = "19000101"
    pixels = (arr.astype(np.uint16) * 16)  # 12-bit range, as scanners store it
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = pixels.tobytes()
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def tar_add(tar, name, data):
    """Add `data` to an open TarFile as a regular file member `name`."""
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_sample_archives(out_dir, n_images=36, seed=0):
    """A zip and a tar.gz with PNG/JPEG/DICOM slices and two bad files.

    Returns {"files": [...], "members": n, "lesion_members": [...]}.
    """
    from pydicom.uid import generate_uid
    os.makedirs(out_dir, exist_ok=True)
    zip_path = os.path.join(out_dir, "sample_archive.zip")
    tgz_path = os.path.join(out_dir, "sample_archive.tar.gz")
    half = n_images // 2
    lesions = []
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(half):
            lesion = i % 3 == 0
            fmt, ext = ("PNG", "png") if i % 2 else ("JPEG", "jpg")
            name = f"patient_{i // 6:02d}/slice_{i:03d}.{ext}"
            zf.writestr(name, encode(synthetic_slice(seed + i, lesion=lesion), fmt))
            if lesion:
                lesions.append(name)
        zf.writestr("notes/readme.txt", b"Generated sample archive; not patient data.")
        zf.writestr("patient_99/corrupt.jpg", encode(synthetic_slice(seed + 999), "JPEG")[:400])
    with tarfile.open(tgz_path, "w:gz") as tar:
        for s in range(2):
            study, series = generate_uid(), generate_uid()
            for j in range((n_images - half) // 2):
                i = half + s * 100 + j
                lesion = s == 1 and j in (2, 3, 4)
                name = f"study_{s}/series_1/IM{j:04d}.dcm"
                tar_add(tar, name, dicom_bytes(synthetic_slice(seed + i, lesion=lesion), s, study, series, j + 1))
                if lesion:
                    lesions.append(name)
        tar_add(tar, "study_1/series_1/IM9999.dcm", b"DICM? no: truncated upload")
    members = half + 2 + 2 * ((n_images - half) // 2) + 1
    return {"files": [zip_path, tgz_path], "members": members, "lesion_members": lesions}
