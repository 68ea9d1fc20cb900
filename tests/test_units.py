"""Config validation, unit enumeration and the exact cost model (docs/design.md §2, §4)."""

import pytest
import torch

import orthoasr
from orthoasr.units import enumerate_units, frontend_cost, units_per_block


def test_defaults_are_the_paper_size_model():
    cfg = orthoasr.SupernetConfig()
    assert (cfg.num_layers, cfg.d_model, cfg.num_heads, cfg.ff_dim, cfg.ff_chunks,
            cfg.conv_kernel) == (12, 384, 6, 1536, 4, 31)
    assert units_per_block(cfg) == 15 and len(enumerate_units(cfg)) == 180


@pytest.mark.parametrize("heads,chunks,layers", [(3, 2, 1), (4, 3, 2), (8, 1, 3)])
def test_unit_enumeration_follows_the_block_order(heads, chunks, layers):
    cfg = orthoasr.SupernetConfig(num_layers=layers, d_model=48, num_heads=heads,
                                  ff_dim=96, ff_chunks=chunks,
                                  module_order=("mhsa", "ffn1", "conv", "ffn2"))
    units = enumerate_units(cfg)
    per_block = heads + 2 * chunks + 1
    assert len(units) == layers * per_block == layers * units_per_block(cfg)
    block = [(u.module, u.index) for u in units[:per_block]]
    assert block == ([("mhsa", h) for h in range(heads)] + [("ffn1", c) for c in range(chunks)]
                     + [("conv", 0)] + [("ffn2", c) for c in range(chunks)])
    assert [u.layer for u in units[per_block:2 * per_block]] == [1] * per_block or layers == 1


def test_module_granularity_has_four_units_per_block():
    cfg = orthoasr.SupernetConfig(num_layers=2, granularity="module")
    units = enumerate_units(cfg)
    assert [u.module for u in units[:4]] == list(cfg.module_order) and len(units) == 8
    component = orthoasr.SupernetConfig(num_layers=2)
    # a module unit owns all of its module: the same totals as the component split
    assert orthoasr.unit_costs(cfg, "params")[2] == orthoasr.unit_costs(component, "params")[2]
    assert orthoasr.unit_costs(cfg, "flops")[2] == orthoasr.unit_costs(component, "flops")[2]


