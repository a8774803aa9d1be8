"""vmp-train: one training loop for every head (hydra app over configs/train.yaml).

Exact resume: every micro-batch reseeds torch from (seed, step, its index in the step) and the data order of epoch e
is a permutation seeded by (seed, e), so a run resumed from a checkpoint at step N replays steps N+1... exactly as an
uninterrupted run would; the checkpoint holds model, EMA, optimizer and LR schedule.

Multi-process and multi-node: `torchrun --nnodes N --nproc-per-node G -m vmp.policies.train ...`
(DistributedDataParallel; gloo on CPU, nccl on GPU); rank 0 logs and writes checkpoints. ``training.batch_size`` is
the effective batch of one optimizer step across all processes; ``training.micro_batch_size`` sets what one process
computes at once, the rest is gradient accumulation. Data order and seeds depend on neither, so a run resumed under
another world size continues the same run.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import hydra
from omegaconf import DictConfig, OmegaConf, open_dict

from vmp.disk import DISK_FULL, exit_on_full_disk, writing

log = logging.getLogger("vmp.train")


class EpochSampler:
    """This rank's indices for epoch e, independent of the number of processes.

    The epoch's order is a permutation seeded by (seed, e); global batch b is ``perm[b*B:(b+1)*B]`` whatever the world
    size, cut into micro-batches of ``micro`` that are dealt out in order: rank r takes micro-batches r*A ... r*A+A-1
    (A = B / (world * micro), the gradient-accumulation steps). So step s trains on the same samples, in the same
    micro-batches, on one process or many: a run can resume under another world size. Starts at global batch
    ``start_batch`` (resume); the epoch's incomplete last batch is dropped.
    """

    def __init__(self, n: int, seed: int, epoch: int, batch_size: int, rank: int = 0, world: int = 1,
                 start_batch: int = 0):
        import torch

        g = torch.Generator().manual_seed(seed * 100_003 + epoch)
        perm = torch.randperm(n, generator=g)
        n_batches = n // batch_size
        per_rank = batch_size // world
        self.indices = perm[: n_batches * batch_size].view(n_batches, world, per_rank)[start_batch:, rank].flatten().tolist()

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def accumulation_steps(batch_size: int, micro_batch_size: int | None, world: int) -> tuple[int, int]:
    """(micro-batch size, accumulation steps) that make one optimizer step see ``batch_size`` samples across
    ``world`` processes; a batch that does not split evenly is refused naming the options."""
    if batch_size % world:
        raise ValueError(f"training.batch_size={batch_size} (the effective batch of one optimizer step) must split "
                         f"evenly across {world} processes")
    per_rank = batch_size // world
    micro = per_rank if micro_batch_size is None else int(micro_batch_size)
    if micro < 1 or per_rank % micro:
        raise ValueError(f"training.micro_batch_size={micro_batch_size} must divide training.batch_size / processes = "
                         f"{batch_size} / {world} = {per_rank}")
    return micro, per_rank // micro


class MetricsLog:
    """metrics.csv: one row per logged step. Columns are fixed by the first row (the head's loss scalars plus lr,
    samples/s, validation loss and success rate). A run resumed at step N keeps the rows up to N and appends under the
    existing header: rows logged after the checkpoint it resumes from are dropped, since they are logged again."""

    STANDARD = ["step", "loss", "lr", "samples_per_s", "val_loss", "success_rate"]

    def __init__(self, path: Path, resume_step: int = 0, tensorboard: bool = False):
        self.path, self.tb_dir = path, path.parent / "tensorboard"
        self.columns: list[str] | None = None
        with writing(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            if resume_step > 0 and path.exists() and path.stat().st_size > 0:
                self.columns = self._keep_rows(path, resume_step)
            self.fh = open(path, "a" if self.columns else "w", newline="")
        self.writer = csv.writer(self.fh)

        self.tensorboard = None
        if tensorboard:  # the same scalars for TensorBoard (tensorboard --logdir RUN_DIR/tensorboard)
            from torch.utils.tensorboard import SummaryWriter

            # purge_step: TensorBoard hides the events at this step and later that an earlier run logged; a resumed
            # run logs from resume_step + 1 on, so those up to resume_step stay (as metrics.csv's rows do)
            with writing(f"the TensorBoard log in {self.tb_dir}"):
                self.tensorboard = SummaryWriter(str(self.tb_dir), purge_step=resume_step + 1 if resume_step else None)

    @staticmethod
    def _keep_rows(path: Path, resume_step: int) -> list[str] | None:
        """Rewrite ``path`` with its rows up to ``resume_step``; -> its columns (None: no complete header). A line
        cut short by a failed write (a full disk) has no line end and is dropped."""
        text = path.read_text()
        if not text.endswith("\n"):
            text = text[: text.rfind("\n") + 1]
        rows = list(csv.reader(text.splitlines()))
        if not rows:
            return None
        columns = rows[0]
        kept = [r for r in rows[1:] if len(r) == len(columns) and int(float(r[0])) <= resume_step]
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            with open(tmp, "w", newline="") as f:
                csv.writer(f).writerows([columns, *kept])
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return columns

    def write(self, row: dict[str, Any]) -> None:
        with writing(self.path):
            if self.columns is None:
                self.columns = self.STANDARD + sorted(set(row) - set(self.STANDARD))
                self.writer.writerow(self.columns)
            self.writer.writerow(["" if row.get(c) is None else row.get(c, "") for c in self.columns])
            self.fh.flush()
        if self.tensorboard is not None:
            with writing(f"the TensorBoard log in {self.tb_dir}"):  # its writer thread's error surfaces in flush
                for key, value in row.items():
                    if key != "step" and value is not None:
                        self.tensorboard.add_scalar(key, float(value), int(row["step"]))
                self.tensorboard.flush()

    def close(self, quiet: bool = False) -> None:
        """``quiet``: a failed final flush is logged, not raised (training already stops on another error)."""
        errors = []
        for what, close in ((self.path, self.fh.close),
                            (self.tb_dir, self.tensorboard.close if self.tensorboard is not None else None)):
            try:
                if close is not None:
                    with writing(what):
                        close()
            except OSError as err:
                errors.append(err)
        if errors and not quiet:
            raise errors[0]
        for err in errors:
            log.warning("%s", err.strerror)


class StopRequest:
    """SIGTERM (a scheduler's pre-emption, `kill`) ends training like Ctrl-C, with a checkpoint, at the next step:
    the handler only records the signal. An exception raised from a handler lands wherever the main thread is; once,
    inside logging's lock, it was printed and swallowed, and the run trained on until SIGKILL."""

    def __init__(self):
        self.signum: int | None = None

    def __call__(self, signum, frame) -> None:
        self.signum = signum

    def check(self) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt(f"signal {self.signum}")


def step_seed(seed: int, step: int, micro_batch: int) -> int:
    """The torch seed of one micro-batch of one step (its global index, whatever rank computes it): noise and
    dropout draws do not depend on how the batch is split across processes."""
    return (seed * 1_000_003 + step * 101 + micro_batch) % (2**63)


def to_device(batch: Any, device) -> Any:
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if hasattr(batch, "to"):
        return batch.to(device, non_blocking=True)
    return batch


def task_image_sizes(task: DictConfig, store) -> dict[str, tuple[int, int]]:
    """{camera key: (H, W)} of the task's shape_meta: the sampler resizes a store's frames of another size to it.
    Channels (or a camera the store lacks) cannot be made to match: refused by name."""
    sizes = {}
    for key, meta in task.shape_meta.obs.items():
        if meta.get("type") not in ("rgb", "depth") or key not in store.schema:
            continue
        want, have = tuple(meta.shape), store.schema[key].shape
        if len(want) != len(have) or want[2:] != have[2:]:
            raise ValueError(f"task.shape_meta.obs.{key}.shape {list(want)} and store {store.path}'s {list(have)} differ "
                             f"beyond height and width (only those are resized)")
        sizes[key] = (int(want[0]), int(want[1]))
    return sizes


def check_training_types(training: DictConfig) -> None:
    """Each `training.*` value must have its default's type (numbers: int, or int/float): `training.steps=ten` is
    refused naming the option, not deep inside the loop."""
    from importlib import resources

    defaults = OmegaConf.create(resources.files("vmp.configs").joinpath("train.yaml").read_text()).training
    for key, default in defaults.items():
        value = training.get(key)
        if default is None or value is None:
            continue
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, int):
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif isinstance(default, float):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        else:
            continue
        if not ok:
            raise ValueError(f"training.{key}={value!r} must be {type(default).__name__} like its default ({default!r})")


