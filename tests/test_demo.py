"""The selection-only demo trains OrthoSoftmax scores and freezes nested, in-budget subnets."""

import torch

import orthoasr
from orthoasr.demo import select_subnets


def test_selection_demo_yields_nested_subnets_within_budget(capsys):
    cfg = orthoasr.SupernetConfig(num_layers=2, criterion="params", budgets=(0.4, 0.7, 1.0))
    gates = select_subnets(cfg, steps=40)
    _, _, total = orthoasr.unit_costs(cfg)
    for b, budget in enumerate(cfg.budgets):
        assert orthoasr.subnet_cost(cfg, gates[b]) <= budget * total
        if b:
            assert bool((gates[b - 1] <= gates[b]).all())
    assert torch.equal(gates[-1], torch.ones_like(gates[-1]))
    printed = capsys.readouterr().out
    assert "budget" in printed and "layer  2" in printed
