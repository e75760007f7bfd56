from __future__ import annotations

import pytest

from shoal.errors import ConfigError
from shoal.models import Policy, SubModelSpec


def _spec(**kw):
    base = dict(layers=(0, 2), channels=(1, 4, 5), heads=((0,), (1, 2)), neurons=((3,), ()))
    base.update(kw)
    return SubModelSpec(**base)


def test_json_round_trip(tiny_config):
    spec = _spec().bound_to(tiny_config)
    assert SubModelSpec.from_json(spec.to_json()) == spec
    policy = Policy(("a", "b"), (spec, SubModelSpec((1,), (0, 2), ((3,),), ((0, 1),))))
    assert Policy.from_json(policy.to_json()) == policy


@pytest.mark.parametrize("kwargs, field", [
    (dict(channels=()), "channels"),
    (dict(channels=(3, 1)), "channels"),
    (dict(layers=(0, 0)), "layers"),
    (dict(heads=((0,),)), "heads"),
    (dict(neurons=((1,), ("x",))), "neurons[1]"),
    (dict(layers=(0, 2), heads=((0,), ()), neurons=((1,), ())), "no heads and no neurons"),
])
def test_validation_names_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=field.replace("[", r"\[").replace("]", r"\]")):
        _spec(**kwargs)


def test_bad_value_is_quoted():
    with pytest.raises(ConfigError, match=r"\[3, 1\]"):
        _spec(channels=(3, 1))


def test_check_against_family(tiny_config):
    with pytest.raises(ConfigError, match="channels index 99"):
        _spec(channels=(1, 99)).check_against(tiny_config)
    with pytest.raises(ConfigError, match=r"heads\[1\] index 9"):
        _spec(heads=((0,), (9,))).check_against(tiny_config)
    with pytest.raises(ConfigError, match="another teacher family"):
        _spec(family="0123456789abcdef").check_against(tiny_config)


def test_from_dict_rejects_missing_and_unknown_fields():
    with pytest.raises(ConfigError, match="missing field"):
        SubModelSpec.from_dict({"layers": [], "channels": [0]})
    with pytest.raises(ConfigError, match="unknown field"):
        SubModelSpec.from_dict({"layers": [], "channels": [0], "heads": [], "neurons": [], "extra": 1})
    with pytest.raises(ConfigError, match="not valid JSON"):
        SubModelSpec.from_json("{")


def test_policy_validation():
    spec = _spec()
    with pytest.raises(ConfigError, match="repeated"):
        Policy(("a", "a"), (spec, spec))
    with pytest.raises(ConfigError, match="2 devices"):
        Policy(("a", "b"), (spec,))
    with pytest.raises(ConfigError, match="no device 'z'"):
        Policy(("a",), (spec,)).spec_for("z")


def test_policy_check_against_catches_shared_units(tiny_config):
    spec = _spec()
    with pytest.raises(ConfigError, match="C2: channel 1"):
        Policy(("a", "b"), (spec, spec)).check_against(tiny_config)
    other = SubModelSpec((2,), (0,), ((2,),), ((0,),))
    with pytest.raises(ConfigError, match="C3: head 2 of block 2"):
        Policy(("a", "b"), (spec, other)).check_against(tiny_config)