@dataclasses.dataclass
class TrainingData:
    """What one run trains and validates on, and how a rank draws its batches of an epoch."""

    store: Any  # the main store (normalizer statistics, n_demos in the budget)
    train_set: Any
    val_set: Any | None
    stats_sampler: Any  # the main store's training sampler: which episodes the statistics may see
    batch_size: int
    micro_batch_size: int
    num_workers: int
    seed: int
    rank: int = 0
    world: int = 1
    pin_memory: bool = False

    @property
    def batches_per_epoch(self) -> int:
        return len(self.train_set) // self.batch_size

    def loader(self, epoch: int, start_batch: int = 0):
        import torch

        sampler = EpochSampler(len(self.train_set), self.seed, epoch, self.batch_size, self.rank, self.world, start_batch)
        return torch.utils.data.DataLoader(
            self.train_set, batch_size=self.micro_batch_size, sampler=sampler, drop_last=True,
            num_workers=self.num_workers, pin_memory=self.pin_memory, persistent_workers=False,
            generator=torch.Generator().manual_seed(self.seed + epoch),
        )

    def batches(self, step: int, per_step: int) -> Iterator[list]:
        """The micro-batches of each step from ``step`` on, ``per_step`` at a time, across epochs."""
        epoch, batch_in_epoch = divmod(step, self.batches_per_epoch)
        data_iter = iter(self.loader(epoch, batch_in_epoch))
        while True:
            micro_batches = []
            while len(micro_batches) < per_step:
                try:
                    micro_batches.append(next(data_iter))
                except StopIteration:  # an epoch holds whole steps, so only reached between steps
                    epoch += 1
                    data_iter = iter(self.loader(epoch))
            yield micro_batches


