"""Bad input to the data layer: each case is one UserError line that names the file or token and the fix."""

from __future__ import annotations

import json
import shutil

import pytest

from nusc.dataset import DatasetConfig, NuScenesVADDataset
from nusc.infos import build_or_load_infos
from nusc.records import full_future, has_full_future
from scripts import build_infos as cli
from synthetic.nuscenes import make_synthetic_dataset
from vlmad.errors import UserError, cli_main

V = "v1.0-mini"


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return make_synthetic_dataset(
        tmp_path_factory.mktemp("b") / "ds", keyframes_per_scene=7, image_size=(96, 54)
    )


@pytest.fixture
def ds(synth, tmp_path):
    return shutil.copytree(synth, tmp_path / "ds")


def _one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    return msg


def test_wrong_version_names_the_versions_found(ds, capsys):
    with pytest.raises(UserError) as e:
        build_or_load_infos(ds, "v1.0-trainval", progress=False)
    assert "v1.0-trainval" in _one_line(e) and "--version v1.0-mini" in str(e.value)
    # through the CLI: exit code 2 and a single 'error:' line, no traceback
    with pytest.raises(SystemExit) as ex:
        cli_main(cli.main, ["--dataroot", str(ds), "--version", "v1.0-test", "--quiet"])
    assert ex.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: version 'v1.0-test' not found") and err.count("\n") == 1
    assert "Traceback" not in err


def test_missing_dataroot(tmp_path):
    with pytest.raises(UserError, match="does not exist") as e:
        build_or_load_infos(tmp_path / "nowhere", V, progress=False)
    assert str(tmp_path / "nowhere") in _one_line(e)


def test_missing_table(ds):
    (ds / V / "sample_annotation.json").unlink()
    with pytest.raises(UserError) as e:
        build_or_load_infos(ds, V, progress=False)
    assert "sample_annotation.json is missing" in _one_line(e) and "re-extract" in str(e.value)


def test_missing_image_at_build_and_at_load(ds, synth):
    recs = build_or_load_infos(synth, V, cache=ds / "cache.json", progress=False)
    victim = recs[2]["cams"]["CAM_BACK"]["path"]
    (ds / victim).unlink()
    with pytest.raises(UserError) as e:
        build_or_load_infos(ds, V, progress=False)
    assert victim in _one_line(e) and recs[2]["token"] in str(e.value)
    # records built before the file went missing: the dataset names the file when it gets there
    item_ds = NuScenesVADDataset(recs, ds, DatasetConfig(queue_length=1))
    item_ds[1]  # other samples still load
    with pytest.raises(UserError) as e:
        item_ds[2]
    assert victim in _one_line(e)
    (ds / victim).write_bytes(b"not a jpeg")
    with pytest.raises(UserError, match="not a readable image"):
        item_ds[2]


def test_sample_without_a_future(synth, tmp_path):
    recs = build_or_load_infos(synth, V, cache=tmp_path / "c.json", progress=False)
    last = [r for r in recs if r["scene_name"] == "scene-0001"][-1]
    assert not has_full_future(last) and not last["ego_fut_mask"].any()
    with pytest.raises(UserError) as e:
        full_future(last)
    assert last["token"] in _one_line(e) and "0 of 6" in str(e.value) and "has_full_future" in str(e.value)
    assert full_future(recs[0]).shape == (6, 2)
    # the dataset still serves it, with an all-False mask (VAD trains on masked futures)
    item = NuScenesVADDataset(recs, synth, DatasetConfig(queue_length=1))[recs.index(last)]
    assert not item["ego_fut_mask"].any()


def test_broken_next_pointer(ds):
    samples = json.loads((ds / V / "sample.json").read_text())
    samples[1]["next"] = "f" * 32
    (ds / V / "sample.json").write_text(json.dumps(samples))
    with pytest.raises(UserError) as e:
        build_or_load_infos(ds, V, progress=False)
    assert "f" * 32 in _one_line(e) and "sample.json" in str(e.value)


@pytest.mark.parametrize(
    "rel",
    [
        f"{V}/sample.json",
        f"{V}/ego_pose.json",
        f"{V}/privileged.json",
        "can_bus/scene-0002_pose.json",
        "maps/expansion/singapore-onenorth.json",
    ],
)
def test_corrupt_json_names_the_file(ds, rel):
    path = ds / rel
    path.write_text(path.read_text()[: len(path.read_text()) // 2])
    with pytest.raises(UserError) as e:
        build_or_load_infos(ds, V, progress=False)
    assert str(path) in _one_line(e) and "not valid JSON" in str(e.value)


def test_inconsistent_table_is_a_user_error(ds):
    (ds / V / "sensor.json").write_text(json.dumps({"not": "a list"}))
    with pytest.raises(UserError, match="inconsistent"):
        build_or_load_infos(ds, V, progress=False)
