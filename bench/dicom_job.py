"""The product's real work: whole-job throughput on MR series in each DICOM transfer syntax.

  .venv/bin/python bench/dicom_job.py --slices 200 --sizes 512,256

For each size and transfer syntax an encoder is installed for, it builds one zip of MR series
(20 slices per series, 16-bit with a 12-bit range, the brain-mri slices upsampled with noise, or
generated slices without ../shared) and measures, on this machine:

  codec       pydicom's pixel decode alone, a tight loop over the instances (ms/image)
  decode+prep the pipeline's `decoding.decode` + `preprocessing.prepare` (ms/image)
  limit       one process: decode + prepare + the model on ONNX Runtime in batches of 64 (images/s)
  job         `brain-score` on the zip as the README runs it (ONNX Runtime, heatmaps off, whole
              process including start-up): images/s, and vCPU ms per image from the child's rusage
  ratio       job / limit

Syntaxes: Explicit VR Little Endian, RLE Lossless, JPEG 2000 Lossless and lossy (pylibjpeg-openjpeg),
JPEG-LS Lossless (pyjpegls), JPEG Lossless process 14 (python-gdcm, when installed), JPEG baseline 8-bit
(Pillow-encoded, encapsulated). A syntax without an encoder is listed with the reason.
"""
import argparse
import io
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from beam_pipeline import decoding  # noqa: E402
from bench import common  # noqa: E402
from bench.decode_cost import _gdcm_jpeg_lossless, _mr16, _slices  # noqa: E402
from screening_core import preprocessing  # noqa: E402

SERIES_LEN = 20
SYNTAXES = ("explicit-le", "rle", "j2k-lossless", "j2k-lossy", "jpeg-ls-lossless", "jpeg-lossless-p14",
            "jpeg-baseline-8bit")


def _dataset(pixels, study, series, n):
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = MRImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.InstanceNumber = study, series, n
    ds.Modality, ds.SeriesDescription = "MR", "AX FLAIR"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    ds.PixelData = pixels.tobytes()
    return ds


def encode(pixels, syntax, study, series, n):
    """Part 10 bytes of one MR slice in `syntax`."""
    from pydicom import uid
    ds = _dataset(pixels, study, series, n)
    if syntax == "rle":
        ds.compress(uid.RLELossless, pixels)
    elif syntax == "j2k-lossless":
        ds.compress(uid.JPEG2000Lossless, pixels)
    elif syntax == "j2k-lossy":
        ds.compress(uid.JPEG2000, pixels, j2k_psnr=[80])
    elif syntax == "jpeg-ls-lossless":
        ds.compress(uid.JPEGLSLossless, pixels)
    elif syntax == "jpeg-lossless-p14":
        return _gdcm_jpeg_lossless(ds)
    elif syntax == "jpeg-baseline-8bit":
        from pydicom.encaps import encapsulate
        eight = (pixels >> 4).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(eight).save(buf, format="JPEG", quality=90)
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.PixelData = encapsulate([buf.getvalue()])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = uid.JPEGBaseline8Bit
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _codec_ms(blobs):
    import pydicom
    t0 = time.perf_counter()
    for b in blobs:
        _ = pydicom.dcmread(io.BytesIO(b)).pixel_array
    return (time.perf_counter() - t0) / len(blobs) * 1e3


def _decode_prepare_ms(blobs, spec, score):
    """Decode + prepare time per image, and the model's probabilities (scored 64 at a time, untimed: all of
    them prepared at once would hold 2 GB per 10,000 slices, and one call on 5,000 needed 24 GB)."""
    spent, probs = 0.0, []
    for i in range(0, len(blobs), 64):
        t0 = time.perf_counter()
        xs = np.stack([preprocessing.prepare(decoding.decode(b).frames[0].gray, spec) for b in blobs[i:i + 64]])
        spent += time.perf_counter() - t0
        probs.append(np.asarray(score(xs)[0]).reshape(-1))
    return spent / len(blobs) * 1e3, np.concatenate(probs)


