"""refimpl.nn.DynamicTanh and refimpl.transformer: formulas, wiring, QK-norm, probe, training."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import refimpl.nn as rnn
from refimpl import transformer as tf
from refimpl.nn.dyt import DynamicTanh

# --------------------------------------------------------------------------- DyT


def test_dyt_is_the_formula():
    torch.manual_seed(0)
    dyt = DynamicTanh((3, 4), alpha_init=0.7, dtype=torch.float64)
    with torch.no_grad():
        dyt.weight.normal_()
        dyt.bias.normal_()
    x = torch.randn(5, 3, 4, dtype=torch.float64) * 3
    naive = dyt.weight * torch.tanh(0.7 * x) + dyt.bias
    assert torch.allclose(dyt(x), naive, rtol=0, atol=1e-15)
    assert dyt.alpha.shape == (1,) and dyt.alpha.item() == 0.7
    assert rnn.DynamicTanh is DynamicTanh


def test_dyt_without_affine_and_without_bias():
    x = torch.randn(2, 6)
    plain = DynamicTanh(6, alpha_init=2.0, elementwise_affine=False)
    assert plain.weight is None and plain.bias is None
    assert torch.equal(plain(x), torch.tanh(2.0 * x))
    no_bias = DynamicTanh(6, bias=False)
    assert no_bias.bias is None and no_bias.weight is not None
    assert [n for n, _ in plain.named_parameters()] == ["alpha"]


def test_dyt_gradcheck_float64():
    torch.manual_seed(1)
    dyt = DynamicTanh(5, alpha_init=0.5, dtype=torch.float64)
    with torch.no_grad():
        dyt.weight.uniform_(0.5, 1.5)
        dyt.bias.uniform_(-1, 1)
    x = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)

    def f(x, alpha, weight, bias):
        return torch.func.functional_call(
            dyt, {"alpha": alpha, "weight": weight, "bias": bias}, (x,)
        )

    inputs = (x, *(p.detach().clone().requires_grad_() for p in (dyt.alpha, dyt.weight, dyt.bias)))
    assert torch.autograd.gradcheck(f, inputs)


def test_dyt_bad_input():
    with pytest.raises(RuntimeError, match=r"expected input with shape \[\*, 4\]"):
        DynamicTanh(4)(torch.zeros(2, 5))
    with pytest.raises(ValueError, match="alpha_init must be a finite number"):
        DynamicTanh(4, alpha_init=float("nan"))
    with pytest.raises(ValueError, match="alpha_init must be a finite number"):
        DynamicTanh(4, alpha_init="0.5")
    with pytest.raises(ValueError, match="normalized_shape must be non-empty"):
        DynamicTanh(())


def test_dyt_state_dict_round_trip():
    a, b = DynamicTanh(4, alpha_init=0.3), DynamicTanh(4)
    b.load_state_dict(a.state_dict())
    assert b.alpha.item() == pytest.approx(0.3)
    assert "alpha_init=0.3" in repr(a)


# --------------------------------------------------------------------------- norms


def test_make_norm_choices():
    assert isinstance(tf.make_norm("layernorm", 4), rnn.LayerNorm)
    assert isinstance(tf.make_norm("rmsnorm", 4), rnn.RMSNorm)
    assert isinstance(tf.make_norm("dyt", 4), DynamicTanh)
    assert isinstance(tf.make_norm(None, 4), torch.nn.Identity)
    custom = tf.make_norm(lambda d: DynamicTanh(d, alpha_init=2.0), 4)
    assert custom.alpha.item() == 2.0
    with pytest.raises(ValueError, match="unknown norm .batchnorm."):
        tf.make_norm("batchnorm", 4)
    with pytest.raises(TypeError, match="must return a torch Module"):
        tf.make_norm(lambda d: 3, 4)


# --------------------------------------------------------------------------- attention


def _torch_mha(attn: tf.SelfAttention) -> torch.nn.MultiheadAttention:
    mha = torch.nn.MultiheadAttention(attn.d_model, attn.n_heads, batch_first=True)
    mha = mha.to(attn.in_proj.weight.dtype)
    with torch.no_grad():
        mha.in_proj_weight.copy_(attn.in_proj.weight)
        mha.in_proj_bias.copy_(attn.in_proj.bias)
        mha.out_proj.weight.copy_(attn.out_proj.weight)
        mha.out_proj.bias.copy_(attn.out_proj.bias)
    return mha


@pytest.mark.parametrize("causal", [False, True])
def test_attention_without_qk_norm_is_torchs(causal):
    torch.manual_seed(2)
    attn = tf.SelfAttention(12, 3, causal=causal).double()
    with torch.no_grad():
        attn.in_proj.bias.normal_()
        attn.out_proj.bias.normal_()
    x = torch.randn(4, 7, 12, dtype=torch.float64)
    mask = torch.ones(7, 7, dtype=torch.bool).triu(1) if causal else None
    expected, _ = _torch_mha(attn)(x, x, x, attn_mask=mask, need_weights=False)
    assert torch.allclose(attn(x), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("qk_norm", ["layernorm", "rmsnorm"])
def test_qk_norm_logits_are_normalized_queries_and_keys(qk_norm):
    torch.manual_seed(3)
    attn = tf.SelfAttention(8, 2, qk_norm=qk_norm).double()
    x = torch.randn(3, 5, 8, dtype=torch.float64)
    q, k, _ = attn.in_proj(x).split(8, dim=-1)
    q, k = (a.reshape(3, 5, 2, 4).transpose(1, 2) for a in (q, k))
    if qk_norm == "layernorm":
        q, k = F.layer_norm(q, (4,), eps=1e-5), F.layer_norm(k, (4,), eps=1e-5)
    else:
        q, k = F.rms_norm(q, (4,)), F.rms_norm(k, (4,))
    logits, _ = attn.logits(x)
    assert torch.allclose(logits, q @ k.transpose(-2, -1) / 2.0, rtol=0, atol=1e-12)


def test_qk_norm_makes_attention_invariant_to_query_and_key_scale():
    torch.manual_seed(4)
    tiny_eps = lambda d: rnn.LayerNorm(d, eps=1e-30)  # noqa: E731
    attn = tf.SelfAttention(8, 2, qk_norm=tiny_eps).double()
    plain = tf.SelfAttention(8, 2).double()
    plain.load_state_dict({k: v for k, v in attn.state_dict().items() if "_norm" not in k})
    x = torch.randn(2, 6, 8, dtype=torch.float64)
    before, plain_before = attn(x), plain(x)
    with torch.no_grad():
        for module in (attn, plain):
            module.in_proj.weight[:16] *= 30.0  # queries and keys, not values
            module.in_proj.bias[:16] *= 30.0
    assert torch.allclose(attn(x), before, rtol=0, atol=1e-10)
    assert not torch.allclose(plain(x), plain_before, atol=1e-3)


def test_max_logit_is_bounded_with_qk_norm_and_grows_without():
    torch.manual_seed(5)
    x = torch.randn(4, 6, 16)
    tops = {}
    for qk in (None, "layernorm"):
        torch.manual_seed(6)
        attn = tf.SelfAttention(16, 2, qk_norm=qk)
        with torch.no_grad():
            attn.in_proj.weight.mul_(10.0)
        _, tops[qk] = attn(x, return_max_logit=True)
        logits, _ = attn.logits(x)
        assert tops[qk] == logits.abs().max()
    assert tops["layernorm"] <= math.sqrt(8) + 1e-5  # |q|, |k| <= sqrt(head_dim)
    assert tops[None] > 10 * tops["layernorm"]


def test_attention_errors():
    with pytest.raises(ValueError, match="embed_dim must be divisible by num_heads"):
        tf.SelfAttention(10, 3)
    with pytest.raises(RuntimeError, match=r"expected input of shape \(N, T, 8\)"):
        tf.SelfAttention(8, 2)(torch.zeros(2, 3, 6))


# --------------------------------------------------------------------------- blocks


@pytest.mark.parametrize("position", ["pre", "post"])
def test_block_is_torchs_encoder_layer(position):
    torch.manual_seed(7)
    block = tf.TransformerBlock(12, 3, d_ff=20, norm_position=position).double()
    with torch.no_grad():
        for p in block.parameters():
            p.add_(0.1 * torch.randn_like(p))  # non-trivial norms and biases
    layer = torch.nn.TransformerEncoderLayer(
        12,
        3,
        dim_feedforward=20,
        dropout=0.0,
        batch_first=True,
        norm_first=position == "pre",
        dtype=torch.float64,
    )
    attn = _torch_mha(block.self_attn)
    layer.self_attn.load_state_dict(attn.state_dict())
    for name in ("linear1", "linear2", "norm1", "norm2"):
        getattr(layer, name).load_state_dict(getattr(block, name).state_dict())
    layer.eval()  # torch's fast path is off for float64 anyway; eval disables dropout
    x = torch.randn(3, 5, 12, dtype=torch.float64)
    assert torch.allclose(block(x), layer(x), rtol=0, atol=1e-12)


def test_pre_and_post_wiring_by_hand():
    torch.manual_seed(8)
    for position in ("pre", "post"):
        b = tf.TransformerBlock(8, 2, norm="rmsnorm", norm_position=position).double()
        x = torch.randn(2, 4, 8, dtype=torch.float64)
        if position == "pre":
            h = x + b.self_attn(b.norm1(x))
            expected = h + b.ffn(b.norm2(h))
        else:
            h = b.norm1(x + b.self_attn(x))
            expected = b.norm2(h + b.ffn(h))
        assert torch.allclose(b(x), expected, rtol=0, atol=1e-14)
    # post-LN outputs are normalized per token; pre-LN outputs are not
    post = tf.TransformerBlock(8, 2, norm_position="post")(torch.randn(2, 4, 8) * 5)
    assert torch.allclose(post.mean(-1), torch.zeros(2, 4), atol=1e-5)


def test_block_without_norm_and_with_dyt():
    x = torch.randn(2, 3, 8)
    none = tf.TransformerBlock(8, 2, norm=None)
    assert isinstance(none.norm1, torch.nn.Identity)
    h = x + none.self_attn(x)
    assert torch.allclose(none(x), h + none.ffn(h), atol=1e-6)
    assert isinstance(tf.TransformerBlock(8, 2, norm="dyt").norm2, DynamicTanh)


def test_block_errors():
    with pytest.raises(ValueError, match="norm_position must be 'pre' or 'post'"):
        tf.TransformerBlock(8, 2, norm_position="sandwich")


# --------------------------------------------------------------------------- model


def test_model_shapes_and_final_norm():
    pre = tf.TinyTransformer(11, d_model=16, n_layers=3, max_len=6)
    post = tf.TinyTransformer(11, d_model=16, n_layers=3, max_len=6, norm_position="post")
    nothing = tf.TinyTransformer(11, d_model=16, n_layers=1, max_len=6, norm=None)
    assert isinstance(pre.final_norm, rnn.LayerNorm)
    assert isinstance(post.final_norm, torch.nn.Identity)
    assert isinstance(nothing.final_norm, torch.nn.Identity)
    tokens = torch.randint(11, (4, 6))
    logits, top = post(tokens, return_max_logit=True)
    assert logits.shape == (4, 6, 11) and top.ndim == 0
    block_tops = []
    x = post.token_embedding(tokens) + post.position_embedding(torch.arange(6))
    for block in post.blocks:
        block_tops.append(block.self_attn(x, return_max_logit=True)[1])
        x = block(x)
    assert top == max(block_tops)
    assert torch.equal(post(tokens), logits)


def test_model_errors():
    model = tf.TinyTransformer(5, d_model=8, max_len=4)
    with pytest.raises(ValueError, match="exceeds max_len 4"):
        model(torch.zeros(1, 5, dtype=torch.long))
    with pytest.raises(RuntimeError, match=r"expected tokens of shape \(N, T\)"):
        model(torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="n_layers must be >= 1"):
        tf.TinyTransformer(5, n_layers=0)


# --------------------------------------------------------------------------- probe


@pytest.mark.parametrize("parameter", [None, "linear2.weight"])
def test_probe_matches_autograd(parameter):
    torch.manual_seed(9)
    model = tf.TinyTransformer(7, d_model=16, n_layers=3, max_len=5, norm_position="post")
    tokens, targets = tf.sort_batch(6, 5, 7, torch.Generator().manual_seed(1))
    norms = tf.layer_gradient_norms(model, tokens, targets, parameter)
    assert all(p.grad is None for p in model.parameters())  # .grad untouched
    tf.sequence_loss(model(tokens), targets).backward()
    for i, block in enumerate(model.blocks):
        params = [p for n, p in block.named_parameters() if parameter in (None, n)]
        expected = torch.sqrt(sum((p.grad**2).sum() for p in params))
        assert norms[i].item() == pytest.approx(expected.item(), rel=1e-5)


def test_probe_errors():
    model = tf.TinyTransformer(7, d_model=8, n_layers=1, max_len=4)
    x = torch.zeros(2, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="has no parameter 'linear3.weight'"):
        tf.layer_gradient_norms(model, x, x, "linear3.weight")
    with pytest.raises(TypeError, match=r"has no \.blocks"):
        tf.layer_gradient_norms(torch.nn.Linear(2, 2), x, x)


# --------------------------------------------------------------------------- task, training


def test_sort_batch():
    tokens, targets = tf.sort_batch(50, 6, 9, torch.Generator().manual_seed(0))
    assert tokens.shape == targets.shape == (50, 6)
    assert torch.equal(targets, tokens.sort(-1).values)
    assert tokens.min() >= 0 and tokens.max() <= 8
    again, _ = tf.sort_batch(50, 6, 9, torch.Generator().manual_seed(0))
    assert torch.equal(tokens, again)
    with pytest.raises(ValueError, match="vocab_size >= 2"):
        tf.sort_batch(5, 4, 1, torch.Generator())


def test_warmup_factor():
    assert [tf._warmup_factor(k, 4) for k in (1, 2, 4, 9)] == [0.25, 0.5, 1.0, 1.0]
    assert tf._warmup_factor(1, 0) == 1.0


def test_train_many_is_train_for_each_model():
    """The batch of models makes, model by model, the updates of torch.optim.AdamW."""
    vocab, length = 6, 4
    build = lambda: tf.TinyTransformer(  # noqa: E731
        vocab, d_model=8, n_layers=2, max_len=length, norm_position="post", qk_norm="rmsnorm"
    ).double()
    make = lambda g: tf.sort_batch(8, length, vocab, g)  # noqa: E731
    seeds, lrs, warmups = [3, 3, 4], [1e-2, 3e-3, 1e-2], [0, 3, 5]
    runs = tf.train_many(
        build,
        seeds,
        lrs,
        make,
        steps=6,
        data_seed=11,
        warmup_steps=warmups,
        weight_decay=0.1,
        eval_batch=make(torch.Generator().manual_seed(2)),
    )
    eval_tokens, eval_targets = make(torch.Generator().manual_seed(2))
    for i, (seed, lr, warmup) in enumerate(zip(seeds, lrs, warmups, strict=True)):
        torch.manual_seed(seed)
        model = build()
        losses = tf.train(
            model, make, steps=6, lr=lr, seed=11, warmup_steps=warmup, weight_decay=0.1
        )
        assert runs.train_loss[:, i].tolist() == pytest.approx(losses, rel=1e-6)
        for (name, p), q in zip(model.named_parameters(), runs.models[i].parameters(), strict=True):
            assert torch.allclose(p, q, rtol=0, atol=1e-10), name
        with torch.no_grad():
            logits = model(eval_tokens)
        assert runs.eval_loss[i].item() == pytest.approx(
            tf.sequence_loss(logits, eval_targets).item(), rel=1e-6
        )
        accuracy = (logits.argmax(-1) == eval_targets).float().mean().item()
        assert runs.eval_accuracy[i].item() == pytest.approx(accuracy)
    assert torch.isfinite(runs.max_logit).all()


def test_train_many_freezes_a_diverged_model():
    build = lambda: tf.TinyTransformer(5, d_model=8, n_layers=1, max_len=3)  # noqa: E731
    make = lambda g: tf.sort_batch(4, 3, 5, g)  # noqa: E731
    runs = tf.train_many(build, [0, 0], [1e-3, 1e300], make, steps=4, data_seed=0)
    assert torch.isfinite(runs.train_loss[:, 0]).all()
    assert torch.isnan(runs.train_loss[2:, 1]).all()


def test_training_errors():
    build = lambda: tf.TinyTransformer(5, d_model=8, n_layers=1, max_len=3)  # noqa: E731
    make = lambda g: tf.sort_batch(4, 3, 5, g)  # noqa: E731
    with pytest.raises(ValueError, match="as many rates as seeds"):
        tf.train_many(build, [0, 1], [1e-3], make, steps=2, data_seed=0)
    with pytest.raises(ValueError, match="one warm-up per model"):
        tf.train_many(build, [0], [1e-3], make, steps=2, data_seed=0, warmup_steps=[1, 2])
    with pytest.raises(ValueError, match="lr > 0"):
        tf.train(build(), make, steps=2, lr=0.0, seed=0)
