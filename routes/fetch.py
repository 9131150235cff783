"""Obtain the Town05 benchmark files from their public source, checksum-verified.

    python -m routes.fetch --out runs/routes                  # download from the pinned commit
    python -m routes.fetch --out runs/routes --from ~/dl      # verify + copy files you downloaded yourself

Sources: github.com/autonomousvision/transfuser at a pinned commit (MIT licence), see routes/README.md.
The two route XMLs are checked against routes/SHA256SUMS. The scenario JSON has no known sum in this
project ("unverified"): the first fetch pins the sum it saw in `<out>/<name>.sha256` (trust on first use)
and later fetches into the same folder must match it. Nothing here runs at import time; tests use
`--from` (no network).
"""

from __future__ import annotations

import argparse
import json
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from routes.parse import parse_routes
from vlmad.errors import UserError, cli_main
from vlmad.io import atomic_write_bytes, atomic_write_text, sha256_bytes

REPO = "autonomousvision/transfuser"
COMMIT = "9a9095148e38576a81367e9d8b545b9f65b08eb0"  # branch cvpr2021
RAW_URL = "https://raw.githubusercontent.com/{repo}/{commit}/{path}"
# file name -> path in the pinned repository
FILES: dict[str, str] = {
    "routes_town05_short.xml": "leaderboard/data/validation_routes/routes_town05_short.xml",
    "routes_town05_long.xml": "leaderboard/data/evaluation_routes/routes_town05_long.xml",
    "town05_all_scenarios.json": "leaderboard/data/scenarios/town05_all_scenarios.json",
}
# benchmark name -> (route file, scenario file or None, expected route ids)
BENCHMARKS: dict[str, tuple[str, str | None, list[str]]] = {
    "short": ("routes_town05_short.xml", None, [str(i) for i in range(32)]),
    "long": ("routes_town05_long.xml", "town05_all_scenarios.json", [str(i) for i in range(16, 26)]),
}
SUMS_PATH = Path(__file__).with_name("SHA256SUMS")
UNVERIFIED = "unverified"
DEFAULT_OUT = "runs/routes"


def load_sums(path: str | Path = SUMS_PATH) -> dict[str, str | None]:
    """{file name: expected SHA-256, or None for an unverified file}; `#` starts a comment."""
    sums: dict[str, str | None] = {}
    for line in Path(path).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        digest, name = line.split(None, 1)
        sums[name.strip()] = None if digest == UNVERIFIED else digest.lower()
    return sums


def url_for(name: str) -> str:
    return RAW_URL.format(repo=REPO, commit=COMMIT, path=FILES[name])


def _check_content(name: str, data: bytes, tmp_dir: Path) -> None:
    """Structural check after the checksum: the file parses and holds what its benchmark expects."""
    if name.endswith(".json"):
        try:
            obj = json.loads(data)
        except (ValueError, UnicodeDecodeError) as e:
            raise UserError(f"{name} is not valid JSON: {e}") from None
        if not isinstance(obj, dict) or "available_scenarios" not in obj:
            raise UserError(f"{name} has no 'available_scenarios' key: not a leaderboard scenario file")
        return
    tmp = tmp_dir / f".check_{name}"
    tmp.write_bytes(data)
    try:
        ids = [r.id for r in parse_routes(tmp)]
    finally:
        tmp.unlink()
    for route_file, _, expected in BENCHMARKS.values():
        if route_file == name and ids != expected:
            raise UserError(f"{name}: route ids {ids} differ from the benchmark's {expected}")


def verify(name: str, data: bytes, out_dir: Path, sums: dict[str, str | None]) -> str:
    """Check `data` against the project's sum (or the sum pinned on first use); returns the digest."""
    digest = sha256_bytes(data)
    expected = sums.get(name)
    pin = out_dir / f"{name}.sha256"
    if expected is None and pin.is_file():
        expected = pin.read_text().split()[0].strip().lower()
        where = f"the sum pinned at first fetch in {pin}"
    else:
        where = f"{SUMS_PATH}"
    if expected is not None and digest != expected:
        raise UserError(f"{name}: SHA-256 {digest} does not match {expected} from {where}; the file is not "
                        f"the pinned benchmark file (commit {COMMIT}); delete it and fetch again")
    return digest


def fetch(out_dir: str | Path, names: list[str] | None = None, source_dir: str | Path | None = None,
          timeout: float = 60.0, opener: Callable[..., object] | None = None) -> dict[str, Path]:
    """Fetch (or copy from `source_dir`) and verify each file into `out_dir`; returns {name: path}.

    Files already in `out_dir` with the right sum are kept without a download."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sums = load_sums()
    names = list(FILES) if names is None else names
    opener = opener or urllib.request.urlopen
    result: dict[str, Path] = {}
    for name in names:
        if name not in FILES:
            raise UserError(f"unknown benchmark file {name!r}; known: {sorted(FILES)}")
        dest = out_dir / name
        if dest.is_file():
            try:
                verify(name, dest.read_bytes(), out_dir, sums)
                if sums.get(name) is not None or (out_dir / f"{name}.sha256").is_file():
                    print(f"{name}: present and verified")
                    result[name] = dest
                    continue
            except UserError:
                print(f"{name}: present but its checksum is wrong; fetching it again")
        if source_dir is not None:
            src = Path(source_dir) / name
            if not src.is_file():
                raise UserError(f"{src} does not exist (download it from {url_for(name)})")
            data = src.read_bytes()
        else:
            url = url_for(name)
            print(f"{name}: downloading {url}")
            try:
                with opener(url, timeout=timeout) as resp:  # type: ignore[attr-defined]
                    data = resp.read()
            except (urllib.error.URLError, OSError) as e:
                raise UserError(f"could not download {url}: {e}. Download it by hand and run `python -m "
                                f"routes.fetch --out {out_dir} --from <folder with the file>`") from None
        digest = verify(name, data, out_dir, sums)
        _check_content(name, data, out_dir)
        atomic_write_bytes(dest, data)
        if sums.get(name) is None:
            pin = out_dir / f"{name}.sha256"
            if not pin.is_file():
                atomic_write_text(pin, f"{digest}  {name}\n")
                print(f"{name}: no known checksum in this project; pinned {digest} in {pin} "
                      "(trust on first use)")
        else:
            print(f"{name}: verified {digest}")
        result[name] = dest
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m routes.fetch",
        description="Download the Town05 Short/Long benchmark route files and the Town05 scenario file from "
                    f"{REPO} at commit {COMMIT}, checking SHA-256 sums (routes/SHA256SUMS).")
    p.add_argument("--out", default=DEFAULT_OUT,
                   help=f"folder to write the files into (default {DEFAULT_OUT})")
    p.add_argument("--from", dest="source", default=None,
                   help="take the files from this local folder instead of downloading (still verified)")
    p.add_argument("--only", nargs="+", choices=sorted(FILES), default=None, help="fetch only these files")
    p.add_argument("--timeout", type=float, default=60.0, help="download timeout per file, seconds")
    args = p.parse_args(argv)
    fetch(args.out, args.only, args.source, args.timeout)
    return 0


if __name__ == "__main__":
    cli_main(main)
