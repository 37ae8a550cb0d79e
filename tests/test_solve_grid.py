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

    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    plot = [sys.executable, str(root / "evals" / "plot_solve_grid.py"), str(out), "--base-perplexity", "10"]
    done = subprocess.run(plot + ["--out", str(tmp_path / "grid.png")], capture_output=True, text=True, cwd=root)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "1 settings" in done.stdout
    bad = subprocess.run(plot + ["--out", str(tmp_path / "grid.txt")], capture_output=True, text=True, cwd=root)
    assert bad.returncode != 0 and "a .png path" in bad.stderr


def test_grid_spreads_over_more_layers_and_reads_the_threshold_as_energy(tmp_path):
    facts = write_city_facts(tmp_path / "facts.jsonl")
    out = tmp_path / "grid.json"
    common = ["--facts", str(facts), "--batches", "1", "--batch-size", "2", "--out", str(out)]
    done = run(*common, "--nullspace-scale", "energy", "--grid", "nullspace_threshold=0.05,0.5",
               "--grid", "first_layer=0", home=tmp_path / "home")
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    assert report["nullspace_scale"] == "energy"
    dims = report["null_space_dims"]
    assert set(dims["0.5"]) == {str(layer) for layer in range(0, max(map(int, dims["0.5"])) + 1)}  # from layer 0
    assert all(dims["0.05"][layer] < dims["0.5"][layer] for layer in dims["0.5"])  # a larger share, more directions
    assert [r["setting"] for r in report["runs"]] == [{"nullspace_threshold": 0.05, "first_layer": 0.0},
                                                      {"nullspace_threshold": 0.5, "first_layer": 0.0}]
    for bad_args, message in ((["--nullspace-scale", "energy", "--grid", "nullspace_threshold=1.5"], "below 1"),
                              (["--grid", "first_layer=99"], "first_layer")):
        bad = run(*common, *bad_args, home=tmp_path / "home")
        assert bad.returncode != 0 and message in bad.stderr


def test_batch_damage_uses_the_grids_values_and_restores_the_model(tmp_path):
    facts = write_city_facts(tmp_path / "facts.jsonl")
    home = tmp_path / "home"
    grid = run("--facts", str(facts), "--batches", "1", "--batch-size", "4", "--grid", "alpha=1000",
               "--out", str(tmp_path / "grid.json"), home=home)
    assert grid.returncode == 0, grid.stderr
    out = tmp_path / "damage.json"
    done = run_eval("alphaedit_batch_damage.py", "--facts", str(facts), "--batch-size", "4", "--groups", "2",
                    "--out", str(out), home=home)
    assert done.returncode == 0, done.stderr
    assert "optimising" not in done.stderr  # the grid's cached values
    report = json.loads(out.read_text())
    assert [g["records"] for g in report["groups"]] == [[0, 1], [2, 3]]
    assert all(g["perplexity"] > 0 for g in report["groups"]) and report["perplexity_whole_batch"] > 0
    bad = run_eval("alphaedit_batch_damage.py", "--facts", str(facts), "--groups", "0", "--out", str(out), home=home)
    assert bad.returncode != 0 and "--groups" in bad.stderr


def test_null_space_energy_grows_with_the_threshold(tmp_path):
    out = tmp_path / "energy.json"
    done = run_eval("null_space_energy.py", "--layers", "0,1", "--thresholds", "0.05,0.5", "--scale", "energy",
                    "--out", str(out), home=tmp_path / "home")
    assert done.returncode == 0, done.stderr
    for layer in json.loads(out.read_text())["layers"]:
        small, large = layer["thresholds"]
        assert small["statistics_energy_inside"] <= 0.05 + 1e-6 and large["statistics_energy_inside"] <= 0.5 + 1e-6
        assert small["null_space_dim"] < large["null_space_dim"]
        assert 0 <= large["generic_text_energy_inside"] <= 1
    bad = run_eval("null_space_energy.py", "--thresholds", "1.5", "--scale", "energy", "--out", str(out),
                   home=tmp_path / "home")
    assert bad.returncode != 0 and "below 1" in bad.stderr
