"""bench.targets reads the newest measurement of the code on main: rows measured on a
reverted commit stay in the JSON but are skipped."""
from bench import targets


def encoder_row(ms, commit, date, run_id):
    return dict(table="floors", timing="graph", case="encoder B32xT250", mode="infer",
                gates="dense", provider="ours", ms=ms, commit=commit, date=date,
                run_id=run_id)


def dense_inference(rows):
    name = "encoder B32xT250 infer dense <= 2.5 ms"
    return next((ours, commit) for target, ours, _, commit in targets.checks(rows)
                if target == name)


def test_rows_of_a_reverted_commit_are_skipped(monkeypatch):
    rows = [encoder_row(2.497, "aaaaaaa", "2026-12-04T10:00:00+00:00", "r1"),
            encoder_row(2.692, "bbbbbbb", "2026-12-04T11:00:00+00:00", "r2")]
    assert dense_inference(rows)[1] == "bbbbbbb"        # the newest run, as measured
    monkeypatch.setattr(targets, "REVERTED", {"bbbbbbb": "slower, reverted"})
    ours, commit = dense_inference(targets.rows_of_main(rows))
    assert commit == "aaaaaaa" and abs(ours - 2497.0) < 1e-6
