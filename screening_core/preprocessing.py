"""The one definition of how image bytes become model input.

The trainer's tf.data pipeline and the Beam scoring pipeline both call
`prepare`, so a model is always scored on exactly the representation it was
trained on. The steps target the source confound of public MRI collections:
borders, padding and overall brightness differ between collections, so the
image is cropped to the head, centred on a square canvas and its intensities
are normalised per image from the head's own percentiles.

Bump `PREPROCESSING_ID` whenever the output of `prepare` changes: artifacts
record it and the scorer refuses an artifact whose id it does not implement.
Every id in `PREPROCESSING_IDS` stays implemented, so an artifact is scored on
exactly the representation it records.
"""
from __future__ import annotations

import dataclasses
import io
from typing import Any

import numpy as np
from PIL import Image, ImageOps

# v2 = v1 with a frame removed first (`_frame`); identical for every image without one.
# v3 = v2 whose head box leaves out small marks detached from the head at the image's edge (`_marks`).
# v4 = v3 that turns a negative copy (bright background, `_negative`) back into a positive one first.
PREPROCESSING_ID = "gray-headcrop-pnorm-v4"
PREPROCESSING_IDS = ("gray-headcrop-pnorm-v1", "gray-headcrop-pnorm-v2", "gray-headcrop-pnorm-v3", PREPROCESSING_ID)

# Pillow refuses images above 2x this many pixels and warns above it; we fail
# earlier with our own error so a decompression bomb never allocates memory.
MAX_IMAGE_PIXELS = 64 * 1024 * 1024

_FOREGROUND_LEVEL = 0.08  # fraction of the robust maximum that counts as head
_BOX_LEVEL = 0.15  # stricter level for the crop box: JPEG ringing at the edge stays out
_MIN_LINE_FRACTION = 0.04  # rows/cols with fewer head pixels are border/text


class ImageDecodeError(ValueError):
    """Bytes that are not a decodable raster image; `code` names why."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """What the model expects; stored in the artifact's metadata."""

    height: int = 128
    width: int = 128
    channels: int = 1
    dtype: str = "float32"
    preprocessing: str = PREPROCESSING_ID

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> InputSpec:
        spec = cls(**{f.name: d[f.name] for f in dataclasses.fields(cls)})
        if spec.preprocessing not in PREPROCESSING_IDS:
            raise ValueError(
                f"artifact needs preprocessing {spec.preprocessing!r}, this code "
                f"implements {', '.join(map(repr, PREPROCESSING_IDS))}")
        if spec.channels != 1 or spec.dtype != "float32":
            raise ValueError(f"unsupported input spec {spec}")
        return spec


_EXIF_ORIENTATION = 0x0112


def decode_raster(data: bytes) -> np.ndarray:
    """Decode PNG/JPEG/BMP/TIFF bytes to a 2-D float32 grayscale array.

    16-bit and float images keep their range; colour, palette, CMYK and alpha
    images are converted to luminance (MRI content is grayscale). An EXIF
    orientation (photos and web copies of scans carry one) is applied, so the
    model and the review image see the slice the way every viewer shows it;
    no image in the training collections has one.
    """
    if not data:
        raise ImageDecodeError("empty_file", "zero-byte file")
    try:
        im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:  # header declares > 2x Pillow's own limit
        raise ImageDecodeError("image_too_large", str(e)) from e
    except Exception as e:  # Pillow raises many types for garbage input
        raise ImageDecodeError("undecodable_image", f"not a readable image: {e}") from e
    with im:
        w, h = im.size
        if w * h > MAX_IMAGE_PIXELS:
            raise ImageDecodeError(
                "image_too_large", f"{w}x{h} pixels exceeds the limit of {MAX_IMAGE_PIXELS}")
        try:
            shown: Image.Image = im
            if _orientation(im) not in (None, 1):
                shown = ImageOps.exif_transpose(im)
            if shown.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                arr = np.asarray(shown.convert("F") if shown.mode != "F" else shown, dtype=np.float32)
            else:
                flat = shown
                if shown.mode in ("RGBA", "LA", "PA") or (shown.mode == "P" and "transparency" in shown.info):
                    bg = Image.new("RGBA", shown.size, (0, 0, 0, 255))
                    flat = Image.alpha_composite(bg, shown.convert("RGBA"))
                arr = np.asarray(flat.convert("L"), dtype=np.float32)
        except Exception as e:
            raise ImageDecodeError("undecodable_image", f"image data is corrupt: {e}") from e
    return arr


