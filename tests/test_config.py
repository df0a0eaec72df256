"""Typed configs: YAML + key=value overrides, routing to sections, clear errors."""

from __future__ import annotations

import pytest
import yaml

from latentcot.config import parse_kv
from latentcot.errors import ConfigError, UnknownNameError
from latentcot.pipeline import resolve
from latentcot.registry import Registry


def test_flat_and_dotted_keys_route_to_their_sections(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("method: cot\nmodel: tiny-llama\ngeneration:\n  temperature: 0.5\nbatch_size: 3\n")
    res = resolve({"temperature": "0.7", "generation.max_new_tokens": "12", "seed": "4", "lr": "1e-3"}, str(cfg))
    assert res.generation.temperature == 0.7 and res.generation.max_new_tokens == 12
    assert res.run.batch_size == 3 and res.run.seeds == [4] and res.run.model == "tiny-llama"
    assert res.train.lr == 1e-3


def test_types_are_coerced_and_checked():
    res = resolve({"stop": "a,b", "progress": "false", "seeds": "1,2,3"})
    assert res.generation.stop == ["a", "b"] and res.run.progress is False and res.run.seeds == [1, 2, 3]
    with pytest.raises(ConfigError, match="max_new_tokens"):
        resolve({"max_new_tokens": "lots"})
    with pytest.raises(ConfigError, match="progress"):
        resolve({"progress": "maybe"})


@pytest.mark.parametrize("text,number", [("8", 8), ("8.0", 8), ("1e3", 1000), (" 12 ", 12)])
def test_whole_numbers_read_in_any_spelling_of_a_whole_number(text, number):
    assert resolve({"max_steps": text}).train.max_steps == number


@pytest.mark.parametrize("text", ["1.5e0", "2.5", "1e-1", "ten", "true"])
def test_a_fraction_is_never_cut_to_a_whole_number(text):
    with pytest.raises(ConfigError, match=f"max_steps: cannot read '{text}' as int"):
        resolve({"max_steps": text})


def test_lists_of_numbers_read_with_or_without_brackets():
    assert resolve({"seeds": "[0, 1]"}).run.seeds == [0, 1] and resolve({"seeds": "2,3"}).run.seeds == [2, 3]
    assert resolve({"stop": "[END],[/INST]"}).generation.stop == ["[END]", "[/INST]"]  # text keeps its brackets


def test_unknown_key_names_the_closest():
    with pytest.raises(ConfigError, match="temperature"):
        resolve({"temprature": "0.3"})
    with pytest.raises(ConfigError, match="key=value"):
        parse_kv(["oops"])


def test_unknown_registry_name_suggests():
    r: Registry[int] = Registry("widget")
    r.register("alpha")(1)
    with pytest.raises(UnknownNameError, match="did you mean 'alpha'"):
        r.get("alpa")


def test_bad_yaml_is_one_clear_error(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        resolve({}, str(p))
    with pytest.raises(ConfigError, match="does not exist"):
        resolve({}, str(tmp_path / "missing.yaml"))


def test_resume_counts_a_field_added_later_as_its_default(tmp_path):
    """A run directory written before a setting existed (here: rloo's `antithetic` and the run's `refill` missing
    from its train_config.yaml) resumes while the setting is at its default, and is refused, naming the setting,
    once it is not."""
    from latentcot.pipeline import check_resume, resolve, save_config
    from latentcot.preflight import read_back_yaml

    values = {"method": "rloo", "model": "tiny-llama", "task": "pointer_chase", "out": str(tmp_path)}
    save_config(tmp_path, resolve(values), "train_config.yaml")
    data = read_back_yaml(tmp_path / "train_config.yaml")
    assert data["method"].pop("antithetic") is False and "refill" in data["run"]
    del data["run"]["refill"]
    (tmp_path / "train_config.yaml").write_text(yaml.safe_dump(data))
    check_resume(tmp_path, resolve(values), "train_config.yaml")  # defaults: resumes
    with pytest.raises(ConfigError, match=r"method\.antithetic: False there, True now"):
        check_resume(tmp_path, resolve({**values, "antithetic": True}), "train_config.yaml")
    with pytest.raises(ConfigError, match=r"method\.group_size: 8 there, 4 now"):
        check_resume(tmp_path, resolve({**values, "group_size": 4}), "train_config.yaml")
