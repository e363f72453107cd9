import pytest

import rlvr
from rlvr.core.config import TrainerConfig, trainer_config
from rlvr.core.trainer import validate_trainer


def test_default_composition():
    cfg = rlvr.compose([])
    assert cfg.model.name == "smollm2"
    assert cfg.task.name == "arithmetic"
    assert list(cfg.reward) == ["arithmetic"]
    assert cfg.loss.name == "grpo"
    assert cfg.engine.name == "hf"
    assert cfg.trainer.num_generations >= 2


def test_overrides_and_interpolation():
    cfg = rlvr.compose(["model=tiny", "loss=dr_grpo", "engine.max_new_tokens=77", "trainer.lr=1e-6"])
    assert cfg.loss.name == "dr_grpo"
    assert cfg.loss.max_completion_length == 77  # follows engine.max_new_tokens
    assert cfg.trainer.lr == 1e-6


def test_unknown_group_option_fails_listing_options():
    with pytest.raises(Exception, match="Available options"):
        rlvr.compose(["loss=nope"])


def test_unknown_key_fails():
    with pytest.raises(Exception, match="lrr"):
        rlvr.compose(["trainer.lrr=1"])


def test_wrong_type_fails():
    with pytest.raises(Exception):
        rlvr.compose(["trainer.max_steps=many"])


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("num_generations", 1, "num_generations"),
        ("lr", 0.0, "lr"),
        ("max_steps", 0, "max_steps"),
        ("advantage_scaling", "zscore", "advantage_scaling"),
    ],
)
def test_trainer_validation(field, value, match):
    tc = TrainerConfig(**{field: value})
    with pytest.raises(ValueError, match=match):
        validate_trainer(tc)


def test_micro_batch_must_divide_batch():
    with pytest.raises(ValueError, match="micro_batch_size"):
        validate_trainer(trainer_config({"prompts_per_step": 2, "num_generations": 3, "micro_batch_size": 4}))
