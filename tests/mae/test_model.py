"""The MAE model: shapes, masking, the (mae_loss, cls) contract, export into timm."""
import pytest
import torch

from mmae_fast.mae import model as M
from mmae_fast.mae.timm_compat import timm
from timm.models.vision_transformer import VisionTransformer


def tiny(**kw):
    torch.manual_seed(0)
    return M.create_model("tiny", **kw)


def test_unknown_preset_names_the_argument():
    with pytest.raises(ValueError, match="unknown preset 'vit_tiny'.*tiny"):
        M.create_model("vit_tiny")


@pytest.mark.parametrize("kw, match", [
    (dict(img_size=18), "img_size .* multiple of the patch size"),
    (dict(mask_ratio=1.0), "mask_ratio"),
    (dict(mask_ratio=0.0), r"mask_ratio must be in \(0, 1\)"),
    (dict(mask_ratio=1e-17), "masks none of the 16 patches"),
    (dict(drop_path=2.0), r"drop_path is a probability: give a value in \[0, 1\)"),
    (dict(cls_norm="twice"), "cls_norm"),
    (dict(head="mlp"), "head must be one of"),
])
def test_bad_model_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        M.create_model("tiny", **kw)


def test_forward_contract(gen):
    net = tiny(num_classes=10)
    imgs = torch.randn(6, 3, 16, 16, generator=gen)
    out = net(imgs)
    assert len(out) == 2
    loss, cls = out
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert cls.shape == (6, net.preset.embed_dim)
    loss2, cls2, logits = net(imgs, with_logits=True)
    assert logits.shape == (6, 10)
    with pytest.raises(ValueError, match="num_classes"):
        tiny()(imgs, with_logits=True)
    # bench/train.py's official variant turns SDPA off through timm's fused_attn switch
    assert [m for m in net.modules() if hasattr(m, "fused_attn")]


def test_online_head_sees_detached_features(gen):
    net = tiny(num_classes=10)
    imgs = torch.randn(4, 3, 16, 16, generator=gen)
    _, _, logits = net(imgs, with_logits=True)
    logits.sum().backward()
    assert net.head[-1].weight.grad is not None
    assert all(p.grad is None for n, p in net.named_parameters() if not n.startswith("head."))


def test_masking_keeps_the_lowest_noise(gen):
    net = tiny(mask_ratio=0.75)
    x = torch.randn(3, 16, 8, generator=gen)
    noise = torch.rand(3, 16, generator=gen)
    kept, mask, ids_restore = net.random_masking(x, noise)
    assert kept.shape == (3, 4, 8)
    assert mask.sum(1).tolist() == [12.0] * 3
    for b in range(3):
        keep = noise[b].argsort()[:4]
        torch.testing.assert_close(kept[b], x[b, keep])
        assert mask[b, keep].sum() == 0
    with pytest.raises(ValueError, match="noise must have shape"):
        net.random_masking(x, noise[:, :5])


def test_patchify_and_position_embedding():
    net = tiny()
    imgs = torch.arange(2 * 3 * 16 * 16, dtype=torch.float32).reshape(2, 3, 16, 16)
    patches = net.patchify(imgs)
    assert patches.shape == (2, 16, 4 * 4 * 3)
    # patch 1 is the second 4x4 block of row 0; pixel (0, 0) of channel 2 sits at index 2
    assert patches[0, 1, 2] == imgs[0, 2, 0, 4]
    pe = M.sincos_pos_embed(8, 4)
    assert pe.shape == (17, 8) and pe[0].abs().sum() == 0
    assert torch.allclose(pe[1:].pow(2).sum(1), torch.full((16,), 4.0))
    with pytest.raises(ValueError, match="multiple of 4"):
        M.sincos_pos_embed(6, 4)


