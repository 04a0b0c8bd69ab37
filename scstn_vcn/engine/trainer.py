"""The training loop: P x K batches, the Eq. 8 loss, Adam with warm-up + step decay, autocast on
CUDA, DistributedDataParallel under torchrun, per-epoch atomic checkpoints and logs, resume."""

import os
import time

import torch

from scstn_vcn.configs import dump_config, model_identity
from scstn_vcn.engine import checkpoint as ckpt
from scstn_vcn.engine import distributed as dist_utils
from scstn_vcn.engine.builders import (
    build_datasets_from_config,
    build_eval_targets,
    build_loss_from_config,
    build_model_from_config,
    training_record,
)
from scstn_vcn.engine.features import _split_batch, autocast_context
from scstn_vcn.engine.logging import EpochLogger
from scstn_vcn.engine.optim import build_optimizer, build_scheduler
from scstn_vcn.engine.runtime import activate_device, choose_backend, resolve_device
from scstn_vcn.engine.seed import get_rng_state, seed_everything, set_rng_state

CHECKPOINT_NAME = "checkpoint.pth"


def _scalar(value):
    return float(value.detach().float().item()) if isinstance(value, torch.Tensor) else float(value)


def set_sampler_epoch(loader, epoch):
    """Tell the P x K sampler which epoch it is (its shuffling is seeded by seed + epoch)."""
    for holder in (getattr(loader, "batch_sampler", None), getattr(loader, "sampler", None)):
        if holder is not None and hasattr(holder, "set_epoch"):
            holder.set_epoch(epoch)
            return


def train_one_epoch(model, loss_fn, loader, optimizer, device, amp="off", scaler=None, max_steps=0, progress=None):
    """One pass over the sampler's batches; returns the mean loss parts and the global-branch accuracy."""
    model.train()
    sums, count, correct, seen = {}, 0, 0, 0
    for step, batch in enumerate(loader):
        if max_steps and step >= max_steps:
            break
        images, labels, _, _ = _split_batch(batch)
        images = images.to(device, non_blocking=True)
        labels = torch.as_tensor(labels).to(device, non_blocking=True)
        with autocast_context(device, amp):
            outputs = model(images)
            total, parts = loss_fn(outputs, labels)
        if not torch.isfinite(total):
            raise FloatingPointError(
                f"the loss became {total.item()} at step {step}; lower optim.lr or use --amp bf16/off"
            )
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(total).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            total.backward()
            optimizer.step()
        values = {"loss": _scalar(total)}
        values.update({f"loss_{k}": _scalar(v) for k, v in parts.items() if isinstance(v, (torch.Tensor, float, int))})
        for key, value in values.items():
            sums[key] = sums.get(key, 0.0) + value
        count += 1
        logits = outputs["global"]["logits"] if isinstance(outputs.get("global"), dict) else None
        if logits is not None:
            correct += int((logits.argmax(1) == labels).sum())
            seen += labels.numel()
        if progress is not None:
            progress.update(1)
            progress.set_postfix(loss=f"{values['loss']:.3f}")
    if count == 0:
        raise ValueError(
            "the training loader yielded no batch: too few identities with enough images for P x K sampling?"
        )
    means = {k: v / count for k, v in sums.items()}
    if seen:
        means["acc"] = correct / seen
    means["steps"] = count
    return means


def _progress_bar(total, desc, enabled):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)


def _gather_rng(info):
    """Every rank's RNG state (rank 0 stores them all, so each rank resumes its own stream)."""
    state = get_rng_state()
    if not info.enabled:
        return [state]
    gathered = [None] * info.world_size
    torch.distributed.all_gather_object(gathered, state)
    return gathered