def _open_store(path: str, store_options: dict | None, prefetch: bool):
    from vmp.data import EpisodeStore

    store = EpisodeStore.open(path, storage_options=store_options)
    if prefetch:
        store.prefetch()  # a URL store: all of it into the local cache first, so no step waits on the network
    return store


def latest_checkpoint(cfg: DictConfig) -> Path:
    """The checkpoint a run writes every training.ckpt_every steps, and resumes from."""
    return Path(cfg.run_dir) / "checkpoints" / "latest.pt"


def build_data(cfg: DictConfig, micro: int, rank: int, world: int, device: Any) -> TrainingData:
    """The stores, samplers and datasets of a run. A head may first learn settings from the store (a tokenizer's
    ranges, ...): they are written into ``cfg.policy``, so the checkpoint's config holds them."""
    from vmp.data import SequenceDataset, SequenceSampler
    from vmp.data.dataset import MixedSequenceDataset
    from vmp.policies.build import head_config
    from vmp.policies.heads import HEADS

    tcfg = cfg.training
    head_settings = head_config(cfg)  # an unknown head or setting is refused here, before the data is read
    store_options = OmegaConf.to_container(cfg.store_options, resolve=True) if cfg.get("store_options") else None
    prefetch = bool(cfg.get("store_prefetch", True))
    store = _open_store(cfg.store, store_options, prefetch)
    head_cls = HEADS[cfg.policy.name]
    if head_cls.learned_settings and cfg.resume and latest_checkpoint(cfg).exists():
        # a resumed run keeps what the head learned when it started: relearning need not give the same (the subword
        # tokenizer's ids differ from one training to the next), and the weights were trained against the first
        from vmp.policies.checkpoint import read_checkpoint

        saved = OmegaConf.create(read_checkpoint(latest_checkpoint(cfg))["cfg"]).policy
        with open_dict(cfg):
            for key in head_cls.learned_settings:
                cfg.policy[key] = saved.get(key)
        head_settings = head_config(cfg)
    learned = head_cls.prepare_settings(head_settings, cfg.task, store)
    if learned:
        with open_dict(cfg):
            for key, value in learned.items():
                cfg.policy[key] = value
        head_settings = head_config(cfg)
    goal_keys = list(cfg.task.get("goal_keys") or [])
    sampler_kwargs = dict(
        n_obs_steps=head_settings.n_obs_steps, horizon=head_settings.horizon,
        n_action_steps=head_settings.n_action_steps,
        val_ratio=tcfg.val_ratio, seed=cfg.seed, goal_keys=goal_keys or None, goal_mode=tcfg.goal_mode,
        language=bool(cfg.task.get("language_conditioned", False)),
    )
    # which keys it reads, and what else it trains on: future frames, training-only targets, per-step text
    sampler_kwargs.update(head_cls.batch_spec(head_settings, cfg.task).sampler_settings(list(cfg.task.shape_meta.obs)))
    sampled = {*sampler_kwargs["keys"], *goal_keys, *(sampler_kwargs.get("future_keys") or [])}
    sampler_kwargs["image_sizes"] = {k: v for k, v in task_image_sizes(cfg.task, store).items() if k in sampled}

    def dataset(source, split: str):
        derived = head_cls.precompute(head_settings, cfg.task, source)  # e.g. PAD's image latents, encoded once
        return SequenceDataset(SequenceSampler(source, split=split, derived=derived or None, **sampler_kwargs))

    train_set = dataset(store, "train")
    stats_sampler = train_set.sampler
    val_set = dataset(store, "val") if tcfg.val_ratio > 0 else None
    if cfg.get("mix"):  # further stores in the same run (e.g. action-free video), weighted against the main one
        members, weights = [train_set], [1.0]
        for i, entry in enumerate(cfg.mix):
            if entry.get("store") is None or entry.get("weight") is None:
                raise ValueError(f"mix[{i}] must give `store` and `weight`, got {OmegaConf.to_container(entry)}")
            members.append(dataset(_open_store(str(entry.store), store_options, prefetch), "train"))
            weights.append(float(entry.weight))
        train_set = MixedSequenceDataset(members, weights, seed=cfg.seed)
    if len(train_set) < tcfg.batch_size:
        raise ValueError(f"{cfg.store}: {len(train_set)} training windows, fewer than one batch of {tcfg.batch_size}")
    return TrainingData(store, train_set, val_set, stats_sampler, int(tcfg.batch_size), micro, int(tcfg.num_workers),
                        int(cfg.seed), rank, world, pin_memory=device.type == "cuda")


