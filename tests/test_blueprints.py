"""Partition specs, blueprints and the covering sampler of one round (twist_lightning/blueprints.py)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from twist_lightning.blueprints import Blueprint, PartitionSpec, resolve_n_sub, sample_blueprints
from twist_lightning.model import GPTConfig
from twist_lightning.selection import explicit_blueprint


# ---- spec and blueprint basics ------------------------------------------------------------------------------------
def test_spec_common_forms_and_errors() -> None:
    assert PartitionSpec(12, 12, 12).common == (0, 11)
    assert PartitionSpec(12, 12, 12).split_layers == tuple(range(1, 11))
    for none in ("none", "", None, [], ()):
        assert PartitionSpec(4, 2, 2, common=none).common == ()
    assert PartitionSpec(4, 2, 2, common="2,0").common == (0, 2)
    assert PartitionSpec(4, 2, 2, common=[3, 1, 3]).common == (1, 3)
    assert PartitionSpec(4, 2, 2, partitioned=[1, 2], common="none").split_layers == (1, 2)
    assert PartitionSpec(1, 2, 2).common == (0,) and PartitionSpec(1, 2, 2).split_layers == ()
    with pytest.raises(ValueError, match=r"twist\.common=\[0, 12\].*\[12\].*0\.\.11"):
        PartitionSpec(12, 12, 12, common=[0, 12])
    with pytest.raises(ValueError, match=r"twist\.common"):
        PartitionSpec(12, 12, 12, common=[-1])
    with pytest.raises(ValueError, match=r"twist\.common='first'"):
        PartitionSpec(12, 12, 12, common="first")
    cfg = GPTConfig(n_layer=3, n_head=4, n_embd=32, ffn_groups=8)
    assert PartitionSpec.from_config(cfg, common="none") == PartitionSpec(3, 4, 8, common=())


def test_resolve_n_sub() -> None:
    spec = PartitionSpec(2, 12, 12)
    assert resolve_n_sub(spec, 6) == (6, 6) and resolve_n_sub(spec, 0.5) == (6, 6) and resolve_n_sub(spec, 1.0) == (12, 12)
    assert resolve_n_sub(PartitionSpec(2, 4, 8), 1) == (1, 2)
    assert resolve_n_sub(PartitionSpec(2, 4, 6), 0.25) == (1, 2)  # 1.5 rounds half up
    for bad in (0, 13, 0.0, 1.5, True, "6"):
        with pytest.raises(ValueError, match="twist.n_sub"):
            resolve_n_sub(spec, bad)


def test_blueprint_json_str_and_validation() -> None:
    spec = PartitionSpec(3, 6, 8)
    bp = explicit_blueprint(spec, heads={1: [5, 0, 3]}, ffn={1: [7, 1, 2]})
    assert str(bp) == "L0 h[all] f[all] | L1 h[0,3,5] f[1,2,7] | L2 h[all] f[all]"
    assert Blueprint.from_json(bp.to_json()) == bp and Blueprint.from_dict(json.loads(bp.to_json())) == bp
    assert hash(Blueprint.from_json(bp.to_json())) == hash(bp)
    assert bp.sizes() == [(6, 8), (3, 3), (6, 8)] and bp.num_heads == 15 and bp.num_ffn == 19
    assert Blueprint.full(spec).is_full and not bp.is_full
    assert bp.branch_scales()[1] == pytest.approx((math.sqrt(2), math.sqrt(8 / 3)))
    assert bp.branch_scales(scale=False)[1] == (1.0, 1.0)
    assert explicit_blueprint(spec, heads=[None, (0, 3, 5), None], ffn=[None, [1, 2, 7], None]) == bp
    with pytest.raises(ValueError, match="common or unpartitioned"):
        explicit_blueprint(spec, heads={0: [1]})
    with pytest.raises(ValueError, match=r"0\.\.5"):
        explicit_blueprint(spec, heads={1: [6]})
    with pytest.raises(ValueError, match="unique"):
        explicit_blueprint(spec, heads={1: [1, 1]})
    with pytest.raises(ValueError, match="lists 2 layers"):
        explicit_blueprint(spec, heads=[None, None])


# ---- sampling -----------------------------------------------------------------------------------------------------
@st.composite
def _sampling_case(draw: st.DrawFn) -> tuple[PartitionSpec, int, int | float, int, int]:
    n_layer = draw(st.integers(1, 5))
    common = draw(st.one_of(st.sampled_from(["default", "none"]),
                            st.lists(st.integers(0, n_layer - 1), max_size=n_layer)))
    spec = PartitionSpec(n_layer, draw(st.integers(1, 12)), draw(st.integers(1, 16)), common=common)
    n_sub = draw(st.one_of(st.integers(0, spec.n_head + 1), st.floats(0.01, 1.0)))
    return spec, draw(st.integers(1, 8)), n_sub, draw(st.integers(0, 2**40)), draw(st.integers(0, 10_000))


@settings(max_examples=300, deadline=None)
@given(_sampling_case())
def test_sample_blueprints_invariants(case: tuple[PartitionSpec, int, int | float, int, int]) -> None:
    spec, num, n_sub, seed, rnd = case
    try:
        k_heads, k_ffn = resolve_n_sub(spec, n_sub)
    except ValueError:
        with pytest.raises(ValueError, match="twist.n_sub"):
            sample_blueprints(spec, num, n_sub, seed, rnd)
        return
    if spec.split_layers and (num * k_heads < spec.n_head or num * k_ffn < spec.ffn_groups):
        with pytest.raises(ValueError, match=rf"{num} subnets of \d+ (heads|FFN groups) cannot cover"):
            sample_blueprints(spec, num, n_sub, seed, rnd)
        return
    bps = sample_blueprints(spec, num, n_sub, seed, rnd)
    assert len(bps) == num
    assert bps == sample_blueprints(spec, num, n_sub, seed, rnd)  # deterministic
    for layer in range(spec.n_layer):
        split = layer in spec.split_layers
        for bp in bps:
            h, f = bp.heads[layer], bp.ffn[layer]
            assert list(h) == sorted(set(h)) and list(f) == sorted(set(f))  # sorted unique
            assert (len(h), len(f)) == ((k_heads, k_ffn) if split else (spec.n_head, spec.ffn_groups))
            assert Blueprint.from_json(bp.to_json()) == bp
        # coverage of heads and FFN groups separately (trivial on whole layers, which hold everything)
        assert set().union(*(bp.heads[layer] for bp in bps)) == set(range(spec.n_head))
        assert set().union(*(bp.ffn[layer] for bp in bps)) == set(range(spec.ffn_groups))
    for layer in spec.common:
        assert all(bp.heads[layer] == tuple(range(spec.n_head)) for bp in bps)


def test_sampling_is_not_degenerate() -> None:
    spec = PartitionSpec(12, 12, 12)
    a, b = (sample_blueprints(spec, 4, 6, seed=0, round=r) for r in (0, 1))
    assert a != b and sample_blueprints(spec, 4, 6, seed=1, round=0) != a
    assert len({bp.heads[1] for bp in a}) > 1  # subnets differ within a round
    # each subnet is marginally uniform: every head held with probability N_sub / N = 1/2
    counts = torch.zeros(12)
    for r in range(300):
        for bp in sample_blueprints(spec, 4, 6, seed=7, round=r):
            counts[list(bp.heads[5])] += 1
    assert ((counts / 1200 - 0.5).abs() < 0.06).all()


def test_same_blueprints_in_another_process() -> None:
    cases = [(PartitionSpec(12, 12, 12), 4, 6, 3, 17), (PartitionSpec(5, 8, 16, common="none"), 3, 0.5, 99, 0)]
    code = (
        "import json; from twist_lightning.blueprints import PartitionSpec, sample_blueprints\n"
        f"cases = {[(s.n_layer, s.n_head, s.ffn_groups, list(s.common), n, k, seed, r) for s, n, k, seed, r in cases]}\n"
        "print(json.dumps([[bp.to_dict() for bp in sample_blueprints(PartitionSpec(L, H, G, common=c), n, k, seed, r)]\n"
        "                  for L, H, G, c, n, k, seed, r in cases]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    here = [[bp.to_dict() for bp in sample_blueprints(*case)] for case in cases]
    assert json.loads(out) == here


def test_impossible_requests_name_the_numbers() -> None:
    spec = PartitionSpec(12, 12, 12, common="none")
    with pytest.raises(ValueError, match=r"4 subnets of 2 heads cannot cover 12 heads; use n_sub >= 3 or at least 6"):
        sample_blueprints(spec, 4, 2, seed=0, round=0)
    with pytest.raises(ValueError, match=r"gives 13 heads per layer; it must be in 1\.\.12"):
        sample_blueprints(spec, 4, 13, seed=0, round=0)
    with pytest.raises(ValueError, match=r"gives 0 heads"):
        sample_blueprints(spec, 4, 0, seed=0, round=0)
    with pytest.raises(ValueError, match=r"num_subnets=0"):
        sample_blueprints(spec, 0, 6, seed=0, round=0)
    with pytest.raises(ValueError, match=r"4 subnets of 1 FFN groups cannot cover 5 FFN groups; use n_sub >= 2"):
        sample_blueprints(PartitionSpec(3, 4, 5), 4, 0.25, seed=0, round=0)  # 1 of 4 heads, round(1.25) = 1 of 5 groups
    # nothing to split: any S works
    assert sample_blueprints(PartitionSpec(2, 12, 12), 1, 1, seed=0, round=0) == [Blueprint.full(PartitionSpec(2, 12, 12))]
