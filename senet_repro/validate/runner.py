"""The evaluation loop: shard, load, preprocess, run, count, all-reduce.

Under `torchrun` every rank takes the images `rank, rank + world, ...` of the sorted
set -- disjoint shards with no padding, so the counts are exact for any world size
(unlike DistributedSampler, which repeats images to even out the shards). Counts are
summed with all_reduce; rank 0 additionally gathers the indices every rank processed
and checks that together they cover the set exactly once.
"""

from __future__ import annotations

import ctypes
import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader
from tqdm import tqdm

from senet_repro.transforms import CaffePreprocess

from .backends import Backend, class_scores
from .data import ValImages, ValSet, collate
from .errors import ValidateError
from .metrics import TopKCounter
from .nvjpeg import GpuJpegDecoder

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, glibc's malloc.h


@dataclass(frozen=True)
class Distributed:
    """This process's place in a torchrun job (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_type: str) -> Distributed:
    """Join the process group torchrun describes in the environment (gloo on CPU, nccl on CUDA)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Distributed()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return Distributed(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def configure_precision(device: torch.device, *, tf32: bool) -> None:
    """fp32 means fp32: TF32 off unless asked (PyTorch enables it for cuDNN by default)."""
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True


@dataclass
class EvalOptions:
    batch_size: int = 50
    workers: int = field(default_factory=lambda: min(8, os.cpu_count() or 1))
    gpu_decode: bool = False
    strict: bool = False
    keep_predictions: bool = False
    progress: bool = True


@dataclass
class EvalResult:
    """Exact counts over the whole set (all ranks), plus timing and the unreadable files."""

    images: int
    top1_correct: int
    top5_correct: int
    unreadable: list[tuple[str, str]]
    seconds: float
    world_size: int
    predictions: dict[str, list[int]] | None = None
    decoded: dict[str, int] = field(default_factory=dict)  # images per decoder route (--gpu-decode)

    @property
    def top1_error(self) -> float:
        """Percent."""
        return 100.0 * (self.images - self.top1_correct) / self.images if self.images else float("nan")

    @property
    def top5_error(self) -> float:
        """Percent."""
        return 100.0 * (self.images - self.top5_correct) / self.images if self.images else float("nan")

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("nan")


def _loader(dataset: ValImages, options: EvalOptions, device: torch.device) -> DataLoader:
    """Batches of `options.batch_size` network inputs: fewer images when each has ten views."""
    workers = options.workers
    return DataLoader(
        dataset,
        batch_size=max(1, options.batch_size // dataset.preprocess.num_views),
        shuffle=False,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=device.type == "cuda",
        worker_init_fn=_worker_init if workers else None,
        prefetch_factor=4 if workers else None,
        persistent_workers=False,
    )


def _worker_init(_: int) -> None:
    """Tune a loader worker: one intra-op thread, and keep freed memory.

    Workers already occupy the cores, so intra-op threads only oversubscribe them. glibc
    returns every freed image-sized buffer to the OS and the next image faults it back in;
    on a VM we measured that to cost 5x the resize itself (17 ms -> 3 ms per image with
    these two settings), so the worker keeps its freed memory.
    """
    torch.set_num_threads(1)
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: nothing to tune
        return
    libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30)
    libc.mallopt(_M_MMAP_THRESHOLD, 1 << 25)  # 32 MiB, glibc's ceiling


def _scores(backend: Backend, batch: torch.Tensor) -> torch.Tensor:
    """Scores (N, classes) of a batch of views (N, views, C, H, W).

    One view: the network's logits. Ten views: the mean of their softmax probabilities,
    as `caffe.Classifier.predict(oversample=True)` averages the `prob` blob. Fully
    convolutional classifiers (SqueezeNet, MobileNet) score as N x classes x 1 x 1.
    """
    logits = class_scores(backend(batch.flatten(0, 1)))
    if batch.shape[1] == 1:
        return logits
    return logits.double().softmax(dim=1).view(batch.shape[0], batch.shape[1], -1).mean(dim=1)


def evaluate(
    backend: Backend,
    valset: ValSet,
    preprocess: CaffePreprocess,
    *,
    label_map: Sequence[int] | None = None,
    options: EvalOptions | None = None,
    distributed: Distributed | None = None,
) -> EvalResult:
    """Top-1/top-5 counts of `backend` on `valset`; labels go through `label_map`.

    `label_map[devkit index]` is the class index in the network's output order (None:
    the network uses the devkit order). Every rank calls this; all get the totals.
    """
    options = options or EvalOptions()
    distributed = distributed or Distributed()
    device = backend.device
    shard = range(distributed.rank, len(valset), distributed.world_size)
    dataset = ValImages(valset, preprocess, shard, raw=options.gpu_decode and device.type == "cuda")
    decoder = GpuJpegDecoder(device, preprocess) if dataset.raw else None
    mapping = torch.tensor(label_map, dtype=torch.int64) if label_map is not None else None
    counter = TopKCounter(device)
    unreadable: list[tuple[str, str]] = []
    seen: list[int] = []
    predictions: dict[str, list[int]] = {}

    progress = tqdm(
        total=len(shard),
        unit="img",
        dynamic_ncols=True,
        leave=False,
        disable=None if options.progress and distributed.is_main else True,
    )  # None: TTY only
    start = time.perf_counter()
    for images, labels, indices, errors in _loader(dataset, options, device):
        if decoder is not None:
            crops = decoder.decode(images, errors)
        else:
            crops = images.to(device, non_blocking=True)
        bad = [(valset.paths[int(i)].name, message) for i, message in zip(indices, errors) if message]
        if bad and options.strict:
            raise ValidateError(f"unreadable image {bad[0][0]}: {bad[0][1]} (--strict)")
        unreadable.extend(bad)
        readable = torch.tensor([not message for message in errors]).to(device, non_blocking=True)
        targets = (labels if mapping is None else mapping[labels]).to(device, non_blocking=True)
        scores = _scores(backend, preprocess.normalise(crops)).to(device)
        counter.update(scores, targets, readable)
        if options.keep_predictions:
            top = scores.topk(min(5, scores.shape[1]), dim=1).indices.tolist()
            predictions.update((valset.paths[int(i)].name, t) for i, t in zip(indices, top))
        seen.extend(indices.tolist())
        progress.update(len(indices))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    progress.close()
    return _combine(
        counter.counts,
        seconds,
        unreadable,
        seen,
        predictions if options.keep_predictions else None,
        len(valset),
        distributed,
        Counter(decoder.routes if decoder is not None else {}),
    )


def _combine(
    counts: torch.Tensor,
    seconds: float,
    unreadable: list[tuple[str, str]],
    seen: list[int],
    predictions: dict[str, list[int]] | None,
    total: int,
    distributed: Distributed,
    decoded: Counter[str],
) -> EvalResult:
    """Sum the counts of all ranks and check that the shards covered the set exactly once."""
    if distributed.world_size > 1:
        backend_device = (
            torch.device("cuda", torch.cuda.current_device())
            if dist.get_backend() == "nccl"
            else torch.device("cpu")
        )
        counts = counts.to(backend_device)
        dist.all_reduce(counts)
        longest = torch.tensor([seconds], dtype=torch.float64, device=backend_device)
        dist.all_reduce(longest, op=dist.ReduceOp.MAX)
        seconds = float(longest.item())
        gathered: list = [None] * distributed.world_size
        dist.all_gather_object(gathered, (seen, unreadable, predictions, decoded))
        seen = [i for part in gathered for i in part[0]]
        decoded = sum((part[3] for part in gathered), Counter())
        unreadable = sorted(item for part in gathered for item in part[1])
        if predictions is not None:
            predictions = {name: top for part in gathered for name, top in part[2].items()}
    images, top1, top5 = (int(v) for v in counts.tolist())
    if images != len(seen) or sorted(seen) != list(range(total)):
        raise RuntimeError(
            f"sharding error: {len(seen)} images processed, {len(set(seen))} distinct, {total} in the set"
        )
    return EvalResult(
        images, top1, top5, unreadable, seconds, distributed.world_size, predictions, dict(decoded)
    )
