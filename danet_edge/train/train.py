"""Training DANet: SGD with poly learning rate, multi-loss cross-entropy, checkpoints, resume, DDP.

Recipe (Fu et al. 2019, section 4.1, and the official PyTorch-Encoding code):

* SGD, momentum 0.9, weight decay 1e-4, base lr 0.01, poly schedule ``lr * (1 - it/max_it)^0.9``
  stepped every iteration; the head (and FCN aux head) learn at ``head_lr_mult`` = 10 x the base
  lr, the backbone at 1 x, as the official ``train.py`` does.
* Loss: ``CE(fused) + aux_weight * (CE(pam) + CE(cam)) [+ fcn_aux_weight * CE(fcn)]`` with the
  data set's ignore index. The official ``SegmentationMultiLosses`` sums the three DANet outputs
  with weight 1 each, hence ``aux_weight = 1.0``; PyTorch-Encoding's ``--aux`` FCN head uses 0.2.
* Augmentation: random scale 0.5-2.0, crop (padded with the ignore index), flip, colour jitter.

Files in ``out_dir`` (written by rank 0 only, atomically): ``last.pt`` after every epoch (and
once more before its validation, so a validation that fails or is interrupted keeps the epoch's
training; ``--resume`` runs that validation first), ``best.pt`` whenever val mIoU improves,
``metrics.jsonl`` (one JSON line per epoch), ``config.json``. A killed run loses at most the current
epoch; ``resume=True`` continues from ``last.pt`` at the same learning-rate schedule position with
the same data order (the data order and augmentation of epoch ``e`` depend only on ``seed`` and ``e``).

Before anything is trained: an ``out_dir`` that already holds a run is refused unless ``resume``
(continue it) or ``exist_ok`` (replace it: its ``last.pt``, ``best.pt`` and ``metrics.jsonl`` are
removed when the new run starts); every image and label file is opened once (``SegmentationDataset.verify``);
the crop's activation memory is estimated against the machine's (``memory.activation_memory``). With
``resume`` or ``exist_ok``, temporary files a killed run left in ``out_dir`` (``.<name>.*.tmp`` of
``utils.atomic_path``) are removed. Errors from DataLoader workers come out as the one-line error the
worker raised. Ctrl-C raises ``errors.Interrupted`` saying which epoch ``last.pt`` holds.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..model.checkpoint import load_checkpoint, qat_refusal, save_checkpoint
from ..model.fakequant import attach_qat, float_state_dict, freeze_batchnorm, validate_qat_record
from ..data.transforms import TrainTransform, TransformedDataset
from ..data.datasets import build_dataset
from .distributed import DistContext, cleanup, in_torchrun, init_from_env, spawn
from ..core.errors import CheckpointError, ConfigError, Interrupted, TrainingError
from .evaluate import confusion_on
from ..model.config import ModelConfig
from .config import TrainConfig
from ..model.danet import build_model
from ..model.backbone import check_backbone
from ..model.weights import load_backbone_weights
from ..core.runfolder import remove_stale_temporaries, run_lock
from ..core.utils import append_line, ensure_output_names, write_json
from .memory import _check_memory
from .loader_errors import _worker_errors
from .state import rng_state, seed_all, seek_schedule, set_rng_state, trim_metrics

__all__ = ["train", "multi_loss", "check_run_dir", "RUN_FILES"]

#: The files that make ``out_dir`` a training run (a new run there needs ``resume`` or ``exist_ok``).
RUN_FILES = ("last.pt", "best.pt", "metrics.jsonl")
#: Files ``train`` writes in ``out_dir`` through ``utils.atomic_path`` (their stale ``.<name>.*.tmp`` are removed).
_WRITTEN = (*RUN_FILES, "config.json")


def multi_loss(outputs: tuple[torch.Tensor, ...], target: torch.Tensor, ignore_index: int,
               aux_weight: float, fcn_aux_weight: float = 0.0) -> torch.Tensor:
    """DANet's training loss from train-mode outputs ``(fused, pam, cam[, fcn])`` ``(N, K, H, W)``
    and ``target (N, H, W) int64``: ``CE(fused) + aux_weight*(CE(pam)+CE(cam)) + fcn_aux_weight*CE(fcn)``; the
    weights are :class:`~danet_edge.train.config.TrainConfig`'s (``fcn_aux_weight`` matters only with an FCN
    output)."""
    def ce(x: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(x.float(), target, ignore_index=ignore_index)

    loss = ce(outputs[0]) + aux_weight * (ce(outputs[1]) + ce(outputs[2]))
    if len(outputs) > 3:
        loss = loss + fcn_aux_weight * ce(outputs[3])
    return loss


def _param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
    """Backbone at ``lr``, head at ``lr * head_lr_mult``; under QAT a third group, the learned quantization
    scales (``qat.*``), at ``lr`` without weight decay (decay would shrink every scale)."""
    backbone = [p for n, p in model.named_parameters() if n.startswith("backbone.")]
    head = [p for n, p in model.named_parameters() if not n.startswith(("backbone.", "qat."))]
    groups = [{"params": backbone, "lr": cfg.lr}, {"params": head, "lr": cfg.lr * cfg.head_lr_mult}]
    scales = [p for n, p in model.named_parameters() if n.startswith("qat.")]
    if scales:
        groups.append({"params": scales, "lr": cfg.lr, "weight_decay": 0.0})
    return groups


# ------------------------------------------------------------------------------------ train
def train(cfg: TrainConfig, qat_record: dict[str, Any] | None = None) -> Path:
    """Train DANet as ``cfg`` says; returns the path of the best checkpoint (``out_dir/best.pt``).

    With ``cfg.devices > 1`` (and not under torchrun) spawns that many processes (DDP; gloo on
    CPU, NCCL + SyncBatchNorm on CUDA). Under torchrun, each process calls ``train`` itself.

    ``cfg.weights``: start from that checkpoint's weights. ``cfg.qat`` with ``qat_record`` (``model.fakequant``; on
    ``resume`` the one in ``last.pt``): quantization-aware fine-tuning; the checkpoints are QAT checkpoints (their
    ``qat`` entry holds the learned record) and the val mIoU is the simulated INT8 model's.

    Raises:
        ConfigError: invalid or contradicting options, resume without ``last.pt``, an ``out_dir`` holding a
            run without ``resume`` / ``exist_ok``, a crop whose activations cannot fit in memory here.
        DataError: missing or bad data (checked for every file before the first epoch).
        CheckpointError: bad backbone weights or ``last.pt``; ``weights`` that are a QAT checkpoint; a float
            ``last.pt`` resumed with ``qat`` or a QAT one without.
        Interrupted: Ctrl-C (a ``KeyboardInterrupt``); the message says what ``last.pt`` holds.
    """
    cfg.validate()
    if cfg.qat is not None and qat_record is None and not cfg.resume:
        raise ConfigError("--qat needs its record (export.qat.qat_train makes it from --weights)")
    check_backbone(cfg.model.backbone)
    if cfg.amp and not torch.cuda.is_available():
        raise ConfigError("--amp needs a CUDA GPU (none found)")
    out = Path(cfg.out_dir)
    main = os.environ.get("RANK", "0") == "0"  # under torchrun every process runs this; rank 0 writes
    with run_lock(out, "train") if main else contextlib.nullcontext():  # a second run into OUT is refused
        check_run_dir(cfg)
        return _train_locked(cfg, out, main, qat_record)


def _train_locked(cfg: TrainConfig, out: Path, main: bool, qat_record: dict[str, Any] | None) -> Path:
    """:func:`train` once its output folder is held."""
    saved: dict[str, int] = {}
    try:
        # Build and check the data sets once here so that bad data fails before any process starts.
        train_ds, val_ds = _datasets(cfg)
        _check_memory(cfg, train_ds, val_ds)
        if main:  # every file opened once (rank 0: one progress bar; the others wait for it in the group)
            train_ds.verify()
            val_ds.verify()
        if cfg.devices > 1 and not in_torchrun():
            spawn(_run, cfg.devices, cfg, None, qat_record)
        else:
            ctx = init_from_env()
            if ctx.world_size != cfg.devices and in_torchrun():
                cfg.devices = ctx.world_size  # torchrun decides; --devices is only the spawn shortcut
                cfg.validate()
            try:
                _run(ctx, cfg, saved, qat_record)
            finally:
                cleanup()
    except KeyboardInterrupt:
        raise _interrupted(out, cfg, saved) from None
    return out / "best.pt"


def check_run_dir(cfg: TrainConfig) -> None:
    """Refuse an ``out_dir`` that holds a run unless ``resume`` / ``exist_ok``, and ``resume`` without ``last.pt``.

    Raises:
        ConfigError: one line saying which.
    """
    out = Path(cfg.out_dir)
    ensure_output_names(out, "--out", files=_WRITTEN)
    if cfg.resume and not (out / "last.pt").is_file():
        raise ConfigError(f"--resume: no {out / 'last.pt'} to continue from")
    if not cfg.resume and not cfg.exist_ok:
        found = [name for name in RUN_FILES if (out / name).exists()]
        if found:
            raise ConfigError(f"{out} already holds a training run ({', '.join(found)}): add --resume to continue "
                              "it, --exist-ok to replace it, or give another --out")


def _interrupted(out: Path, cfg: TrainConfig, saved: dict[str, int]) -> Interrupted:
    """What a Ctrl-C left: the epoch ``last.pt`` holds from this run, or that nothing was saved."""
    last = out / "last.pt"
    if "epoch" in saved:
        return Interrupted(f"interrupted after epoch {saved['epoch'] + 1}: {last} (--resume continues from it)")
    if "start" in saved and saved["start"] > 0:
        return Interrupted(f"interrupted before epoch {saved['start'] + 1} ended: {last} still holds epoch "
                           f"{saved['start']} (--resume continues from it)")
    if cfg.devices > 1 and not in_torchrun() and last.is_file():  # spawned processes: they kept the count
        return Interrupted(f"interrupted: {last} holds the last finished epoch (--resume continues from it)")
    if cfg.resume:
        return Interrupted(f"interrupted before training resumed: {last} unchanged")
    return Interrupted("interrupted before the first epoch ended: nothing saved")


def _prepare_out(out: Path, cfg: TrainConfig) -> None:
    """Rank 0, once the data, the model and ``last.pt`` have been read: drop the temporary files a killed run
    left (``resume`` / ``exist_ok``) and, for ``exist_ok`` without ``resume``, the replaced run's files (no mix
    of two runs in one folder, which a later ``--resume`` would continue)."""
    if not (cfg.resume or cfg.exist_ok) or not out.is_dir():
        return
    remove_stale_temporaries(out, _WRITTEN)  # only the files train writes, only in OUT (held by run_lock)
    if not cfg.resume:
        for name in RUN_FILES:
            (out / name).unlink(missing_ok=True)


def _datasets(cfg: TrainConfig) -> tuple[Any, Any]:
    train_ds = build_dataset(cfg.dataset, cfg.data_root, "train", cfg.limit_train, **cfg.data_options)
    val_ds = build_dataset(cfg.dataset, cfg.data_root, "val", cfg.limit_val, **cfg.data_options)
    if len(train_ds) < cfg.batch_size:
        raise ConfigError(f"{len(train_ds)} training images are fewer than one batch of {cfg.batch_size}")
    return train_ds, val_ds


def _start_weights(model: nn.Module, cfg: TrainConfig, ckpt: dict[str, Any] | None,
                   qat_record: dict[str, Any] | None) -> None:
    """Weights and fake quantization the run starts from: ``last.pt`` (``ckpt``) on resume, else ``cfg.weights``;
    then the QAT record (``last.pt``'s on resume, else ``qat_record``) attached (``model.fakequant.attach_qat``)."""
    last = Path(cfg.out_dir) / "last.pt"
    if ckpt is not None:
        if cfg.qat is None and "qat" in ckpt:
            raise qat_refusal(last, ckpt, "a float training run (resume it with --qat)")
        if cfg.qat is not None and "qat" not in ckpt:
            raise CheckpointError(f"{last} is a float training run, not a QAT one: resume it without --qat")
        model.load_state_dict(ckpt["model"])
        if cfg.qat is not None:
            qat_record = validate_qat_record(ckpt["qat"], str(last))
    elif cfg.weights:
        src = load_checkpoint(cfg.weights)
        if "qat" in src:
            raise qat_refusal(cfg.weights, src, "a float checkpoint to fine-tune")
        if ModelConfig.from_dict(src["model_config"]) != model.config:
            raise CheckpointError(f"{cfg.weights}: model {src['model_config']} differs from the one trained here "
                                  f"{model.config.to_dict()}")
        model.load_state_dict(src["model"])
    if cfg.qat is not None:
        if qat_record["recipe"] != cfg.qat:
            raise CheckpointError(f"{last if ckpt is not None else 'QAT record'}: fine-tuned for {qat_record['recipe']},"
                                  f" not {cfg.qat}")
        attach_qat(model, qat_record)


def _run(ctx: DistContext, cfg: TrainConfig, saved: dict[str, int] | None = None,
         qat_record: dict[str, Any] | None = None) -> None:
    """One process's training loop; ``saved`` (when given) records ``start`` and the last ``epoch`` in ``last.pt``."""
    from torch.nn.parallel import DistributedDataParallel as DDP
    from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

    saved = saved if saved is not None else {}
    out = Path(cfg.out_dir)
    train_raw, val_raw = _datasets(cfg)
    info = train_raw.info
    val_size = list(info.image_size) if info.image_size else list(val_raw.image_size(0))
    crop = tuple(cfg.crop_size) if cfg.crop_size else tuple(val_size)
    seed_all(cfg.seed)
    model = build_model(cfg.model_config(info.num_classes))
    if cfg.backbone_weights:
        load_backbone_weights(model, cfg.backbone_weights)
    ckpt = load_checkpoint(out / "last.pt") if cfg.resume else None
    if ckpt is not None:
        old = ckpt.get("model_config", {})
        if ModelConfig.from_dict(old) != model.config:
            raise CheckpointError(f"{out / 'last.pt'}: model {old} differs from the requested {model.config.to_dict()}")
    _start_weights(model, cfg, ckpt, qat_record)
    model.to(ctx.device)
    optimizer = torch.optim.SGD(_param_groups(model, cfg), lr=cfg.lr, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay)
    per_proc = cfg.batch_size // ctx.world_size
    train_ds = TransformedDataset(train_raw, TrainTransform(crop, ignore_index=info.ignore_index,
                                                            mean=info.mean, std=info.std))
    iters_per_epoch = len(train_ds) // cfg.batch_size
    max_iter = cfg.epochs * iters_per_epoch
    power = cfg.poly_power
    scheduler = torch.optim.lr_scheduler.LambdaLR(  # closed form: lr depends only on the iteration
        optimizer, lambda it: max(0.0, 1.0 - it / max_iter) ** power)
    scaler = torch.amp.GradScaler("cuda", enabled=cfg.amp)

    start_epoch, best_miou, pending = 0, -1.0, None
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
        seek_schedule(scheduler, int(ckpt["scheduler"]["last_epoch"]))  # same position; a raised
        # --epochs stretches the schedule from here on
        if ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        start_epoch, best_miou = int(ckpt["epoch"]) + 1, float(ckpt.get("best_miou", -1.0))
        if "rng" in ckpt:
            set_rng_state(ckpt["rng"])
        if ckpt.get("pending_validation"):  # saved before its validation, which did not finish: run it first
            pending = {"epoch": int(ckpt["epoch"]), **ckpt.get("metrics", {})}
    saved["start"] = start_epoch

    if ctx.distributed:
        if ctx.device.type == "cuda" and cfg.qat is None:  # QAT freezes BatchNorm: nothing to synchronise
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        net: nn.Module = DDP(model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
    else:
        net = model
    if ctx.is_main:  # everything given has been read and checked: from here on OUT changes
        out.mkdir(parents=True, exist_ok=True)
        _prepare_out(out, cfg)
        write_json(out / "config.json", cfg.to_dict())
        # a pending validation is run again: its row (written just before a kill) must not stay twice
        trim_metrics(out / "metrics.jsonl", pending["epoch"] if pending is not None else start_epoch)

    def save(record: dict[str, Any], validated: bool) -> None:
        """Rank 0: ``last.pt`` of ``record["epoch"]``; once validated also the metrics row and ``best.pt``."""
        nonlocal best_miou
        improved = validated and record.get("val_miou") is not None and record["val_miou"] > best_miou
        if improved:
            best_miou = record["val_miou"]
        payload = {
            "model": float_state_dict(model),
            "model_config": model.config.to_dict(),
            "data": info.to_checkpoint_data(val_size),
            "train_config": cfg.to_dict(), "epoch": record["epoch"], "best_miou": best_miou,
            "metrics": {k: v for k, v in record.items() if k != "val_per_class_iou"},
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(), "rng": rng_state(), "pending_validation": not validated,
        }
        if cfg.qat is not None:
            payload["qat"] = model.qat.record(learned=True, epochs=record["epoch"] + 1)
        if validated:
            append_line(out / "metrics.jsonl", json.dumps(record))  # before last.pt: a resume trims what
            # last.pt lacks; a full disk leaves no half line
            if improved or not (out / "best.pt").exists():
                save_checkpoint(out / "best.pt", payload)
        save_checkpoint(out / "last.pt", payload)
        saved["epoch"] = record["epoch"]
        if validated:
            _log_epoch(record, cfg.epochs)

    def finish(record: dict[str, Any]) -> None:
        """Validate the epoch of ``record`` when due (its training already in ``last.pt``), then save."""
        epoch = record["epoch"]
        if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
            record.update(_validate(model, val_raw, ctx))
        model.train()
        if ctx.is_main:
            save(record, validated=True)
        if ctx.distributed:
            torch.distributed.barrier()

    if pending is not None:
        finish(pending)
    for epoch in range(start_epoch, cfg.epochs):
        torch.manual_seed(cfg.seed * 1000 + epoch)  # augmentation / dropout of epoch e depend only on (seed, e)
        if ctx.distributed:
            sampler: Any = DistributedSampler(train_ds, ctx.world_size, ctx.rank, shuffle=True, seed=cfg.seed,
                                              drop_last=True)
            sampler.set_epoch(epoch)
        else:
            sampler = RandomSampler(train_ds, generator=torch.Generator().manual_seed(cfg.seed * 1000 + epoch))
        loader = DataLoader(train_ds, per_proc, sampler=sampler, num_workers=cfg.workers, drop_last=True,
                            pin_memory=ctx.device.type == "cuda", persistent_workers=False,
                            generator=torch.Generator().manual_seed(cfg.seed * 1000 + epoch))
        stats = _train_epoch(net, loader, optimizer, scheduler, scaler, cfg, ctx, epoch, info.ignore_index,
                             iters_per_epoch)
        record: dict[str, Any] = {"epoch": epoch, **stats}
        due = (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs
        if due and ctx.is_main:  # the epoch's training is kept whatever its validation does
            save(record, validated=False)
        finish(record)


def _train_epoch(net: nn.Module, loader: Any, optimizer: torch.optim.Optimizer, scheduler: Any,
                 scaler: torch.amp.GradScaler, cfg: TrainConfig, ctx: DistContext, epoch: int, ignore_index: int,
                 iters: int) -> dict[str, Any]:
    net.train()
    if cfg.qat is not None:
        freeze_batchnorm(net)
    show = cfg.progress and ctx.is_main and not cfg.quiet
    bar = None
    if show:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        bar = Progress(TextColumn(f"epoch {epoch + 1}/{cfg.epochs}"), BarColumn(), MofNCompleteColumn(),
                       TextColumn("{task.fields[info]}"), TimeRemainingColumn(), transient=True)
        task = bar.add_task("train", total=iters, info="")
        bar.start()
    total_loss, n_img, t0 = 0.0, 0, time.perf_counter()
    log_plain = ctx.is_main and not cfg.quiet and (bar is None or not bar.console.is_terminal)
    try:
        for it, (x, y) in enumerate(_worker_errors(loader)):
            x, y = x.to(ctx.device, non_blocking=True), y.to(ctx.device, non_blocking=True)
            with torch.autocast("cuda", dtype=torch.float16, enabled=cfg.amp):
                outputs = net(x)
            loss = multi_loss(outputs, y, ignore_index, cfg.aux_weight, cfg.fcn_aux_weight)
            if not torch.isfinite(loss):
                raise TrainingError(f"loss became {loss.item()} at epoch {epoch + 1}, iteration {it + 1}; "
                                         "lower --lr or set --grad-clip")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.grad_clip:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            total_loss += loss.item() * x.shape[0]
            n_img += x.shape[0] * ctx.world_size
            ips = n_img / (time.perf_counter() - t0)
            lr = optimizer.param_groups[0]["lr"]
            if bar is not None:
                bar.update(task, advance=1, info=f"loss {loss.item():.3f}  lr {lr:.2e}  {ips:.1f} img/s")
            if log_plain and ((it + 1) % 10 == 0 or it + 1 == iters):
                print(f"epoch {epoch + 1}/{cfg.epochs} it {it + 1}/{iters} loss {loss.item():.4f} "
                      f"lr {lr:.3e} {ips:.2f} img/s", flush=True)
    finally:
        if bar is not None:
            bar.stop()
    seconds = time.perf_counter() - t0
    mean_loss = torch.tensor([total_loss, n_img / ctx.world_size], dtype=torch.float64)
    if ctx.distributed:
        torch.distributed.all_reduce(mean_loss)
    return {"train_loss": float(mean_loss[0] / max(mean_loss[1], 1)), "lr": optimizer.param_groups[0]["lr"],
            "images_per_s": n_img / seconds if seconds > 0 else None, "epoch_seconds": round(seconds, 2)}


def _validate(model: nn.Module, val_raw: Any, ctx: DistContext) -> dict[str, Any]:
    """Single-scale val mIoU; each process takes every world_size-th image, matrices summed."""
    model.eval()
    info = val_raw.info
    t0 = time.perf_counter()
    cm, _ = confusion_on(model, val_raw, range(ctx.rank, len(val_raw), ctx.world_size), info.num_classes,
                         info.ignore_index, info.mean, info.std, device=ctx.device)
    cm.all_reduce()
    d = cm.to_dict(info.classes)
    return {"val_miou": d["miou"], "val_pixel_accuracy": d["pixel_accuracy"],
            "val_mean_class_accuracy": d["mean_class_accuracy"], "val_seconds": round(time.perf_counter() - t0, 2),
            "val_per_class_iou": d["per_class_iou"]}


def _log_epoch(r: dict[str, Any], epochs: int) -> None:
    from rich.console import Console

    val = (f"  val mIoU {100 * r['val_miou']:.2f} %  pixel acc {100 * r['val_pixel_accuracy']:.2f} %"
           if r.get("val_miou") is not None else "")
    Console(soft_wrap=True).print(f"epoch {r['epoch'] + 1}/{epochs}  loss {r['train_loss']:.4f}  lr {r['lr']:.2e}  "
                    f"{r['images_per_s']:.2f} img/s  {r['epoch_seconds']:.0f} s{val}", highlight=False)

