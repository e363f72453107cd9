from dataclasses import dataclass

import pytest

import rlvr
from rlvr.core.registry import UnknownPluginError, get


def test_builtins_are_discovered_through_entry_points():
    for kind, name in [
        ("model", "smollm2"),
        ("model", "tiny"),
        ("model", "hf"),
        ("task", "arithmetic"),
        ("task", "gsm8k"),
        ("reward", "arithmetic"),
        ("loss", "grpo"),
        ("engine", "hf"),
        ("logger", "jsonl"),
    ]:
        entry = get(kind, name)
        assert entry.source == "rlvr", (kind, name, entry.source)


def test_unknown_name_lists_valid_names():
    with pytest.raises(UnknownPluginError) as err:
        rlvr.create("loss", "grpoo")
    msg = str(err.value)
    assert "grpoo" in msg and "grpo" in msg and "Did you mean 'grpo'" in msg


def test_unknown_parameter_is_rejected_with_suggestion():
    with pytest.raises(TypeError, match="did you mean 'found'"):
        rlvr.create("reward", "arithmetic", fond=1.0)


def test_wrong_type_is_rejected():
    with pytest.raises(ValueError, match="arithmetic"):
        rlvr.create("reward", "arithmetic", found="lots")


def test_runtime_registration_and_config_store():
    @dataclass
    class ShoutConfig(rlvr.core.rewards.RewardConfig):
        bonus: float = 2.0

    def make(cfg):
        return lambda completions, **kw: [cfg.bonus if c.isupper() else 0.0 for c in completions]

    rlvr.add_plugin("reward", rlvr.PluginSpec("shout_test", make, ShoutConfig))
    fn = rlvr.create("reward", "shout_test", bonus=3.0)
    assert fn(["HI", "hi"]) == [3.0, 0.0]
    cfg = rlvr.compose(["model=tiny", "reward=[shout_test]", "reward.shout_test.bonus=5"])
    assert cfg.reward.shout_test.bonus == 5.0


def test_disable_autoload_keeps_builtins(monkeypatch):
    from rlvr.core import registry as reg_mod

    monkeypatch.setenv("RLVR_DISABLE_PLUGIN_AUTOLOAD", "1")
    reg = reg_mod._new_registry()
    assert "arithmetic" in reg.entries("reward")
    assert all(e.source == "rlvr" for kind in ("reward", "loss", "model") for e in reg.entries(kind).values())
