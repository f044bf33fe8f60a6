import pytest
import torch

from skyloc.errors import SkylocError
from skyloc.models import create_model, list_models

SMALL = ["mlr_convnext_atto", "mlr_convnext_atto_layout", "mift_tiny"]


def test_registry_lists_both_families_and_rejects_unknown_names():
    names = list_models()
    assert {"mlr_convnext_tiny", "mift_small", *SMALL} <= set(names)
    with pytest.raises(SkylocError, match="unknown model 'resnet50'"):
        create_model("resnet50")


@pytest.mark.parametrize("name", SMALL)
def test_same_api_on_every_model(name):
    torch.manual_seed(0)
    m = create_model(name, num_classes=7).eval()
    c, h, w = m.data_config.input_size
    x = torch.randn(3, c, h, w)
    out = m(x)
    assert len(out.logits) == len(out.features) == m.num_branches
    assert all(l.shape == (3, 7) for l in out.logits)
    e = m.embed(x)
    assert e.shape == (3, m.embed_dim)
    torch.testing.assert_close(e.norm(dim=1), torch.ones(3))  # unit descriptor
    # each of the K learned branches weighs 1, each fixed branch K: a learned one has sqrt(1 / (K (1 + F)))
    k, d, f = m.num_branches, m.bottleneck_dim, len(m.fixed_branches())
    torch.testing.assert_close(e[:, :d].norm(dim=1), torch.full((3,), (k * (1 + f)) ** -0.5))


def test_paper_variants_match_the_papers_sizes():
    from skyloc.models.profile import profile_model

    mlr = profile_model(create_model("mlr_convnext_tiny", num_classes=701))
    mift = profile_model(create_model("mift_small", num_classes=701))
    assert mlr["input"] == "256x256" and mift["input"] == "224x224"
    assert 27 < mlr["backbone_params_m"] < 29.5  # ConvNeXt-T 28.6M with its ImageNet head
    assert 29 < mift["backbone_params_m"] < 31.5  # CrossFormer-S 30.7M
    assert 4.5 < mift["gmacs"] < 5.5  # CrossFormer-S 4.9G
    assert mlr["embed_dim"] == 1024 and mift["embed_dim"] == 2048


def test_mlr_fusion_scalars_start_at_one_half():
    m = create_model("mlr_convnext_atto", num_classes=3)
    assert m.alpha.item() == pytest.approx(0.5) and m.beta.item() == pytest.approx(0.5)
    assert m.alpha.requires_grad and m.beta.requires_grad


def test_heat_partition_groups_tokens_by_heat():
    from skyloc.models.mift import heat_partition

    tokens = torch.tensor([[[3.0, 3.0], [1.0, 1.0], [5.0, 5.0], [0.0, 0.0], [4.0, 4.0], [2.0, 2.0]]])
    parts = heat_partition(tokens, 3)
    assert [p[0, 0].item() for p in parts] == [0.5, 2.5, 4.5]  # coolest pair, middle, hottest


def test_local_backbone_weights_load_and_wrong_files_are_refused(tmp_path):
    src = create_model("mlr_convnext_atto", num_classes=3)
    torch.save(src.backbone.state_dict(), tmp_path / "convnext_atto.pth")
    dst = create_model("mlr_convnext_atto", num_classes=3, backbone_weights=str(tmp_path / "convnext_atto.pth"))
    for k, v in src.backbone.state_dict().items():
        torch.testing.assert_close(dst.backbone.state_dict()[k], v)
    torch.save(create_model("mift_tiny", num_classes=3).backbone.state_dict(), tmp_path / "other.pth")
    with pytest.raises(SkylocError, match="matches only"):
        create_model("mlr_convnext_atto", num_classes=3, backbone_weights=str(tmp_path / "other.pth"))
    with pytest.raises(SkylocError, match="not found"):
        create_model("mlr_convnext_atto", num_classes=3, backbone_weights=str(tmp_path / "missing.pth"))


def test_mift_pretrained_names_the_offline_path():
    with pytest.raises(SkylocError, match="--backbone-weights"):
        create_model("mift_small", pretrained=True)


