"""A NIfTI volume's axial slices as a radiologist's viewer shows them: one source for the scoring job and the trainer.

brain-score turns a NIfTI volume into frames (beam_pipeline.nifti, which adds the size limits and error codes of
hostile input), and the trainer cuts training slices from tumor-free volumes (trainer.volume_slices). Both must
see the same orientation and pixel shape, or the model trains on heads turned or squashed unlike the heads it
scores: the volume is turned to the closest canonical orientation (RAS+), so that its third axis runs from feet
to head whatever the acquisition plane or the converter's axis order, and every axial slice is shown with
anterior at the top and the patient's right on the image's left. Slices whose voxels are not square are
resampled to square pixels, because the model's preprocessing keeps the image's aspect.
"""
import numpy as np

PLANES = ("axial", "sagittal", "coronal")


def _canonical(img):
    """The first 3-D volume of a nibabel image in RAS+ (voxel index i grows toward the patient's right, j toward
    anterior, k toward the head), and its voxel sizes."""
    import nibabel as nib
    first = img.slicer[(slice(None),) * 3 + (0,) * (len(img.shape) - 3)] if len(img.shape) > 3 else img
    canonical = nib.as_closest_canonical(first)
    volume = np.asarray(canonical.dataobj, dtype=np.float32)
    if volume.ndim == 2:
        volume = volume[..., None]
    return volume, tuple(float(z) for z in canonical.header.get_zooms()[:3])


def axial_frames(img):
    """(list of 2-D float32 axial slices, column spacing, row spacing) of a nibabel image; a 4-D image gives the
    slices of its first volume (the others repeat the anatomy in another contrast or time)."""
    return plane_frames(img, "axial")


def plane_frames(img, plane):
    """`axial_frames` for any of PLANES, each as a viewer shows it (radiological convention).

    Axial: rows run anterior -> posterior, columns the patient's right -> left, frames feet to head. Sagittal:
    the head up and the face to the left, frames from the patient's right to left. Coronal: the head up and the
    patient's right on the image's left, frames front to back. The trainer cuts tumor-free sagittal and coronal
    slices this way (trainer.volume_slices --planes): a model that has seen only axial heads flags half of the
    sagittal and coronal slices of heads without a tumor (docs/model_v4_notes.md, row PL).
    """
    if plane not in PLANES:
        raise ValueError(f"plane must be one of {PLANES}, got {plane!r}")
    volume, (zx, zy, zz) = _canonical(img)
    if plane == "axial":
        return [np.ascontiguousarray(volume[::-1, ::-1, k].T) for k in range(volume.shape[2])], zx, zy
    if plane == "sagittal":
        return [np.ascontiguousarray(volume[i, ::-1, ::-1].T) for i in range(volume.shape[0] - 1, -1, -1)], zy, zz
    return [np.ascontiguousarray(volume[::-1, j, ::-1].T) for j in range(volume.shape[1] - 1, -1, -1)], zx, zz


def square_pixels(frames, dx, dy, max_frame_pixels, tolerance=0.02):
    """(frames, dx, dy) with square pixels at the finer of the two spacings (the coarser one where the finer
    would break the frame limit); unchanged when already square within `tolerance` or the spacing is unknown."""
    if not (np.isfinite(dx) and np.isfinite(dy) and dx > 0 and dy > 0) or abs(dx / dy - 1) <= tolerance:
        return frames, dx, dy
    rows, cols = frames[0].shape
    for s in (min(dx, dy), max(dx, dy)):
        size = (max(1, round(cols * dx / s)), max(1, round(rows * dy / s)))  # PIL: (width, height)
        if size[0] * size[1] <= max_frame_pixels:
            break
    from PIL import Image
    return [np.asarray(Image.fromarray(np.ascontiguousarray(f, np.float32)).resize(size, Image.BILINEAR), np.float32)
            for f in frames], s, s
