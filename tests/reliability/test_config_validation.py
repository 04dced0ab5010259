"""Config validation, table-driven over every field of `ModelConfig`, `TrainerConfig` and
`RunConfig`: a misspelt key, a value of the wrong type and a value out of range are each refused,
from a dict and from a TOML file, by an error naming the field (and the file), what it expects
and what it received. A completeness check fails when a field has no row."""

import dataclasses
import json
import math
import re

import pytest

from flowmc_ebm.config import ModelConfig, RunConfig, TrainerConfig, load_config

# field -> (wrong type, its message; out of range, its message). A message is a regex; the
# field's dotted name is prefixed by the test. None: no such case for that field (with a reason).
MODEL = {
    "energy_hidden": ("64", "must be a list of ints; received '64'",
                      [16, 0], r"must be >= 1; received \(16, 0\)"),
    "flow_kind": (3, "must be a string; received 3",
                  "glow", "must be one of realnvp, nsf, maf; received 'glow'"),
    "flow_transforms": (2.5, "must be an int; received 2.5", 0, "must be >= 1; received 0"),
    "flow_hidden": ([8.5], r"must be a list of ints; received \[8.5\]",
                    [0], r"must be >= 1; received \(0,\)"),
    "base_scale": ("1", "must be a number; received '1'", 0.0, "must be > 0.0; received 0.0"),
}
TRAINER = {
    "pool_size": ("1024", "must be an int; received '1024'", 0, "must be >= 1; received 0"),
    "batch_size": (32.0, "must be an int; received 32.0", 0, "must be >= 1; received 0"),
    "n_negatives": (True, "must be an int; received True", 0, "must be >= 1; received 0"),
    "mcmc_steps": ([10], r"must be an int; received \[10\]", 0, "must be >= 1; received 0"),
    "n_local": ("4", "must be an int; received '4'", -1, "must be >= 0; received -1"),
    "n_global": (1.5, "must be an int; received 1.5", -1, "must be >= 0; received -1"),
    "global_move": (1, "must be a string; received 1",
                    "mh", "must be one of isir, imh; received 'mh'"),
    "n_particles": ("32", "must be an int; received '32'", 0, "must be >= 1; received 0"),
    "global_proposal": (0, "must be a string; received 0",
                        "data", "must be one of flow, tilt; received 'data'"),
    "step_size": ("small", "must be a number; received 'small'", 0.0,
                  "must be > 0.0; received 0.0"),
    "lr_energy": ("fast", "must be a number; received 'fast'", -0.01,
                  "must be > 0.0; received -0.01"),
    "lr_flow": ([0.01], r"must be a number; received \[0.01\]", 0,
                "must be > 0.0; received 0"),
    "lr_decay": (0.5, "must be a string; received 0.5",
                 "exponential", "must be one of none, cosine, linear; received 'exponential'"),
    "lr_decay_iterations": (1.5, "must be an int; received 1.5", -1,
                            "must be >= 0; received -1"),
    "lr_final_factor": ("tenth", "must be a number; received 'tenth'", 1.5,
                        r"must be <= 1 \(the rates decay\); received 1.5"),
    "energy_l2": (False, "must be a number; received False", -0.1,
                  "must be >= 0.0; received -0.1"),
    "tilt": (1, "must be a string; received 1",
             "wide", "must be one of base, gaussian, gmm, flow; received 'wide'"),
    "tilt_steps": (10.0, "must be an int; received 10.0", 0, "must be >= 1; received 0"),
    "seed": (1.0, "must be an int; received 1.0", -1, "must be >= 0; received -1"),
    "log_every": ("50", "must be an int; received '50'", 0, "must be >= 1; received 0"),
    "eval_every": (0.5, "must be an int; received 0.5", -1, "must be >= 0; received -1"),
    "max_abs_energy": ("1e4", "must be a number; received '1e4'", 0.0,
                       "must be > 0.0; received 0.0"),
    "max_grad_norm": ([1], r"must be a number; received \[1\]", -5.0,
                      "must be > 0.0; received -5.0"),
    "max_restarts": (2.0, "must be an int; received 2.0", -1, "must be >= 0; received -1"),
    "restart_lr_factor": ("half", "must be a number; received 'half'", 1.5,
                          r"must be < 1 \(it lowers the learning rates\); received 1.5"),
    "keep_checkpoints": ("3", "must be an int; received '3'", 0, "must be >= 1; received 0"),
}
RUN = {
    "target": (5, "must be a string; received 5",
               "three_modes", "must be one of two_modes, four_modes"),
    "sampler": (["ula"], r"must be a string; received \['ula'\]",
                "hmc", "must be one of flowmc, ula, mala, nt; received 'hmc'"),
    "n_data": ("big", "must be an int; received 'big'", 0, "must be >= 1; received 0"),
    "data_seed": (0.5, "must be an int; received 0.5", -3, "must be >= 0; received -3"),
    "epochs": (1.5, "must be an int; received 1.5", -1, "must be >= 0; received -1"),
    "iterations": ("10", "must be an int; received '10'", -1, "must be >= 0; received -1"),
    "checkpoint_every": (2.5, "must be an int; received 2.5", 0, "must be >= 1; received 0"),
    "target_options": ("dim=4", "must be a table \\(dict\\); received str",
                       {"dim": 1}, r"\{'dim': 1\} do not fit target 'high_dim': dim must be"),
    # The two tables: a wrong type is refused; "out of range" is their own fields' rows.
    "model": (3, "must be a table \\(dict\\); received int", None, None),
    "trainer": ("fast", "must be a table \\(dict\\); received str", None, None),
}
# RunConfig rows that need another field set to reach their check.
CONTEXT = {"target_options": {"target": "high_dim"}}
SECTIONS = [("model", ModelConfig, MODEL), ("trainer", TrainerConfig, TRAINER),
            ("", RunConfig, RUN)]