def build_policy(cfg: DictConfig, data: TrainingData, device: Any):
    """The head, its normalizer fit on the main store's training split (actions: only episodes that have them):
    validation episodes must not leak into what the model is given."""
    import torch

    from vmp.data import Normalizer
    from vmp.policies.build import build_model, normalizer_modes

    torch.manual_seed(cfg.seed)
    modes = normalizer_modes(cfg)
    sampler = data.stats_sampler
    episodes = {k: sampler.stats_episodes(k) if k in sampler.kinds else sampler.train_episodes for k in modes}
    policy = build_model(cfg, Normalizer.from_store(data.store, modes, episodes=episodes)).to(device)
    settings = policy.checkpoint_settings()
    if settings:  # recorded in the checkpoint's config (e.g. PAD's autoencoder architecture)
        with open_dict(cfg):
            for key, value in settings.items():
                cfg.policy[key] = value
    return policy


@dataclasses.dataclass
class Run:
    """One training run's state between steps: what a checkpoint saves and what the step, validation and
    bookkeeping read."""

    cfg: DictConfig
    data: TrainingData
    policy: Any
    model: Any  # the policy, or its DistributedDataParallel wrapper
    optimizer: Any
    lr_schedule: Any
    ema: Any
    device: Any
    ckpt_path: Path
    is_main: bool
    step: int = 0
    train_minutes: float = 0.0  # of earlier sessions of this run (resume)
    start: float = dataclasses.field(default_factory=time.perf_counter)
    best: dict[str, Any] = dataclasses.field(default_factory=dict)
    saved_step: int | None = None  # the step latest.pt holds

    def checkpoint(self) -> None:
        """latest.pt (rank 0): model, EMA, optimizer, schedule, best, and the budget spent so far."""
        import torch

        from vmp.policies.checkpoint import model_io, save_checkpoint
        from vmp.results import git_revision

        if not self.is_main:
            return
        cfg, tcfg = self.cfg, self.cfg.training
        device = (f"cpu ({torch.get_num_threads()} threads)" if self.device.type == "cpu"
                  else torch.cuda.get_device_name(self.device))
        save_checkpoint(self.ckpt_path, {
            "best": self.best, "cfg": OmegaConf.to_yaml(cfg), "io": model_io(cfg), "policy": self.policy.state_dict(),
            "ema": self.ema.state_dict(), "optimizer": self.optimizer.state_dict(),
            "lr_schedule": self.lr_schedule.state_dict(), "step": self.step, "git_rev": git_revision(),
            "budget": {"train_steps": self.step, "batch_size": int(tcfg.batch_size), "processes": self.data.world,
                       "train_minutes": round(self.train_minutes + (time.perf_counter() - self.start) / 60, 2),
                       "device": device, "n_demos": self.data.store.n_episodes},
        })
        self.saved_step = self.step

    def validate(self) -> float:
        """Mean loss of the EMA weights over the first ``training.val_batches`` validation batches."""
        import torch

        tcfg = self.cfg.training
        losses = []
        val_loader = torch.utils.data.DataLoader(self.data.val_set, batch_size=tcfg.batch_size, shuffle=False,
                                                 num_workers=tcfg.num_workers)
        with torch.no_grad():
            self.ema.store(self.policy.parameters())
            self.ema.copy_to(self.policy.parameters())
            self.policy.eval()
            torch.manual_seed(step_seed(self.cfg.seed, -1, 0))
            for i, batch in enumerate(val_loader):
                if i >= tcfg.val_batches:
                    break
                losses.append(self.policy.compute_loss(to_device(batch, self.device))["loss"].item())
            self.ema.restore(self.policy.parameters())
        self.policy.train()
        return sum(losses) / max(len(losses), 1)

    def optimizer_step(self, micro_batches: list, autocast: Any) -> dict[str, float]:
        """One optimizer step over the step's micro-batches -> its mean losses."""
        import torch

        tcfg, accumulate, rank = self.cfg.training, len(micro_batches), self.data.rank
        self.optimizer.zero_grad(set_to_none=True)
        losses = accumulate_gradients(self.model, micro_batches, self.device, autocast,
                                      [step_seed(self.cfg.seed, self.step, rank * accumulate + a)
                                       for a in range(accumulate)],
                                      sync_last_only=self.data.world > 1, step=self.step)
        if tcfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.policy.parameters(), tcfg.grad_clip)
        self.optimizer.step()
        self.lr_schedule.step()
        self.ema.step(self.policy.parameters())
        self.step += 1
        return losses

    def after_step(self, row: dict[str, Any], steps: int, stop_at: int) -> dict[str, Any]:
        """Rank 0's bookkeeping after a step: validation, periodic evaluation, latest/best/kept checkpoints. ``row``
        holds the step's logged losses (empty between log steps); -> the row with what was measured."""
        tcfg, step = self.cfg.training, self.step
        if self.data.val_set is not None and (step % tcfg.val_every == 0 or step == steps):
            row["val_loss"] = self.validate()
            log.info("step %d val_loss %.4f", step, row["val_loss"])
        evaluate = tcfg.eval_every > 0 and (step % tcfg.eval_every == 0 or step == steps)
        improved = (self.best["metric"] == "val_loss" and "val_loss" in row
                    and _better(row["val_loss"], self.best["value"], lower=True))
        if improved:
            self.best.update(value=row["val_loss"], step=step)
        keep = tcfg.keep_every > 0 and step % tcfg.keep_every == 0
        if step % tcfg.ckpt_every == 0 or step == stop_at or improved or keep or evaluate:
            self.checkpoint()
        if evaluate:
            row["success_rate"] = evaluate_checkpoint(self.cfg, self.ckpt_path, step)
            if _better(row["success_rate"], self.best["value"], lower=False):
                self.best.update(value=row["success_rate"], step=step)
                improved = True
        if improved:
            keep_copy(self.ckpt_path, self.ckpt_path.with_name("best.pt"))
        if keep:
            keep_copy(self.ckpt_path, self.ckpt_path.with_name(f"step_{step:07d}.pt"))
        return row

    def disk_full(self, err: OSError) -> OSError:
        """A full disk: every further write fails too. The error to stop with, saying what survives and how to go on."""
        if self.saved_step is None:
            kept = "no checkpoint was saved yet: free some space, then start again"
        else:
            kept = (f"{self.ckpt_path} holds step {self.saved_step}: free some space, then run the same command with "
                    f"resume=true to continue from step {self.saved_step}")
        return OSError(err.errno, f"{err.strerror}. Training stopped at step {self.step}; {kept}")


