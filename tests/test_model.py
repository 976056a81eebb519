"""DANet model: shapes, output stride, PAM SDPA == explicit formula, eval/train outputs."""

from __future__ import annotations

import pytest

from danet_edge.core.errors import ConfigError
import torch

from danet_edge.model.danet import CAM, PAM, build_model
from danet_edge.model.config import ModelConfig


def _explicit_pam(pam: PAM, x: torch.Tensor) -> torch.Tensor:
    """The paper's formulation written independently: S = softmax(Q^T K), out = V S^T."""
    n, c, h, w = x.shape
    q = pam.query_conv(x).view(n, -1, h * w).permute(0, 2, 1)
    k = pam.key_conv(x).view(n, -1, h * w)
    s = torch.softmax(torch.bmm(q, k), dim=-1)
    v = pam.value_conv(x).view(n, -1, h * w)
    return pam.gamma * torch.bmm(v, s.permute(0, 2, 1)).view(n, c, h, w) + x


@pytest.mark.parametrize("shape", [(2, 64, 7, 11), (1, 32, 5, 5), (1, 16, 3, 13)])
def test_pam_sdpa_equals_explicit(shape):
    torch.manual_seed(0)
    pam = PAM(shape[1], impl="sdpa")
    pam.gamma.data.fill_(0.7)
    x = torch.randn(*shape) * 3
    ref = _explicit_pam(pam, x)
    torch.testing.assert_close(pam(x), ref, rtol=1e-5, atol=1e-5)
    pam.impl = "explicit"
    torch.testing.assert_close(pam(x), ref, rtol=1e-5, atol=1e-5)


def test_cam_uses_rowmax_minus_energy():
    torch.manual_seed(0)
    cam = CAM()
    cam.gamma.data.fill_(1.0)
    x = torch.rand(1, 8, 4, 5)
    a = x.flatten(2)
    e = a @ a.transpose(1, 2)
    att = torch.softmax(e.max(-1, keepdim=True).values - e, -1)
    torch.testing.assert_close(cam(x), (att @ a).view_as(x) + x)


def test_gammas_start_at_zero():
    m = build_model(backbone="resnet18", num_classes=3)
    assert m.head.sa.gamma.item() == 0.0 and m.head.sc.gamma.item() == 0.0


@pytest.mark.parametrize("os_, expect", [(8, (8, 12)), (16, (4, 6))])
def test_output_stride(os_, expect):
    m = build_model(backbone="resnet18", num_classes=3, output_stride=os_).eval()
    c3, c4 = m.backbone(torch.randn(1, 3, 64, 96))
    assert tuple(c4.shape[-2:]) == expect


def test_eval_returns_one_tensor_train_returns_aux():
    m = build_model(backbone="resnet18", num_classes=4, aux=True)
    x = torch.randn(2, 3, 48, 64)
    m.train()
    outs = m(x)
    assert isinstance(outs, tuple) and len(outs) == 4
    assert all(o.shape == (2, 4, 48, 64) for o in outs)
    m.eval()
    out = m(x)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 4, 48, 64)


def test_resnet50_dilations_and_params():
    m = build_model(backbone="resnet50", num_classes=19)
    l3 = [b.conv2.dilation[0] for b in m.backbone.layer3]
    l4 = [b.conv2.dilation[0] for b in m.backbone.layer4]
    assert l3 == [1] + [2] * 5 and l4 == [2, 4, 4]
    assert 47.0e6 < sum(p.numel() for p in m.parameters()) < 48.0e6  # REFERENCE.md section 3: 47.4 M
    mg = build_model(backbone="resnet50", num_classes=19, multi_grid=True)
    assert [b.conv2.dilation[0] for b in mg.backbone.layer4] == [4, 8, 16]


def test_bad_config_raises():
    with pytest.raises(ConfigError, match="unknown backbone"):  # the registry is checked where models are built
        build_model(ModelConfig(backbone="vgg16"))
    with pytest.raises(ConfigError, match="output stride"):
        ModelConfig(output_stride=32)


def test_unsafe_or_corrupt_checkpoint_is_refused_in_one_line(tmp_path):
    import argparse

    from danet_edge.core.errors import CheckpointError
    from danet_edge.model.weights import safe_torch_load

    unsafe = tmp_path / "unsafe.pt"
    torch.save({"args": argparse.Namespace(lr=0.1), "state_dict": {}}, unsafe)
    with pytest.raises(CheckpointError, match="argparse.Namespace.*unsafe unpickling") as e:
        safe_torch_load(unsafe)
    assert "\n" not in str(e.value) and "weights_only" not in str(e.value)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        safe_torch_load(corrupt)
