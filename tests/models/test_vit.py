"""The DINOv2 ViT backbone: shapes, masks, intermediate layers, interpolation, configs."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from raddino.models import vit
from raddino.models.vit import (
    Attention,
    PatchEmbed,
    VisionTransformer,
    ViTConfig,
    prefers_matmul_attention,
    vit_config,
)


def tiny(**overrides) -> VisionTransformer:
    torch.manual_seed(0)
    config = ViTConfig(
        image_size=56, patch_size=14, embed_dim=32, depth=3, num_heads=4, **overrides
    )
    return VisionTransformer(config).eval()


def test_named_outputs_have_documented_shapes():
    model = tiny(num_register_tokens=2)
    out = model(torch.randn(3, 3, 56, 84), layers=[0, -1])
    assert out.cls.shape == (3, 32)
    assert out.registers.shape == (3, 2, 32)
    assert out.patches.shape == (3, 4 * 6, 32)
    assert out.grid == (4, 6)
    assert out.patch_grid().shape == (3, 32, 4, 6)
    assert sorted(out.layers) == [0, 2]
    assert torch.equal(out.layers[2][:, 0], out.cls)


def test_patch_grid_is_row_major_over_the_image():
    model = tiny()
    out = model(torch.randn(1, 3, 56, 84))
    grid = out.patch_grid()
    # token index r * w + c sits at grid[:, :, r, c]
    assert torch.equal(grid[0, :, 1, 4], out.patches[0, 1 * 6 + 4])


def test_mask_replaces_patches_with_the_mask_token():
    model = tiny()
    with torch.no_grad():
        model.mask_token.normal_()
    images = torch.randn(2, 3, 56, 56)
    masks = torch.zeros(2, 16, dtype=torch.bool)
    masks[0, :5] = True
    masked = model.prepare_tokens(images, masks)
    plain = model.prepare_tokens(images)
    pos = model.interpolate_pos_embed(56, 56)
    assert torch.allclose(masked[0, 1:6], model.mask_token + pos[0, 1:6])
    assert torch.equal(masked[0, 6:], plain[0, 6:])
    assert torch.equal(masked[1], plain[1])


def test_mask_of_wrong_shape_is_refused():
    with pytest.raises(ValueError, match="mask shape"):
        tiny()(torch.randn(1, 3, 56, 56), masks=torch.zeros(1, 9, dtype=torch.bool))


def test_input_not_multiple_of_patch_size_is_refused():
    with pytest.raises(ValueError, match="multiple of the patch size"):
        tiny()(torch.randn(1, 3, 50, 56))


def test_pos_embed_unchanged_at_training_size_and_resampled_elsewhere():
    model = tiny()
    assert model.interpolate_pos_embed(56, 56) is model.pos_embed
    resampled = model.interpolate_pos_embed(28, 70)
    assert resampled.shape == (1, 1 + 2 * 5, 32)
    assert torch.equal(resampled[:, 0], model.pos_embed[:, 0])


def test_legacy_offset_interpolation_gives_requested_grid():
    model = tiny(interpolate_offset=0.1)
    for h, w in [(98, 98), (28, 42), (224, 126)]:
        assert model.interpolate_pos_embed(h, w).shape[1] == 1 + (h // 14) * (w // 14)


def test_swiglu_and_no_layerscale_variants_run_and_have_official_names():
    model = tiny(ffn="swiglu", layerscale_init=None, qkv_bias=False)
    keys = set(model.state_dict())
    assert "blocks.0.mlp.w12.weight" in keys and "blocks.0.mlp.w3.weight" in keys
    assert not any("ls1" in k for k in keys)
    assert "blocks.0.attn.qkv.bias" not in keys
    assert model(torch.randn(1, 3, 56, 56)).cls.shape == (1, 32)


def test_drop_path_is_active_only_in_training():
    model = tiny(drop_path_rate=0.5)
    images = torch.randn(8, 3, 56, 56)
    model.eval()
    assert torch.equal(model(images).cls, model(images).cls)
    model.train()
    torch.manual_seed(1)
    first = model(images).cls
    torch.manual_seed(2)
    assert not torch.allclose(first, model(images).cls)


def test_gradients_flow_to_pixels_and_parameters():
    """Back-propagate a fixed random projection of every output token, in float64.

    A plain ``cls.sum()`` would be a bad probe: the final LayerNorm (gamma 1, beta 0) makes every
    token sum to exactly 0 for any input, so its true gradient is 0 and only rounding noise (which
    differs between CPU kernels) made it non-zero. The autograd gradient must equal a central
    finite difference along a random direction; in float64 with step 1e-5 the truncation error is
    ~1e-10 relative, so 1e-6 leaves room for any kernel's rounding and still fails on a wrong or
    missing gradient.
    """
    model = tiny().double()
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(1, 3, 56, 56, dtype=torch.float64, generator=generator)
    weights_cls = torch.randn(32, dtype=torch.float64, generator=generator)
    weights_patches = torch.randn(16, 32, dtype=torch.float64, generator=generator)

    def objective(pixels: torch.Tensor) -> torch.Tensor:
        out = model(pixels)
        return out.cls[0] @ weights_cls + (out.patches[0] * weights_patches).sum()

    pixels = images.clone().requires_grad_(True)
    objective(pixels).backward()
    assert pixels.grad is not None and pixels.grad.abs().max() > 1e-3
    proj_grad = model.patch_embed.proj.weight.grad
    assert proj_grad is not None and proj_grad.abs().max() > 1e-3

    direction = torch.randn(images.shape, dtype=torch.float64, generator=generator)
    step = 1e-5
    with torch.no_grad():
        numeric = (objective(images + step * direction) - objective(images - step * direction)) / (
            2 * step
        )
    analytic = (pixels.grad * direction).sum()
    assert torch.allclose(analytic, numeric, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize(
    ("size", "dim", "depth", "heads"),
    [("tiny", 192, 12, 3), ("small", 384, 12, 6), ("base", 768, 12, 12), ("large", 1024, 24, 16)],
)
def test_named_sizes(size, dim, depth, heads):
    config = vit_config(size)
    assert (config.embed_dim, config.depth, config.num_heads) == (dim, depth, heads)


def test_giant_uses_swiglu_with_official_hidden_width():
    config = vit_config("giant")
    assert config.ffn == "swiglu" and config.ffn_hidden_dim == 4096


@pytest.mark.parametrize(
    ("key", "value"), [("image_size", 500), ("num_heads", 5), ("drop_path_rate", 1.5), ("ffn", "x")]
)
def test_invalid_config_names_the_key(key, value):
    with pytest.raises(ValueError, match=key):
        ViTConfig(**{key: value})


def test_layer_index_out_of_range_is_refused():
    with pytest.raises(ValueError, match="out of range"):
        tiny()(torch.randn(1, 3, 56, 56), layers=[3])


@pytest.mark.parametrize("ffn", ["mlp", "swiglu"])
def test_inference_fast_path_equals_the_autograd_path(ffn):
    """Without autograd, blocks reuse fresh buffers in place; results must not change."""
    model = tiny(ffn=ffn)
    with torch.no_grad():
        for block in model.blocks:
            block.ls1.gamma.normal_()
            block.ls2.gamma.normal_()
    images = torch.randn(2, 3, 56, 56)
    with_grad = model(images, layers=[0, 1])
    with torch.inference_mode():
        without = model(images, layers=[0, 1])
    assert torch.allclose(with_grad.cls, without.cls, atol=1e-6)
    assert torch.allclose(with_grad.layers[0], without.layers[0], atol=1e-6)


def test_cpu_training_in_bf16_takes_the_matmul_attention_and_matches_fp32_sdpa(monkeypatch):
    torch.manual_seed(0)
    attention = Attention(dim=64, num_heads=2, qkv_bias=True)
    x = torch.randn(3, 17, 64, requires_grad=True)
    reference = attention(x)  # fp32: the fused SDPA kernel
    (grad_reference,) = torch.autograd.grad(reference.square().sum(), x)
    weight = attention.qkv.weight
    assert prefers_matmul_attention(weight.bfloat16(), x.bfloat16())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert prefers_matmul_attention(weight, x)
        with torch.no_grad():
            assert not prefers_matmul_attention(weight, x)  # inference keeps SDPA
    assert not prefers_matmul_attention(weight, x)  # fp32 keeps SDPA

    def refuse(*args, **kwargs):
        raise AssertionError("the fused kernel was called")

    monkeypatch.setattr(vit.F, "scaled_dot_product_attention", refuse)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = attention(x)
    (grad_low,) = torch.autograd.grad(low.float().square().sum(), x)
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), reference, atol=3e-2, rtol=3e-2)
    cosine = torch.nn.functional.cosine_similarity(grad_low.flatten(), grad_reference.flatten(), 0)
    assert cosine > 0.999


def test_flattened_patches_times_the_flattened_kernel_is_the_strided_convolution():
    torch.manual_seed(0)
    embed = PatchEmbed(patch_size=7, in_chans=3, embed_dim=16).double()
    images = torch.randn(2, 3, 21, 35, dtype=torch.float64)
    weight, bias = embed.proj.weight, embed.proj.bias
    linear = torch.nn.functional.linear(vit.flatten_patches(images, 7), weight.flatten(1), bias)
    assert linear.shape == (2, 3 * 5, 16)
    torch.testing.assert_close(linear, embed(images), rtol=1e-12, atol=1e-12)  # float64: exact
    # the token order is the convolution's: row-major over the (3, 5) grid
    conv = torch.nn.functional.conv2d(images, weight, bias, stride=7)  # (2, 16, 3, 5)
    torch.testing.assert_close(linear[:, 5 * 2 + 4], conv[:, :, 2, 4], rtol=1e-12, atol=1e-12)


class _OpNames(TorchDispatchMode):
    """Records the aten ops that run (forward and backward)."""

    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.add(func.__name__)
        return func(*args, **(kwargs or {}))


def test_cpu_bf16_patch_embedding_runs_as_a_linear_layer_with_the_conv_gradients():
    """Under CPU bf16 autocast no convolution runs (oneDNN's was 2.9-9.7x slower forward and
    backward); output and weight gradient match the float64 convolution to bf16 precision
    (inputs rounded to 8 bits of mantissa: relative error ~2^-8 per product, summed over
    3 * 14 * 14 = 588 terms of random sign, so a few 1e-2 at most against values ~1)."""
    torch.manual_seed(0)
    embed = PatchEmbed(patch_size=14, in_chans=3, embed_dim=32)
    images = torch.randn(4, 3, 28, 42)
    reference = embed.double()(images.double())
    (grad_reference,) = torch.autograd.grad(reference.square().sum(), embed.proj.weight)
    embed.float()
    ops = _OpNames()
    with ops, torch.autocast("cpu", dtype=torch.bfloat16):
        low = embed(images)
        (grad_low,) = torch.autograd.grad(low.float().square().sum(), embed.proj.weight)
    assert not any("convolution" in name for name in ops.names), sorted(ops.names)
    assert low.dtype == torch.bfloat16 and low.shape == (4, 2 * 3, 32)
    torch.testing.assert_close(low.double(), reference, atol=3e-2, rtol=3e-2)
    cosine = torch.nn.functional.cosine_similarity(grad_low.double().flatten(),
                                                   grad_reference.flatten(), 0)  # fmt: skip
    assert cosine > 0.999
    fp32 = _OpNames()
    with fp32:
        embed(images)
    assert any("convolution" in name for name in fp32.names)  # fp32 keeps the convolution


def test_training_matmul_attention_folds_the_scale_into_q_exactly():
    """1/sqrt(64) = 1/8 is a power of two: folded into q's weight rows it scales every rounded
    product by the same exact factor, so in bf16 the output and the gradients equal those of
    scaling the (N, N) scores, bit for bit."""
    torch.manual_seed(0)
    attention = Attention(dim=128, num_heads=2, qkv_bias=True)
    x = torch.randn(2, 19, 128, requires_grad=True)

    def scores_scaled(x):  # the textbook form: scale the scores
        batch, tokens, dim = x.shape
        qkv = attention.qkv(x).reshape(batch, tokens, 3, 2, 64).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        scores = torch.matmul(q, k.transpose(-1, -2)) * 0.125
        out = torch.matmul(torch.softmax(scores, dim=-1), v)
        return attention.proj(out.transpose(1, 2).reshape(batch, tokens, dim))

    results = []
    for function in (attention, scores_scaled):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = function(x)
        grads = torch.autograd.grad(out.float().square().sum(), [x, attention.qkv.weight])
        results.append((out, *grads))
    for folded, textbook in zip(*results, strict=True):
        assert torch.equal(folded, textbook)


@pytest.mark.parametrize("impl", ["matmul", "sdpa"])
@pytest.mark.parametrize(("ffn", "layerscale_init"), [("mlp", 1.0), ("swiglu", 1.0), ("mlp", None)])
def test_folded_block_computes_the_same_function(ffn, layerscale_init, impl):
    """LayerScale folded into proj / the FFN's last linear, 1/sqrt(d) into q: in fp32 the only
    difference is one rounding of each folded weight (~1e-7 relative), so ~1e-6 on O(1) tokens;
    a wrong fold (a row of gamma on the wrong side, the scale applied twice) is off by O(1)."""
    model = tiny(ffn=ffn, layerscale_init=layerscale_init)
    with torch.no_grad():
        for block in model.blocks:
            for scale in (block.ls1, block.ls2):
                if isinstance(scale, vit.LayerScale):
                    scale.gamma.uniform_(0.2, 2.0)
            block.attn.proj.bias.normal_()
    images = torch.randn(2, 3, 56, 70)
    state = {key: value.clone() for key, value in model.state_dict().items()}
    with torch.no_grad():
        reference = model(images, layers=[0])
        for block in model.blocks:
            block.folded, block.attn.impl = True, impl
        folded = model(images, layers=[0])
    torch.testing.assert_close(folded.cls, reference.cls, atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(folded.patches, reference.patches, atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(folded.layers[0], reference.layers[0], atol=2e-6, rtol=1e-5)
    after = model.state_dict()
    assert after.keys() == state.keys()
    assert all(torch.equal(after[key], value) for key, value in state.items())


def test_folded_block_refuses_active_drop_path():
    model = tiny(drop_path_rate=0.1).train()
    model.blocks[0].folded = True
    with pytest.raises(RuntimeError, match="drop path"):
        model(torch.randn(1, 3, 56, 56))


def test_rows_scaled_is_the_linear_layer_times_the_scale():
    torch.manual_seed(0)
    linear = torch.nn.Linear(8, 5)
    scale = torch.tensor([0.5, 2.0, -1.0, 3.0, 0.1])
    x = torch.randn(4, 8)
    weight, bias = vit.rows_scaled(linear, scale)
    torch.testing.assert_close(torch.nn.functional.linear(x, weight, bias), linear(x) * scale)
    assert vit.rows_scaled(torch.nn.Linear(8, 5, bias=False), scale)[1] is None
