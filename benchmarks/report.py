"""Collects benchmark rows and writes them to CSV with the context needed to trust them later."""
import csv
import datetime
import os
import platform
import subprocess

import torch

RESULTS = {}  # file stem -> list of row dicts
SUMMARY = []
HERE = os.path.dirname(os.path.abspath(__file__))


def machine():
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return f"{cpu}; {os.cpu_count()} cpus; torch threads {torch.get_num_threads()}; gpu {gpu}"


def git_revision():
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=HERE, capture_output=True, text=True)
        return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except OSError:
        return "unknown"


def context():
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git": git_revision(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": machine(),
        "malloc": os.environ.get("GLIBC_TUNABLES", "glibc default"),
    }


def add(stem, row):
    RESULTS.setdefault(stem, []).append(row)


def note(line):
    SUMMARY.append(line)


def summary_lines():
    malloc = os.environ.get("GLIBC_TUNABLES", "glibc default")
    return (["", f"resnest_fast benchmark summary ({machine()}; malloc: {malloc})"] + SUMMARY) if SUMMARY else []


def flush(directory=None):
    directory = directory or os.path.join(HERE, "results")
    os.makedirs(directory, exist_ok=True)
    ctx = context()
    for stem, rows in RESULTS.items():
        tag = "-tuned-malloc" if os.environ.get("GLIBC_TUNABLES") else ""
        path = os.path.join(directory, f"{stem}{tag}.csv")
        fields = list(ctx) + sorted({k for r in rows for k in r}, key=lambda k: list(rows[0]).index(k)
                                    if k in rows[0] else 999)
        tmp = path + ".tmp"
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            for row in rows:
                writer.writerow({**ctx, **row})
        os.replace(tmp, path)