class LossMeter:
    """Mean losses over the steps since the last logged one, and the samples per second they took."""

    def __init__(self, step: int, batch_size: int):
        self.batch_size, self.last_step, self.last_time = batch_size, step, time.perf_counter()
        self.sums: dict[str, float] = {}
        self.n = 0

    def add(self, losses: dict[str, float]) -> None:
        for key, value in losses.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
        self.n += 1

    def row(self, step: int) -> dict[str, float]:
        now = time.perf_counter()
        row = {key: value / self.n for key, value in self.sums.items()}
        row["samples_per_s"] = (step - self.last_step) * self.batch_size / max(now - self.last_time, 1e-9)
        self.last_time, self.last_step, self.sums, self.n = now, step, {}, 0
        return row


def setup_processes(cfg: DictConfig) -> tuple[Any, int, int]:
    """(device, rank, world size): a torchrun-launched process joins its group (gloo on CPU, nccl on GPU)."""
    import torch
    import torch.distributed as dist

    from vmp.policies.checkpoint import resolve_device

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    device = resolve_device(cfg.device)
    if world > 1:
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device, rank, world


def start_run(cfg: DictConfig, data: TrainingData, device: Any, steps: int) -> Run:
    """The policy, optimizer, schedule and EMA, fresh or resumed from run_dir's latest.pt."""
    from diffusers.training_utils import EMAModel
    from torch.nn.parallel import DistributedDataParallel

    tcfg, is_main = cfg.training, data.rank == 0
    policy = build_policy(cfg, data, device)
    optimizer, lr_schedule = configure_optimizers(policy, tcfg, steps)
    ema = EMAModel(policy.parameters(), decay=tcfg.ema_decay, use_ema_warmup=True, power=tcfg.ema_power)
    ema.to(device)
    ckpt_path = latest_checkpoint(cfg)
    # best.pt: the checkpoint with the best periodic-evaluation success (when training.eval_every > 0), else the
    # lowest validation loss; kept beside latest.pt (and step_N.pt every training.keep_every steps)
    best = {"metric": "success_rate" if tcfg.eval_every > 0 else "val_loss", "value": None, "step": None}
    run = Run(cfg, data, policy, policy, optimizer, lr_schedule, ema, device, ckpt_path, is_main, best=best)
    resumed = resume_or_start(cfg, ckpt_path, {"policy": policy, "optimizer": optimizer, "lr_schedule": lr_schedule,
                                               "ema": ema}, device, is_main)
    if resumed is not None:
        ema.to(device)
        run.step = run.saved_step = int(resumed["step"])
        run.best.update(resumed.get("best") or {})
        run.train_minutes = float(resumed.get("budget", {}).get("train_minutes", 0.0))
    if data.world > 1:
        run.model = DistributedDataParallel(policy)
    return run


