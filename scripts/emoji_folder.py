"""Assemble an RGB image folder of real images from the npm package emoji-datasource-twitter (Twemoji, CC-BY 4.0):
one class folder per emoji category, 64 px PNGs with transparency, uneven classes (85 to 386 images).

Nothing is downloaded at run time; fetch the package once from the npm registry and point this script at it:

    npm pack emoji-datasource-twitter@16.0.0          # emoji-datasource-twitter-16.0.0.tgz, 62 MB
    python scripts/emoji_folder.py emoji-datasource-twitter-16.0.0.tgz data/emoji
    augment train --dataset imagefolder:data/emoji --image-size 32

Skin-tone variants are left out (a class of near-copies), and so is the "Component" category (5 images).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tarfile
from collections import Counter
from pathlib import Path

IMAGES = "package/img/twitter/64/"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package", type=Path, help="emoji-datasource-twitter-<version>.tgz, from `npm pack`")
    parser.add_argument("out", type=Path, help="the image folder to create (one subfolder per category)")
    args = parser.parse_args()
    if args.out.exists() and any(args.out.iterdir()):
        sys.exit(f"{args.out} is not empty; give a new directory")
    with tarfile.open(args.package) as package:
        emoji = json.load(package.extractfile("package/emoji.json"))  # type: ignore[arg-type]
        written: Counter[str] = Counter()
        for entry in emoji:
            if not entry.get("has_img_twitter") or entry["category"] == "Component":
                continue
            member = package.extractfile(IMAGES + entry["image"])
            if member is None:
                continue
            category = re.sub(r"[^a-z0-9]+", "-", entry["category"].lower()).strip("-")
            target = args.out / category / entry["image"]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(member.read())
            written[category] += 1
    for category, count in sorted(written.items()):
        print(f"{category}: {count}")
    print(f"{sum(written.values())} images in {len(written)} classes under {args.out}")


if __name__ == "__main__":
    main()