def _limit_ips(blobs, spec, score):
    t0 = time.perf_counter()
    for i in range(0, len(blobs), 64):
        score(np.stack([preprocessing.prepare(decoding.decode(b).frames[0].gray, spec) for b in blobs[i:i + 64]]))
    return len(blobs) / (time.perf_counter() - t0)


def _job(zip_path, model, work):
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "beam_pipeline.run", "--input", zip_path, "--output",
                           os.path.join(work, "out-" + os.path.basename(zip_path)), "--model", model,
                           "--engine", "onnxruntime", "--no-heatmaps", "--no-report", "--no-fail-on-drift",
                           "--pseudonym-key-file", os.path.join(work, "key")],
                          capture_output=True, text=True, cwd=common.REPO)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"brain-score failed ({proc.returncode}): {proc.stderr[-500:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=200, help="instances per archive (series of 20)")
    parser.add_argument("--sizes", default="512,256")
    parser.add_argument("--syntaxes", default=",".join(SYNTAXES))
    parser.add_argument("--model", default=common.DEFAULT_MODEL)
    parser.add_argument("--result-name", default="dicom_job", help="bench/results/<name>.json")
    args = parser.parse_args()
    from pydicom.uid import generate_uid

    from beam_pipeline.inference import ChunkModelHandler
    score = ChunkModelHandler(args.model, 64, engine="onnxruntime").load_model()
    spec = preprocessing.InputSpec()
    slices, _, source = _slices(args.slices)
    work = tempfile.mkdtemp(prefix="dicom-job-")
    rows, skipped, parity = [], {}, {}
    for size in (int(s) for s in args.sizes.split(",")):
        def mr(start, size=size):  # the same 16-bit slices for every syntax, made as encoded (10 GB at 20k)
            return [_mr16(g, size, np.random.default_rng([size, start + i]))
                    for i, g in enumerate(slices[start:start + SERIES_LEN])]
        reference = None
        for syntax in args.syntaxes.split(","):
            try:
                blobs = []
                for start in range(0, len(slices), SERIES_LEN):
                    study, series = generate_uid(), generate_uid()
                    blobs += [encode(m, syntax, study, series, start + i + 1)
                              for i, m in enumerate(mr(start))]
            except Exception as e:  # no encoder installed for this syntax
                skipped[f"{size}/{syntax}"] = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
                continue
            zip_path = os.path.join(work, f"{syntax}-{size}.zip")
            with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_STORED) as zf:
                for i, b in enumerate(blobs):
                    zf.writestr(f"series{i // SERIES_LEN:03d}/{i:05d}.dcm", b)
            codec = _codec_ms(blobs)
            dec_prep, probs = _decode_prepare_ms(blobs, spec, score)
            if reference is None:
                reference = probs
            parity[f"{size}/{syntax}"] = float(np.abs(probs - reference).max())
            limit = _limit_ips(blobs, spec, score)
            wall, cpu = _job(zip_path, args.model, work)
            os.remove(zip_path)  # 5 GB per 10,000 instances
            rows.append({"size": size, "syntax": syntax, "kib_per_image": sum(map(len, blobs)) / len(blobs) / 1024,
                         "codec_ms": codec, "decode_prepare_ms": dec_prep, "limit_images_per_s": limit,
                         "job_images_per_s": len(blobs) / wall, "job_vcpu_ms_per_image": cpu / len(blobs) * 1e3,
                         "job_to_limit": len(blobs) / wall / limit})
            print(rows[-1], flush=True)
    shutil.rmtree(work, ignore_errors=True)
    common.report(args.result_name, rows, {
        "source": source, "instances_per_archive": args.slices, "series_length": SERIES_LEN,
        "skipped_syntaxes": skipped,
        "max_abs_probability_difference_vs_explicit_le": parity,
        "note": "job = whole brain-score process on one zip, start-up included (ONNX Runtime, heatmaps and "
                "report off); limit = one process decoding, preparing and scoring the same instances"})


if __name__ == "__main__":
    main()