def train(cfg: DictConfig) -> Path:
    """Run (or resume) training; returns the path of the final checkpoint."""
    import torch
    import torch.distributed as dist

    from vmp.progress import progress

    tcfg = cfg.training
    check_training_types(tcfg)
    refuse_used_run_dir(cfg)
    device, rank, world = setup_processes(cfg)
    micro, accumulate = accumulation_steps(int(tcfg.batch_size), tcfg.micro_batch_size, world)
    if tcfg.precision not in ("fp32", "bf16"):
        raise ValueError(f"training.precision={tcfg.precision!r} must be fp32 or bf16")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=tcfg.precision == "bf16")
    steps = 20 if tcfg.debug else int(tcfg.steps)
    stop_at = min(steps, int(tcfg.stop_after)) if tcfg.get("stop_after") else steps
    data = build_data(cfg, micro, rank, world, device)
    run = start_run(cfg, data, device, steps)
    if run.is_main:
        log.info("%s head, %.2fM parameters, %d train windows (%d val), device %s, %d process(es), batch %d = %d x %d "
                 "micro-batch(es) of %d, %s", cfg.policy.name, sum(p.numel() for p in run.policy.parameters()) / 1e6,
                 len(data.train_set), len(data.val_set) if data.val_set else 0, device, world, tcfg.batch_size, world,
                 accumulate, micro, tcfg.precision)
    metrics_log = (MetricsLog(Path(cfg.run_dir) / "metrics.csv", resume_step=run.step,
                              tensorboard=bool(tcfg.tensorboard)) if run.is_main else None)
    run.policy.train()
    # a line every 30 s in a log (nohup, a cluster job), redrawn in place on a terminal
    bar = progress(total=steps, initial=run.step, disable=not run.is_main, desc=f"train {cfg.policy.name}",
                   dynamic_ncols=True)
    meter = LossMeter(run.step, int(tcfg.batch_size))
    stop = StopRequest()
    previous_sigterm = signal.signal(signal.SIGTERM, stop) if run.is_main else None
    try:
        batches = data.batches(run.step, accumulate)
        while run.step < stop_at:
            stop.check()
            meter.add(run.optimizer_step(next(batches), autocast))
            if not run.is_main:
                continue
            bar.update(1)
            row = {}
            if run.step % tcfg.log_every == 0 or run.step == stop_at:
                row = {**meter.row(run.step), "lr": run.lr_schedule.get_last_lr()[0]}
                bar.set_postfix(loss=f"{row['loss']:.4f}", samples_s=f"{row['samples_per_s']:.0f}")
            row = run.after_step(row, steps, stop_at)
            if row:
                metrics_log.write({"step": run.step, **row})
        if world > 1:
            dist.barrier()  # every rank done (rank 0 may still be writing its checkpoint) before the group is torn down
    except KeyboardInterrupt:
        log.warning("interrupted at step %d: saving %s (continue with resume=true)", run.step, run.ckpt_path)
        run.checkpoint()
        raise
    except OSError as err:
        if err.errno not in DISK_FULL:
            raise
        raise run.disk_full(err) from err
    finally:
        if previous_sigterm is not None:
            signal.signal(signal.SIGTERM, previous_sigterm)
        bar.close()
        if metrics_log is not None:
            metrics_log.close(quiet=sys.exc_info()[0] is not None)
        if world > 1:
            dist.destroy_process_group()
    if run.is_main:
        log.info("done: %d steps, checkpoint %s", run.step, run.ckpt_path)
    return run.ckpt_path


