"""nup.experiments.schema: every kind of parameter accepts what it should and names what it refuses."""

import math

import pytest

from nup.experiments.schema import Bool, Choice, Dict, Float, Int, List, Schema

SCHEMA = Schema(
    Int("depth", minimum=2, maximum=64),
    Float("lr", positive=True),
    Bool("plot"),
    Choice("activation", choices=("relu", "abs")),
    List("depths", item=Int("depth", minimum=1), increasing=True),
    Dict("grids", keys=("nup", "ntk"), value=List("grid", item=Float("x"))),
)
GOOD = dict(depth=4, lr=0.1, plot=True, activation="relu", depths=[2, 4, 8], grids={"nup": [1.0], "ntk": [-1, 2]})


def test_good_values_pass_and_come_back_normalized():
    p = SCHEMA.validate({**GOOD, "unrelated": object()})
    assert p.depth == 4 and p.lr == 0.1 and p.depths == (2, 4, 8) and p.grids["ntk"] == (-1.0, 2.0)
    assert list(p) == list(SCHEMA.names)
    with pytest.raises(AttributeError):
        p.depth = 5
    with pytest.raises(AttributeError, match="no parameter named"):
        p.width
    assert p.replace(depth=8).depth == 8


@pytest.mark.parametrize("name,bad", [
    ("depth", 1), ("depth", 65), ("depth", 4.0), ("depth", True), ("depth", "4"),
    ("lr", 0), ("lr", -1), ("lr", math.nan), ("lr", math.inf), ("lr", "0.1"),
    ("plot", 1), ("activation", "tanh"), ("activation", ["relu"]),
    ("depths", []), ("depths", [4, 2]), ("depths", [2, 2]), ("depths", "2,4"), ("depths", [0]),
    ("grids", {"nup": [1.0]}), ("grids", {"nup": [1.0], "ntk": [2.0], "sp": [1.0]}), ("grids", {"nup": [], "ntk": [1]}),
    ("grids", [1, 2]),
])
def test_bad_values_name_the_parameter(name, bad):
    with pytest.raises(ValueError, match=rf"^{name}(\[[^]]*\])?="):
        SCHEMA.validate({**GOOD, name: bad})


def test_missing_parameters_and_duplicate_names():
    values = dict(GOOD)
    del values["lr"]
    with pytest.raises(ValueError, match="missing parameter"):
        SCHEMA.validate(values)
    with pytest.raises(ValueError, match="duplicate"):
        Schema(Int("a"), Int("a"))


def test_cross_parameter_checks_run_after_the_fields():
    def deepest_is_in_depths(p):
        if p.depth not in p.depths:
            raise ValueError(f"depth={p.depth} must be one of depths={list(p.depths)}")

    schema = Schema(*SCHEMA.params.values(), checks=[deepest_is_in_depths])
    schema.validate(GOOD)
    with pytest.raises(ValueError, match="depth=16"):
        schema.validate({**GOOD, "depth": 16})
    assert "depth: an integer in [2, 64]" in SCHEMA.describe()