def test_loss_decreases_on_one_batch(gen):
    net = tiny()
    imgs = torch.randn(8, 3, 16, 16, generator=gen)
    noise = torch.rand(8, 16, generator=gen)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    losses = []
    for _ in range(5):
        loss, _ = net(imgs, noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("cls_norm, head", [("encoder", "bn-linear"), ("separate", "bn-linear"),
                                            ("shared", "linear")])
def test_export_loads_into_timm_and_matches(tmp_path, gen, cls_norm, head):
    from safetensors.torch import load_file
    net = tiny(num_classes=10, cls_norm=cls_norm, head=head)
    # give the online head's BatchNorm non-trivial running statistics
    net.train()
    net(torch.randn(16, 3, 16, 16, generator=gen), with_logits=True)
    net.eval()
    path = tmp_path / "encoder.safetensors"
    M.export_encoder(net, path)
    ref = VisionTransformer(**M.timm_kwargs(net))
    missing, unexpected = ref.load_state_dict(load_file(str(path)), strict=True)
    assert not missing and not unexpected
    ref.eval()
    imgs = torch.randn(5, 3, 16, 16, generator=gen)
    with torch.no_grad():
        ours = net.forward_encoder(imgs, mask=False)[0][:, 0]
        torch.testing.assert_close(ref.forward_features(imgs)[:, 0], ours, rtol=1e-5, atol=1e-5)
        if cls_norm != "shared":  # timm's head sees one norm; a shared-norm head was trained on two
            torch.testing.assert_close(ref(imgs), net.head(net.features(imgs)), rtol=1e-4,
                                       atol=1e-4)
        else:
            torch.testing.assert_close(ref(imgs), net.head(ours), rtol=1e-4, atol=1e-4)


def test_export_without_head_loads_into_headless_timm():
    net = tiny()
    state = M.encoder_state_dict(net)
    assert M.timm_kwargs(net)["num_classes"] == 0
    VisionTransformer(**M.timm_kwargs(net)).load_state_dict(state, strict=True)


def test_vit_base_export_has_every_timm_key():
    torch.manual_seed(0)
    net = M.create_model("vit_base_patch16", num_classes=1000)
    state = M.encoder_state_dict(net)
    ref = timm.create_model(net.preset.timm_name, pretrained=False)
    assert set(state) == set(ref.state_dict())
    missing, unexpected = ref.load_state_dict(state, strict=True)
    assert not missing and not unexpected


def test_shared_cls_norm_is_the_encoder_norm_applied_again(gen):
    """Official double norm: the same LayerNorm parameters (one tensor, one state-dict key),
    applied to the normed CLS token; the export is that of the single-norm model."""
    shared, single = tiny(cls_norm="shared"), tiny(cls_norm="encoder")
    assert set(shared.state_dict()) == set(single.state_dict())
    assert not any(k.startswith("feat_norm") for k in shared.state_dict())
    imgs = torch.randn(4, 3, 16, 16, generator=gen)
    noise = torch.rand(4, 16, generator=gen)
    with torch.no_grad():
        shared.norm.weight.uniform_(0.5, 1.5)
        shared.norm.bias.uniform_(-0.5, 0.5)
        single.load_state_dict(shared.state_dict())
        _, cls2 = shared(imgs, noise)
        _, cls1 = single(imgs, noise)
        ln = torch.nn.functional.layer_norm(cls1, (64,), shared.norm.weight, shared.norm.bias,
                                            1e-6)
    torch.testing.assert_close(cls2, ln)
    assert not torch.allclose(cls1, cls2)
    # R's gradient reaches the shared norm's (the exported) parameters
    _, cls = shared(imgs, noise)
    cls.square().sum().backward()
    assert shared.norm.weight.grad is not None and shared.norm.weight.grad.abs().sum() > 0
    for k, v in M.encoder_state_dict(shared).items():
        assert torch.equal(v, M.encoder_state_dict(single)[k]), k


def test_separate_cls_norm_has_its_own_parameters():
    net = tiny(cls_norm="separate")
    assert net.feat_norm is not net.norm
    assert "feat_norm.weight" in net.state_dict()
    assert not any(k.startswith("feat_norm") for k in M.encoder_state_dict(net))


def test_default_online_head_is_a_plain_linear():
    net = tiny(num_classes=10)
    assert [type(m) for m in net.head] == [torch.nn.Linear]
    bn = tiny(num_classes=10, head="bn-linear")
    assert [type(m) for m in bn.head] == [torch.nn.BatchNorm1d, torch.nn.Linear]
