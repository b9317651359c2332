"""Build the CIFAR-10 sample shipped inside the package: 500 train and 100 test images per class.

Drawn with a fixed seed from the CIFAR-10 JPEG archive; the JPEG bytes are copied unchanged, so the
sample is a few MB and reads through the same zip path as users' own archives.

    python scripts/make_sample.py ../shared/data/cifar10-jpeg.zip src/torchclr/data/sample/cifar10-sample.zip
"""

from __future__ import annotations

import argparse
import random
import zipfile
from collections import defaultdict

PER_CLASS = {"train": 500, "test": 100}
SEED = 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", help="cifar10-jpeg.zip with train/<class>/*.jpg and test/<class>/*.jpg")
    parser.add_argument("target", help="zip file to write")
    args = parser.parse_args()

    rng = random.Random(SEED)
    with zipfile.ZipFile(args.source) as source, zipfile.ZipFile(args.target, "w", zipfile.ZIP_STORED) as target:
        by_folder: dict[tuple[str, str], list[str]] = defaultdict(list)
        for name in source.namelist():
            parts = name.split("/")
            if len(parts) == 3 and parts[0] in PER_CLASS and parts[2].endswith(".jpg"):
                by_folder[(parts[0], parts[1])].append(name)
        for (split, _), names in sorted(by_folder.items()):
            for name in sorted(rng.sample(sorted(names), PER_CLASS[split])):
                info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
                target.writestr(info, source.read(name))


if __name__ == "__main__":
    main()
