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
])
def test_group_options_refuse_bad_values_in_one_line(parse, flag, message):
    with pytest.raises(options.ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse("--model=mlp", flag)
