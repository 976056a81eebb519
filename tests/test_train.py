"""Training: checkpoints, metrics, exact resume, config checks, two-process DDP on CPU."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from danet_edge.model.checkpoint import load_checkpoint, load_model
from danet_edge.core.errors import ConfigError
from danet_edge.train.config import TrainConfig
from danet_edge.train.train import multi_loss, train


def tiny_config(out, **kw) -> TrainConfig:
    base = dict(dataset="synthetic", data_options={"size": (64, 96)}, epochs=2,
                batch_size=4, limit_train=8, limit_val=2, workers=0, out_dir=str(out), progress=False)
    return TrainConfig(**{**base, **kw})


def _metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_train_writes_checkpoints_and_metrics(tmp_path):
    out = tmp_path / "run"
    best = train(tiny_config(out))
    assert best == out / "best.pt" and best.is_file() and (out / "last.pt").is_file()
    rows = _metrics(out)
    assert [r["epoch"] for r in rows] == [0, 1]
    assert all(0 <= r["val_miou"] <= 1 and r["images_per_s"] > 0 for r in rows)
    assert rows[-1]["lr"] == pytest.approx(0.0, abs=1e-12)  # poly schedule ends at 0
    ckpt = load_checkpoint(out / "last.pt")  # weights_only=True load of the full training state
    assert ckpt["epoch"] == 1 and ckpt["scheduler"]["last_epoch"] == 4  # 2 epochs x 2 iterations
    assert ckpt["data"]["image_size"] == [64, 96] and ckpt["data"]["ignore_index"] == 255
    assert len(ckpt["data"]["classes"]) == 8 and ckpt["train_config"]["batch_size"] == 4
    assert set(ckpt["rng"]) >= {"torch", "numpy", "python"}
    loaded = load_model(best)
    assert loaded.config.num_classes == 8
    assert loaded.model(torch.zeros(1, 3, 64, 96)).shape == (1, 8, 64, 96)


def test_resume_continues_exactly(tmp_path, monkeypatch):
    straight = tmp_path / "straight"
    train(tiny_config(straight))
    split = tmp_path / "split"

    def killed(record, epochs):  # the run dies right after epoch 1's checkpoint was written
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr("danet_edge.train.train._log_epoch", killed)
        with pytest.raises(KeyboardInterrupt):
            train(tiny_config(split))
    assert load_checkpoint(split / "last.pt")["epoch"] == 0
    train(tiny_config(split, resume=True))
    a, b = load_checkpoint(straight / "last.pt"), load_checkpoint(split / "last.pt")
    for k, v in a["model"].items():
        assert torch.allclose(v.float(), b["model"][k].float(), atol=1e-6), k
    assert [r["train_loss"] for r in _metrics(straight)] == pytest.approx([r["train_loss"] for r in _metrics(split)])
    assert a["optimizer"]["param_groups"][0]["lr"] == b["optimizer"]["param_groups"][0]["lr"]


def test_resume_with_more_epochs_extends_schedule(tmp_path):
    out = tmp_path / "ext"
    train(tiny_config(out, epochs=1))
    first = load_checkpoint(out / "last.pt")
    assert first["optimizer"]["param_groups"][0]["lr"] == 0.0  # a finished 1-epoch schedule
    train(tiny_config(out, epochs=3, resume=True))
    last = load_checkpoint(out / "last.pt")
    assert last["epoch"] == 2 and last["scheduler"]["last_epoch"] == 6
    rows = _metrics(out)
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    assert rows[1]["lr"] == pytest.approx(0.01 * (1 - 4 / 6) ** 0.9)  # on the stretched curve
    w = "backbone.layer1.0.conv1.weight"
    assert not torch.equal(first["model"][w], last["model"][w])


def test_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="last.pt"):
        train(tiny_config(tmp_path / "none", resume=True))
    with pytest.raises(ConfigError, match="divisible"):
        train(tiny_config(tmp_path / "x", batch_size=5, devices=2))
    with pytest.raises(ConfigError, match="data set"):
        train(tiny_config(tmp_path / "x", dataset="nope"))
    with pytest.raises(ConfigError, match="--data"):
        train(tiny_config(tmp_path / "x", dataset="camvid"))
    with pytest.raises(ConfigError, match="fewer than one batch"):
        train(tiny_config(tmp_path / "x", limit_train=2))
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA"):
            train(tiny_config(tmp_path / "x", amp=True))


def test_multi_loss_weights():
    torch.manual_seed(0)
    target = torch.randint(0, 3, (2, 4, 4))
    target[0, 0, 0] = 255
    outs = tuple(torch.randn(2, 3, 4, 4) for _ in range(4))
    ce = [F.cross_entropy(o, target, ignore_index=255) for o in outs]
    assert multi_loss(outs[:3], target, 255, 1.0) == pytest.approx(float(ce[0] + ce[1] + ce[2]))
    assert multi_loss(outs, target, 255, 0.5, 0.2) == pytest.approx(float(ce[0] + 0.5 * (ce[1] + ce[2]) + 0.2 * ce[3]))


def test_backbone_weights_loaded(tmp_path):
    from danet_edge.model.danet import build_model

    donor = build_model(backbone="resnet18", num_classes=8).backbone.state_dict()
    torch.save({k: v + 0.5 if v.is_floating_point() else v for k, v in donor.items()}, tmp_path / "r18.pth")
    out = tmp_path / "bw"
    train(tiny_config(out, epochs=1, backbone_weights=str(tmp_path / "r18.pth"), lr=1e-9))
    sd = load_checkpoint(out / "last.pt")["model"]
    w = sd["backbone.layer4.1.conv2.weight"]
    assert torch.allclose(w, donor["layer4.1.conv2.weight"] + 0.5, atol=1e-4)


@pytest.mark.slow
def test_two_process_ddp_matches_single_in_spirit(tmp_path):
    kw = dict(epochs=3, limit_train=16, limit_val=4, batch_size=4)
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    train(tiny_config(single, **kw))
    train(tiny_config(ddp, devices=2, **kw))
    a, b = _metrics(single), _metrics(ddp)
    assert len(b) == 3  # only rank 0 wrote
    assert b[-1]["train_loss"] < b[0]["train_loss"]  # it learns
    for ra, rb in zip(a, b):  # same global batch and schedule: the loss curves stay close
        assert abs(ra["train_loss"] - rb["train_loss"]) / ra["train_loss"] < 0.3
    assert load_checkpoint(ddp / "last.pt")["train_config"]["devices"] == 2
