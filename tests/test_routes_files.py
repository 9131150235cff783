"""Benchmark route files: checksums, fetch logic (no network), parsing / validation, sharding."""

from __future__ import annotations

import io
import shutil
import urllib.error

import pytest

from routes import fetch
from routes.parse import parse_routes, routes_to_xml, shard_routes, write_routes, write_shards
from vlmad.errors import UserError
from vlmad.io import sha256_file


def test_project_sums_match_the_reference_copies(shared_reference):
    sums = fetch.load_sums()
    ref = dict(
        reversed(line.split())
        for line in (shared_reference / "SHA256SUMS").read_text().splitlines()
        if line.strip()
    )
    for name in ("routes_town05_short.xml", "routes_town05_long.xml"):
        assert sums[name] == ref[name] == sha256_file(shared_reference / name)
    assert sums["town05_all_scenarios.json"] is None  # no known sum: pinned on first fetch
    assert set(sums) == set(fetch.FILES)


def test_urls_point_at_the_pinned_commit():
    assert fetch.url_for("routes_town05_long.xml") == (
        "https://raw.githubusercontent.com/autonomousvision/transfuser/9a9095148e38576a81367e9d8b545b9f65b08eb0/"
        "leaderboard/data/evaluation_routes/routes_town05_long.xml"
    )
    assert "validation_routes/routes_town05_short.xml" in fetch.url_for("routes_town05_short.xml")
    assert "scenarios/town05_all_scenarios.json" in fetch.url_for("town05_all_scenarios.json")


def test_reference_files_parse_as_the_benchmarks(shared_reference):
    short = parse_routes(shared_reference / "routes_town05_short.xml")
    assert [r.id for r in short] == [str(i) for i in range(32)]
    assert all(r.town == "Town05" and len(r.waypoints) == 2 for r in short)
    assert all(r.length_m == pytest.approx(70.71, abs=0.05) for r in short)  # two keypoints 50 m x 50 m apart
    long = parse_routes(shared_reference / "routes_town05_long.xml")
    assert [r.id for r in long] == [str(i) for i in range(16, 26)]
    lengths = [r.length_m for r in long]
    assert 500 < min(lengths) and max(lengths) < 2200
    assert all(r.weathers == [] for r in short + long)  # no weather element: default weather
    assert short[0].name == "RouteScenario_0"


def test_sharding_is_balanced_complete_and_ordered(shared_reference, tmp_path):
    long = parse_routes(shared_reference / "routes_town05_long.xml")
    for n in (1, 2, 3, 4, 10, 12):
        shards = shard_routes(long, n)
        assert len(shards) == min(n, len(long))
        ids = [r.id for s in shards for r in s]
        assert sorted(ids, key=int) == [r.id for r in long]  # every route exactly once
        for s in shards:
            assert [int(r.id) for r in s] == sorted(int(r.id) for r in s)  # file order kept in a shard
        loads = [sum(r.length_m for r in s) for s in shards]
        assert max(loads) - min(loads) <= max(r.length_m for r in long) + 1e-6
    paths = write_shards(long, 3, tmp_path, stem="long")
    back = [parse_routes(p) for p in paths]
    assert sorted(r.id for b in back for r in b) == sorted(r.id for r in long)
    assert back[0][0].waypoints == next(r for r in long if r.id == back[0][0].id).waypoints
    with pytest.raises(UserError):
        shard_routes(long, 0)


def test_round_trip_without_original_elements(shared_reference, tmp_path):
    short = parse_routes(shared_reference / "routes_town05_short.xml")[:3]
    for r in short:
        r.element = None
        r.weathers = [{"cloudiness": 30.0, "sun_altitude_angle": 70.0}]
    back = parse_routes(write_routes(short, tmp_path / "x.xml"))
    assert [(r.id, r.town, r.waypoints, r.weathers) for r in back] == [
        (r.id, r.town, r.waypoints, r.weathers) for r in short
    ]


W0, W1 = "<waypoint x='0' y='0' z='0'/>", "<waypoint x='1' y='0' z='0'/>"
W01 = W0 + W1


@pytest.mark.parametrize(
    "text, match",
    [
        ("<routes><route id='1' town='Town05'>" + W0, "well-formed"),
        ("<routez/>", "expected <routes>"),
        ("<routes/>", "no <route>"),
        ("<routes><route town='Town05'/></routes>", "missing id"),
        ("<routes><route id='1'>" + W01 + "</route></routes>", "town"),
        ("<routes><route id='1' town='T'>" + W0 + "</route></routes>", "at least 2"),
        (
            "<routes><route id='1' town='T'>" + W0 + "<waypoint x='nan' y='0' z='0'/></route></routes>",
            "not finite",
        ),
        (
            "<routes><route id='1' town='T'>" + W0 + "<waypoint x='a' y='0' z='0'/></route></routes>",
            "not a number",
        ),
        ("<routes><route id='1' town='T'><waypoint x='0' z='0'/>" + W1 + "</route></routes>", "'y'"),
        # a waypoint without z: a KeyError in the leaderboard's parser, a clear error here
        ("<routes><route id='1' town='T'><waypoint x='0' y='0'/>" + W1 + "</route></routes>",
         "no 'z' attribute"),
        (
            "<routes><route id='1' town='T'>" + W01 + "</route>"
            "<route id='1' town='T'>" + W01 + "</route></routes>",
            "duplicate",
        ),
    ],
)
def test_malformed_route_files_are_user_errors(tmp_path, text, match):
    p = tmp_path / "bad.xml"
    p.write_text(text)
    with pytest.raises(UserError, match=match):
        parse_routes(p)


