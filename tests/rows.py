"""Compare output rows across runs: ignore scored_at, and heatmap paths' prefixes."""
import os


def stable(rows):
    def norm(k, v):
        if k == "heatmap_path" and v:
            return os.path.basename(v)
        return round(v, 5) if isinstance(v, float) else v
    return sorted(tuple((k, norm(k, v)) for k, v in sorted(r.items()) if k != "scored_at") for r in rows)


def images(out, name="images-*.parquet", **kwargs):
    """Rows of the current result, read the way docs/reliability.md tells readers to."""
    import pyarrow.parquet as pq

    from beam_pipeline import results_store
    paths = results_store.reader_glob(str(out), name)
    assert paths, f"no {name} visible under {out}"
    return pq.read_table(paths, **kwargs).to_pylist()


def result_file(out, name):
    """Path of a file (report.html, _SUMMARY.json, heatmaps/...) in the current result."""
    from beam_pipeline import results_store
    return os.path.join(results_store.results_dir(str(out)), name)
