"""The whole job before and after a change: an earlier commit (checked out in a git worktree) and this
working tree score the same archives, alternating, in one session.

  .venv/bin/python bench/compare_revisions.py --base 63254ef --n 20000

Each run is `python -m beam_pipeline.run` started in that revision's folder (so it imports that
revision's code and default model) with --no-heatmaps --no-report and the given DirectRunner flags;
wall time includes start-up. vCPU ms per image = wall x vCPUs / images.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import common  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, help="the earlier commit")
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--runner-flags", default="--direct_num_workers 2 --direct_running_mode multi_processing")
    parser.add_argument("--work", default=tempfile.mkdtemp(prefix="bench-revisions-"))
    args = parser.parse_args()
    os.makedirs(args.work, exist_ok=True)
    blobs, source = common.image_bytes(args.n)
    inputs = [os.path.join(args.work, "a.zip"), os.path.join(args.work, "b.tar.gz")]
    common.write_zip(inputs[0], blobs[: args.n // 2])
    common.write_tgz(inputs[1], blobs[args.n // 2:])
    tree = os.path.join(args.work, "base")
    subprocess.run(["git", "worktree", "add", "--detach", tree, args.base], cwd=common.REPO, check=True,
                   capture_output=True)
    revisions = {f"base {args.base}": tree, "this working tree": common.REPO}
    walls = {label: [] for label in revisions}
    try:
        for _ in range(args.repeats):
            for label, folder in revisions.items():
                out = os.path.join(args.work, "out")
                cmd = [sys.executable, "-m", "beam_pipeline.run", "--output", out, "--run-id", "cmp",
                       "--no-heatmaps", "--no-report", *args.runner_flags.split()]
                for p in inputs:
                    cmd += ["--input", p]
                t0 = time.perf_counter()
                done = subprocess.run(cmd, cwd=folder, capture_output=True)
                if done.returncode not in (0, 4):  # 4: a drifted input, which is no concern of a timing (either revision)
                    raise subprocess.CalledProcessError(done.returncode, cmd, done.stdout, done.stderr)
                walls[label].append(time.perf_counter() - t0)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", tree], cwd=common.REPO, capture_output=True)
    vcpus = os.cpu_count()
    rows = []
    for label, ws in walls.items():
        mean = sum(ws) / len(ws)
        rows.append({"code": label, "runs_s": " / ".join(f"{w:.1f}" for w in ws), "images_per_s": args.n / mean,
                     "vcpu_ms_per_image": mean * vcpus / args.n * 1e3})
    for r in rows:
        r["ratio_to_base"] = rows[0]["vcpu_ms_per_image"] / r["vcpu_ms_per_image"]
    common.report("compare_revisions", rows, {"source": source, "images": args.n, "base": args.base,
                                              "runner_flags": args.runner_flags})


if __name__ == "__main__":
    main()
