"""Option combinations that cannot do what the user expects, refused before any work starts
(before latents are encoded), all at once, each with the reason."""
from collections.abc import Sequence

from .config import TrainConfig

WARMUP_SCHEDULERS_IGNORE = ("constant", "adafactor")  # schedules without a warmup phase


def min_side(unet_config: dict) -> int:
    """The smallest picture side the U-Net can take: the latent (1/8 of the picture) is halved
    once per level after the first."""
    return 8 * 2 ** (len(unet_config.get("channel_mult", [1])) - 1)


def check_options(cfg: TrainConfig, datasets: Sequence, unet_config: dict) -> None:
    problems = []
    warmup = cfg.lr_warmup_steps
    if (cfg.lr_scheduler not in WARMUP_SCHEDULERS_IGNORE and not cfg.max_train_epochs and warmup >= 1
            and warmup >= cfg.max_train_steps):
        problems.append(f"lr_warmup_steps ({int(warmup)}) is not shorter than the run (max_train_steps {cfg.max_train_steps}): "
                        "the learning rate would never reach its value. Lower it, or give a ratio such as 0.1.")
    smallest = min_side(unet_config)
    for n, dataset in enumerate(datasets, 1):
        sides = list(dataset.resolution) + ([dataset.min_bucket_reso] if dataset.enable_bucket else [])
        if min(sides) < smallest:
            what = "min_bucket_reso" if dataset.enable_bucket and dataset.min_bucket_reso < min(dataset.resolution) else "resolution"
            problems.append(f"dataset {n}: {what} {min(sides)} is below the {smallest} px this model's U-Net can take "
                            f"(its {len(unet_config.get('channel_mult', []))} levels halve the latent). Use {smallest} or more.")
    if problems:
        raise ValueError("These options cannot train as expected:\n" + "\n".join(f"- {p}" for p in problems))


def check_batches(data) -> None:
    """A batch larger than its dataset's epoch would silently train smaller batches."""
    problems = []
    for n, (dataset, samples) in enumerate(zip(data.datasets, data.samples_per_dataset()), 1):
        if samples and dataset.batch_size > samples:
            problems.append(f"dataset {n}: batch_size {dataset.batch_size} is larger than its {samples} training samples "
                            "per epoch (images x repeats). Lower batch_size or add images/repeats.")
    if problems:
        raise ValueError("These options cannot train as expected:\n" + "\n".join(f"- {p}" for p in problems))