def cases(kind):
    for section, _, table in SECTIONS:
        for name, (bad_type, type_msg, bad_value, value_msg) in table.items():
            value, message = (bad_type, type_msg) if kind == "type" else (bad_value, value_msg)
            if value is None:
                continue
            yield pytest.param(section, name, value, message, id=f"{section or 'run'}.{name}")


def as_run_dict(section, name, value):
    data = {} if section else dict(CONTEXT.get(name, {}))
    if section:
        data[section] = {name: value}
    else:
        data[name] = value
    return data


def toml_value(value):
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(value)  # strings, ints, floats: the same spelling in TOML


def write_toml(path, data):
    top = [f"{k} = {toml_value(v)}" for k, v in data.items()
           if not (k in ("model", "trainer") and isinstance(v, dict))]
    tables = [f"[{k}]\n" + "\n".join(f"{kk} = {toml_value(vv)}" for kk, vv in v.items())
              for k, v in data.items() if k in ("model", "trainer") and isinstance(v, dict)]
    path.write_text("\n".join(top + tables) + "\n")


def check_both_ways(tmp_path, data, error, pattern):
    with pytest.raises(error, match=pattern):
        RunConfig.from_dict(data)
    path = tmp_path / "case.toml"
    write_toml(path, data)
    with pytest.raises(error, match=rf"case\.toml: .*{pattern}"):
        load_config(path)


def dotted(section, name):
    return re.escape(f"{section}.{name}" if section else name)


@pytest.mark.parametrize("section, name, value, message", list(cases("type")))
def test_a_wrong_type_is_named(tmp_path, section, name, value, message):
    check_both_ways(tmp_path, as_run_dict(section, name, value), TypeError,
                    rf"{dotted(section, name)} {message}")


@pytest.mark.parametrize("section, name, value, message", list(cases("range")))
def test_an_out_of_range_value_is_named(tmp_path, section, name, value, message):
    check_both_ways(tmp_path, as_run_dict(section, name, value), ValueError,
                    rf"{dotted(section, name)} .*{message}")


def misspellings():
    for section, cls, _ in SECTIONS:
        for f in dataclasses.fields(cls):
            yield pytest.param(section, f.name, id=f"{section or 'run'}.{f.name}")


@pytest.mark.parametrize("section, name", list(misspellings()))
def test_a_misspelt_key_is_named_with_the_known_ones(tmp_path, section, name):
    wrong = name[:-1] + ("x" if name[-1] != "x" else "y")
    data = {section: {wrong: 1}} if section else {wrong: 1}
    full = f"{section}.{wrong}" if section else wrong
    check_both_ways(tmp_path, data, ValueError,
                    rf"unknown key {re.escape(full)}; known keys: .*\b{name}\b")


def test_direct_construction_names_the_field_too():
    with pytest.raises(ValueError, match=r"trainer\.keep_checkpoints must be >= 1; received 0"):
        TrainerConfig(keep_checkpoints=0)
    with pytest.raises(TypeError, match=r"model\.flow_transforms must be an int; received 2\.5"):
        ModelConfig(flow_transforms=2.5)
    with pytest.raises(ValueError, match=r"model\.base_scale must be finite; received nan"):
        ModelConfig(base_scale=math.nan)