def _orientation(im):
    """The EXIF orientation tag, or None where there is none or the EXIF block cannot be read (the pixels
    still can: a damaged tag must not cost the image)."""
    try:
        return im.getexif().get(_EXIF_ORIENTATION)
    except Exception:
        return None


_FRAME_MAX = 0.25  # a uniform band wider than this share of the side is a background, not a frame
_FRAME_THIN = 0.03  # a band at most this wide is a frame at any brightness


def _frame(img01):
    """Widths (top, bottom, left, right) of a uniform frame around the image; 0 where there is none.

    Why (v2): web copies, screenshots and secondary captures of scans come framed in white or grey. A
    frame's lines hold head-bright pixels end to end, so `_head_box` took the whole image: the head
    shrank in the model input and the frame's edges entered it. v35 found 66 % of brain-mri's
    validation tumors given a 24 px white frame (99 % plain) and 15 % -> 1 % of its tumor-free
    slices flagged. A band is a frame when it is thin, near white, or has a dark image inside it;
    a wide mid-grey band with the head next to it is the scanner's own background and stays
    (TCGA-LGG's FG T1 slices). Measured: docs/model_v4_notes.md row FRM."""
    h, w = img01.shape
    widths = []
    for lines, side in ((img01, h), (img01[::-1], h), (img01.T, w), (img01[:, ::-1].T, w)):
        limit = max(2, int(_FRAME_MAX * side))
        n, total, inside = 0, 0.0, None
        for line in lines[:limit + 1]:
            mean = float(line.mean())
            if mean > _BOX_LEVEL and float(line.std()) < 0.05:
                n, total = n + 1, total + mean
            else:
                inside = mean
                break
        band = total / n if n else 0.0
        framed = 0 < n <= limit and (n <= max(2, round(_FRAME_THIN * side)) or band >= 0.85
                                     or (inside is not None and inside < min(_BOX_LEVEL, 0.5 * band)))
        widths.append(n if framed else 0)
    return tuple(widths)


def _unframed(img01):
    """`img01` with its frame (`_frame`) set to background."""
    t, b, left, r = _frame(img01)
    if not (t or b or left or r):
        return img01
    h, w = img01.shape
    out = img01.copy()
    out[:t], out[h - b:], out[:, :left], out[:, w - r:] = 0, 0, 0, 0
    return out


_NEGATIVE_CORNER = 0.1  # corner squares of this share of the unframed image's shorter side...
_NEGATIVE_LEVEL = 0.9  # ...two or more of them with a median this bright make the image a negative


def _negative(img01):
    """Whether `img01` (normalised) is a negative copy: dark head tissue on a bright background.

    Why (v4): film negatives, a viewer's inverted display saved as a screenshot and MONOCHROME1 pixels
    exported without their photometric interpretation all bring an MR slice inverted. Every model learnt
    on positives; v38 found 74 % of brain-mri's validation tumors inverted (99 % as they are; copy check).
    An MR slice's corners lie outside the head, in air, so they are dark; a negative's are the brightest
    part of the image. The corners are taken inside a frame (`_frame`), whose white lines a positive web
    copy has too, and two of the four must be bright, since a neck or a tight crop can fill one. Measured
    on 4,580 slices of every collection (docs/model_v4_notes.md row NEG): no slice as it is, no slice in a
    white or grey frame, and 93-100 % of the inverted copies by collection are taken for negatives; over all
    29,500 slices of those collections, one noise slice with no head in it."""
    t, b, left, r = _frame(img01)
    h, w = img01.shape
    inner = img01[t:h - b, left:w - r]
    k = int(_NEGATIVE_CORNER * min(inner.shape))
    if k < 2:
        return False
    corners = (inner[:k, :k], inner[:k, -k:], inner[-k:, :k], inner[-k:, -k:])
    return sum(_median_at_least(c, _NEGATIVE_LEVEL) for c in corners) >= 2


def _median_at_least(values, level):
    """np.median(values) >= level, without the median where fewer than half the values reach `level` (then it
    cannot): a positive slice's dark corners, nearly every image, cost a count instead of a partition."""
    if 2 * np.count_nonzero(values >= level) < values.size:
        return False
    return float(np.median(values)) >= level