def test_layout_model_ignores_white_balance_and_exposure_of_its_input():
    """A map of one date and a frame of another differ in per-channel gain and offset: the models for
    your maps standardise each image, so such a change leaves the descriptor where it was."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 128, 128)
    gain = torch.tensor([1.3, 0.8, 1.1]).view(1, 3, 1, 1)
    offset = torch.tensor([0.4, -0.2, 0.1]).view(1, 3, 1, 1)
    for name, invariant in (("mlr_convnext_atto_layout", True), ("mlr_convnext_atto", False)):
        m = create_model(name, num_classes=5).eval()
        with torch.no_grad():
            same = torch.nn.functional.cosine_similarity(m.embed(x), m.embed(x * gain + offset)).min().item()
        assert (same > 0.9999) is invariant, (name, same)


def test_layout_checkpoints_from_before_the_standardisation_load_as_they_were_trained(tmp_path):
    """A _layout checkpoint written before image_norm existed must not gain it on loading: the weights
    were trained without it, and its ONNX re-export would share the weights' fingerprint with the old one."""
    from skyloc.models.checkpoint import load_model, save_checkpoint

    old = create_model("mlr_convnext_atto_layout", num_classes=3, image_norm=False, edge_grid=0)
    save_checkpoint(tmp_path / "old.pt", old)
    state = torch.load(tmp_path / "old.pt", weights_only=False)
    state.update(skyloc_checkpoint=1, model_kwargs={})  # as the format-1 files were written
    torch.save(state, tmp_path / "old.pt")
    assert isinstance(load_model(tmp_path / "old.pt")[0].standardise, torch.nn.Identity)
    save_checkpoint(tmp_path / "new.pt", create_model("mlr_convnext_atto_layout", num_classes=3))
    assert not isinstance(load_model(tmp_path / "new.pt")[0].standardise, torch.nn.Identity)


def test_layout_checkpoints_from_before_the_edge_layout_load_without_it(tmp_path):
    """Format-2 _layout files have no edge layout: loading them must give the 768-d descriptor their
    tile caches were built with, not a longer one."""
    from skyloc.models.checkpoint import load_model, save_checkpoint

    save_checkpoint(tmp_path / "old.pt", create_model("mlr_convnext_atto_layout", num_classes=3, edge_grid=0))
    state = torch.load(tmp_path / "old.pt", weights_only=False)
    state.update(skyloc_checkpoint=2, model_kwargs={})  # as the format-2 files were written
    torch.save(state, tmp_path / "old.pt")
    old = load_model(tmp_path / "old.pt")[0]
    assert old.fixed_branches() == [] and old.embed_dim == 768
    save_checkpoint(tmp_path / "new.pt", create_model("mlr_convnext_atto_layout", num_classes=3))
    assert load_model(tmp_path / "new.pt")[0].embed_dim == 768 + 64


def test_edge_layout_finds_places_across_seasons_without_training():
    """The layout models' fixed branch: where the edges of a tile lie. Fields change colour between
    summer and autumn, their boundaries do not, so autumn views find their summer tiles untrained;
    the descriptor's similarity is the mean of the learned one and the edge layout's."""
    from skyloc.runtime.preprocess import DataConfig, preprocess
    from skyloc.synth.world import generate

    summer, autumn = generate(768, 1.0, seed=5).image, generate(768, 1.0, seed=5, season="autumn").image
    cfg = DataConfig(input_size=(3, 128, 128))
    corners = [(y, x) for y in range(0, 640, 128) for x in range(0, 640, 128)]  # 25 places

    def batch(img):
        return torch.stack([torch.from_numpy(preprocess(img[y:y + 128, x:x + 128], cfg)) for y, x in corners])

    torch.manual_seed(0)
    m = create_model("mlr_convnext_atto_layout", num_classes=5).eval()
    with torch.no_grad():
        edges = [torch.nn.functional.normalize(m.edges(batch(img)), dim=1) for img in (summer, autumn)]
        hits = (edges[1] @ edges[0].T).argmax(dim=1) == torch.arange(len(corners))
        assert hits.float().mean() >= 0.8, hits
        q, g = m.embed(batch(autumn)), m.embed(batch(summer))
        learned = m.embed_dim - 64
        mean_of_both = 0.5 * (torch.nn.functional.normalize(q[:, :learned], dim=1) @
                              torch.nn.functional.normalize(g[:, :learned], dim=1).T + edges[1] @ edges[0].T)
    assert torch.allclose(q @ g.T, mean_of_both, atol=1e-5)


class _Payload:
    """Stands for any pickled object: loading it would run code of the file's choosing."""


def test_a_checkpoint_that_needs_pickle_is_refused_with_the_object_named(tmp_path):
    from skyloc.models.checkpoint import load_model, save_checkpoint

    save_checkpoint(tmp_path / "ok.pt", create_model("mlr_convnext_atto", num_classes=3), optimizer={"lr": 0.1},
                    config={"milestones": [70, 110]}, classes=["a", "b", "c"], loss=[1.0, 0.5])
    assert load_model(tmp_path / "ok.pt")[0].num_classes == 3  # what skyloc writes loads with weights_only
    save_checkpoint(tmp_path / "pickled.pt", create_model("mlr_convnext_atto", num_classes=3), extra=_Payload())
    with pytest.raises(SkylocError, match=r"refusing checkpoint .*pickled objects \(\S*_Payload\)"):
        load_model(tmp_path / "pickled.pt")