class Trainer:
    """Builds everything from a config and runs `fit()`. `say` prints run information (rank 0)."""

    def __init__(self, config, resume=None, progress=True, say=print, on_epoch_end=None):
        self.config = config
        self.resume_path = resume
        self.on_epoch_end = on_epoch_end
        train_cfg = config["train"]
        self.info = dist_utils.init_distributed(resolve_device(train_cfg["device"]).type)
        self.device = activate_device(resolve_device(train_cfg["device"], self.info.local_rank))
        self.say = say if self.info.is_main else (lambda *a, **k: None)
        self.progress = progress and self.info.is_main
        self.output = train_cfg["output"]
        self.amp = train_cfg["amp"] if self.device.type == "cuda" else "off"

        # Process-wide torch settings this run changes; close() puts them back (matters when the
        # trainer runs inside a longer process, e.g. a test session).
        self._saved_settings = (
            torch.get_num_threads(),
            torch.are_deterministic_algorithms_enabled(),
            torch.is_deterministic_algorithms_warn_only_enabled(),
        )
        if int(train_cfg.get("threads") or 0) > 0:
            torch.set_num_threads(int(train_cfg["threads"]))
        # seed + rank: ranks draw different augmentations; DDP copies rank 0's initial weights to all.
        seed_everything(
            int(train_cfg["seed"]) + self.info.rank,
            deterministic=bool(train_cfg["deterministic"]) and self.device.type == "cpu",
        )
        self.backend = choose_backend(bool(train_cfg["fused"]), train_cfg["kernels"], self.device)

        from scstn_vcn.data import CombinedDataset

        # Every data set is read (and checked) before training starts, the evaluation targets too, so that
        # a mistake in them stops the run now rather than after the last epoch.
        datasets = build_datasets_from_config(config, self.say)
        for name, root, dataset in datasets:
            dataset.require(["train"], f"training on {name} at {root}")
        self.dataset = datasets[0][2] if len(datasets) == 1 else CombinedDataset([d for _, _, d in datasets])
        self.targets = build_eval_targets(config, datasets, self.say)
        self.num_classes = int(self.dataset.num_train_pids)
        self.identity = model_identity(config, self.num_classes)
        # What the model was trained on, saved beside its identity (informative: not compared on loading).
        self.trained_on = [training_record(name, d) for name, _, d in datasets]
        self.start_epoch = 0
        state = None
        if resume:
            state = ckpt.load_checkpoint(resume)
            ckpt.check_identity(resume, state, self.identity)
        # The ImageNet weights are pointless when a checkpoint replaces every weight.
        self.model = build_model_from_config(config, self.num_classes, pretrained=state is None).to(self.device)
        self.loss_fn = build_loss_from_config(config, self.num_classes).to(self.device)
        self.optimizer = build_optimizer(self.model, config["optim"])
        self.scheduler = build_scheduler(self.optimizer, config["optim"])
        self.scaler = torch.amp.GradScaler("cuda") if self.amp == "fp16" else None
        if state is not None:
            self._restore(resume, state)
        self.model = dist_utils.wrap_model(self.model, self.info, self.device, sync_bn=bool(train_cfg["sync_bn"]))

        from scstn_vcn.data import build_train_loader

        data = config["data"]
        self.loader = build_train_loader(
            self.dataset,
            data["height"],
            data["width"],
            data["num_identities"],
            data["num_instances"],
            data["workers"],
            int(train_cfg["seed"]),
            rank=self.info.rank,
            world_size=self.info.world_size,
        )
        self.logger = EpochLogger(self.output, enabled=self.info.is_main, resume=state is not None)

    def _restore(self, path, state):
        ckpt.load_model_weights(path, state, self.model)
        try:
            if state.get("optimizer") is not None:
                self.optimizer.load_state_dict(state["optimizer"])
            if state.get("scheduler") is not None:
                self.scheduler.load_state_dict(state["scheduler"])
            if self.scaler is not None and state.get("scaler") is not None:
                self.scaler.load_state_dict(state["scaler"])
        except (ValueError, KeyError, RuntimeError) as error:
            raise ckpt.CheckpointError(
                f"checkpoint {path}: its optimizer/scheduler state does not fit this run ({error})"
            ) from None
        rng = state.get("rng")
        if rng:
            try:
                if not isinstance(rng, list):
                    raise ValueError(f"expected a list of per-rank states, got a {type(rng).__name__}")
                # With the same number of processes each rank continues its own stream.
                set_rng_state(rng[self.info.rank % len(rng)])
            except ValueError as error:
                raise ckpt.CheckpointError(f"checkpoint {path}: its RNG state cannot be restored ({error})") from None
        self.start_epoch = int(state["epoch"])
        self.say(f"resumed from {path} after epoch {self.start_epoch}")

    @property
    def checkpoint_path(self):
        return os.path.join(self.output, CHECKPOINT_NAME)

    def save(self, epoch):
        rng = _gather_rng(self.info)  # every rank takes part in the gather
        if not self.info.is_main:
            return
        extra = {"scaler": self.scaler.state_dict()} if self.scaler is not None else None
        ckpt.save_checkpoint(
            self.checkpoint_path,
            model=self.model,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            epoch=epoch,
            config=self.config,
            identity={**self.identity, "trained_on": self.trained_on},
            rng_state=rng,
            extra=extra,
        )

    def steps_per_epoch(self):
        try:
            steps = len(self.loader)
        except TypeError:
            return None
        cap = int(self.config["train"]["max_steps_per_epoch"])
        return min(steps, cap) if cap else steps

    def fit(self):
        """Train from start_epoch to train.epochs; returns the log rows of this call."""
        epochs = int(self.config["train"]["epochs"])
        eval_every = int(self.config["train"]["eval_every"])
        if self.info.is_main:
            os.makedirs(self.output, exist_ok=True)
            with open(os.path.join(self.output, "config.yaml"), "w") as handle:
                handle.write(dump_config(self.config))
        names = " + ".join(f"{t['dataset']} ({t['identities']} ids)" for t in self.trained_on)
        self.say(
            f"training {self.config['model']['backbone']}-{self.config['model']['variant']} "
            f"on {names}: {self.num_classes} identities, {len(self.dataset.train)} images, "
            f"device {self.device}, ops backend {self.backend!r}, amp {self.amp}, "
            f"{self.info.world_size} process(es), epochs {self.start_epoch + 1}..{epochs}"
        )
        rows = []
        for epoch in range(self.start_epoch, epochs):
            set_sampler_epoch(self.loader, epoch)
            lr = self.optimizer.param_groups[0]["lr"]
            bar = _progress_bar(self.steps_per_epoch(), f"epoch {epoch + 1}/{epochs}", self.progress)
            start = time.perf_counter()
            try:
                stats = train_one_epoch(
                    self.model,
                    self.loss_fn,
                    self.loader,
                    self.optimizer,
                    self.device,
                    self.amp,
                    self.scaler,
                    int(self.config["train"]["max_steps_per_epoch"]),
                    bar,
                )
            finally:
                if bar is not None:
                    bar.close()
            stats = dist_utils.all_reduce_mean(stats, self.info)
            self.scheduler.step()
            row = {"epoch": epoch + 1, "lr": lr, **stats, "time_s": round(time.perf_counter() - start, 3)}
            if eval_every and (epoch + 1) % eval_every == 0 and epoch + 1 < epochs and self.info.is_main:
                row.update(self.evaluate_flat())
            self.save(epoch + 1)
            self.logger.log(row)
            rows.append(row)
            self.say(
                f"epoch {epoch + 1}/{epochs}  lr {lr:.2e}  loss {stats['loss']:.4f}"
                + (f"  acc {100 * stats['acc']:.1f}%" if "acc" in stats else "")
                + f"  {row['time_s']:.1f}s"
            )
            if self.on_epoch_end is not None:
                self.on_epoch_end(epoch + 1, self)
        self.logger.close()
        dist_utils.barrier(self.info)
        return rows

    def evaluate(self):
        """(results, query, gallery) on the first evaluation target (the training set, for one data set)."""
        from scstn_vcn.engine.evaluator import evaluate_model

        if not self.targets:
            raise ValueError("nothing to evaluate: no data set of the run has a query and a gallery split")
        model = ckpt.unwrap(self.model)
        return evaluate_model(model, self.targets[0].dataset, self.config, self.device, self.amp)

    def evaluate_targets(self, say=print):
        """[(EvalTarget, results)] for every evaluation target (scstn_vcn.engine.evaluator.evaluate_targets)."""
        from scstn_vcn.engine.evaluator import evaluate_targets

        model = ckpt.unwrap(self.model)
        return evaluate_targets(model, self.targets, self.config, self.device, self.amp, say=say)

    def evaluate_flat(self):
        """rank-1 and mAP of every target for the log ("fusion_rank1"; "t2_fusion_rank1" for a second target)."""
        from scstn_vcn.engine.evaluator import to_percent

        row = {}
        for number, (_, results) in enumerate(self.evaluate_targets(say=lambda *a: None), 1):
            prefix = "" if number == 1 else f"t{number}_"
            for b, metrics in to_percent(results).items():
                row.update({f"{prefix}{b}_{m}": v for m, v in metrics.items() if m in ("rank1", "mAP")})
        return row

    def close(self):
        dist_utils.cleanup(self.info)
        threads, deterministic, warn_only = self._saved_settings
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
