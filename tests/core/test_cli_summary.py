"""The run tables' summary cell: plain values only, floats rounded, so it reads in an 80-column terminal."""

from cvpipe.cli.common import brief_summary


def test_brief_summary_rounds_floats_and_leaves_nested_values_out():
    summary = {"AP": 0.549212345, "images": 72, "passed": True, "gate": {"verdict": "promoted"}, "note": "x" * 50,
               "run": "abc"}
    assert brief_summary(summary) == "AP 0.5492, images 72, passed True, run abc"
    assert brief_summary(summary, most=2) == "AP 0.5492, images 72"
    assert brief_summary(None) == ""