@pytest.mark.parametrize("data, error, message", [
    ({"trainer": {"n_negatives": 65, "pool_size": 64}}, ValueError,
     r"trainer.n_negatives \(65\) must be at most trainer.pool_size \(64\)"),
    ({"trainer": {"n_local": 0, "n_global": 0}}, ValueError,
     "trainer.n_local \\+ trainer.n_global must be at least 1"),
    ({"trainer": {"mcmc_steps": 7}}, ValueError,
     r"trainer.mcmc_steps \(7\) must be a multiple of n_local \+ n_global \(5\)"),
    ({"epochs": 0, "iterations": 0}, ValueError, "a run needs epochs >= 1 or iterations >= 1"),
    ({"n_data": 10, "iterations": 5}, ValueError,
     r"n_data \(10\) must be at least trainer.batch_size \(64\)"),
    ({"target_options": {"scale": 2}}, TypeError,
     r"target_options \{'scale': 2\} do not fit target 'two_modes'"),
    ({"model": {"base_scale": math.nan}}, ValueError, "model.base_scale must be finite"),
], ids=["negatives>pool", "empty-cycle", "partial-cycle", "no-length", "data<batch",
        "target-option", "nan"])
def test_fields_that_depend_on_each_other(tmp_path, data, error, message):
    check_both_ways(tmp_path, data, error, message)


def test_every_field_has_a_row_and_the_defaults_are_valid():
    for _, cls, table in SECTIONS:
        assert set(table) == {f.name for f in dataclasses.fields(cls)}, cls.__name__
    assert RunConfig() == RunConfig.from_dict({})
    counts = {kind: len(list(cases(kind))) for kind in ("type", "range")}
    assert counts == {"type": 41, "range": 39}
    assert len(list(misspellings())) == 41


GROUPED = ('[trainer]\nseed = 2\n[trainer.flowmc]\nn_local = 9\nn_global = 1\n'
           '[trainer.guard]\nmax_restarts = 1\n[trainer.schedule]\nlr_decay = "cosine"\n')
FLAT = ('[trainer]\nseed = 2\nn_local = 9\nn_global = 1\nmax_restarts = 1\n'
        'lr_decay = "cosine"\n')


def test_grouped_trainer_tables_and_the_old_flat_keys_load_the_same_config(tmp_path):
    (tmp_path / "grouped.toml").write_text("iterations = 10\n" + GROUPED)
    (tmp_path / "flat.toml").write_text("iterations = 10\n" + FLAT)
    grouped, flat = load_config(tmp_path / "grouped.toml"), load_config(tmp_path / "flat.toml")
    assert grouped == flat
    assert grouped.trainer.n_local == 9 and grouped.trainer.max_restarts == 1  # attributes stay flat
    assert grouped.trainer.lr_decay == "cosine" and grouped.trainer.seed == 2
    # What a run writes (config.json) is grouped, and reads back to the same config.
    saved = grouped.to_dict()
    assert saved["trainer"]["flowmc"]["n_local"] == 9 and "n_local" not in saved["trainer"]
    assert saved["trainer"]["schedule"] == {"lr_decay": "cosine", "lr_decay_iterations": 0,
                                            "lr_final_factor": 0.1}
    assert RunConfig.from_dict(saved) == grouped
    # An override in the old flat spelling lands in its group.
    assert grouped.replace({"trainer.n_local": 4}).trainer.n_local == 4


@pytest.mark.parametrize("text, error, message", [
    ("[trainer.guard]\nn_local = 3\n", ValueError,
     r"^[^\n]*trainer\.guard\.n_local: n_local belongs in \[trainer\.flowmc\], not in "
     r"\[trainer\.guard\]$"),
    ("[trainer.flowmc]\nseed = 3\n", ValueError,
     r"^[^\n]*trainer\.flowmc\.seed: seed belongs in \[trainer\], not in \[trainer\.flowmc\]$"),
    ("[trainer]\nn_local = 3\n[trainer.flowmc]\nn_local = 4\n", ValueError,
     r"trainer\.n_local = 3 and trainer\.flowmc\.n_local = 4: one key given twice"),
    ("[trainer.flowmc]\nn_locals = 3\n", ValueError,
     r"unknown key trainer\.flowmc\.n_locals; known keys: n_local, n_global"),
    ("[trainer]\nflowmc = 3\n", TypeError, r"trainer\.flowmc must be a table \(dict\); received int"),
    ("[trainer.flowmc]\nn_particles = 0\n", ValueError, r"trainer\.n_particles must be >= 1; received 0"),
], ids=["wrong-group", "not-a-group-key", "twice", "misspelt", "not-a-table", "range"])
def test_a_key_in_the_wrong_trainer_table_is_refused_in_one_line_naming_its_place(
        tmp_path, text, error, message):
    path = tmp_path / "case.toml"
    path.write_text(text)
    with pytest.raises(error, match=message):
        load_config(path)


def test_the_example_configs_in_the_old_flat_form_still_load():
    from pathlib import Path

    paths = sorted((Path(__file__).parents[2] / "examples" / "configs").glob("*.toml"))
    assert paths
    for path in paths:
        assert isinstance(load_config(path), RunConfig), path