def configure_optimizers(policy: Any, tcfg: DictConfig, steps: int) -> tuple[Any, Any]:
    """AdamW with weight decay on matrices only (not biases, norms, embeddings' 1-d parameters or the normalizer's
    statistics), and a cosine learning-rate schedule with linear warm-up over ``steps``."""
    import torch
    from diffusers.optimization import get_cosine_schedule_with_warmup

    decay, no_decay = [], []
    for name, p in policy.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 and not name.startswith("normalizer") else no_decay).append(p)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": tcfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=tcfg.lr, betas=tuple(tcfg.betas),
    )
    return optimizer, get_cosine_schedule_with_warmup(optimizer, tcfg.warmup_steps, steps)


def refuse_used_run_dir(cfg: DictConfig) -> None:
    """A run_dir that holds a checkpoint is continued (resume=true) or replaced (overwrite=true), never silently
    trained over; refused before any data is read, so a re-run recipe line fails in seconds."""
    from vmp.policies.checkpoint import read_checkpoint

    ckpt_path = latest_checkpoint(cfg)
    if not cfg.resume and not cfg.get("overwrite", False) and ckpt_path.exists():
        step = read_checkpoint(ckpt_path)["step"]
        raise FileExistsError(f"run_dir {cfg.run_dir} already holds a checkpoint (step {step}): resume=true to "
                              "continue it, overwrite=true to start afresh there, or another run_dir")


