import pytest

from cvpipe.config import ConfigError, load_config, parse_override


def test_overrides_are_typed_and_nested(toy_cfg, tmp_path):
    cfg = toy_cfg(overrides=["toy_source.n=7", "toy_source.text=abc", f"store={tmp_path}/other"])
    assert cfg.toy_source.n == 7 and cfg.toy_source.text == "abc"
    assert cfg.store == f"{tmp_path}/other"
    assert cfg.flat()["toy_source.n"] == 7


def test_unknown_key_is_named(toy_cfg):
    with pytest.raises(ConfigError, match=r"toy_source\.nn: unknown key in section 'toy_source'"):
        toy_cfg(toy_source={"nn": 3})
    with pytest.raises(ConfigError, match=r"stor: unknown key at the top level"):
        toy_cfg(overrides=["stor=x"])


def test_wrong_type_is_named(toy_cfg):
    with pytest.raises(ConfigError, match=r"toy_source\.n: .*integer.*'many'"):
        toy_cfg(overrides=["toy_source.n=many"])


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("toy_source.n")


def test_step_sections_in_file_order_and_defaults(toy_cfg):
    cfg = toy_cfg(toy_double=None)
    assert cfg.step_names() == ["toy_source", "toy_double"]
    assert cfg.params("toy_double").factor == 2
    assert cfg.params("toy_compare") is not None  # defaults for a step without a section


def test_load_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)
    bad.write_text("plugins: [no_such_module_xyz]\n")
    with pytest.raises(ConfigError, match="no_such_module_xyz"):
        load_config(bad)


def test_unknown_keys_and_steps_suggest_the_right_one(toy_cfg):
    with pytest.raises(ConfigError,
                       match=r"toy_source\.nn: unknown key in section 'toy_source' \(did you mean 'n'\?\)"):
        toy_cfg(toy_source={"nn": 3})
    with pytest.raises(ConfigError, match=r"toy_sorce: .*did you mean 'toy_source'"):
        toy_cfg(toy_sorce={"n": 3})
    with pytest.raises(ConfigError, match=r"stor: .*did you mean 'store'"):
        toy_cfg(overrides=["stor=x"])


def test_plugins_need_an_explicit_allow(tmp_path, monkeypatch):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("plugins: [toy_steps]\n")
    monkeypatch.setenv("CVPIPE_ALLOW_PLUGINS", "")
    with pytest.raises(ConfigError, match="--allow-plugin toy_steps"):
        load_config(cfg)
    load_config(cfg, allow_plugins={"toy_steps"})  # allowed on the command line
    monkeypatch.setenv("CVPIPE_ALLOW_PLUGINS", "other,toy_steps")
    load_config(cfg)
    cfg.write_text("plugins: ['os; rm -rf /']\n")
    with pytest.raises(ConfigError, match="not a module name"):
        load_config(cfg, allow_plugins={"*"})


def test_relative_store_is_made_absolute_on_load(toy_cfg, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert toy_cfg(overrides=["store=rel/store"]).store == str(tmp_path / "rel" / "store")
    assert toy_cfg(overrides=["store=memory://x"]).store == "memory://x"
