"""Convert Bench2Drive clips (CARLA 0.9.15) into the project's nuScenes-format dataset.

    python -m scripts.import_bench2drive --src B2D_ROOT --out data/b2d --exclude-towns Town05

Each clip folder under `--src` (`<Scenario>_<Town>_Route<N>_Weather<M>/anno/*.json.gz` plus
`camera/rgb_*/*.jpg`) becomes one scene: 2 Hz keyframes from the 10 Hz frames, 6 cameras, boxes with
instance ids, CAN bus at 10 Hz, and the privileged state the rule teacher reads (traffic light, the route's
RoadOption command), and map vectors (divider / ped_crossing / boundary) from Bench2Drive's HD map files
(`--maps`, default `SRC/maps`: `<Town>_HD_map.npz` of the Bench2Drive-Map release). See nusc/bench2drive.py
for the field mapping. Converted clips are cached beside
`--out` (`<out>.parts/`), so an interrupted run resumes when re-run with the same arguments; the dataset is
written in one atomic move at the end. Town05 is the evaluation town: exclude it from training data.
Then run `python -m scripts.build_infos`, `scripts.annotate` and `scripts.train` on `--out` as usual.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tqdm import tqdm

from nusc.bench2drive import (
    MAP_FILE,
    attach_clip_images,
    attach_town_maps,
    cached_drive_rig,
    clip_town,
    convert_clip,
    list_clips,
)
from nusc.writer import write_nuscenes
from vlmad.cli import script_parser
from vlmad.errors import UserError, cli_main
from world.collect import load_drive, save_drive


def main(argv: list[str] | None = None) -> int:
    p = script_parser("scripts.import_bench2drive", __doc__)
    p.add_argument("--src", type=Path, required=True, help="Bench2Drive root holding one folder per clip")
    p.add_argument("--out", type=Path, required=True, help="dataset folder to write (must not exist)")
    p.add_argument("--version", default="v1.0-trainval", help="nuScenes version name of the tables")
    p.add_argument("--towns", nargs="+", help="only clips of these towns (e.g. Town01 Town03)")
    p.add_argument("--exclude-towns", nargs="+", default=[], help="skip these towns (e.g. Town05)")
    p.add_argument("--clips", nargs="+", help="only these clip folder names")
    p.add_argument("--maps", type=Path, help="folder of Bench2Drive's <Town>_HD_map.npz (default: SRC/maps)")
    p.add_argument("--overwrite", action="store_true", help="replace an --out this project wrote")
    a = p.parse_args(argv)

    clips = list_clips(a.src, a.towns, a.exclude_towns, a.clips)
    if not clips:
        raise UserError(f"no clip under {a.src} matches the town / clip filters")
    towns = sorted({clip_town(c) for c in clips})
    if len(towns) > 4:  # nusc.writer maps each town to one of nuScenes' 4 map names
        raise UserError(f"at most 4 towns fit in one dataset, got {towns}: split the import with --towns")
    if a.out.exists() and any(a.out.iterdir()) and not a.overwrite:
        raise UserError(f"{a.out} already exists; pass --overwrite to replace it")
    maps_dir = a.maps or a.src / "maps"
    missing = [t for t in towns if not (maps_dir / MAP_FILE.format(town=t)).is_file()]
    if missing:  # checked before converting anything: the map is needed at the end
        raise UserError(f"no HD map for {missing} in {maps_dir} (expected "
                        f"{MAP_FILE.format(town=missing[0])}); pass --maps DIR with Bench2Drive's HD maps")

    parts = a.out.parent / f"{a.out.name}.parts"
    parts.mkdir(parents=True, exist_ok=True)
    index_path = parts / "clips.json"
    names = [c.name for c in clips]
    if index_path.is_file() and json.loads(index_path.read_text()) != names:
        raise UserError(f"{parts} holds a run with other clips; delete it or use the same filters")
    index_path.write_text(json.dumps(names))
    drives = []
    for i, clip in enumerate(tqdm(clips, desc="bench2drive clips", unit="clip")):
        cache = parts / f"clip_{i:05d}.npz"
        if cache.is_file():
            drive = attach_clip_images(load_drive(cache, None), clip)
            drive.rig = cached_drive_rig(drive)
        else:
            drive = convert_clip(clip, i)
            save_drive(cache, _without_images(drive))  # the images stay in the clip: cache the rest
        drives.append(drive)
    attach_town_maps(drives, maps_dir)
    write_nuscenes(a.out, a.version, drives, overwrite=a.overwrite)
    shutil.rmtree(parts, ignore_errors=True)
    keys = sum(f.is_keyframe for d in drives for f in d.frames)
    print(f"wrote {a.out}: {len(drives)} clips, {keys} keyframes, towns {towns}")
    return 0


def _without_images(drive):
    """A shallow copy of `drive` whose keyframes hold no images (the cache's content)."""
    import dataclasses

    return dataclasses.replace(drive, frames=[dataclasses.replace(f, images={}) for f in drive.frames])


if __name__ == "__main__":
    cli_main(main)