def _positive(spec, gray, img01):
    """(`img01`, or from v4 on the normalised inverse of `gray` where `img01` is a negative (`_negative`); whether
    it was taken for one: None before v4, which does not ask)."""
    if PREPROCESSING_IDS.index(spec.preprocessing) < 3:
        return img01, None
    if not _negative(img01):
        return img01, False
    inverse = _normalise(-np.asarray(gray, np.float32))
    return (img01, False) if inverse is None else (inverse, True)


_MARK_CELLS = 64  # the grid the marks are found on: cells of about 1/64 of the longer side
_MARK_SMALL = 0.2  # a component with fewer cells than this share of the largest one's is a mark...
_MARK_EDGE = 0.2  # ...when it lies wholly within this share of the side from one edge


def _components(cells):
    """(n_cells, r0, r1, c0, c1) of each 8-connected component of a small boolean grid.

    Row runs joined by union-find: a few hundred runs on a 64-cell grid, no image library needed."""
    padded = np.zeros((cells.shape[0], cells.shape[1] + 2), np.int8)
    padded[:, 1:-1] = cells
    rs, cs = np.nonzero(np.diff(padded, axis=1))
    runs = list(zip(rs[::2].tolist(), cs[::2].tolist(), cs[1::2].tolist(), strict=True))  # (row, start, end), row order
    parent = list(range(len(runs)))

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first = 0  # the first run of the previous row
    for i, (r, s, e) in enumerate(runs):
        while runs[first][0] < r - 1:
            first += 1
        for j in range(first, i):
            pr, ps, pe = runs[j]
            if pr == r - 1 and ps <= e and pe >= s:  # touching, diagonals included
                a, b = root(i), root(j)
                if a != b:
                    parent[b] = a
    comps: dict[int, tuple[int, int, int, int, int]] = {}
    for i, (r, s, e) in enumerate(runs):
        n, r0, r1, c0, c1 = comps.get(root(i), (0, r, r, s, e))
        comps[root(i)] = (n + e - s, min(r0, r), max(r1, r + 1), min(c0, s), max(c1, e))
    return list(comps.values())


