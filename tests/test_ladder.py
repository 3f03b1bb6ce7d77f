"""The seeds/001 ladder: each stage's flags are the previous stage's plus one change, the plan
refuses a stage without the stage it builds on, and the U verdict (a tiny ladder end to end:
tests/test_in_process.py)."""
import pytest

from cifar_jax.study import config
from experiments import ladder


@pytest.fixture
def cfg():
    return config.parse("--seeds=1", "--model=convnet", "--normalization=none", "--lr=0.1", own=ladder.OPTIONS)


def test_each_stage_adds_its_change_to_the_stage_it_builds_on(cfg):
    bn = ladder.stage_config(cfg, "batch_norm")
    assert (bn.normalization, bn.augment, bn.optimizer, bn.schedule) == ("per_channel", "crop_flip", "momentum",
                                                                         "exponential")
    assert bn.values("momentum") == (0.9,) and bn.values("decay_rate") == (0.95,) and bn.values("dropout") == (0.5,)
    assert bn.model.norm == "batch" and bn.model.use_dropout and bn.lrs == (0.1,) and bn.model.name == "convnet"
    zca = ladder.stage_config(cfg, "zca")
    assert zca.normalization == "zca" and zca.augment == "none" and zca.optimizer == "sgd"
    assert ladder.stage_config(cfg, "dropout_long").epochs == cfg.own.long_epochs == 100
    assert ladder.stage_config(cfg, "dropout_long").model.norm == "none"


def test_the_plan_needs_every_stage_a_stage_builds_on():
    assert ladder.plan(["baseline", "standardised"], ["standardised"]) == [
        ("baseline", None), ("standardised", "baseline"), ("standardised_long", "standardised")]
    with pytest.raises(config.ConfigError, match="augmented builds on standardised; add it"):
        ladder.plan(["baseline", "augmented"], [])
    with pytest.raises(config.ConfigError, match="unknown whitening"):
        ladder.plan(["baseline", "whitening"], [])


def _record(val_loss):
    epochs = [{"epoch": i + 1, "val_loss": v, "val_acc": 0.5} for i, v in enumerate(val_loss)]
    final = {"loss": val_loss[-1], "acc": 0.5, "top5": 0.9}
    return {"status": "done", "epochs": epochs, "test": final, "config": {}}


def test_a_validation_loss_that_turns_up_is_a_u():
    u = ladder.stage_row("baseline", None, [_record([1.2, 0.9, 1.1, 1.4])])
    assert u["u_shape"] and u["min_val_loss"]["mean"] == pytest.approx(0.9) and u["min_val_epoch"]["mean"] == 2
    assert not ladder.stage_row("bn", "x", [_record([1.2, 0.9, 0.8, 0.82])])["u_shape"]
