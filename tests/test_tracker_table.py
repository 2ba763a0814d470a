"""scripts/tracker_table.py on test_diagnose's hand-made video with only track C (class 2) detected: every cell
tracks C perfectly and misses class 1 (A and B), so each lam x option set reads AP = AP50 = (0 + 1) / 2 and
HOTA = DetA = AssA = (0 + 1) / 2 (TrackEval's class mean over the classes with a GT or a result)."""
import json

import pytest
from test_diagnose import frame_predictions, write

pytest.importorskip("trackeval")
import tracker_table  # noqa: E402  (scripts/ is on sys.path through test_diagnose)


def test_every_cell_on_a_video_with_one_class_found(tmp_path):
    gt_path, _ = write(tmp_path, [])
    pred = frame_predictions(tmp_path, {(name, t) for name in "AB" for t in range(6)})
    out = tmp_path / "table.json"
    rows = tracker_table.main(["--gt", gt_path, "--pred", pred, "--out", str(out)])
    assert json.loads(out.read_text()) == rows
    assert [(r["options"], r["lam"]) for r in rows][:3] == [("original (motion off, refind off)", lam)
                                                           for lam in (0.0, 0.5, 1.0)]
    assert len(rows) == 12 and {(r["motion"], r["refind"]) for r in rows} == {(False, 0), (True, 0), (False, 2),
                                                                             (True, 2)}
    for r in rows:
        assert r["tracks"] == 1
        for k in ("AP", "AP50", "HOTA", "DetA", "AssA"):
            assert r[k] == pytest.approx(0.5, abs=1e-12), (r["options"], r["lam"], k)
    table = tracker_table.format_table(rows).splitlines()
    assert len(table) == 2 + 4 and table[2].startswith("| original (motion off, refind off) | 0.500 / 0.500 / 0.500")
