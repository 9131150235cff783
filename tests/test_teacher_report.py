"""annotation_report: Table 7 numbers, Fig. 5 PNGs, HTML gallery; CLI dry-run and rule run."""

from __future__ import annotations

import json

import numpy as np
import pytest

from teacher.answers import word_count
from teacher.backends.rule import RULE_TEACHER_LABEL
from teacher.prompts import PROMPT_VERSION, prompt_hash
from teacher.store import Annotation, AnnotationStore, Key


def test_report_on_rule_annotations(tmp_path, capsys):
    from scripts.annotate import main as annotate_main
    from scripts.annotation_report import main as report_main
    from synthetic.nuscenes import make_synthetic_dataset

    root = make_synthetic_dataset(tmp_path / "ds", num_scenes=1, keyframes_per_scene=5)
    store = tmp_path / "ann.sqlite"
    common = ["--dataroot", str(root), "--version", "v1.0-mini", "--store", str(store), "--no-progress"]
    # dry run of the VLM teacher: no key needed, nothing sent, nothing written
    assert annotate_main(common + ["--teacher", "openai", "--dry-run", "--price-input", "2.5",
                                   "--price-output", "10"]) == 0
    est = json.loads(capsys.readouterr().out)
    assert est["requests"] == 10 and est["cost_usd"] > 0
    with AnnotationStore(store) as st:
        assert st.all() == []
    assert annotate_main(common + ["--teacher", "rule"]) == 0
    assert RULE_TEACHER_LABEL in capsys.readouterr().out
    out = tmp_path / "report"
    assert report_main(["--store", str(store), "--out-dir", str(out), "--dataroot", str(root),
                        "--version", "v1.0-mini", "--sample", "3"]) == 0
    with AnnotationStore(store) as st:
        p1 = st.all(prompt_name="P1")
    md = (out / "table7.md").read_text()
    assert RULE_TEACHER_LABEL in md
    for kind, name in (("current", "A_c"), ("reasoning", "A_r")):
        counts = [word_count(r.parsed[kind]) for r in p1]
        row = next(line for line in md.splitlines() if line.startswith(f"| {name}"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[1:5] == [str(len(counts)), str(max(counts)), str(min(counts)), f"{np.mean(counts):.2f}"]
    for name in ("fig5.png", "fig5_control.png", "fig5_turn.png", "fig5_lane.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    dist = (out / "distributions.md").read_text()
    assert "| go straight | 5 | 100.0% |" in dist
    page = (out / "gallery" / "index.html").read_text()
    assert page.count("class='card'") == 3 and RULE_TEACHER_LABEL in page
    assert len(list((out / "gallery").glob("*.jpg"))) == 3


def test_report_counts_failures_and_escapes_html(tmp_path):
    from scripts.annotation_report import main as report_main

    with AnnotationStore(tmp_path / "s.sqlite") as st:
        st.put(Annotation(Key("a", prompt_hash("P2"), "m", "i"), "P2", PROMPT_VERSION, "vlm", "failed",
                          "<script>x</script>", {"control": None, "turn": None, "lane": None}, "free", 3))
        st.put(Annotation(Key("b", prompt_hash("P2"), "m", "i"), "P2", PROMPT_VERSION, "vlm", "ok",
                          "{}", {"control": "stop", "turn": "none", "lane": "none"}, "free", 1))
    report_main(["--store", str(tmp_path / "s.sqlite"), "--out-dir", str(tmp_path / "r")])
    dist = (tmp_path / "r" / "distributions.md").read_text()
    assert "| unreadable / failed | 1 | 50.0% |" in dist and "| stop | 1 | 50.0% |" in dist
    page = (tmp_path / "r" / "gallery" / "index.html").read_text()
    assert "<script>x</script>" not in page and "&lt;script&gt;" in page


def test_report_errors(tmp_path):
    from scripts.annotation_report import main as report_main
    from vlmad.errors import UserError

    with pytest.raises(UserError, match="does not exist"):
        report_main(["--store", str(tmp_path / "none.sqlite"), "--out-dir", str(tmp_path)])
    (tmp_path / "junk.sqlite").write_bytes(b"not a database at all" * 100)
    with pytest.raises(UserError, match="not a readable SQLite"):
        AnnotationStore(tmp_path / "junk.sqlite")
