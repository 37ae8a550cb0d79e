"""evals/sequential_edit.py on a tiny model: an interrupted run resumes from its editing session
and ends where an uninterrupted run ends."""
import json

from conftest import eval_script, run_eval, write_city_facts


def run(*args, home):
    return run_eval("sequential_edit.py", *args, home=home)


def test_an_interrupted_run_resumes_and_matches_an_uninterrupted_one(tmp_path):
    facts = write_city_facts(tmp_path / "facts.jsonl")
    common = ["--facts", str(facts), "--limit", "4", "--batch-size", "2", "--methods", "alphaedit"]
    whole = tmp_path / "whole"
    done = run(*common, "--out", str(whole), home=tmp_path / "home")
    assert done.returncode == 0, done.stderr
    report = json.loads(whole.with_suffix(".json").read_text())
    [complete] = report["runs"]
    assert complete["complete"] and [p["edits"] for p in complete["curve"]] == [0, 2, 4]
    assert whole.with_suffix(".png").exists()
    sessions = whole.with_suffix(".sessions") / "alphaedit"
    assert len(json.loads((sessions / "session.json").read_text())["batches"]) == 2

    # Interrupted after the second batch landed in the session but before it was measured: the
    # report has one batch, the session two. Resuming undoes the unmeasured batch and redoes it.
    cut = dict(complete, complete=False, curve=complete["curve"][:2])
    whole.with_suffix(".json").write_text(json.dumps(dict(report, runs=[cut])))
    done = run(*common, "--out", str(whole), "--resume", home=tmp_path / "home")
    assert done.returncode == 0, done.stderr
    assert "resuming after 2 edits" in done.stdout
    [resumed] = json.loads(whole.with_suffix(".json").read_text())["runs"]
    assert resumed["complete"] and resumed["reverts_bit_exact"]
    for a, b in zip(resumed["curve"], complete["curve"]):
        for key in ("edits", "efficacy", "generalisation", "specificity", "perplexity"):
            assert a[key] == b[key], (key, a, b)

    # a finished method is kept as it is
    done = run(*common, "--out", str(whole), "--resume", home=tmp_path / "home")
    assert done.returncode == 0 and "kept from" in done.stdout
    # a report of other facts is not resumed
    done = run(*common[:3], "3", *common[4:], "--out", str(whole), "--resume", home=tmp_path / "home")
    assert done.returncode != 0 and "cannot resume" in done.stderr

    # --rerun: the named method runs again from scratch, the report's other runs stay as they are,
    # an unfinished one too (its session may be long gone)
    other = dict(complete, method="memit", complete=False, curve=complete["curve"][:2], session="gone")
    whole.with_suffix(".json").write_text(json.dumps(dict(report, runs=[other, complete])))
    done = run(*common[:-1], "memit,alphaedit", "--out", str(whole), "--resume", "--rerun", "alphaedit",
               home=tmp_path / "home")
    assert done.returncode == 0, done.stderr
    assert "memit: kept from" in done.stdout and "unfinished" in done.stdout and "alphaedit: kept" not in done.stdout
    kept, again = json.loads(whole.with_suffix(".json").read_text())["runs"]
    assert kept["method"] == "memit" and not kept["complete"] and kept["curve"] == other["curve"]
    assert kept["measured_by"]["command"] == report["command"]
    assert again["method"] == "alphaedit" and again["complete"] and "measured_by" not in again
    assert [p["efficacy"] for p in again["curve"]] == [p["efficacy"] for p in complete["curve"]]
    done = run(*common, "--out", str(whole), "--rerun", "alphaedit", home=tmp_path / "home")
    assert done.returncode != 0 and "--rerun goes with --resume" in done.stderr


def test_the_generation_sample_spreads_over_every_batch():
    spread_sample = eval_script("sequential_edit").spread_sample
    sample = spread_sample(1000, 100)
    assert len(sample) == 100 and sample[0] == 0 and sample[-1] == 999
    assert all(sum(start <= i < start + 100 for i in sample) == 10 for start in range(0, 1000, 100))
    assert spread_sample(4, 3) == [0, 2, 3]
    assert spread_sample(3, 10) == [0, 1, 2]


def test_a_run_with_a_generation_sample_judges_it_after_the_last_batch(tmp_path):
    facts = write_city_facts(tmp_path / "facts.jsonl")
    out = tmp_path / "gen"
    done = run("--facts", str(facts), "--limit", "4", "--batch-size", "2", "--methods", "memit",
               "--generation-sample", "3", "--out", str(out), home=tmp_path / "home")
    assert done.returncode == 0, done.stderr
    [memit] = json.loads(out.with_suffix(".json").read_text())["runs"]
    judged = memit["generation_after_last_batch"]
    assert judged["records"] == [0, 2, 3]
    for form in ("prompt", "chat", "question", "in_context"):
        # counted only where the original model said the old object
        assert 0 <= judged[f"gen_{form}_n"] <= 3
        assert (judged[f"gen_{form}"] is None) == (judged[f"gen_{form}_n"] == 0)
    assert "by generation after 4 edits, on 3 records" in done.stdout
    bad = run("--facts", str(facts), "--generation-sample", "-1", "--out", str(out), home=tmp_path / "home")
    assert bad.returncode == 2 and "--generation-sample -1" in bad.stderr


def test_skip_edits_the_records_after_the_first_n(tmp_path):
    """``--skip N --limit M``: records N to N+M-1 are edited (a slice no choice has seen), and the
    report records the skip and the hash of exactly those records."""
    import hashlib

    from llm_edit.editing.requests import read_requests

    facts = write_city_facts(tmp_path / "facts.jsonl")
    out = tmp_path / "later"
    done = run("--facts", str(facts), "--skip", "2", "--limit", "2", "--batch-size", "2", "--methods", "alphaedit",
               "--out", str(out), home=tmp_path / "home")
    assert done.returncode == 0, done.stderr
    report = json.loads(out.with_suffix(".json").read_text())
    later = read_requests(facts)[2:4]
    assert len(later) == 2 and report["skip"] == 2 and report["limit"] == 2
    assert report["facts_sha256"] == hashlib.sha256(
        "".join(json.dumps(r.to_dict(), sort_keys=True) for r in later).encode()).hexdigest()
    assert [p["edits"] for p in report["runs"][0]["curve"]] == [0, 2]
    done = run("--facts", str(facts), "--skip", "4", "--methods", "alphaedit", "--out", str(out),
               home=tmp_path / "home")
    assert done.returncode == 2 and "no records after the first 4" in done.stderr
