import json

from typer.testing import CliRunner

from cvpipe.cli.main import app

cli = CliRunner()


def invoke(*args):
    return cli.invoke(app, [str(a) for a in args])


def test_run_runs_show_end_to_end(toy_config_file):
    cfg = toy_config_file()
    res = invoke("run", cfg)
    assert res.exit_code == 0, res.output
    res = invoke("runs", "--config", cfg, "--json")
    assert res.exit_code == 0, res.output
    runs = json.loads(res.stdout)
    assert [(r["step"], r["status"]) for r in runs] == [("toy_source", "complete"), ("toy_double", "complete")]
    double = next(r for r in runs if r["step"] == "toy_double")
    res = invoke("show", double["run_id"], "--config", cfg, "--json")
    assert res.exit_code == 0, res.output
    shown = json.loads(res.stdout)
    assert shown["manifest"]["run_id"] == double["run_id"]
    dag = shown["lineage"]  # a DAG since issue 15: each run once, inputs point at run ids
    src = dag["runs"][dag["root"]]["inputs"]["numbers"]
    assert src["step"] == "toy_source" and src["run_id"] == next(r["run_id"] for r in runs if r["step"] == "toy_source")
    assert dag["runs"][src["run_id"]]["step"] == "toy_source"
    res = invoke("show", double["run_id"], "--config", cfg)
    assert res.exit_code == 0 and "lineage" in res.stdout and "toy_source" in res.stdout


def test_run_subsets_and_rerun_reuses(toy_config_file):
    cfg = toy_config_file()
    assert invoke("run", cfg, "--to", "toy_source").exit_code == 0
    res = invoke("runs", "--config", cfg, "--json")
    assert [r["step"] for r in json.loads(res.stdout)] == ["toy_source"]
    res = invoke("run", cfg, "--steps", "toy_source,toy_double")
    assert res.exit_code == 0 and "reusing run" in res.output
    res = invoke("step", "toy_double", cfg, "--force", "--set", "toy_double.factor=5")
    assert res.exit_code == 0, res.output
    runs = json.loads(invoke("runs", "--config", cfg, "--json", "--step", "toy_double").stdout)
    assert [r["summary"]["total"] for r in runs] == [12, 30]


def test_errors_exit_nonzero_with_a_message(toy_config_file, tmp_path):
    cfg = toy_config_file()
    res = invoke("run", cfg, "--set", "toy_source.bogus=1")
    assert res.exit_code == 2 and "toy_source.bogus: unknown key" in res.output
    res = invoke("step", "toy_double", cfg)
    assert res.exit_code == 1 and "no complete run of toy_source" in res.output
    res = invoke("step", "no_such_step", cfg)
    assert res.exit_code == 2 and "unknown step" in res.output
    res = invoke("run", cfg, "--set", "toy_double.fail=true")
    assert res.exit_code == 1 and "injected failure" in res.output and "cvpipe show" in res.output
    res = invoke("show", "nope", "--config", cfg)
    assert res.exit_code == 1 and "no run 'nope'" in res.output
    res = invoke("run", tmp_path / "missing.yaml")
    assert res.exit_code == 2 and "not found" in res.output


def test_help_everywhere():
    for cmd in ([], ["run"], ["step"], ["runs"], ["show"], ["steps"]):
        res = invoke(*cmd, "--help")
        assert res.exit_code == 0 and "Usage" in res.output


def test_config_the_same_way_everywhere(toy_config_file, tmp_path):
    cfg = toy_config_file()
    assert invoke("run", "-c", cfg, "--to", "toy_source").exit_code == 0  # -c as well as positional
    res = invoke("step", "toy_double", "--config", cfg)
    assert res.exit_code == 0, res.output
    res = invoke("run", cfg, "-c", tmp_path / "other.yaml")
    assert res.exit_code == 2 and "two configs" in res.output
    res = invoke("run")
    assert res.exit_code == 2 and "give a pipeline config" in res.output
    # runs / show take --set like run does: a run made under another pipeline name is listed with it
    assert invoke("run", cfg, "--set", "pipeline=other", "--to", "toy_source").exit_code == 0
    other = json.loads(invoke("runs", "-c", cfg, "--set", "pipeline=other", "--json").stdout)
    assert [r["step"] for r in other] == ["toy_source"]
    res = invoke("show", other[0]["run_id"], "-c", cfg, "--set", "pipeline=other", "--json")
    assert res.exit_code == 0, res.output


def test_unknown_step_suggests_the_right_one(toy_config_file):
    cfg = toy_config_file()
    res = invoke("step", "toy_dubble", cfg)
    assert res.exit_code == 2 and "did you mean 'toy_double'" in res.output
    res = invoke("run", cfg, "--to", "toy_sourse")
    assert res.exit_code == 2 and "did you mean 'toy_source'" in res.output


def test_lineage_shows_each_run_once(toy_config_file):
    cfg = toy_config_file()
    assert invoke("run", cfg).exit_code == 0
    runs = json.loads(invoke("runs", "-c", cfg, "--json").stdout)
    source = next(r["run_id"] for r in runs if r["step"] == "toy_source")
    double = next(r["run_id"] for r in runs if r["step"] == "toy_double")
    res = cli.invoke(app, ["show", double, "-c", str(cfg)], terminal_width=200)
    assert res.exit_code == 0, res.output
    tree = res.stdout[res.stdout.index("lineage:"):]
    # toy_double reads two entities of one toy_source run: the run is expanded once, then referred to
    assert tree.count(f"{source} (complete)") == 1 and tree.count("shown above") == 1


def test_printed_commands_name_the_program_as_the_user_reached_it(tmp_path, monkeypatch):
    from cvpipe.cli.common import cvpipe_command

    exe = tmp_path / "venv" / "bin" / "cvpipe"
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["venv/bin/cvpipe", "run"])
    monkeypatch.setenv("PATH", "/usr/bin")
    assert cvpipe_command() == "venv/bin/cvpipe"  # not on PATH: printed as typed, so it runs as printed
    monkeypatch.setattr("sys.argv", [str(exe), "run"])
    assert cvpipe_command() == "venv/bin/cvpipe"
    monkeypatch.setenv("PATH", f"/usr/bin:{exe.parent}")
    assert cvpipe_command() == "cvpipe"
