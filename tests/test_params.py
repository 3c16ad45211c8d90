"""Parameter files (extends, sweeps, Python files, overrides) and the read-tracking view."""

import copy
import pickle
import textwrap

import pytest

from orchestrator.errors import ParamsError, UnknownParameterError
from orchestrator.params import MISSING, ParamSet, TrackedParams, is_ignored, load_params, resolve, traced_value


def write(tmp_path, name, text):
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def by_name(sets):
    return {s.name: s for s in sets}


# ---------------------------------------------------------------------------------- YAML basics


def test_yaml_file_default_name_is_stem(tmp_path):
    path = write(tmp_path, "default.yaml", "train: {lr: 0.1, width: 8}\nseed: 1\n")
    [ps] = load_params([path])
    assert ps == ParamSet("default", {"train": {"lr": 0.1, "width": 8}, "seed": 1}, str(path))


def test_yaml_explicit_name_and_reserved_keys_removed(tmp_path):
    path = write(tmp_path, "a.yaml", "name: fancy\nx: 1\n")
    [ps] = load_params([path])
    assert ps.name == "fancy" and ps.values == {"x": 1}


def test_top_level_must_be_mapping(tmp_path):
    path = write(tmp_path, "list.yaml", "- 1\n- 2\n")
    with pytest.raises(ParamsError, match="list.yaml.*mapping"):
        load_params([path])


def test_empty_yaml_file_is_an_empty_set(tmp_path):
    path = write(tmp_path, "empty.yaml", "# nothing yet\n")
    assert load_params([path]) == [ParamSet("empty", {}, str(path))]


def test_missing_file(tmp_path):
    with pytest.raises(ParamsError, match=r"parameter file .*nope.yaml not found"):
        load_params([tmp_path / "nope.yaml"])


def test_bad_yaml_names_file_and_line(tmp_path):
    path = write(tmp_path, "bad.yaml", "a: 1\nb: 2\nc: [1, 2\nd: 4\n")
    with pytest.raises(ParamsError) as exc:
        load_params([path])
    msg = str(exc.value)
    assert str(path) in msg and "invalid YAML" in msg
    assert f"{path}:4:" in msg or f"{path}:5:" in msg  # the line where the parser gives up


def test_bad_yaml_line_number_exact(tmp_path):
    path = write(tmp_path, "bad.yaml", "a: 1\nb: : 2\n")
    with pytest.raises(ParamsError, match=r"bad.yaml:2: invalid YAML"):
        load_params([path])


def test_dotted_key_rejected(tmp_path):
    path = write(tmp_path, "d.yaml", "train:\n  opt.lr: 1\n")
    with pytest.raises(ParamsError, match=r"d.yaml.*'opt.lr'.*under 'train'"):
        load_params([path])


def test_dotted_key_inside_list_items_is_fine(tmp_path):
    path = write(tmp_path, "d.yaml", "files: [{data.csv: 1}]\n")
    assert load_params([path])[0].values == {"files": [{"data.csv": 1}]}


def test_non_string_key_rejected(tmp_path):
    path = write(tmp_path, "k.yaml", "weights: {0: 1.0}\n")
    with pytest.raises(ParamsError, match="k.yaml.*0.*quote"):
        load_params([path])


def test_unsupported_value_type_rejected(tmp_path):
    path = write(tmp_path, "t.yaml", "when: 2024-01-01\n")
    with pytest.raises(ParamsError, match="t.yaml.*'when'.*date"):
        load_params([path])


def test_yaml_anchors_do_not_share_dicts(tmp_path):
    path = write(tmp_path, "a.yaml", "a: &x {v: 1}\nb: *x\n")
    [ps] = load_params([path])
    assert ps.values["a"] == ps.values["b"] and ps.values["a"] is not ps.values["b"]


def test_duplicate_names_across_files(tmp_path):
    a = write(tmp_path, "one/p.yaml", "x: 1\n")
    b = write(tmp_path, "two/p.yaml", "x: 2\n")
    with pytest.raises(ParamsError, match=r"duplicate parameter set name 'p'") as exc:
        load_params([a, b])
    assert str(a) in str(exc.value) and str(b) in str(exc.value)


def test_several_files_concatenate_in_order(tmp_path):
    a = write(tmp_path, "a.yaml", "x: 1\n")
    b = write(tmp_path, "b.yaml", "x: 2\n")
    assert [s.name for s in load_params([a, b])] == ["a", "b"]


# -------------------------------------------------------------------------------------- extends


def test_extends_deep_merges(tmp_path):
    write(tmp_path, "base.yaml", "name: basename\ntrain: {lr: 0.1, width: 8}\ndata: {n: 10}\n")
    child = write(tmp_path, "child.yaml", "extends: base.yaml\ntrain: {lr: 0.5}\n+extra: [1]\n")
    [ps] = load_params([child])
    assert ps.name == "child"  # name is never inherited
    assert ps.values == {"train": {"lr": 0.5, "width": 8}, "data": {"n": 10}, "extra": [1]}


def test_extends_child_replaces_non_dicts(tmp_path):
    write(tmp_path, "base.yaml", "layers: [1, 2, 3]\nopt: {kind: adam}\n")
    child = write(tmp_path, "child.yaml", "extends: base.yaml\nlayers: [4]\nopt: sgd\n")
    assert load_params([child])[0].values == {"layers": [4], "opt": "sgd"}