def _torch_param_count(cfg):
    """Parameters of the same modules built from plain torch layers."""
    d, nn = cfg.d_model, torch.nn
    ffn = [nn.LayerNorm(d), nn.Linear(d, cfg.ff_dim), nn.Linear(cfg.ff_dim, d)]
    mhsa = [nn.LayerNorm(d), nn.Linear(d, 3 * d), nn.Linear(d, d)]
    conv = [nn.LayerNorm(d), nn.Linear(d, 2 * d),
            nn.Conv1d(d, d, cfg.conv_kernel, groups=d), nn.LayerNorm(d), nn.Linear(d, d)]
    block = 2 * ffn + mhsa + conv + [nn.LayerNorm(d)]
    c1, c2 = cfg.frontend_channels
    front = [nn.Conv2d(1, c1, 3), nn.Conv2d(c1, c1, 3), nn.Conv2d(c1, c2, 3),
             nn.Conv2d(c2, c2, 3), nn.Linear(c2 * cfg.num_mel_bins // 4, d)]
    count = lambda mods: sum(p.numel() for m in mods for p in m.parameters())  # noqa: E731
    return cfg.num_layers * count(block) + count(front) + count([nn.Linear(d, cfg.vocab_size)])


@pytest.mark.parametrize("granularity", ["component", "module"])
def test_param_costs_match_torch_layers(granularity):
    cfg = orthoasr.SupernetConfig(num_layers=2, d_model=64, num_heads=4, ff_dim=128,
                                  ff_chunks=4, conv_kernel=7, vocab_size=50,
                                  frontend_channels=(4, 8), granularity=granularity)
    costs, rest, total = orthoasr.unit_costs(cfg, "params")
    assert total == _torch_param_count(cfg)
    assert orthoasr.subnet_cost(cfg, torch.ones(len(costs)), "params") == total
    assert rest + costs.sum().item() == pytest.approx(total)


def test_flop_costs_match_flop_counter():
    """FLOPs of the cost model equal FlopCounterMode on the same computation."""
    from torch.utils.flop_counter import FlopCounterMode
    cfg = orthoasr.SupernetConfig(num_layers=1, d_model=32, num_heads=2, ff_dim=64,
                                  conv_kernel=5, vocab_size=11, frontend_channels=(2, 4))
    T, d, h, nn = 9, cfg.d_model, cfg.head_dim, torch.nn
    x = torch.randn(1, T, d)
    counter = FlopCounterMode(display=False)
    with counter:  # one head of attention, one FFN chunk, the conv module
        q, k, v = (nn.Linear(d, h)(x) for _ in range(3))
        a = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        nn.Linear(h, d)(a)
    head_flops = counter.get_total_flops()
    with counter:
        nn.Linear(cfg.chunk_dim, d)(nn.Linear(d, cfg.chunk_dim)(x))
    chunk_flops = counter.get_total_flops()
    with counter:
        y = nn.Linear(d, 2 * d)(x)[..., :d]
        y = nn.Conv1d(d, d, cfg.conv_kernel, padding=2, groups=d)(y.transpose(1, 2))
        nn.Linear(d, d)(y.transpose(1, 2))
    conv_flops = counter.get_total_flops()
    units = enumerate_units(cfg, frames=T)
    by_module = {u.module: u.flops for u in units}
    assert by_module["mhsa"] == head_flops
    assert by_module["ffn1"] == chunk_flops
    assert by_module["conv"] == conv_flops
    c1, c2 = cfg.frontend_channels
    feats = torch.randn(1, 1, 4 * T, cfg.num_mel_bins)
    with counter:
        y = nn.Conv2d(c1, c1, 3, padding=1)(nn.Conv2d(1, c1, 3, padding=1)(feats))
        y = nn.Conv2d(c2, c2, 3, padding=1)(nn.Conv2d(c1, c2, 3, padding=1)(
            nn.functional.max_pool2d(y, 2)))
        y = nn.functional.max_pool2d(y, 2)
        nn.Linear(c2 * cfg.num_mel_bins // 4, d)(y.transpose(1, 2).flatten(2))
    assert frontend_cost(cfg, T)[1] == counter.get_total_flops()


def test_shared_weights_count_once_per_active_module():
    cfg = orthoasr.SupernetConfig(num_layers=1)
    gates = torch.zeros(15)
    empty = orthoasr.subnet_cost(cfg, gates, "params")
    gates[0] = 1                       # one FFN1 chunk: its rows/cols + LN + b2
    one = orthoasr.subnet_cost(cfg, gates, "params") - empty
    gates[1] = 1
    two = orthoasr.subnet_cost(cfg, gates, "params") - empty
    d, f = 384, 384
    assert one == f * (2 * d + 1) + 3 * d and two == 2 * f * (2 * d + 1) + 3 * d


@pytest.mark.parametrize("field,value", [
    ("num_layers", 0), ("d_model", 100), ("ff_dim", 1001), ("conv_kernel", 4),
    ("granularity", "layer"), ("criterion", "latency"), ("budgets", (0.5, 0.3)),
    ("budgets", (0.2, 1.3)), ("module_order", ("ffn1", "conv", "mhsa")),
    ("budgets", "0.5"), ("budgets", 0.5), ("budgets", (0.5, "x")), ("vocab_size", 2),
    ("frontend_channels", (4.5, 8)), ("dropout", "0.1"),
])
def test_bad_config_is_rejected_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field.split("_")[0]):
        orthoasr.SupernetConfig(**{field: value})


def test_cost_api_rejects_bad_arguments():
    cfg = orthoasr.SupernetConfig(num_layers=1)
    with pytest.raises(ValueError, match="criterion"):
        orthoasr.unit_costs(cfg, "latency")
    with pytest.raises(ValueError, match="gates must have 15"):
        orthoasr.subnet_cost(cfg, torch.ones(14))
    with pytest.raises(ValueError, match="gates contain NaN or inf"):
        orthoasr.subnet_cost(cfg, torch.full((15,), float("nan")))
    with pytest.raises(ValueError, match="frames"):
        orthoasr.unit_costs(cfg, "flops", frames=0)


def test_subnet_cost_reads_gates_none_as_every_unit_and_names_bad_gates():
    """gates None (every unit on, as the supernet's forward and extract_subnet read it) was
    torch's "Could not infer dtype of NoneType", a string "new(): invalid data type 'str'"."""
    cfg = orthoasr.SupernetConfig(num_layers=1)
    for criterion in ("params", "flops"):
        assert orthoasr.subnet_cost(cfg, None, criterion) == \
            orthoasr.subnet_cost(cfg, torch.ones(15), criterion) == \
            orthoasr.unit_costs(cfg, criterion)[2]
    for bad in ("all", object()):
        with pytest.raises(TypeError, match=r"gates must be a tensor of 15 unit gates \(or "
                                            rf"None\), got {type(bad).__name__}"):
            orthoasr.subnet_cost(cfg, bad)
