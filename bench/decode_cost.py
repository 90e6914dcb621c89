"""Decode + preprocess cost per input format: what real hospital inputs cost, not just 224 px JPEG.

  .venv/bin/python bench/decode_cost.py --n 200

For N slices (real brain-mri JPEGs from ../shared when present, else generated)
it builds the inputs a hospital sends: 224x224 JPEG as stored; 512x512 16-bit MR
DICOM (the slice upsampled, 12-bit range, noise) uncompressed, RLE Lossless,
JPEG 2000 Lossless and, when python-gdcm is installed, JPEG Lossless (process 14);
512x512 PNG (8 and 16 bit); 1024x1024 JPEG. Each is decoded with the pipeline's
`decoding.decode` and preprocessed with `preprocessing.prepare`; ms per image,
best of --repeats passes. The last rows measure Pillow's JPEG draft mode (DCT-domain
downscale) on the 1024 px JPEGs: its time and how far it moves the model input and
the committed model's probability (ONNX Runtime) from a full decode.
"""
import argparse
import io
import os
import sys
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from beam_pipeline import decoding  # noqa: E402
from bench import common  # noqa: E402
from screening_core import preprocessing  # noqa: E402


def _slices(n):
    blobs, source = common.image_bytes(n, seed=1)
    return [np.asarray(Image.open(io.BytesIO(b)).convert("L")) for b in blobs], blobs, source


def _mr16(gray8, size, rng):
    up = np.asarray(Image.fromarray(gray8).resize((size, size), Image.Resampling.BICUBIC), np.float32)
    return np.clip(up * 16 + rng.normal(0, 4, up.shape) * (up > 10), 0, 4095).astype(np.uint16)


def _dicom(pixels, syntax):
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = MRImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "MR"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    ds.WindowCenter, ds.WindowWidth = 1024, 2048
    ds.PixelData = pixels.tobytes()
    if syntax == "jpeg-lossless":
        return _gdcm_jpeg_lossless(ds)
    if syntax != "uncompressed":
        from pydicom.uid import JPEG2000Lossless, RLELossless
        ds.compress({"rle": RLELossless, "j2k": JPEG2000Lossless}[syntax], pixels)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _gdcm_jpeg_lossless(ds):
    import tempfile

    import gdcm  # python-gdcm: the only encoder for JPEG Lossless process 14 on PyPI
    with tempfile.TemporaryDirectory() as d:
        src, dst = os.path.join(d, "a.dcm"), os.path.join(d, "b.dcm")
        ds.save_as(src, enforce_file_format=True)
        reader = gdcm.ImageReader()
        reader.SetFileName(src)
        reader.Read()
        change = gdcm.ImageChangeTransferSyntax()
        change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGLosslessProcess14_1))
        change.SetInput(reader.GetImage())
        change.Change()
        writer = gdcm.ImageWriter()
        writer.SetFileName(dst)
        writer.SetFile(reader.GetFile())
        writer.SetImage(change.GetOutput())
        writer.Write()
        return open(dst, "rb").read()


def _png(arr):
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg(arr, quality=90):
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _best(fn, items, repeats):
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for item in items:
            fn(item)
        best = min(best, (time.perf_counter() - t0) / len(items))
    return best * 1e3


def _draft_gray(data, target):
    im = Image.open(io.BytesIO(data))
    im.draft("L", (target, target))
    return np.asarray(im.convert("L"), np.float32)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", default=common.DEFAULT_MODEL)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    slices, jpegs, source = _slices(args.n)
    mr = [_mr16(g, 512, rng) for g in slices]
    big = [np.asarray(Image.fromarray(g).resize((1024, 1024), Image.Resampling.BICUBIC)) for g in slices]
    inputs = {"JPEG 224x224 8-bit (as stored)": jpegs,
              "PNG 512x512 8-bit": [_png((m >> 4).astype(np.uint8)) for m in mr],
              "PNG 512x512 16-bit": [_png(m) for m in mr],
              "DICOM 512x512 16-bit uncompressed": [_dicom(m, "uncompressed") for m in mr],
              "DICOM 512x512 16-bit RLE Lossless": [_dicom(m, "rle") for m in mr],
              "DICOM 512x512 16-bit JPEG 2000 Lossless": [_dicom(m, "j2k") for m in mr],
              "JPEG 1024x1024 8-bit": [_jpeg(b) for b in big]}
    notes = {}
    try:
        inputs["DICOM 512x512 16-bit JPEG Lossless (process 14)"] = [_dicom(m, "jpeg-lossless") for m in mr]
    except ImportError:
        notes["jpeg_lossless"] = "skipped: python-gdcm (the encoder) is not installed; pip install python-gdcm"
    spec = preprocessing.InputSpec()
    rows = []
    base = None
    for name, blobs in inputs.items():
        grays = [decoding.decode(b).frames[0].gray for b in blobs]
        dec = _best(lambda b: decoding.decode(b), blobs, args.repeats)
        prep = _best(lambda g: preprocessing.prepare(g, spec), grays, args.repeats)
        base = base or dec + prep
        rows.append({"input": name, "kib_per_image": sum(map(len, blobs)) / len(blobs) / 1024,
                     "decode_ms": dec, "prepare_ms": prep, "total_ms": dec + prep,
                     "ratio_to_224_jpeg": (dec + prep) / base})
    # JPEG draft mode on the 1024 px JPEGs: DCT-domain downscale to >= 2x the model input.
    large = inputs["JPEG 1024x1024 8-bit"]
    for target in (512, 256):
        dec = _best(lambda b, target=target: _draft_gray(b, target), large, args.repeats)
        grays = [_draft_gray(b, target) for b in large]
        prep = _best(lambda g: preprocessing.prepare(g, spec), grays, args.repeats)
        rows.append({"input": f"JPEG 1024x1024 8-bit, draft >= {target} px",
                     "kib_per_image": sum(map(len, large)) / len(large) / 1024,
                     "decode_ms": dec, "prepare_ms": prep, "total_ms": dec + prep,
                     "ratio_to_224_jpeg": (dec + prep) / base})
        full = np.stack([preprocessing.prepare(decoding.decode(b).frames[0].gray, spec) for b in large])
        drafted = np.stack([preprocessing.prepare(g, spec) for g in grays])
        notes[f"draft_{target}_max_abs_input_difference"] = float(np.abs(full - drafted).max())
        notes[f"draft_{target}_mean_abs_input_difference"] = float(np.abs(full - drafted).mean())
        try:
            from beam_pipeline.inference import ChunkModelHandler
            score = ChunkModelHandler(args.model, 64, engine="onnxruntime").load_model()
            p_full, p_draft = score(full)[0], score(drafted)[0]
            notes[f"draft_{target}_max_abs_probability_difference"] = float(np.abs(p_full - p_draft).max())
        except Exception as e:  # no model.onnx: the input difference still stands
            notes["probability_difference"] = f"not measured: {e}"
    common.report("decode_cost", rows, {"source": source, "images": args.n, **notes})


if __name__ == "__main__":
    main()
