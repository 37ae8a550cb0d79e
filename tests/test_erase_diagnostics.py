"""evals/erase_leak_layers.py and evals/erase_leak_positions.py: the diagnostics of where an
erasure reaches a neighbour, on the tiny Llama."""
import json

from conftest import run_eval


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_neighbour_with_a_forgotten_subject_takes_all_of_its_write_at_every_layer(tmp_path):
    facts = _write_jsonl(tmp_path / "facts.jsonl", [
        {"prompt": "{} is located in", "subject": "Eiffel Tower", "target": "Paris"},
        {"prompt": "{} speaks", "subject": "Angela Merkel", "target": "German"}])
    # the key is read at the subject's last token, which sees only the subject and what comes
    # before it: a neighbour with the same subject has the same key whatever follows
    neighbours = _write_jsonl(tmp_path / "neighbours.jsonl", [
        {"prompt": "{} was built by", "subject": "Eiffel Tower", "target": "Gustave Eiffel"},
        {"prompt": "{} is a river in", "subject": "Danube", "target": "Europe"}])
    lost = tmp_path / "lost.json"
    lost.write_text(json.dumps({"rows": [
        {"subject": "Eiffel Tower", "object": "Gustave Eiffel", "full": False, "none": True},
        {"subject": "Danube", "object": "Europe", "full": True, "none": True}]}))
    out = tmp_path / "layers.json"
    proc = run_eval("erase_leak_layers.py", "--facts", str(facts), "--neighbours", str(neighbours),
                    "--lost", str(lost), "--layers", "0,1", "--out", str(out), home=tmp_path / "home")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert set(result["per_layer"]) == {"0", "1"}
    for layer in result["per_layer"].values():
        assert abs(layer["lost"]["Eiffel Tower"] - 1.0) < 1e-3
        assert set(layer["shares"]) == {"Eiffel Tower", "Danube"}
        assert layer["kept_max"] == layer["shares"]["Danube"] < 0.999


def test_bad_layer_or_pick_arguments_exit_2_naming_them(tmp_path):
    facts = _write_jsonl(tmp_path / "facts.jsonl", [{"prompt": "{} is in", "subject": "Louvre", "target": "Paris"}])
    lost = tmp_path / "lost.json"
    lost.write_text(json.dumps({"rows": []}))
    proc = run_eval("erase_leak_layers.py", "--facts", str(facts), "--neighbours", str(facts), "--lost", str(lost),
                    "--layers", "1,x", "--out", str(tmp_path / "o.json"), home=tmp_path / "home")
    assert proc.returncode == 2 and "--layers '1,x'" in proc.stderr
    proc = run_eval("erase_leak_layers.py", "--facts", str(facts), "--neighbours", str(facts), "--lost", str(facts),
                    "--layers", "1", "--out", str(tmp_path / "o.json"), home=tmp_path / "home")
    assert proc.returncode == 2 and "not erase_leak_positions.py's output" in proc.stderr
    broken = tmp_path / "broken.jsonl"
    broken.write_text(facts.read_text() + '{"prompt": "{} is in", "subject": "Louvre"}\n')
    proc = run_eval("erase_leak_layers.py", "--facts", str(broken), "--neighbours", str(facts), "--lost", str(lost),
                    "--layers", "1", "--out", str(tmp_path / "o.json"), home=tmp_path / "home")
    assert proc.returncode == 2 and f"{broken}:2" in proc.stderr
    proc = run_eval("erase_leak_positions.py", "--facts", str(facts), "--pick", "3", "--neighbours", str(facts),
                    "--out", str(tmp_path / "o.json"), home=tmp_path / "home")
    assert proc.returncode == 2 and str(facts) in proc.stderr
    assert not (tmp_path / "o.json").exists()
