"""Flags → validated config → run grid, in process: configuration names from the values that
vary (group and per-run options alike), Config.vary, and one-line errors from the options table."""
import dataclasses

import pytest

from cifar_jax import config, options


def names(cfg):
    return [r.run_id for r in config.grid(cfg, 1000, 10)]


def test_every_group_option_names_its_configurations(parse):
    cfg = parse("--model=mlp", "--hidden=16;8,8", "--init=he,xavier", "--l2=0,0.01")
    assert len(cfg.variants) == 4
    assert names(cfg) == ["hidden=16,init=he,l2=0,seed=0", "hidden=16,init=he,l2=0.01,seed=0",
                          "hidden=16,init=xavier,l2=0,seed=0", "hidden=16,init=xavier,l2=0.01,seed=0",
                          "hidden=8-8,init=he,l2=0,seed=0", "hidden=8-8,init=he,l2=0.01,seed=0",
                          "hidden=8-8,init=xavier,l2=0,seed=0", "hidden=8-8,init=xavier,l2=0.01,seed=0"]
    assert {r.spec.model.init for r in config.grid(cfg, 1000, 10)} == {"he", "xavier"}


def test_probe_options_name_their_configurations_and_stay_out_of_run_configs_when_off(parse):
    cfg = parse("--model=mlp", "--norm=batch", "--dropout=0.5", "--dropout_kind=inverted,unscaled", "--norm_l2=false,true")
    runs = config.grid(cfg, 1000, 10)
    assert [r.config_name for r in runs] == ["dropout_kind=inverted,norm_l2=false", "dropout_kind=inverted,norm_l2=true",
                                             "dropout_kind=unscaled,norm_l2=false", "dropout_kind=unscaled,norm_l2=true"]
    stored = [r.config["model"] for r in runs]
    assert "dropout_kind" not in stored[0] and "norm_l2" not in stored[0]  # records of studies before the probes keep their form
    assert stored[3]["dropout_kind"] == "unscaled" and stored[3]["norm_l2"] is True
    assert runs[3].spec.model.dropout_kind == "unscaled" and runs[3].spec.model.norm_l2


def test_lr_batch_scale_scales_each_batch_sizes_learning_rate(parse):
    cfg = parse("--model=mlp", "--lr=0.01", "--batch_size=16,64,1024", "--lr_batch_scale=64")
    assert [(r.config_name, r.hp["lr"]) for r in config.grid(cfg, 4096, 10)] == [
        ("batch_size=16,lr=0.0025", 0.0025), ("batch_size=64,lr=0.01", 0.01), ("batch_size=1024,lr=0.16", 0.16)]


def test_vary_adds_a_group_axis(parse):
    cfg = parse("--model=mlp", "--hidden=16", "--batch_size=50,100")
    norms = [dataclasses.replace(cfg.model, norm=n) for n in ("none", "batch")]
    varied = cfg.vary("model", norms)
    assert len(varied.variants) == 4
    assert names(varied) == ["norm=none,batch_size=50,seed=0", "norm=batch,batch_size=50,seed=0",
                             "norm=none,batch_size=100,seed=0", "norm=batch,batch_size=100,seed=0"]


@pytest.mark.parametrize("flag,message", [
    ("--init=uniform", "--init=uniform: 'uniform' is unknown; allowed: torch, he, xavier, normal"),
    ("--batch_size=0", "--batch_size=0: must be >= 1"),
    ("--hidden=16;x", "--hidden=16;x: invalid literal"),
    ("--clip_norm=-1", "--clip_norm=-1: must be >= 0"),
    ("--norm=group", "allowed: none, batch, layer"),
    ("--norm_l2=maybe", "--norm_l2=maybe: 'maybe' is not true or false"),
    ("--dropout_place=before_relu", "allowed: after_relu, before_norm"),
])
def test_group_options_refuse_bad_values_in_one_line(parse, flag, message):
    with pytest.raises(options.ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse("--model=mlp", flag)
