"""Peak memory of `predict.py --n N` at several N: generation runs in batches, so memory should not grow with
N. Runs predict.py as a child process for each N (into a scratch folder) and reads the child's peak resident
set size from the kernel. Prints one JSON line.

    python -m benchmarks.generation_memory --model saved_models/vqvae --counts 64 1024
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time


def peak_rss_mb(command):
    """(peak resident set size in MB, seconds) of a child process running `command`; exits if it fails."""
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{' '.join(command)} failed: {child.stderr.read().decode()[-2000:]}")
    return usage.ru_maxrss / 1024, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="saved_models/vqvae", help="an export of train.py with a prior")
    parser.add_argument("--counts", type=int, nargs="+", default=[64, 1024], help="values of --n to measure")
    parser.add_argument("--batch-size", type=int, default=64, help="predict.py's --batch-size")
    args = parser.parse_args()
    runs = []
    for count in args.counts:
        with tempfile.TemporaryDirectory(prefix="generation_memory_") as scratch:
            megabytes, seconds = peak_rss_mb([sys.executable, "predict.py", "--model", args.model, "--n", str(count),
                                              "--batch-size", str(args.batch_size), "--out", f"{scratch}/out"])
        runs.append({"n": count, "peak_rss_mb": round(megabytes, 1), "seconds": round(seconds, 1),
                     "images_per_second": round(count / seconds, 1)})
    print(json.dumps({"benchmark": "generation_memory", "model": args.model, "batch_size": args.batch_size,
                      "runs": runs, "peak_rss_ratio_largest_to_smallest": round(runs[-1]["peak_rss_mb"] /
                                                                                runs[0]["peak_rss_mb"], 3),
                      "command": " ".join(["python", "-m", "benchmarks.generation_memory", *sys.argv[1:]])}))


if __name__ == "__main__":
    main()
