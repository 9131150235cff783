"""Write a generated OpenDRIVE grid town (the offline world's default town) to a .xodr file.

    python -m scripts.make_town --out towns/VlmadGrid.xodr [--grid 2x2] [--block 80] [--lanes 2]

The file loads in `carla.Map(name, text)` without a server (checked before writing) and in a CARLA
server's OpenDRIVE standalone mode. Pass it to `--town` of `scripts.drive` / `scripts.collect`.
"""

from __future__ import annotations

import re
from pathlib import Path

from vlmad.cli import script_parser
from vlmad.errors import UserError, cli_main
from vlmad.io import atomic_write_text
from world.xodr_gen import TownSpec, generate_town, validate_town


def main(argv: list[str] | None = None) -> int:
    d = TownSpec()
    p = script_parser("scripts.make_town", __doc__)
    p.add_argument("--out", required=True, help="output .xodr path")
    p.add_argument("--name", default=None, help="map name (default: the file stem)")
    p.add_argument(
        "--grid", default=f"{d.grid_x}x{d.grid_y}", help="interior 4-way junctions, XxY (default %(default)s)"
    )
    p.add_argument(
        "--block", type=float, default=d.block_m, help="junction spacing in metres (default %(default)s)"
    )
    p.add_argument(
        "--lanes", type=int, default=d.lanes, help="driving lanes per direction (default %(default)s)"
    )
    p.add_argument("--lane-width", type=float, default=d.lane_width, help="metres (default %(default)s)")
    p.add_argument("--no-crosswalks", action="store_true", help="do not put crosswalks at the junctions")
    a = p.parse_args(argv)
    m = re.fullmatch(r"(\d+)x(\d+)", a.grid)
    if not m:
        raise UserError(f"--grid must look like 2x2, got {a.grid!r}")
    out = Path(a.out)
    name = a.name or out.stem
    spec = TownSpec(
        name=name,
        grid_x=int(m.group(1)),
        grid_y=int(m.group(2)),
        block_m=a.block,
        lanes=a.lanes,
        lane_width=a.lane_width,
        crosswalks=not a.no_crosswalks,
    )
    xodr = generate_town(spec)
    summary = validate_town(xodr, name)
    atomic_write_text(out, xodr)
    print(
        f"wrote {out} ({name}): {summary['junctions']} junctions, "
        f"{summary['traffic_lights']} traffic lights, "
        f"{summary['crosswalks']} crosswalks, {summary['segments']} lane segments"
    )
    return 0


if __name__ == "__main__":
    cli_main(main)
