import math

import pytest
import torch

from twist_lightning.model import GPT, PRESETS, GPTConfig


def tiny(**kw) -> GPTConfig:
    return GPTConfig(**{**PRESETS["tiny"], **kw})


def test_forward_shapes_and_loss_at_init_is_near_uniform():
    torch.manual_seed(0)
    model = GPT(tiny())
    idx, targets = torch.randint(0, 256, (2, 3, 32))
    logits, loss = model(idx, targets)
    assert logits.shape == (3, 32, 256)
    assert abs(loss.item() - math.log(256)) < 0.2  # small init -> near-uniform predictions


def test_weights_are_tied():
    model = GPT(tiny())
    assert model.lm_head.weight is model.transformer.wte.weight


def _tied_grad(model: GPT, idx: torch.Tensor, targets: torch.Tensor, dense_lookup: bool) -> torch.Tensor:
    model.zero_grad(set_to_none=True)
    if dense_lookup:  # the plain nn.Embedding call: a dense vocab x width gradient for the look-up
        model.token_embedding = model.transformer.wte
    _, loss = model(idx, targets)
    loss.backward()
    if dense_lookup:
        del model.token_embedding
    return model.lm_head.weight.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_tied_embedding_gradient_is_dense_and_equals_the_dense_lookup(dtype):
    torch.manual_seed(0)
    model = GPT(tiny()).to(dtype)
    distinct = torch.randperm(256)[:2 * 32].view(2, 32)  # no token twice: the same sums in the same order
    repeats = torch.randint(0, 8, (2, 32))  # many repeats: a row's look-up terms are added in another order
    targets = torch.randint(0, 256, (2, 32))
    for idx, exact in ((distinct, True), (repeats, False)):
        sparse = _tied_grad(model, idx, targets, dense_lookup=False)
        dense = _tied_grad(model, idx, targets, dense_lookup=True)
        assert sparse.layout == torch.strided and sparse.dtype == dtype and sparse.shape == (256, model.config.n_embd)
        if exact:
            assert torch.equal(sparse, dense)
        else:
            tol = 1e-2 if dtype == torch.bfloat16 else 1e-6
            torch.testing.assert_close(sparse, dense, rtol=tol, atol=tol * dense.abs().max().item())
            assert sparse[idx.unique()].abs().sum() > 0


def test_lookup_is_sparse_only_while_tied_and_training():
    model = GPT(tiny())
    idx = torch.randint(0, 256, (1, 8))
    assert model.token_embedding(idx).grad_fn._saved_sparse  # tied and training: the sparse look-up
    with torch.no_grad():
        assert torch.equal(model.token_embedding(idx), model.transformer.wte(idx))
    model.transformer.wte.padding_idx = 0  # the module's own option: its look-up, not the sparse one
    assert not model.token_embedding(idx).grad_fn._saved_sparse
    model.transformer.wte.padding_idx = None
    model.transformer.wte.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())  # untied
    assert not model.token_embedding(idx).grad_fn._saved_sparse
    model(idx, idx)[1].backward()
    assert model.transformer.wte.weight.grad.layout == torch.strided  # no sparse gradient reaches an optimizer


@pytest.mark.parametrize(
    "kw, key",
    [
        (dict(n_embd=30), "n_head"),
        (dict(ffn_groups=7), "ffn_groups"),
        (dict(layer_heads=[4]), "layer_heads"),
        (dict(layer_heads=[0, 4]), "layer_heads"),
    ],
)
def test_bad_config_names_the_setting(kw, key):
    with pytest.raises(ValueError, match=key):
        tiny(**kw)


def test_too_long_sequence_is_refused():
    with pytest.raises(ValueError, match="block_size"):
        GPT(tiny())(torch.zeros(1, 33, dtype=torch.long))


def test_narrowed_layers_have_the_narrow_shapes():
    cfg = tiny(layer_heads=[2, 4], layer_ffn_units=[1, 3])
    model = GPT(cfg)
    attn0, mlp1 = model.transformer.h[0].attn, model.transformer.h[1].mlp
    assert attn0.c_attn.weight.shape == (3 * 2 * 8, 32)
    assert attn0.c_proj.weight.shape == (32, 2 * 8)
    assert mlp1.c_fc.weight.shape == (3 * 32, 32)  # 3 groups of 4*32/4 = 32 neurons
    assert model(torch.zeros(1, 5, dtype=torch.long))[0].shape == (1, 5, 256)


def test_full_subnet_equals_full_model():
    torch.manual_seed(0)
    model = GPT(tiny())
    idx = torch.randint(0, 256, (2, 16))
    ref, _ = model(idx)
    model.set_subnet([[0, 1, 2, 3]] * 2, [[0, 1, 2, 3]] * 2)
    assert not model.subnet_active
    torch.testing.assert_close(model(idx)[0], ref)


def test_hf_gpt2_weights_load_with_identical_logits():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf_cfg = transformers.GPT2Config(n_layer=2, n_head=4, n_embd=64, n_positions=48, vocab_size=300,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    hf = transformers.GPT2LMHeadModel(hf_cfg).eval()
    ours = GPT.from_hf(hf).eval()
    idx = torch.randint(0, 300, (2, 48))
    with torch.no_grad():
        torch.testing.assert_close(ours(idx)[0], hf(idx).logits, atol=1e-5, rtol=1e-5)
    # and back: our state dict in HF layout loads into a fresh HF model with the same logits
    hf2 = transformers.GPT2LMHeadModel(hf_cfg).eval()
    missing, unexpected = hf2.load_state_dict(ours.hf_state_dict(), strict=False)
    assert not unexpected and all(k.endswith((".attn.bias", ".attn.masked_bias")) for k in missing)
    with torch.no_grad():
        torch.testing.assert_close(hf2(idx).logits, hf(idx).logits, atol=1e-5, rtol=1e-5)
