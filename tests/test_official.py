"""Official DANet checkpoints load and give the same logits as the official forward pass.

``OfficialDANet`` below is an independent re-implementation of the forward pass of the official
code (github.com/junfu1115/DANet, PyTorch-Encoding: ``encoding/models/sseg/danet.py``,
``encoding/nn/da_att.py``, ``encoding/models/backbone/resnet.py``), written for this test with
the official module and parameter names (``pretrained.*``, ``head.*``, ``auxlayer.*``): PAM and
CAM with ``bmm`` exactly as the paper, dilated ResNet (layer3 dilation 1 then 2, layer4 2 then 4,
or 4/8/16 with multi-grid), optional deep stem, bilinear ``align_corners=True`` upsampling.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import pytest

from danet_edge.model.checkpoint import load_model
from danet_edge.core.errors import CheckpointError
from danet_edge.model.weights import load_official_checkpoint


# ------------------------------------------------------------------ reference (official names)
class RefBottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int, dilation: int, downsample: nn.Module | None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = downsample

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        skip = x if self.downsample is None else self.downsample(x)
        return F.relu(y + skip)


class RefResNet(nn.Module):
    """Dilated ResNet, output stride 8, as ``encoding.models.backbone.resnet.ResNet(dilated=True)``."""

    def __init__(self, layers: tuple[int, ...], deep_stem: bool, multi_grid: bool) -> None:
        super().__init__()
        if deep_stem:
            self.conv1 = nn.Sequential(nn.Conv2d(3, 64, 3, 2, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(True),
                                       nn.Conv2d(64, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(True),
                                       nn.Conv2d(64, 128, 3, 1, 1, bias=False))
            self.cin = 128
        else:
            self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
            self.cin = 64
        self.bn1 = nn.BatchNorm2d(self.cin)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._stage(64, layers[0], 1, [1] * layers[0])
        self.layer2 = self._stage(128, layers[1], 2, [1] * layers[1])
        self.layer3 = self._stage(256, layers[2], 1, [1] + [2] * (layers[2] - 1))
        grid = [4, 8, 16] if multi_grid else [2] + [4] * (layers[3] - 1)
        self.layer4 = self._stage(512, layers[3], 1, [grid[i % len(grid)] for i in range(layers[3])])

    def _stage(self, planes: int, n: int, stride: int, dilations: list[int]) -> nn.Sequential:
        down = None
        if stride != 1 or self.cin != planes * 4:
            down = nn.Sequential(nn.Conv2d(self.cin, planes * 4, 1, stride, bias=False), nn.BatchNorm2d(planes * 4))
        blocks = [RefBottleneck(self.cin, planes, stride, dilations[0], down)]
        self.cin = planes * 4
        blocks += [RefBottleneck(self.cin, planes, 1, d, None) for d in dilations[1:]]
        return nn.Sequential(*blocks)


class PAM_Module(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.query_conv = nn.Conv2d(c, c // 8, 1)
        self.key_conv = nn.Conv2d(c, c // 8, 1)
        self.value_conv = nn.Conv2d(c, c, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        b, c, h, w = x.shape
        q = self.query_conv(x).view(b, -1, h * w).permute(0, 2, 1)   # B x N x C'
        k = self.key_conv(x).view(b, -1, h * w)                      # B x C' x N
        s = torch.softmax(torch.bmm(q, k), dim=-1)                   # B x N x N
        v = self.value_conv(x).view(b, -1, h * w)                    # B x C x N
        out = torch.bmm(v, s.permute(0, 2, 1)).view(b, c, h, w)
        return self.gamma * out + x


class CAM_Module(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        b, c, h, w = x.shape
        a = x.view(b, c, -1)
        energy = torch.bmm(a, a.permute(0, 2, 1))                     # B x C x C
        energy = energy.max(dim=-1, keepdim=True)[0].expand_as(energy) - energy
        out = torch.bmm(torch.softmax(energy, dim=-1), a).view(b, c, h, w)
        return self.gamma * out + x


def _cbr(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class RefHead(nn.Module):
    def __init__(self, cin: int, k: int) -> None:
        super().__init__()
        inter = cin // 4
        self.conv5a, self.conv5c = _cbr(cin, inter), _cbr(cin, inter)
        self.sa, self.sc = PAM_Module(inter), CAM_Module()
        self.conv51, self.conv52 = _cbr(inter, inter), _cbr(inter, inter)
        self.conv6 = nn.Sequential(nn.Dropout2d(0.1, False), nn.Conv2d(inter, k, 1))
        self.conv7 = nn.Sequential(nn.Dropout2d(0.1, False), nn.Conv2d(inter, k, 1))
        self.conv8 = nn.Sequential(nn.Dropout2d(0.1, False), nn.Conv2d(inter, k, 1))

    def forward(self, x):
        sa_conv = self.conv51(self.sa(self.conv5a(x)))
        sc_conv = self.conv52(self.sc(self.conv5c(x)))
        return self.conv8(sa_conv + sc_conv), self.conv6(sa_conv), self.conv7(sc_conv)


class RefFCNHead(nn.Module):
    def __init__(self, cin: int, k: int) -> None:
        super().__init__()
        self.conv5 = nn.Sequential(nn.Conv2d(cin, cin // 4, 3, padding=1, bias=False), nn.BatchNorm2d(cin // 4),
                                   nn.ReLU(), nn.Dropout2d(0.1, False), nn.Conv2d(cin // 4, k, 1))

    def forward(self, x):
        return self.conv5(x)


class OfficialDANet(nn.Module):
    def __init__(self, depth: int, k: int, deep_stem: bool, multi_grid: bool, aux: bool = False) -> None:
        super().__init__()
        layers = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}[depth]
        self.pretrained = RefResNet(layers, deep_stem, multi_grid)
        self.head = RefHead(2048, k)
        if aux:
            self.auxlayer = RefFCNHead(1024, k)

    def forward(self, x):
        size = x.shape[2:]
        p = self.pretrained
        y = p.maxpool(F.relu(p.bn1(p.conv1(x))))
        c3 = p.layer3(p.layer2(p.layer1(y)))
        c4 = p.layer4(c3)
        outs = [F.interpolate(o, size, mode="bilinear", align_corners=True) for o in self.head(c4)]
        return tuple(outs)


def make_reference(depth: int, deep_stem: bool, multi_grid: bool, aux: bool = False, k: int = 7,
                   seed: int = 0) -> OfficialDANet:
    """Random weights, non-zero attention gammas, BN running statistics from real forward passes."""
    torch.manual_seed(seed)
    ref = OfficialDANet(depth, k, deep_stem, multi_grid, aux)
    for m in ref.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None  # cumulative average over the calibration passes
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.2, 0.2)
    ref.head.sa.gamma.data.fill_(0.7)
    ref.head.sc.gamma.data.fill_(-0.4)
    ref.train()
    with torch.no_grad():
        for _ in range(2):
            ref(torch.randn(2, 3, 64, 64))
    return ref.eval()


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


CASES = [
    pytest.param(50, False, True, id="r50-deepstem"),
    pytest.param(50, True, False, id="r50-multigrid"),
    pytest.param(101, False, False, id="r101", marks=pytest.mark.slow),
    pytest.param(101, True, True, id="r101-multigrid-deepstem", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("depth,multi_grid,deep_stem", CASES)
def test_official_logits_match(tmp_path, depth, multi_grid, deep_stem):
    ref = make_reference(depth, deep_stem, multi_grid)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = ref(x)[0]
    sd = ref.state_dict()
    path = tmp_path / "official.pth"
    torch.save({"state_dict": sd, "epoch": 239, "best_pred": 0.79}, path)
    loaded = load_model(path, multi_grid=multi_grid)
    cfg = loaded.config
    assert (cfg.backbone, cfg.deep_stem, cfg.multi_grid, cfg.num_classes) == (f"resnet{depth}", deep_stem, multi_grid, 7)
    with torch.no_grad():
        got = loaded.model(x)
        assert rel_l2(got, expected) < 1e-5
        loaded.model.set_attention("explicit")
        assert rel_l2(loaded.model(x), expected) < 1e-5


@pytest.fixture(scope="module")
def r50_reference():
    ref = make_reference(50, deep_stem=False, multi_grid=True, aux=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        return ref, x, ref(x)[0]


@pytest.mark.parametrize("form", ["bare", "state_dict", "module_prefix"])
def test_saved_forms(tmp_path, r50_reference, form):
    ref, x, expected = r50_reference
    sd = ref.state_dict()
    obj = {"bare": sd, "state_dict": {"state_dict": sd}, "module_prefix": {f"module.{k}": v for k, v in sd.items()}}[form]
    path = tmp_path / f"{form}.pth"
    torch.save(obj, path)
    model = load_official_checkpoint(path, multi_grid=True)
    assert model.aux_head is not None  # auxlayer.* mapped onto the FCN aux head
    with torch.no_grad():
        assert rel_l2(model(x), expected) < 1e-5
        p = ref.pretrained
        c3 = p.layer3(p.layer2(p.layer1(p.maxpool(F.relu(p.bn1(p.conv1(x)))))))
        aux_ref = F.interpolate(ref.auxlayer(c3), x.shape[2:], mode="bilinear", align_corners=True)
        model.train()  # train mode returns the aux outputs; keep BN on running stats and dropout off
        for m in model.modules():
            if isinstance(m, (nn.Dropout2d, nn.BatchNorm2d)):
                m.eval()
        outs = model(x)
        assert len(outs) == 4
        assert rel_l2(outs[0], expected) < 1e-5
        assert rel_l2(outs[3], aux_ref) < 1e-5


def test_wrong_multi_grid_flag_gives_other_logits(r50_reference):
    """Dilation has no parameters: the weights load either way, and only the flag the model was
    trained with gives its logits. This is why ``--multi-grid`` must be stated for official files."""
    ref, x, expected = r50_reference
    model = load_official_checkpoint(ref.state_dict(), multi_grid=False)
    with torch.no_grad():
        assert rel_l2(model(x), expected) > 1e-2


def test_truncated_and_foreign_state_dicts(tmp_path, r50_reference):
    ref, _, _ = r50_reference
    sd = ref.state_dict()
    truncated = {k: v for k, v in sd.items() if not k.startswith("pretrained.layer4.2.")}
    torch.save(truncated, tmp_path / "truncated.pth")
    with pytest.raises(CheckpointError, match=r"blocks per stage \(3, 4, 6, 2\)"):
        load_official_checkpoint(tmp_path / "truncated.pth", multi_grid=True)
    one_less = {k: v for k, v in sd.items() if k != "head.conv51.1.running_var"}
    with pytest.raises(CheckpointError, match="missing 1 parameters.*conv51"):
        load_official_checkpoint(one_less, multi_grid=True)

    bad_shape = dict(sd)
    bad_shape["head.conv5a.0.weight"] = torch.zeros(3, 3, 3, 3)
    with pytest.raises(CheckpointError, match="head.conv5a.0.weight"):
        load_official_checkpoint(bad_shape)

    foreign = {"features.0.weight": torch.zeros(8, 3, 3, 3), "classifier.weight": torch.zeros(10, 8)}
    torch.save(foreign, tmp_path / "foreign.pth")
    with pytest.raises(CheckpointError, match="not an official DANet checkpoint"):
        load_model(tmp_path / "foreign.pth")

    (tmp_path / "garbage.pth").write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match="garbage.pth"):
        load_model(tmp_path / "garbage.pth")


def test_import_official_records_multigrid_and_classes(tmp_path):
    """`danet-edge import-official` keeps the logits and records what the weights cannot tell."""
    from typer.testing import CliRunner

    from danet_edge.model.checkpoint import load_model
    from danet_edge.cli import app
    from danet_edge.data.datasets import CITYSCAPES_CLASSES

    ref = make_reference(50, deep_stem=False, multi_grid=True, k=19)
    src = tmp_path / "official.pth"
    torch.save({"state_dict": ref.state_dict()}, src)
    dst = tmp_path / "imported.pt"
    res = CliRunner().invoke(app, ["import-official", str(src), "--out", str(dst), "--multi-grid",
                                   "--dataset", "cityscapes", "--imgsz", "64", "64"])
    assert res.exit_code == 0, res.output
    loaded = load_model(dst)
    assert loaded.config.multi_grid and loaded.data["classes"] == CITYSCAPES_CLASSES
    assert loaded.data["image_size"] == [64, 64]
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        want = ref(x)[0]
        got = loaded.model(x)
    assert rel_l2(got, want) < 1e-5


def test_import_official_size_off_the_stride_is_a_usage_error(tmp_path, capsys):
    """Issue 32, case 9: ``import-official --imgsz 60 60`` was exit 3 where ``export --imgsz 60 60`` is exit 2 for
    the same mistake; now both are the one check ``core.config.check_stride_multiple``, exit 2, before any work."""
    from _runtime_helpers import run_cli

    src = tmp_path / "official.pth"
    torch.save({"state_dict": make_reference(50, deep_stem=False, multi_grid=False).state_dict()}, src)
    code, _, err = run_cli(["import-official", src, "--imgsz", "60", "60", "-o", tmp_path / "o.pt"], capsys)
    assert code == 2 and len(err) == 1, err
    assert "image size 60x60 is not divisible by the output stride 8: use e.g. --imgsz 64 64" in err[0]
    assert not (tmp_path / "o.pt").exists()
