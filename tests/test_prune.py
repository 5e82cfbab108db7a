"""Post-training structured pruning: unit counts, identity at full size, bias compensation, least-squares re-fit."""

import pytest
import torch

from twist_lightning.model import GPT, GPTConfig
from twist_lightning.partition import PartitionSpec, extract, importance_blueprint
from twist_lightning.prune import (ChannelStats, Method, _least_squares, calibrate, calibration_batches, method_scores,
                                   parse_method, prune, reconstruction_errors, removed_fraction)

ALL = [m.value for m in Method]


def _model(bias: bool = True, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    model = GPT(GPTConfig(n_layer=4, n_head=4, n_embd=32, block_size=16, vocab_size=64, bias=bias))
    with torch.no_grad():  # non-zero biases and larger projections, so compensation and re-fit have work to do
        for name, p in model.named_parameters():
            if name.endswith("bias") and p.dim() == 1 and "ln" not in name:
                p.normal_(0.0, 0.2)
            if name.endswith("c_proj.weight"):
                p.mul_(10.0)
    return model.eval()


class _Windows(torch.utils.data.Dataset):
    def __init__(self, n: int, block: int = 16, vocab: int = 64) -> None:
        g = torch.Generator().manual_seed(1)
        self.tokens = torch.randint(0, vocab, (n * block + 1,), generator=g)
        self.n, self.block = n, block

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        chunk = self.tokens[i * self.block:(i + 1) * self.block + 1]
        return chunk[:-1], chunk[1:]


@pytest.fixture(scope="module")
def setup():
    model = _model()
    batches = calibration_batches(_Windows(64), samples=32, seed=0, batch_size=8)
    return model, batches, calibrate(model, batches)


@pytest.mark.parametrize("method", ALL)
@pytest.mark.parametrize("size", [1, 2, 3])
def test_every_method_keeps_exactly_the_requested_units(setup, method, size):
    model, _, calib = setup
    result = prune(model, size, method, calib)
    sizes = result.blueprint.sizes()
    assert sizes[0] == sizes[-1] == (4, 4)  # common layers whole
    assert sizes[1:3] == [(size, size)] * 2
    cfg = result.model.config
    assert [cfg.heads(i) for i in range(4)] == [s[0] for s in sizes]
    assert [cfg.ffn_units(i) for i in range(4)] == [s[1] for s in sizes]
    assert result.model.num_params() < model.num_params()


@pytest.mark.parametrize("size", [1, 2, 3])
def test_adaptive_flap_keeps_the_requested_total(size):
    torch.manual_seed(3)
    model = GPT(GPTConfig(n_layer=6, n_head=4, n_embd=32, block_size=16, vocab_size=64)).eval()
    batches = calibration_batches(_Windows(16), samples=16)
    result = prune(model, size, "flap", calibrate(model, batches), structure="adaptive")
    split = result.blueprint.sizes()[1:-1]
    assert sum(h for h, _ in split) == size * 4 and sum(f for _, f in split) == size * 4
    assert all(h >= 1 and f >= 1 for h, f in split)


@pytest.mark.parametrize("method", ALL)
def test_full_size_returns_the_input_model(setup, method):
    model, batches, calib = setup
    result = prune(model, 4, method, calib)
    assert result.blueprint.is_full
    x = batches[0][0]
    assert torch.equal(result.model(x)[0], model(x)[0])
    for (name, p), q in zip(model.state_dict().items(), result.model.state_dict().values()):
        assert torch.equal(p, q), name


def _branch_mean_outputs(model: GPT, batches, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean attention and FFN branch outputs of ``layer`` on the full model's stream (branch scales applied)."""
    sums, count = [0.0, 0.0], 0
    for x, _ in batches:
        h = model.transformer.wte(x) + model.transformer.wpe(torch.arange(x.size(1)))
        for i, block in enumerate(model.transformer.h):
            a = block.attn(block.ln_1(h)) * block.attn_scale
            h2 = h + a
            m = block.mlp(block.ln_2(h2)) * block.mlp_scale
            if i == layer:
                sums[0] = sums[0] + a.double().sum((0, 1))
                sums[1] = sums[1] + m.double().sum((0, 1))
            h = h2 + m
        count += x.numel()
    return sums[0] / count, sums[1] / count


@torch.no_grad()
def test_bias_compensation_preserves_each_branch_mean_output(setup):
    model, batches, calib = setup
    result = prune(model, 2, "flap", calib)
    plain = extract(model, result.blueprint, scale=False)
    for layer in (1, 2):
        # each branch fed the *full* model's inputs: only then is the mean of the pruned branch comparable
        full_a, full_m = _branch_mean_outputs(model, batches, layer)
        fb, pb, qb = model.transformer.h[layer], result.model.transformer.h[layer], plain.transformer.h[layer]
        got_a, got_m, raw_a, raw_m = 0.0, 0.0, 0.0, 0.0
        count = 0
        for x, _ in batches:
            h = model.transformer.wte(x) + model.transformer.wpe(torch.arange(x.size(1)))
            for block in model.transformer.h[:layer]:
                h = block(h)
            z = fb.ln_1(h)
            got_a, raw_a = got_a + pb.attn(z).double().sum((0, 1)), raw_a + qb.attn(z).double().sum((0, 1))
            h2 = h + fb.attn(z)
            z2 = fb.ln_2(h2)
            got_m, raw_m = got_m + pb.mlp(z2).double().sum((0, 1)), raw_m + qb.mlp(z2).double().sum((0, 1))
            count += x.numel()
        torch.testing.assert_close(got_a / count, full_a, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(got_m / count, full_m, atol=1e-5, rtol=1e-4)
        # and without compensation the means differ (the test can fail)
        assert (raw_a / count - full_a).abs().max() > 1e-3 and (raw_m / count - full_m).abs().max() > 1e-3


@torch.no_grad()
def test_reconstruct_reduces_every_branch_error_against_the_same_units(setup):
    model, batches, calib = setup
    result = prune(model, 2, "reconstruct", calib)
    plain = extract(model, result.blueprint, scale=False)
    refit = reconstruction_errors(result.model, model, batches)
    unfit = reconstruction_errors(result.model, model, batches, candidate=plain)
    for layer in (1, 2):
        for branch in (0, 1):
            assert refit[layer][branch] < unfit[layer][branch], (layer, branch)
    assert refit[0] == (0.0, 0.0) and refit[3] == (0.0, 0.0)  # whole layers are untouched


@pytest.mark.parametrize("bias", [True, False])
def test_least_squares_equals_the_closed_form_solution(bias):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 6, generator=g, dtype=torch.float64) @ torch.randn(6, 6, generator=g, dtype=torch.float64)
    x += torch.randn(6, generator=g, dtype=torch.float64)  # non-zero means exercise the intercept
    w = torch.randn(5, 6, generator=g, dtype=torch.float64)
    b = torch.randn(5, generator=g, dtype=torch.float64) if bias else None
    target = x @ w.T + (b if bias else 0.0)
    kept = torch.tensor([0, 2, 5])
    stats = ChannelStats(6, gram=True)
    stats.add(x.float())
    w_new, b_new = _least_squares(w, b, kept, stats, damp=0.0)
    design = torch.cat([x[:, kept], torch.ones(200, 1, dtype=torch.float64)], 1) if bias else x[:, kept]
    sol = torch.linalg.lstsq(design, target).solution  # (k[+1], 5)
    torch.testing.assert_close(w_new, sol[:3].T, atol=2e-4, rtol=2e-4)  # stats are float32-accumulated per batch
    if bias:
        torch.testing.assert_close(b_new, sol[3], atol=2e-4, rtol=2e-4)
    else:
        assert b_new is None


def test_reconstruct_works_without_biases():
    model = _model(bias=False)
    batches = calibration_batches(_Windows(32), samples=16)
    calib = calibrate(model, batches)
    result = prune(model, 2, "reconstruct", calib)
    plain = extract(model, result.blueprint, scale=False)
    refit = reconstruction_errors(result.model, model, batches)
    unfit = reconstruction_errors(result.model, model, batches, candidate=plain)
    assert refit[1][1] < unfit[1][1]


def test_methods_score_differently_and_beat_random_on_a_planted_unit():
    # a head whose output projection is zero contributes nothing: every data-aware method and magnitude must drop it
    model = _model()
    with torch.no_grad():
        model.transformer.h[1].attn.c_proj.weight[:, 8:16] = 0.0  # head 1 of 4 (head_dim 8)
    batches = calibration_batches(_Windows(16), samples=16)
    calib = calibrate(model, batches)
    for method in ("magnitude", "activation", "flap", "reconstruct"):
        heads, _ = method_scores(model, method, calib)
        assert int(heads[1].argmin()) == 1, method
        assert 1 not in prune(model, 3, method, calib).blueprint.heads[1], method


def test_magnitude_is_today_s_importance_selector(setup):
    model, _, calib = setup
    spec = PartitionSpec.from_config(model.config)
    assert prune(model, 2, "importance", calib).blueprint == importance_blueprint(model, spec, 2)
    assert parse_method("importance") is Method.magnitude


def test_calibration_batches_are_deterministic_and_from_the_given_split():
    windows = _Windows(50)
    a = calibration_batches(windows, samples=10, seed=3, batch_size=4)
    b = calibration_batches(windows, samples=10, seed=3, batch_size=4)
    c = calibration_batches(windows, samples=10, seed=4, batch_size=4)
    assert [x.shape[0] for x, _ in a] == [4, 4, 2]
    assert all(torch.equal(p[0], q[0]) for p, q in zip(a, b))
    assert not all(torch.equal(p[0], q[0]) for p, q in zip(a, c))
    every = {tuple(windows[i][0].tolist()) for i in range(len(windows))}
    assert all(tuple(row.tolist()) in every for x, _ in a for row in x)
    assert sum(x.shape[0] for x, _ in calibration_batches(windows, samples=500)) == 50  # all there is


def test_removed_fraction_counts_every_block_unit(setup):
    model, _, calib = setup
    bp = prune(model, 2, "magnitude", calib).blueprint
    assert removed_fraction(bp) == pytest.approx(8 / 32)  # 2 of 4 layers lose 2 heads and 2 groups of 4 each


@pytest.mark.parametrize("kwargs, match", [
    (dict(method="obs"), "method='obs'"),
    (dict(size=5), "size=5"),
    (dict(size=0), "size=0"),
    (dict(size=1.5), "size=1.5"),
    (dict(structure="global"), "structure='global'"),
    (dict(structure="adaptive", method="activation"), "structure=adaptive"),
    (dict(damp=-0.1, method="reconstruct"), "damp=-0.1"),
    (dict(calibration=None, method="flap"), "method=flap needs calibration"),
    (dict(calibration=None, method="activation"), "method=activation needs calibration"),
])
def test_bad_input_names_the_setting(setup, kwargs, match):
    model, _, calib = setup
    args = {"size": 2, "method": "flap", "calibration": calib, **kwargs}
    with pytest.raises(ValueError, match=match.replace("(", r"\(").replace(".", r"\.")):
        prune(model, **args)


def test_bad_models_and_calibration_fail_clearly(setup):
    model, _, calib = setup
    sub = prune(model, 2, "magnitude", calib).model
    with pytest.raises(ValueError, match="full-size GPT"):
        prune(sub, 2, "magnitude", calib)
    with pytest.raises(ValueError, match="bias=False"):
        no_bias = _model(bias=False)
        prune(no_bias, 2, "flap", calibrate(no_bias, calibration_batches(_Windows(4), samples=4)))
    with pytest.raises(ValueError, match="fewer tokens than one sequence"):
        calibration_batches(_Windows(0), samples=8)
    with pytest.raises(ValueError, match="calib_samples=0"):
        calibration_batches(_Windows(4), samples=0)


def test_flap_without_compensation_keeps_its_units_and_scales_like_random(setup):
    model, _, calib = setup
    with_comp, without = prune(model, 2, "flap", calib), prune(model, 2, "flap", calib, compensate=False)
    assert with_comp.blueprint == without.blueprint
    assert with_comp.model.config.attn_scale[1] == 1.0 and without.model.config.attn_scale[1] > 1.0
    assert extract(model, without.blueprint).state_dict().keys() == without.model.state_dict().keys()
    for k, v in extract(model, without.blueprint).state_dict().items():
        assert torch.equal(v, without.model.state_dict()[k]), k
