"""Print the benchmark JSON files under bench/results as Markdown tables (for docs/performance.md)."""
import json
import os
import sys

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def table(rows):
    cols = list(rows[0])
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(fmt(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(out)


def main(names):
    for name in names or sorted(f[:-5] for f in os.listdir(RESULTS) if f.endswith(".json")):
        data = json.load(open(os.path.join(RESULTS, f"{name}.json")))
        print(f"### {name}\n\n{table(data['rows'])}\n")
        extra = {k: v for k, v in data.items() if k not in ("rows", "machine")}
        for k, v in extra.items():
            print(f"- {k}: {v}")
        print()


if __name__ == "__main__":
    main(sys.argv[1:])
