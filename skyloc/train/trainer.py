"""The training loop: CE per branch + cross-view metric loss, SGD with step decay, AMP, DDP,
resumable checkpoints, a progress bar, CSV and TensorBoard logs."""
from __future__ import annotations

import csv
import logging
import math
import os
import random
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch.utils.data import DataLoader, DistributedSampler, WeightedRandomSampler

from skyloc.errors import SkylocError
from skyloc.models import create_model
from skyloc.models.checkpoint import model_kwargs_of, read_checkpoint, save_checkpoint
from skyloc.train.config import TrainConfig
from skyloc.train.datasets import PairDataset, detect_colour, source_balanced_weights, training_views
from skyloc.train.losses import branch_cross_entropy, cross_view_triplet, info_nce

log = logging.getLogger("skyloc.train")


def _setup_distributed() -> tuple[int, int, int]:
    """torchrun sets WORLD_SIZE/RANK/LOCAL_RANK; gloo on CPU, NCCL on GPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return world, int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))


def _device(cfg: TrainConfig, local_rank: int) -> torch.device:
    if cfg.device != "auto":
        return torch.device(cfg.device)
    return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")


def train(cfg: TrainConfig, resume: bool = True, console=None) -> dict:
    """Train cfg.model on cfg.data; returns the final losses and the checkpoint path."""
    if not cfg.data:
        raise SkylocError("no training data: pass --data DIR or set 'data' in the config")
    world, rank, local_rank = _setup_distributed()
    device = _device(cfg, local_rank)
    torch.manual_seed(cfg.seed + rank)
    random.seed(cfg.seed + rank)
    np.random.seed(cfg.seed + rank)
    drone, sat = training_views(cfg.data, cfg.height)
    out = Path(cfg.out)
    ckpt_path = out / "last.pt"
    state = read_checkpoint(ckpt_path) if resume and ckpt_path.is_file() else None
    if state is not None and state["model_name"] != cfg.model:
        raise SkylocError(f"{ckpt_path} is a {state['model_name']} run, not {cfg.model}: use another --out")
    trained_kwargs = model_kwargs_of(state) if state is not None else cfg.model_kwargs
    if trained_kwargs != cfg.model_kwargs:
        raise SkylocError(f"{ckpt_path} was trained with model_kwargs {trained_kwargs}, not {cfg.model_kwargs}: "
                          "use another --out")

    probe = create_model(cfg.model, num_classes=2, **cfg.model_kwargs)
    colour = cfg.colour if cfg.colour != "auto" else detect_colour(sat)
    data_config = replace(probe.data_config, colour=colour)
    dataset = PairDataset(drone, sat, data_config, k_sat=cfg.k_sat, appearance=cfg.appearance, aligned=cfg.aligned)
    model = create_model(cfg.model, num_classes=dataset.num_classes, pretrained=cfg.pretrained,
                         backbone_weights=cfg.backbone_weights, **cfg.model_kwargs).to(device)
    model.data_config = data_config
    if rank == 0 and colour == "grey":
        log.info("grey satellite images: training a grey model (frames are turned grey at run time too)")
    groups = [{"params": model.backbone_parameters(), "lr": cfg.backbone_lr},
              {"params": model.head_parameters(), "lr": cfg.lr}]
    if cfg.optimizer == "adamw":
        opt = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.SGD(groups, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=True)
    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[local_rank] if device.type == "cuda" else None)
    sampler = DistributedSampler(dataset, world, rank, shuffle=True, seed=cfg.seed, drop_last=True) if world > 1 else None
    if sampler is None and cfg.balance_sources and len(cfg.data) > 1:  # every root equally often
        sampler = WeightedRandomSampler(source_balanced_weights(dataset), len(dataset), replacement=True,
                                        generator=torch.Generator().manual_seed(cfg.seed))
    loader = DataLoader(dataset, batch_size=cfg.batch_size, shuffle=sampler is None, sampler=sampler,
                        num_workers=cfg.workers, drop_last=True, persistent_workers=cfg.workers > 0)
    if len(loader) == 0:
        raise SkylocError(f"{dataset.num_classes} classes x k_sat {cfg.k_sat} is smaller than one batch of "
                          f"{cfg.batch_size}: lower batch_size")
    use_amp = cfg.amp and device.type == "cuda"
    # bf16 where the GPU has it: fp32's range, so no overflow (fp16 overflowed into NaN batch-norm
    # statistics in the paper-sized model); fp16 with a gradient scaler on older GPUs
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    bad_steps = 0
    out.mkdir(parents=True, exist_ok=True)
    writer = _tensorboard(out) if rank == 0 else None
    csv_path = out / "log.csv"
    new_csv = not csv_path.is_file() or state is None
    csv_file = open(csv_path, "w" if new_csv else "a", newline="") if rank == 0 else None
    csv_writer = csv.writer(csv_file) if csv_file else None
    if csv_writer and new_csv:
        csv_writer.writerow(["epoch", "step", "loss", "ce", "metric", "accuracy", "lr", "seconds"])
    steps_per_epoch = min(len(loader), cfg.max_steps or len(loader))
    sched = _schedule(cfg, opt, steps_per_epoch)
    start_epoch = 0
    if state is not None:
        model.load_state_dict(state["state_dict"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start_epoch = int(state["epoch"]) + 1
        if rank == 0:
            log.info("resuming %s from epoch %d", ckpt_path, start_epoch)
    history: list[float] = list(state.get("loss", [])) if state is not None else []  # mean loss per epoch
    progress = Progress(TextColumn("[bold]epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("loss {task.fields[loss]:.3f}"), TimeRemainingColumn(),
                        console=console, disable=rank != 0)
    t0 = time.time()
    with progress:
        task = progress.add_task("train", total=steps_per_epoch, epoch=start_epoch, loss=math.nan)
        for epoch in range(start_epoch, cfg.epochs):
            if isinstance(sampler, DistributedSampler):
                sampler.set_epoch(epoch)
            net.train()
            progress.reset(task, total=steps_per_epoch, epoch=f"{epoch + 1}/{cfg.epochs}", loss=math.nan)
            sums, good = np.zeros(4), 0
            for step, (sat_x, drone_x, labels) in enumerate(loader):
                if step >= steps_per_epoch:
                    break
                sat_x, drone_x, labels = sat_x.to(device), drone_x.to(device), labels.to(device)
                with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                    out_all = net(torch.cat([sat_x, drone_x]))
                    n = len(labels)
                    both = torch.cat([labels, labels])
                    ce = branch_cross_entropy(out_all.logits, both)
                    metric = sum(_metric_loss(cfg, f[n:].float(), f[:n].float(), labels) for f in out_all.features)
                    metric = metric / len(out_all.features)
                    loss = cfg.ce_weight * ce + cfg.metric_weight * metric
                opt.zero_grad(set_to_none=True)
                if not torch.isfinite(loss):
                    bad_steps += 1
                    if bad_steps > 20:
                        raise SkylocError(f"training diverged (a non-finite loss in {bad_steps} steps by epoch "
                                          f"{epoch + 1}): lower lr/backbone_lr in {cfg.out}'s recipe")
                    continue
                scaler.scale(loss).backward()
                if cfg.clip_grad:
                    scaler.unscale_(opt)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
                scaler.step(opt)
                scaler.update()
                if cfg.schedule == "cosine":
                    sched.step()
                acc = sum((l.argmax(1) == both).float().mean() for l in out_all.logits) / len(out_all.logits)
                sums += [loss.item(), ce.item(), metric.item(), acc.item()]
                good += 1
                progress.update(task, advance=1, loss=sums[0] / good)
                if writer and step % cfg.log_every == 0:
                    gstep = epoch * steps_per_epoch + step
                    writer.add_scalar("loss/total", loss.item(), gstep)
                    writer.add_scalar("loss/ce", ce.item(), gstep)
                    writer.add_scalar("loss/metric", metric.item(), gstep)
            if cfg.schedule == "step":
                sched.step()
            means = sums / max(1, good)
            history.append(float(means[0]))
            if rank == 0:
                csv_writer.writerow([epoch + 1, steps_per_epoch, *(f"{v:.5f}" for v in means),
                                     f"{opt.param_groups[1]['lr']:.6f}", f"{time.time() - t0:.1f}"])
                csv_file.flush()
                save_checkpoint(ckpt_path, model, optimizer=opt.state_dict(), scheduler=sched.state_dict(),
                                epoch=epoch, config=cfg.model_dump(mode="json"), classes=dataset.classes, loss=history)
    if csv_file:
        csv_file.close()
    if writer:
        writer.close()
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return {"checkpoint": str(ckpt_path), "loss": history, "classes": dataset.num_classes,
            "seconds": time.time() - t0, "world_size": world}


def _schedule(cfg: TrainConfig, opt, steps_per_epoch: int):
    """step: x gamma at each milestone epoch (stepped per epoch); cosine: linear warm-up then a
    half cosine to zero over the whole run (stepped per optimizer step)."""
    if cfg.schedule == "step":
        return torch.optim.lr_scheduler.MultiStepLR(opt, cfg.milestones, cfg.gamma)
    total = max(1, cfg.epochs * steps_per_epoch)
    warmup = cfg.warmup_epochs * steps_per_epoch

    def factor(step: int) -> float:
        ramp = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
        return ramp * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def _metric_loss(cfg: TrainConfig, f_drone, f_sat, labels):
    if cfg.loss == "infonce":
        return info_nce(f_drone, f_sat, labels, labels, cfg.temperature)
    return cross_view_triplet(f_drone, f_sat, labels, labels, cfg.margin)


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional; the CSV log always exists
        return None
    return SummaryWriter(str(out / "tb"))