def resume_or_start(cfg: DictConfig, ckpt_path: Path, state: dict[str, Any], device: Any, is_main: bool
                    ) -> dict[str, Any] | None:
    """With ``resume=true`` and a checkpoint: load it into ``state`` (policy, optimizer, lr_schedule, ema) and return
    it. Otherwise start afresh (``refuse_used_run_dir`` has run): ``overwrite=true`` clears what of the old run could
    pass for this one's (best.pt, step_N.pt, TensorBoard). -> None."""
    from vmp.policies.checkpoint import check_same_io, model_io, read_checkpoint

    run_dir = Path(cfg.run_dir)
    if cfg.resume and ckpt_path.exists():
        payload = read_checkpoint(ckpt_path, map_location=device)
        check_same_io(model_io(OmegaConf.create(payload["cfg"])), model_io(cfg), str(ckpt_path), "this run's config")
        for name, obj in state.items():
            obj.load_state_dict(payload[name])
        if is_main:
            log.info("resumed from %s at step %d", ckpt_path, int(payload["step"]))
        return payload
    if cfg.resume and is_main:
        log.warning("resume=true but %s does not exist: starting from scratch", ckpt_path)
    elif cfg.get("overwrite", False) and is_main:  # afresh: nothing of the old run may pass for this one's
        import shutil

        for old in [*ckpt_path.parent.glob("best.pt"), *ckpt_path.parent.glob("step_*.pt")]:
            old.unlink()
        shutil.rmtree(run_dir / "tensorboard", ignore_errors=True)
    return None


def accumulate_gradients(model: Any, micro_batches: list, device: Any, autocast: Any, seeds: list[int],
                         sync_last_only: bool, step: int) -> dict[str, float]:
    """Forward and backward over one step's micro-batches (each seeded, so a step's noise does not depend on how the
    batch is split across processes) -> the step's mean losses. Under DDP gradients are all-reduced once, on the
    last micro-batch."""
    import torch

    accumulate = len(micro_batches)
    step_losses: dict[str, float] = {}
    for a, batch in enumerate(micro_batches):
        torch.manual_seed(seeds[a])
        sync = model.no_sync() if sync_last_only and a < accumulate - 1 else contextlib.nullcontext()
        with sync:
            with autocast:
                losses = model(to_device(batch, device))
            loss = losses["loss"]
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()} at step {step}: lower training.lr or check the store")
            (loss / accumulate).backward()
        for key, value in losses.items():
            value = float(value.detach() if torch.is_tensor(value) else value)
            step_losses[key] = step_losses.get(key, 0.0) + value / accumulate
    return step_losses


def _better(value: float, best: float | None, lower: bool) -> bool:
    return best is None or (value < best if lower else value > best)


def keep_copy(src: Path, dst: Path) -> None:
    """``dst`` becomes ``src``'s content, atomically: a hard link (no extra disk) where the file system allows,
    else a copy. latest.pt is later replaced by rename, so the link keeps this version."""
    import shutil

    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    with writing(dst):
        try:
            try:
                os.link(src, tmp)
            except OSError:
                shutil.copy2(src, tmp)
            os.replace(tmp, dst)
        finally:
            tmp.unlink(missing_ok=True)  # a partial copy would hold the space the next attempt needs


def evaluate_checkpoint(cfg: DictConfig, ckpt_path: Path, step: int) -> float:
    """Periodic simulation evaluation of the latest checkpoint (EMA weights) in worker processes."""
    import functools

    from vmp.sim.evaluate import run_evaluation

    out_dir = Path(cfg.run_dir) / "eval" / f"step_{step:07d}"
    make_policy = functools.partial(_load_policy_only, str(ckpt_path))
    metrics = run_evaluation(cfg.task, make_policy, n_episodes=cfg.training.eval_episodes, seed=100_000,
                             n_workers=cfg.training.eval_workers, out_dir=out_dir, n_videos=1)
    log.info("step %d: success %.2f over %d episodes (%s)", step, metrics["success_rate"], cfg.training.eval_episodes, out_dir)
    return metrics["success_rate"]


def _load_policy_only(path: str):
    from vmp.policies.checkpoint import load_policy

    return load_policy(path)[0]


@hydra.main(config_path="pkg://vmp.configs", config_name="train", version_base=None)
def main(cfg: DictConfig) -> None:
    with exit_on_full_disk("vmp-train"):
        train(cfg)


if __name__ == "__main__":
    main()