def test_extends_chain_relative_to_each_file(tmp_path):
    write(tmp_path, "common/root.yaml", "a: 1\nb: 1\nc: 1\n")
    write(tmp_path, "common/mid.yaml", "extends: root.yaml\nb: 2\n")
    leaf = write(tmp_path, "exp/leaf.yaml", "extends: ../common/mid.yaml\nc: 3\n")
    assert load_params([leaf])[0].values == {"a": 1, "b": 2, "c": 3}


def test_extends_list_later_base_wins(tmp_path):
    write(tmp_path, "b1.yaml", "x: 1\nm: {p: 1}\n")
    write(tmp_path, "b2.yaml", "x: 2\nm: {q: 2}\n")
    child = write(tmp_path, "c.yaml", "extends: [b1.yaml, b2.yaml]\n+y: 3\n")
    assert load_params([child])[0].values == {"x": 2, "m": {"p": 1, "q": 2}, "y": 3}


def test_extends_cycle(tmp_path):
    write(tmp_path, "a.yaml", "extends: b.yaml\n")
    write(tmp_path, "b.yaml", "extends: a.yaml\n")
    with pytest.raises(ParamsError, match=r"cycle.*a.yaml -> .*b.yaml -> .*a.yaml"):
        load_params([tmp_path / "a.yaml"])


def test_extends_self_is_a_cycle(tmp_path):
    path = write(tmp_path, "a.yaml", "extends: a.yaml\n")
    with pytest.raises(ParamsError, match="cycle"):
        load_params([path])


def test_extends_diamond_is_not_a_cycle(tmp_path):
    write(tmp_path, "root.yaml", "r: 1\n")
    write(tmp_path, "l.yaml", "extends: root.yaml\n+l: 1\n")
    write(tmp_path, "r.yaml", "extends: root.yaml\n+rr: 1\n")
    top = write(tmp_path, "top.yaml", "extends: [l.yaml, r.yaml]\n")
    assert load_params([top])[0].values == {"r": 1, "l": 1, "rr": 1}


def test_extends_missing_base_names_both_files(tmp_path):
    child = write(tmp_path, "child.yaml", "extends: gone.yaml\n")
    with pytest.raises(ParamsError, match=r"gone.yaml not found.*extended by .*child.yaml"):
        load_params([child])


def test_extends_bad_value(tmp_path):
    child = write(tmp_path, "child.yaml", "extends: {a: 1}\n")
    with pytest.raises(ParamsError, match="child.yaml.*extends"):
        load_params([child])


def test_sweep_inherited_unless_child_has_own(tmp_path):
    write(tmp_path, "base.yaml", "lr: 0.1\nsweep: {lr: [0.1, 0.2]}\n")
    inherit = write(tmp_path, "inherit.yaml", "extends: base.yaml\n")
    own = write(tmp_path, "own.yaml", "extends: base.yaml\n+seed: 0\nsweep: {seed: [1, 2, 3]}\n")
    off = write(tmp_path, "off.yaml", "extends: base.yaml\nsweep: {}\n")
    assert [s.name for s in load_params([inherit])] == ["inherit[lr=0.1]", "inherit[lr=0.2]"]
    assert [s.name for s in load_params([own])] == ["own[seed=1]", "own[seed=2]", "own[seed=3]"]
    assert [s.name for s in load_params([off])] == ["off"]


# ---------------------------------------------------------------------------------------- sweep


def test_sweep_cartesian_product_names_and_order(tmp_path):
    path = write(tmp_path, "sweep.yaml", """\
        train: {lr: 0.5, width: 8}
        data: {seed: 0}
        sweep:
          train.lr: [0.1, 0.01]
          data.seed: [1, 2, 3]
        """)
    sets = load_params([path])
    assert len(sets) == 6
    assert sets[0].name == "sweep[train.lr=0.1,data.seed=1]"
    assert sets[1].name == "sweep[train.lr=0.1,data.seed=2]"
    assert sets[3].name == "sweep[train.lr=0.01,data.seed=1]"
    assert sets[3].values == {"train": {"lr": 0.01, "width": 8}, "data": {"seed": 1}}
    assert all(s.source == str(path) for s in sets)


def test_sweep_values_formatting(tmp_path):
    path = write(tmp_path, "f.yaml", """\
        sweep:
          +s: [abc]
          +b: [true]
          +n: [null]
          +f: [1.5]
          +l: [[1, 2]]
          +d: [{k: v}]
        """)
    [ps] = load_params([path])
    assert ps.name == 'f[s=abc,b=true,n=null,f=1.5,l=[1,2],d={"k":"v"}]'


def test_sweep_sets_are_independent(tmp_path):
    path = write(tmp_path, "s.yaml", "model: {layers: [1, 2]}\nsweep: {+seed: [1, 2], +opt: [{a: 1}]}\n")
    a, b = load_params([path])
    assert a.values["model"] is not b.values["model"]
    assert a.values["model"]["layers"] is not b.values["model"]["layers"]
    assert a.values["opt"] is not b.values["opt"]


def test_sweep_plus_adds_new_key_and_creates_parents(tmp_path):
    path = write(tmp_path, "s.yaml", "train: {lr: 1}\nsweep: {+train.momentum: [0.9], +opt.beta: [1]}\n")
    [ps] = load_params([path])
    assert ps.values == {"train": {"lr": 1, "momentum": 0.9}, "opt": {"beta": 1}}