def _marks(mask):
    """Pixels of `mask` in small marks detached from the head near the image's edge (text, scale bars, markers).

    Why (v3): screenshots, teaching files and the tumor-free source of brain-mri carry burned-in text,
    orientation letters, scale bars and skin markers beside the head. Their rows and columns joined the
    head box, so the head shrank in the model input by how much text a copy had (v36: 90 % of brain-mri's
    validation tumors found with corner text, 99 % without), and brain-mri's annotated tumor-free images
    reached the model smaller than its tumors. A mark is a connected piece of the head mask, on a grid
    of cells about 1/64 of the side, with under a fifth of the largest piece's cells, lying wholly in the
    outer fifth of the image on one side, and not cut off by the image's border: a shoulder below a
    lateral sagittal slice is body, and dropping it zoomed those slices into false alarms on healthy
    heads (first version of v3). Measured: docs/model_v4_notes.md row BOX."""
    h, w = mask.shape
    c = max(1, -(-max(h, w) // _MARK_CELLS))
    # a cell is on when a fifth of its pixels are (Pillow's reduce averages each c x c block, edge blocks over what they hold)
    cells = np.asarray(Image.fromarray(mask.view(np.uint8) * np.uint8(255)).reduce(c)) >= 51
    gh, gw = cells.shape
    comps = _components(cells)
    out = np.zeros((gh, gw), bool)
    if len(comps) > 1:
        big = max(n for n, *_ in comps)
        for n, r0, r1, c0, c1 in comps:
            at_edge = (r1 <= _MARK_EDGE * gh or r0 >= (1 - _MARK_EDGE) * gh
                       or c1 <= _MARK_EDGE * gw or c0 >= (1 - _MARK_EDGE) * gw)
            rows, cols = slice(r0 * c, r1 * c), slice(c0 * c, c1 * c)
            cut_off = ((r0 == 0 and mask[0, cols].any()) or (r1 == gh and mask[h - 1, cols].any())
                       or (c0 == 0 and mask[rows, 0].any()) or (c1 == gw and mask[rows, w - 1].any()))
            if n < _MARK_SMALL * big and at_edge and not cut_off:
                out[max(0, r0 - 1):r1 + 1, max(0, c0 - 1):c1 + 1] = True
    if not out.any():
        return None
    return np.repeat(np.repeat(out, c, axis=0), c, axis=1)[:h, :w]


def _framed_and_boxed(spec, img01):
    """(`img01` as `spec`'s preprocessing crops it, the head box): the one place each version differs.

    v1: the image as it is and every head pixel in the box; v2: its frame removed first (`_frame`);
    v3: v2 with small marks beside the head left out of the box (`_marks`)."""
    version = PREPROCESSING_IDS.index(spec.preprocessing)
    seen = img01 if version == 0 else _unframed(img01)
    return seen, _head_box(seen, leave_out_marks=version >= 2)


def _head_box(img01, leave_out_marks):
    """Bounding box (r0, r1, c0, c1) of the head; whole image if none found."""
    mask = img01 > _BOX_LEVEL
    h, w = mask.shape
    if leave_out_marks:
        marks = _marks(mask)
        if marks is not None:
            mask &= ~marks
    rows = np.flatnonzero(mask.sum(axis=1) > _MIN_LINE_FRACTION * w)
    cols = np.flatnonzero(mask.sum(axis=0) > _MIN_LINE_FRACTION * h)
    if rows.size < 0.1 * h or cols.size < 0.1 * w:
        return 0, h, 0, w
    return rows[0], rows[-1] + 1, cols[0], cols[-1] + 1


def _resize(img, height, width):
    out = Image.fromarray(img.astype(np.float32), mode="F").resize(
        (width, height), Image.Resampling.BILINEAR)
    return np.asarray(out, dtype=np.float32)


def _lerp(a, b, t):
    """NumPy's own interpolation between order statistics (np.percentile, method 'linear')."""
    diff = b - a
    return b - diff * (1 - t) if t >= 0.5 else a + diff * t


def _percentiles(values, qs):
    """np.percentile(values, qs) (method 'linear'), bit for bit, by selection on fewer values.

    Like NumPy, a float `qs` gives a value of the array's dtype and a list gives float64s.

    np.percentile partitions around both neighbours of every requested rank; the
    99.5th percentile of a 512 x 512 slice cost 4 ms of the ~6 ms of preprocessing.
    For a rank in the top tail, a bound from a strided sample keeps only the
    values above it (one vectorised pass), and the exact ranks are selected among
    those; if the sample's bound was not low enough the whole array is partitioned.
    """
    flat = values.reshape(-1)
    n = flat.size
    ranks = []
    for q in ([qs] if isinstance(qs, float) else qs):
        virtual = q / 100.0 * (n - 1)
        k = int(np.floor(virtual))
        gamma = virtual - k if isinstance(qs, float) else np.float64(virtual - k)
        ranks.append((k, min(k + 1, n - 1), gamma))
    lowest = min(k for k, _, _ in ranks)
    offset, pool = 0, flat
    if n > 8192 and lowest > 0.9 * n:
        sample = flat[:: n // 4096]
        j = int(sample.size * lowest / n) - 4 * int(np.sqrt(sample.size)) - 8
        if j > 0:
            top = flat[flat >= np.partition(sample, j)[j]]
            if n - top.size <= lowest:
                offset, pool = n - top.size, top
    wanted = sorted({r - offset for k, k1, _ in ranks for r in (k, k1)})
    part = np.partition(pool, wanted)
    out = [_lerp(part[k - offset], part[k1 - offset], t) for k, k1, t in ranks]
    return out[0] if isinstance(qs, float) else out


def _normalise(gray):
    """Intensities scaled to [0, 1] by the 99.5th percentile above the minimum; None for a flat image."""
    g = np.asarray(gray, dtype=np.float32)
    if g.ndim != 2:
        raise ValueError(f"expected a 2-D grayscale array, got shape {g.shape}")
    if not np.isfinite(g).all():  # the check is a fifth of the cost of the copy it avoids
        g = np.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0)
    low = g.min()
    if low != 0:
        g = g - low
    top = _percentiles(g, 99.5) if g.size > 1 else 0.0
    if top <= 0:
        return None
    out = np.divide(g, top, dtype=np.float32)
    return np.clip(out, 0.0, 1.0, out=out)


def _square_crop(img, box):
    """The box's content centred on a zero square canvas (the head keeps its aspect ratio)."""
    r0, r1, c0, c1 = box
    crop = img[r0:r1, c0:c1]
    side = max(crop.shape)
    canvas = np.zeros((side, side), np.float32)
    oy, ox = (side - crop.shape[0]) // 2, (side - crop.shape[1]) // 2
    canvas[oy:oy + crop.shape[0], ox:ox + crop.shape[1]] = crop
    return canvas


def _square_resized(img, box, height, width):
    """The box's content on a square canvas, resized to height x width.

    Ordinary slices are padded at full size and then resized (the v1/v2
    definition). A strip such as a 1 x 20000 PNG would need a 20000 x 20000
    canvas (1.6 GB), so when padding would more than quadruple the pixels and
    exceed 4 Mpx, the crop is resized first and padded at the target size.
    """
    r0, r1, c0, c1 = box
    ch, cw = r1 - r0, c1 - c0
    side = max(ch, cw)
    if side * side <= max(4 * ch * cw, 1 << 22):
        return _resize(_square_crop(img, box), height, width)
    sh, sw = max(1, round(ch * height / side)), max(1, round(cw * width / side))
    small = _resize(np.ascontiguousarray(img[r0:r1, c0:c1]), sh, sw)
    canvas = np.zeros((height, width), np.float32)
    oy, ox = (height - sh) // 2, (width - sw) // 2
    canvas[oy:oy + sh, ox:ox + sw] = small
    return canvas


def prepare(gray: np.ndarray, spec: InputSpec = InputSpec()) -> np.ndarray:
    """Turn a 2-D grayscale array (any range) into a (H, W, 1) float32 in [0, 1]."""
    return prepare_for_scoring(gray, spec)[0]


def prepare_for_scoring(gray: np.ndarray, spec: InputSpec = InputSpec()
                        ) -> tuple[np.ndarray, float, bool | None]:
    """`prepare`, the side of one model-input pixel in source pixels, and whether the image was taken for a
    negative and prepared from its inverse (v4; None for earlier versions, which do not ask).

    The scale turns an area on the model input (a lesion map) back into source
    pixels, and with the DICOM pixel spacing into mm², without a second pass. The
    row says the image was a negative: the review thumbnail shows the positive it was scored as.
    """
    g01 = _normalise(gray)
    if g01 is None:
        h, w = np.shape(gray)
        return np.zeros((spec.height, spec.width, 1), np.float32), max(h, w) / spec.height, None
    g01, negative = _positive(spec, gray, g01)
    g01, box = _framed_and_boxed(spec, g01)
    scale = max(box[1] - box[0], box[3] - box[2]) / spec.height
    return _finish(_square_resized(g01, box, spec.height, spec.width)), float(scale), negative


def _finish(small: np.ndarray) -> np.ndarray:
    """Head intensities stretched to [0.1, 1] between their 1st and 99th percentiles; background 0."""
    head = small[small > _FOREGROUND_LEVEL]
    if head.size >= 16:
        lo, hi = _percentiles(head, [1.0, 99.0])
        if hi - lo > 1e-6:
            small = np.where(small > _FOREGROUND_LEVEL, (small - lo) / (hi - lo) * 0.9 + 0.1, 0.0)
    return np.clip(small, 0.0, 1.0).astype(np.float32)[..., None]


def project_mask(gray: np.ndarray, mask: np.ndarray, spec: InputSpec = InputSpec()) -> np.ndarray:
    """A mask of `gray` (same shape) moved into model-input coordinates, (H, W) float in [0, 1].

    Uses the crop box `prepare` takes from the image itself, so a tumor mask
    lines up with the model input and its Grad-CAM heatmap.
    """
    mask = np.asarray(mask, np.float32)
    if mask.shape != np.shape(gray):
        raise ValueError(f"mask shape {mask.shape} differs from image shape {np.shape(gray)}")
    g01 = _normalise(gray)
    box = _framed_and_boxed(spec, _positive(spec, gray, g01)[0])[1] if g01 is not None else (0, mask.shape[0], 0, mask.shape[1])
    return np.clip(_square_resized(mask / max(mask.max(), 1e-6), box, spec.height, spec.width), 0, 1)


def image_bytes_to_input(data: bytes, spec: InputSpec = InputSpec()) -> np.ndarray:
    """Raster bytes -> model input; the trainer's whole per-file transform."""
    return prepare(decode_raster(data), spec)
