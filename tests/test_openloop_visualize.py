"""`scripts.visualize`: per-sample figures, scene video, and input errors (small synthetic dataset)."""

from __future__ import annotations

import json

import cv2
import pytest

from openloop.gt import load_ground_truth
from scripts.visualize import load_actions, main, render_sample
from synthetic.nuscenes import make_synthetic_dataset
from vlmad.errors import UserError


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = make_synthetic_dataset(tmp_path_factory.mktemp("nusc"), num_scenes=1, keyframes_per_scene=8,
                                  image_size=(160, 90), seed=1)
    gt = load_ground_truth(root, "v1.0-mini", progress=False)
    work = tmp_path_factory.mktemp("vis")
    preds = {t: (s.ego_fut + [0.0, 1.0]).tolist() for t, s in gt.samples.items() if s.valid}
    (work / "p.json").write_text(json.dumps(preds))
    act = {"control": "go straight", "turn": {"none": 0.7, "turn left": 0.3}, "lane": "none"}
    acts = {t: act for t in preds}
    (work / "a.json").write_text(json.dumps(acts))
    return root, gt, work


def test_samples_and_scene_video(setup):
    root, gt, work = setup
    base = ["--dataroot", str(root), "--version", "v1.0-mini", "--predictions", str(work / "p.json")]
    main([*base, "--actions", str(work / "a.json"), "--out", str(work / "few"), "--samples", "2"])
    pngs = sorted((work / "few").rglob("*.png"))
    assert len(pngs) == 2
    img = cv2.imread(str(pngs[0]))
    assert img.shape == (500, 1200, 3) and img.std() > 10
    scene = gt.scene_names()[0]
    main([*base, "--out", str(work / "scene"), "--scene", scene])
    videos = list((work / "scene").glob(f"{scene}.*"))
    assert len(videos) == 1
    cap = cv2.VideoCapture(str(videos[0]))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == len(gt)
    cap.release()


def test_plan_and_actions_change_the_picture(setup):
    root, gt, _ = setup
    s = next(x for x in gt.samples.values() if x.valid)
    plain = render_sample(root, s, None, None, None)
    with_plan = render_sample(root, s, None, s.ego_fut + [0.0, 2.0], {"control": "stop"})
    assert plain.shape == with_plan.shape
    red = (with_plan[..., 0] > 200) & (with_plan[..., 1] < 60) & (with_plan[..., 2] < 60)
    red_before = (plain[..., 0] > 200) & (plain[..., 1] < 60) & (plain[..., 2] < 60)
    assert red.sum() > red_before.sum() + 50  # the predicted trajectory is drawn in red


@pytest.mark.parametrize("content, pattern", [
    ("[]", "expected an object"),
    ('{"t": "stop"}', "token 't'"),
    ('{"t": {"control": 3}}', "'control'"),
    ("{", "not valid JSON"),
])
def test_bad_actions_file(tmp_path, content, pattern):
    p = tmp_path / "a.json"
    p.write_text(content)
    with pytest.raises(UserError, match=pattern):
        load_actions(p)


def test_unknown_scene(setup, tmp_path):
    root, _, work = setup
    with pytest.raises(UserError, match="scene 'scene-9999' not in"):
        main(["--dataroot", str(root), "--version", "v1.0-mini", "--predictions", str(work / "p.json"),
              "--out", str(tmp_path), "--scene", "scene-9999"])


def test_action_probabilities_show_the_top_label(setup):
    work = setup[2]
    acts = load_actions(work / "a.json")
    assert set(next(iter(acts.values()))) == {"control", "turn", "lane"}
    assert all(a["turn"] == "none (0.70)" and a["control"] == "go straight" for a in acts.values())
