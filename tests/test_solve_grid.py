"""evals/alphaedit_solve_grid.py on a tiny model: every setting replays the same batches, the
values are optimised once, and the model ends as it started."""
import json

from conftest import run_eval, write_city_facts


def run(*args, home):
    return run_eval("alphaedit_solve_grid.py", *args, home=home)


def test_grid_replays_each_setting_on_cached_values(tmp_path):
    facts = write_city_facts(tmp_path / "facts.jsonl")
    out = tmp_path / "grid.json"
    common = ["--facts", str(facts), "--batches", "2", "--batch-size", "2", "--out", str(out)]
    done = run(*common, "--grid", "alpha=0.1,1000", "--grid", "nullspace_threshold=0.5", home=tmp_path / "home")
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    assert [r["setting"] for r in report["runs"]] == [{"alpha": 0.1, "nullspace_threshold": 0.5},
                                                      {"alpha": 1000.0, "nullspace_threshold": 0.5}]
    for r in report["runs"]:
        assert [p["edits"] for p in r["curve"]] == [2, 4] and len(r["curve"][-1]["efficacy_by_batch"]) == 2
    small, large = (r["curve"][0]["update_norm"] for r in report["runs"])
    assert large < small  # the ridge term shrinks the update
    cached = list((tmp_path / "home" / "cache" / "solve_grid").glob("*/batch*.pt"))
    assert len(cached) == 2
    again = run(*common, "--grid", "alpha=1000", home=tmp_path / "home")  # the values come from the cache
    assert again.returncode == 0, again.stderr
    assert "optimising" not in again.stderr

    skipped = tmp_path / "skipped.json"
    done = run("--facts", str(facts), "--skip", "2", "--batches", "1", "--batch-size", "2", "--out", str(skipped),
               "--grid", "alpha=1000", home=tmp_path / "home")  # tunes on the records after the first two
    assert done.returncode == 0, done.stderr
    all_subjects = [json.loads(line)["subject"] for line in facts.read_text().splitlines() if line.strip()]
    assert json.loads(skipped.read_text())["subjects"] == [all_subjects[2:4]]
    assert len(list((tmp_path / "home" / "cache" / "solve_grid").glob("*/batch*.pt"))) == 3

    short = run("--facts", str(facts), "--skip", str(len(all_subjects)), "--batches", "1", "--batch-size", "1",
                "--out", str(tmp_path / "short.json"), home=tmp_path / "home")
    assert short.returncode != 0 and "records after --skip" in short.stderr

    bad = run(*common, "--grid", "alhpa=1", home=tmp_path / "home")
    assert bad.returncode != 0 and "'alhpa' is not one of" in bad.stderr
