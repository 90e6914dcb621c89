"""`make demo`: score a generated sample archive with the committed model.

The inputs are synthetic (generated here, no patient data) and the model is a
research model, not a diagnostic device; the output says both.
"""
import argparse
import os
import sys
import threading
import time

from beam_pipeline import model_store, results_store, run, sample_data

NOTICE = ("NOTE: the sample inputs are generated (synthetic head-like images, fabricated DICOM "
          "fields).\n      The model is a research model, NOT a diagnostic device.")


def _progress(stop, started):
    while not stop.wait(5):
        print(f"  ... scoring, {time.time() - started:.0f}s elapsed", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="demo_out", help="folder for inputs and results")
    parser.add_argument("--images", type=int, default=36, help="images in the sample archives")
    parser.add_argument("--model", default=model_store.DEFAULT_MODEL)
    args = parser.parse_args(argv)
    from beam_pipeline import cli
    cli.quiet_tensorflow()
    print(NOTICE)
    inputs = os.path.join(args.out, "inputs")
    sample = sample_data.write_sample_archives(inputs, args.images)
    print(f"[1/3] Generated {sample['members']} members in {', '.join(sample['files'])}")
    output = os.path.join(args.out, "screening")  # each rerun replaces results/ in one step
    print(f"[2/3] Scoring on DirectRunner with {args.model}")
    started = time.time()
    stop = threading.Event()
    ticker = threading.Thread(target=_progress, args=(stop, started), daemon=True)
    ticker.start()
    try:
        run.run(["--input", os.path.join(inputs, "*.zip"), "--input", os.path.join(inputs, "*.tar.gz"),
                 "--output", output, "--model", args.model, "--run-id", "demo"])
    except run.JobError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        stop.set()
    summary = run.read_summary(output)
    output = results_store.results_dir(output)
    print(f"[3/3] Done in {time.time() - started:.1f}s")
    lesion = model_store.metadata(args.model).get("head") == "lesion_map"
    _print_summary(summary, output, "Lesion-map overlays:" if lesion else "Grad-CAM heatmaps:")
    print(NOTICE)
    return 0


def _print_summary(summary, output, heatmaps_label="Grad-CAM heatmaps:"):
    import pyarrow.parquet as pq
    rows = pq.read_table(summary["output_files"]).to_pylist()
    print(f"\nRows: {summary['rows']} (one per image)  by status: {summary['by_status']}")
    if summary["by_error_code"]:
        print(f"Errors/skips by code: {summary['by_error_code']}")
    flagged = sorted((r for r in rows if r["predicted_label"] == "tumor"),
                     key=lambda r: -r["tumor_probability"])
    print(f"Flagged at the model's threshold: {len(flagged)}; out of distribution (unlike the training "
          f"images): {summary.get('out_of_distribution', 0)}")
    d = summary.get("drift") or {}
    print("Drift: " + ("; ".join(d["reasons"]) if d.get("drifted") else
                       "none" if d.get("assessed") else f"not assessed ({d.get('reason')})"))
    for r in flagged[:10]:
        print(f"  {r['tumor_probability']:.3f}  {os.path.basename(r['source_uri'])}:{r['member_path']}")
    print(f"\nImage table (Parquet): {', '.join(summary['output_files'])}")
    print(f"Study table (Parquet): {', '.join(summary.get('study_files', []))}")
    print(f"Series table:          {', '.join(summary.get('series_files', []))}")
    print(f"{heatmaps_label:<23}{os.path.join(output, 'heatmaps')}/ ({len(flagged)} flagged images)")
    print(f"Run report:            {os.path.join(output, 'report.html')}  <- open in a browser")
    print(f"Summary:               {os.path.join(output, '_SUMMARY.json')}")


if __name__ == "__main__":
    sys.exit(main())