def test_sweep_parent_must_be_mapping(tmp_path):
    path = write(tmp_path, "s.yaml", "train: 3\nsweep: {+train.lr: [1]}\n")
    with pytest.raises(ParamsError, match=r"s.yaml.*train.lr.*'train' is a int"):
        load_params([path])


@pytest.mark.parametrize("sweep", ["{lr: 0.1}", "{lr: []}", "[1, 2]"])
def test_sweep_bad_values(tmp_path, sweep):
    path = write(tmp_path, "s.yaml", f"lr: 1\nsweep: {sweep}\n")
    with pytest.raises(ParamsError, match="s.yaml.*sweep"):
        load_params([path])


def test_sweep_error_names_key(tmp_path):
    path = write(tmp_path, "s.yaml", "sweep: {train.lr: []}\n")
    with pytest.raises(ParamsError, match=r"s.yaml: sweep of 'train.lr' must be a non-empty list"):
        load_params([path])


def test_duplicate_names_within_a_sweep(tmp_path):
    path = write(tmp_path, "s.yaml", "x: 0\nsweep: {x: [1, '1']}\n")
    with pytest.raises(ParamsError, match=r"duplicate parameter set name 's\[x=1\]'"):
        load_params([path])


# ---------------------------------------------------------------------------------- Python files


def test_python_file_list_of_dicts(tmp_path):
    path = write(tmp_path, "grid.py", """\
        def get_params():
            return [{"name": "small", "width": 4}, {"width": 8, "layers": (1, 2)}]
        """)
    sets = load_params([path])
    assert [s.name for s in sets] == ["small", "grid[1]"]
    assert sets[1].values == {"width": 8, "layers": [1, 2]}  # tuples become lists
    assert sets[0].source == str(path)


def test_python_file_single_dict_named_by_stem(tmp_path):
    path = write(tmp_path, "one.py", "def get_params():\n    return {'a': {'b': 1}}\n")
    assert load_params([path]) == [ParamSet("one", {"a": {"b": 1}}, str(path))]


def test_python_file_single_item_list_named_by_stem(tmp_path):
    path = write(tmp_path, "one.py", "def get_params():\n    return [{'a': 1}]\n")
    assert load_params([path])[0].name == "one"


def test_python_file_error_is_reported(tmp_path):
    path = write(tmp_path, "boom.py", "raise RuntimeError('kaboom')\n")
    with pytest.raises(ParamsError, match=r"boom.py.*RuntimeError: kaboom"):
        load_params([path])


def test_python_file_error_inside_get_params(tmp_path):
    path = write(tmp_path, "boom.py", "def get_params():\n    return 1 / 0\n")
    with pytest.raises(ParamsError, match=r"boom.py.*ZeroDivisionError"):
        load_params([path])


def test_python_file_without_get_params(tmp_path):
    path = write(tmp_path, "empty.py", "X = 1\n")
    with pytest.raises(ParamsError, match=r"empty.py.*get_params"):
        load_params([path])


def test_python_file_bad_return(tmp_path):
    path = write(tmp_path, "bad.py", "def get_params():\n    return [1, 2]\n")
    with pytest.raises(ParamsError, match=r"bad.py.*list of dicts"):
        load_params([path])


def test_python_file_dotted_key_rejected(tmp_path):
    path = write(tmp_path, "bad.py", "def get_params():\n    return {'a.b': 1}\n")
    with pytest.raises(ParamsError, match=r"bad.py.*'a.b'"):
        load_params([path])


