"""Make Cityscapes' *_gtFine_labelTrainIds.png from the official *_gtFine_labelIds.png.

    python -m resnest_fast.training.data.convert_cityscapes ROOT [--nproc N] [--overwrite]

Every ``ROOT/gtFine/<split>/<city>/*_gtFine_labelIds.png`` is mapped through cityscapesscripts' label table
(id -> trainId; ids ignored in training and unknown ids -> 255) and written next to it. mmseg's own converter
draws the same maps from the polygon JSON files; both come from one table and one drawing, so the result is the
same. Existing outputs are skipped (and counted) unless --overwrite; each file is written to a temporary file
in the same folder and moved into place with os.replace, so an interrupted run never leaves a half-written
label that a later run would skip. A file that fails is reported and the others still convert; the exit code
is then 1 and the failures are listed.
"""

import argparse
import glob
import os
import sys
from multiprocessing import Pool

import numpy as np
from PIL import Image
from tqdm import tqdm

from resnest_fast.utils import atomic_write

from .io import load_label
from .meta import cityscapes_id_to_train_id_lut

LABEL_IDS_SUFFIX = "_gtFine_labelIds.png"
TRAIN_IDS_SUFFIX = "_gtFine_labelTrainIds.png"

_LUT = cityscapes_id_to_train_id_lut()


def train_ids_path(label_ids_path):
    return label_ids_path[: -len(LABEL_IDS_SUFFIX)] + TRAIN_IDS_SUFFIX


def find_label_ids(root):
    return sorted(glob.glob(os.path.join(root, "gtFine", "*", "*", "*" + LABEL_IDS_SUFFIX)))


def write_png_atomically(array, path):
    """Write a uint8 (H, W) array as a PNG, atomically (resnest_fast.utils.atomic_write)."""
    image = Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8))
    atomic_write(path, lambda f: image.save(f, format="PNG"))


def convert_one(src, overwrite=False):
    """Convert one labelIds file. Returns ("converted" | "skipped", src, None) or ("failed", src, message)."""
    dst = train_ids_path(src)
    if not overwrite and os.path.exists(dst):
        return "skipped", src, None
    try:
        ids = load_label(src)
        write_png_atomically(_LUT[ids], dst)
    except Exception as err:  # one bad file must not stop the others; it is reported at the end
        return "failed", src, f"{type(err).__name__}: {err}"
    return "converted", src, None


def _convert_star(args):
    return convert_one(*args)


def convert(root, nproc=1, overwrite=False, progress=True):
    """Convert every labelIds file under root/gtFine. Returns {"converted": [...], "skipped": [...],
    "failed": [(path, message), ...]}."""
    sources = find_label_ids(root)
    if not sources:
        raise FileNotFoundError(f"no *{LABEL_IDS_SUFFIX} under {os.path.join(root, 'gtFine', '<split>', '<city>')}")
    report = {"converted": [], "skipped": [], "failed": []}
    jobs = [(src, overwrite) for src in sources]
    bar = tqdm(total=len(jobs), desc="labelIds -> labelTrainIds", unit="file", disable=not progress)
    if nproc > 1:
        with Pool(nproc) as pool:
            results = pool.imap_unordered(_convert_star, jobs, chunksize=8)
            for status, src, message in results:
                _record(report, status, src, message)
                bar.update()
    else:
        for job in jobs:
            status, src, message = _convert_star(job)
            _record(report, status, src, message)
            bar.update()
    bar.close()
    report["failed"].sort()
    return report


def _record(report, status, src, message):
    if status == "failed":
        report["failed"].append((src, message))
    else:
        report[status].append(src)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m resnest_fast.training.data.convert_cityscapes",
        description="Write *_gtFine_labelTrainIds.png next to every *_gtFine_labelIds.png of a Cityscapes root.",
    )
    parser.add_argument("root", help="Cityscapes root (the folder that holds gtFine/ and leftImg8bit/)")
    parser.add_argument("--nproc", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--overwrite", action="store_true", help="rewrite outputs that already exist")
    args = parser.parse_args(argv)
    if args.nproc < 1:
        parser.error("--nproc must be >= 1")
    try:
        report = convert(args.root, nproc=args.nproc, overwrite=args.overwrite)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"converted {len(report['converted'])} file(s)")
    if report["skipped"]:
        print(f"skipped {len(report['skipped'])} file(s) whose {TRAIN_IDS_SUFFIX} already exists (--overwrite to redo)")
    if report["failed"]:
        print(f"FAILED {len(report['failed'])} file(s):", file=sys.stderr)
        for src, message in report["failed"]:
            print(f"  {src}: {message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