def test_missing_route_file_says_how_to_fetch(tmp_path):
    with pytest.raises(UserError, match="routes.fetch"):
        parse_routes(tmp_path / "nope.xml")


def test_fetch_from_local_folder_verifies_and_pins(shared_reference, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("routes_town05_short.xml", "routes_town05_long.xml"):
        shutil.copy(shared_reference / name, src / name)
    (src / "town05_all_scenarios.json").write_text('{"available_scenarios": [{"Town05": []}]}')
    out = tmp_path / "out"
    got = fetch.fetch(out, source_dir=src)
    assert set(got) == set(fetch.FILES)
    pin = out / "town05_all_scenarios.json.sha256"
    assert pin.read_text().split()[0] == sha256_file(src / "town05_all_scenarios.json")
    # a later fetch of a different scenario file into the same folder is refused
    (out / "town05_all_scenarios.json").unlink()
    (src / "town05_all_scenarios.json").write_text('{"available_scenarios": []}')
    with pytest.raises(UserError, match="pinned at first fetch"):
        fetch.fetch(out, ["town05_all_scenarios.json"], source_dir=src)
    # a tampered route file is refused and not written
    (src / "routes_town05_long.xml").write_bytes(
        (shared_reference / "routes_town05_long.xml").read_bytes() + b" "
    )
    fresh = tmp_path / "fresh"
    with pytest.raises(UserError, match="does not match"):
        fetch.fetch(fresh, ["routes_town05_long.xml"], source_dir=src)
    assert not (fresh / "routes_town05_long.xml").exists()


def test_fetch_download_path_with_stub_opener(shared_reference, tmp_path):
    seen = []

    def opener(url, timeout):
        seen.append(url)
        return io.BytesIO((shared_reference / "routes_town05_short.xml").read_bytes())

    fetch.fetch(tmp_path, ["routes_town05_short.xml"], opener=opener)
    assert seen == [fetch.url_for("routes_town05_short.xml")]
    assert sha256_file(tmp_path / "routes_town05_short.xml") == fetch.load_sums()["routes_town05_short.xml"]
    fetch.fetch(tmp_path, ["routes_town05_short.xml"], opener=opener)
    assert len(seen) == 1  # present and verified: no second download

    def offline(url, timeout):
        raise urllib.error.URLError("no network")

    with pytest.raises(UserError, match="--from"):
        fetch.fetch(tmp_path / "x", ["routes_town05_long.xml"], opener=offline)


def test_routes_to_xml_is_deterministic(shared_reference):
    long = parse_routes(shared_reference / "routes_town05_long.xml")
    assert routes_to_xml(long) == routes_to_xml(long)


def test_weather_elements_merge_like_the_leaderboard(tmp_path):
    p = tmp_path / "w.xml"
    p.write_text("<routes><route id='1' town='T'>"
                 "<weather cloudiness='10' wetness='5'/><weather cloudiness='80' fog_density='3'/>"
                 "<waypoint x='0' y='0' z='0'/><waypoint x='3' y='4' z='12'/></route>"
                 "<route id='2' town='T'><waypoint x='0' y='0' z='0'/><waypoint x='1' y='0' z='0'/></route>"
                 "</routes>")
    r1, r2 = parse_routes(p)
    # later attributes override earlier ones, the rest are kept (RouteParser.parse_weather)
    assert r1.weather == {"cloudiness": 80.0, "wetness": 5.0, "fog_density": 3.0}
    assert r2.weather == {"sun_altitude_angle": 70.0, "cloudiness": 30.0}  # the leaderboard's default
    assert r1.length_m == pytest.approx(13.0)  # 3-D along the keypoints, as compute_route_length


def test_route_names_and_selection(shared_reference):
    """One owner of the leaderboard's "RouteScenario_<id>" names and of picking routes by id."""
    from routes.parse import route_id_of, route_name, select_routes

    assert route_name("16") == route_name(16) == route_name("RouteScenario_16") == "RouteScenario_16"
    assert route_id_of("RouteScenario_16") == "16" and route_id_of("16") == "16"
    routes = parse_routes(shared_reference / "routes_town05_short.xml")
    assert all(route_id_of(r.name) == r.id for r in routes)
    picked = select_routes(routes, [routes[3].id, routes[1].id])
    assert [r.id for r in picked] == [routes[1].id, routes[3].id]  # file order, not the order asked
    assert select_routes(routes, None) == routes
    with pytest.raises(UserError, match="not in the route file"):
        select_routes(routes, ["no-such-route"])