def test_python_file_missing(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_params([tmp_path / "gone.py"])


def test_python_file_duplicate_names(tmp_path):
    path = write(tmp_path, "dup.py", "def get_params():\n    return [{'name': 'x'}, {'name': 'x'}]\n")
    with pytest.raises(ParamsError, match="duplicate parameter set name 'x'"):
        load_params([path])


# ------------------------------------------------------------------------------------ overrides


@pytest.mark.parametrize("text, expected", [
    ("0.1", 0.1), ("3", 3), ("true", True), ("[1, 2]", [1, 2]), ("abc", "abc"), ("", None),
    ("a=b", "a=b"), ("{k: 1}", {"k": 1}),
])
def test_override_values_parsed_as_yaml(tmp_path, text, expected):
    path = write(tmp_path, "p.yaml", "train: {lr: 1}\n")
    [ps] = load_params([path], [f"train.lr={text}"])
    assert ps.values["train"]["lr"] == expected


@pytest.mark.parametrize("bad", ["train.lr", "=1", "train..lr=1", ".lr=1"])
def test_malformed_override(tmp_path, bad):
    path = write(tmp_path, "p.yaml", "train: {lr: 1}\n")
    with pytest.raises(ParamsError, match="--set"):
        load_params([path], [bad])


def test_unknown_override_suggests_close_keys(tmp_path):
    path = write(tmp_path, "p.yaml", "train: {lr: 1, width: 2}\n")
    with pytest.raises(ParamsError, match=r"no parameter set has 'train.lrr'.*train.lr"):
        load_params([path], ["train.lrr=0.5"])


def test_override_never_adds_under_a_scalar(tmp_path):
    path = write(tmp_path, "p.yaml", "train: {lr: 1}\n")
    with pytest.raises(ParamsError, match="no parameter set has 'train.lr.x'"):
        load_params([path], ["train.lr.x=1"])


def test_override_applies_to_every_set_that_has_the_key(tmp_path):
    a = write(tmp_path, "a.yaml", "train: {lr: 1}\n")
    b = write(tmp_path, "b.yaml", "train: {lr: 2}\n")
    c = write(tmp_path, "c.yaml", "data: {n: 3}\n")
    sweep = write(tmp_path, "s.yaml", "train: {lr: 3}\nsweep: {+seed: [1, 2]}\n")
    sets = by_name(load_params([a, b, c, sweep], ["train.lr=0.5"]))
    assert sets["a"].values["train"]["lr"] == 0.5 and sets["b"].values["train"]["lr"] == 0.5
    assert sets["c"].values == {"data": {"n": 3}}
    assert [sets[f"s[seed={i}]"].values["train"]["lr"] for i in (1, 2)] == [0.5, 0.5]


def test_override_values_are_not_shared(tmp_path):
    path = write(tmp_path, "s.yaml", "x: []\nsweep: {+seed: [1, 2]}\n")
    a, b = load_params([path], ["x=[1]"])
    assert a.values["x"] == [1] and a.values["x"] is not b.values["x"]


def test_later_override_wins(tmp_path):
    path = write(tmp_path, "p.yaml", "lr: 1\n")
    assert load_params([path], ["lr=2", "lr=3"])[0].values == {"lr": 3}


def test_override_can_replace_a_subtree(tmp_path):
    path = write(tmp_path, "p.yaml", "opt: {kind: adam, beta: 1}\n")
    assert load_params([path], ["opt={kind: sgd}"])[0].values == {"opt": {"kind": "sgd"}}


def test_override_of_swept_key(tmp_path):
    path = write(tmp_path, "sweep.yaml", "train: {lr: 1}\nsweep: {train.lr: [0.1, 0.2]}\n")
    with pytest.raises(ParamsError, match=r"train.lr is swept in .*sweep.yaml; remove it from the "
                                          r"sweep or drop the --set"):
        load_params([path], ["train.lr=0.5"])


def test_override_of_parent_of_swept_key(tmp_path):
    path = write(tmp_path, "sweep.yaml", "train: {lr: 1}\nsweep: {train.lr: [0.1, 0.2]}\n")
    with pytest.raises(ParamsError, match=r"train overlaps the swept train.lr"):
        load_params([path], ["train={lr: 3}"])


def test_override_of_inherited_sweep_names_declaring_file(tmp_path):
    base = write(tmp_path, "base.yaml", "lr: 1\nsweep: {lr: [1, 2]}\n")
    child = write(tmp_path, "child.yaml", "extends: base.yaml\n")
    with pytest.raises(ParamsError, match=f"lr is swept in {base}"):
        load_params([child], ["lr=3"])


def test_override_does_not_change_names(tmp_path):
    path = write(tmp_path, "s.yaml", "lr: 1\nsweep: {+seed: [1]}\n")
    [ps] = load_params([path], ["lr=2"])
    assert ps.name == "s[seed=1]" and ps.values == {"lr": 2, "seed": 1}


def test_override_on_python_file(tmp_path):
    path = write(tmp_path, "g.py", "def get_params():\n    return [{'a': 1}, {'b': 1}]\n")
    sets = load_params([path], ["a=5"])
    assert sets[0].values == {"a": 5} and sets[1].values == {"b": 1}


# ------------------------------------------------------------------- strict files and +new keys


BASE = "data: {n: 10}\ntrain: {lr: 0.1, nproc: 1}\n"


def test_extending_file_typo_names_file_line_key_and_the_real_one(tmp_path):
    write(tmp_path, "base.yaml", BASE)
    child = write(tmp_path, "child.yaml", "extends: base.yaml\ntrain:\n  lrr: 0.3\n")
    with pytest.raises(ParamsError) as exc:
        load_params([child])
    assert str(exc.value) == (
        f"{child}:3: unknown key 'train.lrr' (did you mean: train.lr?); a file that extends base.yaml "
        "changes its parameters only: fix the spelling, or write '+lrr:' to add a new one")


def test_extending_file_unknown_top_level_key(tmp_path):
    write(tmp_path, "base.yaml", BASE)
    child = write(tmp_path, "child.yaml", "extends: base.yaml\ntrian: {lr: 0.3}\n")
    with pytest.raises(ParamsError, match=r"child.yaml:2: unknown key 'trian' \(did you mean: train\?\).*"
                                          r"write '\+trian:'"):
        load_params([child])


def test_extending_file_unknown_key_without_similar_one(tmp_path):
    write(tmp_path, "base.yaml", BASE)
    child = write(tmp_path, "child.yaml", "extends: base.yaml\ntrain: {momentum: 0.9}\n")
    with pytest.raises(ParamsError, match=r"unknown key 'train.momentum' \(no similar parameter exists\)"):
        load_params([child])


def test_unknown_key_suggests_the_path_ending_in_it(tmp_path):
    write(tmp_path, "base.yaml", BASE)
    child = write(tmp_path, "child.yaml", "extends: base.yaml\nlr: 0.3\n")
    with pytest.raises(ParamsError, match=r"child.yaml:2: unknown key 'lr' \(did you mean: train.lr\?\)"):
        load_params([child])
    with pytest.raises(ParamsError, match=r"no parameter set has 'lr' \(did you mean: train.lr\?\)"):
        load_params([tmp_path / "base.yaml"], ["lr=0.3"])


def test_plus_adds_keys_in_an_extending_file(tmp_path):
    write(tmp_path, "base.yaml", BASE)
    child = write(tmp_path, "child.yaml", """\
        extends: base.yaml
        train: {lr: 0.5, +wd: 0.1}
        +opt:
          kind: adam
          betas: {b1: 0.9}
        """)
    [ps] = load_params([child])
    assert ps.values == {"data": {"n": 10}, "train": {"lr": 0.5, "nproc": 1, "wd": 0.1},
                         "opt": {"kind": "adam", "betas": {"b1": 0.9}}}


def test_keys_under_a_new_key_are_free_and_a_plus_there_is_harmless(tmp_path):
    write(tmp_path, "base.yaml", BASE)
    child = write(tmp_path, "child.yaml", "extends: base.yaml\n+opt: {kind: adam, +beta: 1}\n")
    assert load_params([child])[0].values["opt"] == {"kind": "adam", "beta": 1}


def test_plus_on_an_existing_key_is_refused(tmp_path):
    write(tmp_path, "base.yaml", BASE)
    child = write(tmp_path, "child.yaml", "extends: base.yaml\ntrain:\n  +lr: 0.3\n")
    with pytest.raises(ParamsError, match=r"child.yaml:3: '\+lr' adds 'train.lr', but base.yaml already "
                                          r"has it; drop the '\+' to change it"):
        load_params([child])


def test_plus_on_an_existing_top_level_key_is_refused(tmp_path):
    write(tmp_path, "base.yaml", BASE)
    child = write(tmp_path, "child.yaml", "extends: base.yaml\n+train: {lr: 1}\n")
    with pytest.raises(ParamsError, match=r"'\+train' adds 'train', but base.yaml already has it"):
        load_params([child])


def test_replacing_a_non_mapping_value_defines_the_new_mapping_freely(tmp_path):
    write(tmp_path, "base.yaml", "opt: adam\nlayers: [1]\n")
    child = write(tmp_path, "child.yaml", "extends: base.yaml\nopt: {kind: sgd, momentum: 0.9}\n")
    assert load_params([child])[0].values == {"opt": {"kind": "sgd", "momentum": 0.9}, "layers": [1]}


def test_keys_are_checked_against_all_merged_bases(tmp_path):
    write(tmp_path, "b1.yaml", "x: 1\nm: {p: 1}\n")
    write(tmp_path, "b2.yaml", "m: {q: 2}\n")
    ok = write(tmp_path, "ok.yaml", "extends: [b1.yaml, b2.yaml]\nx: 2\nm: {p: 3, q: 4}\n")
    assert load_params([ok])[0].values == {"x": 2, "m": {"p": 3, "q": 4}}
    bad = write(tmp_path, "bad.yaml", "extends: [b1.yaml, b2.yaml]\nm: {r: 5}\n")
    with pytest.raises(ParamsError, match=r"a file that extends b1.yaml, b2.yaml changes its parameters"):
        load_params([bad])


def test_each_level_of_an_extends_chain_is_checked(tmp_path):
    write(tmp_path, "root.yaml", "a: 1\n")
    write(tmp_path, "mid.yaml", "extends: root.yaml\nb: 2\n")
    leaf = write(tmp_path, "leaf.yaml", "extends: mid.yaml\na: 3\n")
    with pytest.raises(ParamsError, match=r"mid.yaml:2: unknown key 'b'.*extends root.yaml"):
        load_params([leaf])


def test_a_file_extending_nothing_defines_its_keys_freely(tmp_path):
    path = write(tmp_path, "base.yaml", "train: {lr: 0.1}\n+extra: {a: 1}\n")
    assert load_params([path])[0].values == {"train": {"lr": 0.1}, "extra": {"a": 1}}


def test_plain_and_plus_spelling_of_one_key_is_refused(tmp_path):
    path = write(tmp_path, "base.yaml", "train: {wd: 1, +wd: 2}\n")
    with pytest.raises(ParamsError, match=r"base.yaml:1: 'train.wd' is given twice, as 'wd' and as '\+wd'"):
        load_params([path])


@pytest.mark.parametrize("text", ["'+': 1\n", "'++x': 1\n", "+a.b: 1\n"])
def test_malformed_plus_keys(tmp_path, text):
    write(tmp_path, "base.yaml", BASE)
    child = write(tmp_path, "child.yaml", "extends: base.yaml\n" + text)
    with pytest.raises(ParamsError, match=r"child.yaml:2: .*('\+' must be followed|starts with '\+'|contains '\.')"):
        load_params([child])


def test_sweep_typo_is_refused_with_did_you_mean(tmp_path):
    write(tmp_path, "base.yaml", BASE)
    child = write(tmp_path, "sweep.yaml", "extends: base.yaml\nsweep:\n  train.lrr: [0.1, 0.2]\n")
    with pytest.raises(ParamsError) as exc:
        load_params([child])
    assert str(exc.value).startswith(f"{child}:3: sweep key 'train.lrr' is not a parameter (did you mean: "
                                     "train.lr")
    assert str(exc.value).endswith("fix the spelling, or write '+train.lrr' to sweep a new parameter")


def test_sweep_typo_in_a_base_file_is_refused(tmp_path):
    path = write(tmp_path, "s.yaml", "train: {lr: 1}\nsweep: {train.lrr: [1, 2]}\n")
    with pytest.raises(ParamsError, match=r"s.yaml:2: sweep key 'train.lrr' is not a parameter"):
        load_params([path])


def test_sweep_plus_adds_a_key_in_an_extending_file(tmp_path):
    write(tmp_path, "base.yaml", BASE)
    child = write(tmp_path, "sweep.yaml", "extends: base.yaml\nsweep: {+train.wd: [0, 0.1]}\n")
    sets = load_params([child])
    assert [s.name for s in sets] == ["sweep[train.wd=0]", "sweep[train.wd=0.1]"]
    assert sets[1].values["train"] == {"lr": 0.1, "nproc": 1, "wd": 0.1}


def test_sweep_plus_on_an_existing_key_is_refused(tmp_path):
    write(tmp_path, "base.yaml", BASE)
    child = write(tmp_path, "sweep.yaml", "extends: base.yaml\nsweep:\n  +train.lr: [1, 2]\n")
    with pytest.raises(ParamsError, match=r"sweep.yaml:3: sweep key '\+train.lr': 'train.lr' is already a "
                                          r"parameter; drop the '\+' to sweep it"):
        load_params([child])


def test_sweep_of_a_key_the_file_adds(tmp_path):
    write(tmp_path, "base.yaml", BASE)
    child = write(tmp_path, "sweep.yaml", "extends: base.yaml\ntrain: {+wd: 0}\nsweep: {train.wd: [1, 2]}\n")
    assert [s.values["train"]["wd"] for s in load_params([child])] == [1, 2]


def test_sweep_of_plain_and_plus_spelling_is_refused(tmp_path):
    path = write(tmp_path, "s.yaml", "lr: 1\nsweep: {lr: [1], +lr: [2]}\n")
    with pytest.raises(ParamsError, match=r"'lr' is swept twice"):
        load_params([path])


@pytest.mark.parametrize("text, word", [
    ("sweeps: {lr: [0.1, 0.2]}", "sweep"),
    ("swep: {train.lr: [1]}", "sweep"),
    ("Sweep: {lr: [1]}", "sweep"),
    ("extend: base.yaml", "extends"),
    ("extens: [base.yaml, other.yml]", "extends"),
    ("nmae: big", "name"),
    ("Name: big", "name"),
])
def test_misspelled_reserved_word_in_a_base_file(tmp_path, text, word):
    path = write(tmp_path, "p.yaml", f"lr: 1\n{text}\n")
    key = text.partition(":")[0]
    with pytest.raises(ParamsError) as exc:
        load_params([path])
    assert str(exc.value) == (f"{path}:2: unknown key '{key}', did you mean '{word}'? (to define a parameter "
                              f"named '{key}', write '+{key}:')")


@pytest.mark.parametrize("text", [
    "names: [a, b]",         # a list, not a set name
    "extended: true",        # not YAML file names
    "extent: 3",
    "swept: false",          # not a mapping of lists
    "sweeps: {lr: 0.1}",
    "date: today",           # two edits from "name": a word of its own
    "game: chess",           # one letter from "name", but not two swapped: a parameter
    "same: true",
    "+nmae: big",            # '+': a parameter, deliberately
])
def test_near_reserved_words_that_are_plausible_parameters(tmp_path, text):
    path = write(tmp_path, "p.yaml", f"lr: 1\n{text}\n")
    key = text.partition(":")[0].lstrip("+")
    assert key in load_params([path])[0].values


def test_misspelled_reserved_word_in_an_extending_file(tmp_path):
    write(tmp_path, "base.yaml", BASE)
    child = write(tmp_path, "child.yaml", "extends: base.yaml\nsweeps:\n  train.lr: [1, 2]\n")
    with pytest.raises(ParamsError) as exc:
        load_params([child])
    assert str(exc.value) == (
        f"{child}:2: unknown key 'sweeps', did you mean 'sweep'? (a file that extends base.yaml changes "
        "its parameters only; to add a new parameter 'sweeps', write '+sweeps:')")


@pytest.mark.parametrize("word", ["name", "extends", "sweep"])
def test_reserved_words_are_never_parameters(tmp_path, word):
    path = write(tmp_path, "p.yaml", f"+{word}: x\n")
    with pytest.raises(ParamsError, match=rf"p.yaml:1: '\+{word}': '{word}' is reserved"):
        load_params([path])


def test_python_file_key_with_plus_is_refused(tmp_path):
    path = write(tmp_path, "p.py", "def get_params():\n    return {'a': {'+b': 1}}\n")
    with pytest.raises(ParamsError, match=r"p.py.*'\+b' under 'a' starts with '\+'"):
        load_params([path])


def test_override_plus_adds_a_key_to_every_set(tmp_path):
    a = write(tmp_path, "a.yaml", "train: {lr: 1}\n")
    b = write(tmp_path, "b.yaml", "data: 3\n")
    g = write(tmp_path, "g.py", "def get_params():\n    return [{'x': 1}]\n")
    sets = load_params([a, b, g], ["+train.wd=0.1"])
    assert [s.values for s in sets] == [{"train": {"lr": 1, "wd": 0.1}}, {"data": 3, "train": {"wd": 0.1}},
                                        {"x": 1, "train": {"wd": 0.1}}]


def test_override_plus_then_plain_override(tmp_path):
    path = write(tmp_path, "p.yaml", "lr: 1\n")
    assert load_params([path], ["+wd=1", "wd=2"])[0].values == {"lr": 1, "wd": 2}


def test_override_plus_on_an_existing_key_is_refused(tmp_path):
    a = write(tmp_path, "a.yaml", "x: 1\n")
    b = write(tmp_path, "b.yaml", "train: {lr: 1}\n")
    with pytest.raises(ParamsError, match=rf"--set \+train.lr: 'train.lr' already exists in {b}; drop the "
                                          r"'\+' to change it \(-S train.lr=...\)"):
        load_params([a, b], ["+train.lr=2"])


def test_override_plus_under_a_scalar_is_refused(tmp_path):
    path = write(tmp_path, "p.yaml", "train: 3\n")
    with pytest.raises(ParamsError, match=r"--set \+train.wd \(.*p.yaml\): cannot add 'train.wd': 'train' is "
                                          r"a int, not a mapping"):
        load_params([path], ["+train.wd=1"])


def test_override_plus_of_a_swept_key_is_refused(tmp_path):
    path = write(tmp_path, "s.yaml", "lr: 1\nsweep: {+wd: [1, 2]}\n")
    with pytest.raises(ParamsError, match=r"wd is swept in .*s.yaml"):
        load_params([path], ["+wd=3"])


def test_unknown_override_says_how_to_add_it(tmp_path):
    path = write(tmp_path, "p.yaml", "train: {lr: 1}\n")
    with pytest.raises(ParamsError, match=r"fix the spelling, or add a new one with -S \+train.wd=\.\.\."):
        load_params([path], ["train.wd=0.5"])


def test_override_value_keys_cannot_carry_plus(tmp_path):
    path = write(tmp_path, "p.yaml", "opt: {kind: adam}\n")
    with pytest.raises(ParamsError, match=r"--set opt: parameter key '\+kind' under 'opt' starts with '\+'"):
        load_params([path], ["opt={+kind: sgd}"])


def test_bundled_example_params_load():
    from pathlib import Path

    params = Path(__file__).resolve().parent.parent / "params"
    [default] = load_params([params / "default.yaml"])
    sweep = load_params([params / "sweep.yaml"])
    assert len(sweep) == 4 and {s.values["train"]["epochs"] for s in sweep} == {15}
    assert default.values["train"]["epochs"] == 20


# ----------------------------------------------------------------------------------- helpers


def test_resolve():
    values = {"train": {"lr": 0.1, "opt": {"beta": 1}}, "n": 3}
    assert resolve(values, "") is values
    assert resolve(values, "train.opt.beta") == 1
    assert resolve(values, "train.opt") == {"beta": 1}
    assert resolve(values, "train.nope") is MISSING
    assert resolve(values, "n.deeper") is MISSING


def test_is_ignored():
    assert is_ignored("train.nproc", ["train.nproc"])
    assert is_ignored("train.nproc.x", ["train.nproc"])
    assert not is_ignored("train.nprocs", ["train.nproc"])
    assert not is_ignored("train", ["train.nproc"])
    assert not is_ignored("x", [])


def test_traced_value_prunes_ignored():
    values = {"train": {"lr": 1, "nproc": 4}}
    assert traced_value(values, "train", ["train.nproc"]) == {"lr": 1}
    assert traced_value(values, "", ["train.nproc"]) == {"train": {"lr": 1}}
    assert values == {"train": {"lr": 1, "nproc": 4}}


def test_missing_is_a_picklable_singleton():
    assert repr(MISSING) == "<missing>"
    assert pickle.loads(pickle.dumps(MISSING)) is MISSING
    assert copy.deepcopy(MISSING) is MISSING and copy.copy(MISSING) is MISSING
    assert not MISSING


# ---------------------------------------------------------------------------------- TrackedParams

VALUES = {"train": {"lr": 0.1, "width": 8, "layers": [1, 2], "nproc": 4}, "data": {"n": 10}, "seed": 0}


def tracked(ignore=(), values=None):
    reads = {}
    return TrackedParams(values or copy.deepcopy(VALUES), reads, set_name="default",
                         ignore=ignore), reads


def test_leaf_read_by_attribute_and_item():
    p, reads = tracked()
    assert p.train.lr == 0.1
    assert p["data"]["n"] == 10
    assert p.seed == 0
    assert reads == {"train.lr": 0.1, "data.n": 10, "seed": 0}


def test_dict_value_is_a_child_view_without_a_read():
    p, reads = tracked()
    train = p.train
    assert isinstance(train, TrackedParams)
    assert reads == {}
    assert train.width == 8 and reads == {"train.width": 8}


def test_dotted_item_access():
    p, reads = tracked()
    assert p["train.lr"] == 0.1 and reads == {"train.lr": 0.1}


def test_missing_key_records_missing_and_raises():
    p, reads = tracked(values={"train": {"lr": 0.1, "width": 8}})
    with pytest.raises(UnknownParameterError) as exc:
        p.train.epochs
    assert reads == {"train.epochs": MISSING}
    assert str(exc.value) == (
        "parameter 'train.epochs' is not set in parameter set 'default' (known keys under 'train': "
        "lr, width); add it to the parameter file or use record.params.get(...)")
    assert isinstance(exc.value, AttributeError) and isinstance(exc.value, ParamsError)


def test_missing_item_is_also_a_key_error():
    p, reads = tracked()
    with pytest.raises(KeyError, match="top level"):
        p["nope"]
    with pytest.raises(UnknownParameterError):
        p["nope"]
    assert reads == {"nope": MISSING}


def test_getattr_default_works():
    p, reads = tracked()
    assert getattr(p, "x", 1) == 1
    assert not hasattr(p.train, "epochs")
    assert reads == {"x": MISSING, "train.epochs": MISSING}


def test_get_default_records_missing():
    p, reads = tracked()
    assert p.train.get("epochs", 5) == 5
    assert p.train.get("lr") == 0.1
    assert isinstance(p.get("data"), TrackedParams)
    assert reads == {"train.epochs": MISSING, "train.lr": 0.1}


def test_contains_records_value_or_missing():
    p, reads = tracked()
    assert "lr" in p.train
    assert "epochs" not in p.train
    assert 3 not in p
    assert reads == {"train.lr": 0.1, "train.epochs": MISSING}


def test_iteration_and_whole_subtree_reads():
    p, reads = tracked()
    assert sorted(p.data) == ["n"]
    assert reads == {"data": {"n": 10}}
    reads.clear()
    assert len(p) == 3 and reads == {"": VALUES}
    reads.clear()
    assert list(p.train.keys()) == ["lr", "width", "layers", "nproc"]
    assert reads == {"train": VALUES["train"]}
    reads.clear()
    items = dict(p.items())
    assert isinstance(items["train"], TrackedParams) and items["seed"] == 0
    assert list(p.data.values()) == [10]
    assert reads == {"": VALUES, "data": {"n": 10}}


def test_to_dict_and_eq():
    p, reads = tracked()
    d = p.train.to_dict()
    assert d == VALUES["train"]
    d["layers"].append(3)
    assert p.train.layers == [1, 2]
    assert p.data == {"n": 10}
    assert p.data != {"n": 11}
    assert "train" in reads and "data" in reads


def test_leaves_are_copies():
    p, reads = tracked()
    layers = p.train.layers
    layers.append(99)
    assert p.train.layers == [1, 2] and reads["train.layers"] == [1, 2]


def test_ignore_drops_reads_and_prunes_subtrees():
    p, reads = tracked(ignore=["train.nproc"])
    assert p.train.nproc == 4
    assert p.train.get("nproc") == 4
    assert "nproc" in p.train
    assert reads == {}
    assert p.train.to_dict()["nproc"] == 4  # the stage still sees it
    assert reads == {"train": {"lr": 0.1, "width": 8, "layers": [1, 2]}}
    reads.clear()
    list(p)
    assert reads == {"": {"train": {"lr": 0.1, "width": 8, "layers": [1, 2]}, "data": {"n": 10},
                          "seed": 0}}
    assert VALUES["train"]["nproc"] == 4 and p.train.nproc == 4  # pruning never mutates


def test_ignore_whole_subtree():
    p, reads = tracked(ignore=["data"])
    assert p.data.n == 10 and p.data.to_dict() == {"n": 10}
    assert reads == {}


def test_read_only():
    p, _ = tracked()
    with pytest.raises(ParamsError, match="read-only"):
        p.train.lr = 1
    with pytest.raises(ParamsError, match="read-only"):
        p["seed"] = 1
    with pytest.raises(ParamsError, match="read-only"):
        del p.seed


def test_underscore_attributes_are_plain_attribute_errors():
    p, reads = tracked(values={"_secret": 1})
    with pytest.raises(AttributeError) as exc:
        p._secret
    assert not isinstance(exc.value, UnknownParameterError)
    assert not hasattr(p, "__wrapped__")
    assert reads == {}
    assert p["_secret"] == 1  # still reachable by item access


def test_method_names_win_over_parameters():
    p, reads = tracked(values={"keys": 1, "get": 2})
    assert callable(p.keys) and callable(p.get)
    assert p["keys"] == 1 and p["get"] == 2
    assert reads == {"keys": 1, "get": 2}


def test_repr_does_not_record():
    p, reads = tracked()
    assert "train" in repr(p) and "lr" in repr(p.train)
    assert reads == {}


def test_copy_and_deepcopy_and_pickle():
    p, reads = tracked()
    assert copy.copy(p) is p
    assert copy.deepcopy(p.data) == {"n": 10} and type(copy.deepcopy(p.data)) is dict
    assert reads == {"data": {"n": 10}}
    with pytest.raises(TypeError, match="to_dict"):
        pickle.dumps(p)


def test_construction_does_not_copy():
    values = {"a": {"b": 1}}
    p = TrackedParams(values)
    assert p._values is values
    assert p.a.b == 1


def test_unknown_error_pickles():
    p, _ = tracked()
    with pytest.raises(KeyError) as exc:
        p["nope"]
    clone = pickle.loads(pickle.dumps(exc.value))
    assert str(clone) == str(exc.value)


def test_end_to_end_from_file(tmp_path):
    path = write(tmp_path, "default.yaml", "train: {lr: 0.1}\n")
    [ps] = load_params([path])
    reads = {}
    p = TrackedParams(ps.values, reads, set_name=ps.name)
    assert p.train.lr == 0.1
    assert {k: resolve(ps.values, k) for k in reads} == reads
