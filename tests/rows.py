"""Compare output rows across runs: ignore scored_at, and heatmap paths' prefixes."""
import os


def stable(rows):
    def norm(k, v):
        if k == "heatmap_path" and v:
            return os.path.basename(v)
        return round(v, 5) if isinstance(v, float) else v
    return sorted(tuple((k, norm(k, v)) for k, v in sorted(r.items()) if k != "scored_at") for r in rows)
