"""The one path from dataset options to training batches, whatever the source (TOML, folder
tree, in-graph lists).

    data = TrainingData(datasets, encode_latents=vae_encode, vae_id="sdxl-vae:<hash>", seed=42,
                        cache_dir=Path(".../latents"))
    data.prepare(progress=lambda done, total: ...)   # encodes and caches every latent; the VAE
                                                     # is not needed afterwards (cache_latents)
    for batch in data.batches(epoch, start):         # a Batch (batch.py), CPU tensors; len(data)
        ...                                          # batches per epoch; start > 0 resumes mid-epoch
or with the loader's own cursor:
    batch = data.next_batch()                        # data.epoch / data.position advance
    torch.save(data.state_dict(), ...)               # resume: data.load_state_dict(...)

`encode_latents` takes images (B, 3, H, W) in [-1, 1] and returns the latents the loop
trains on, (B, C, H/8, W/8), already multiplied by the model's scale factor. `vae_id` names
the VAE (and its scale) for the latent cache key; this module never touches ComfyUI.

Order: every epoch shuffles the samples inside each bucket, cuts them into batches of the
dataset's batch_size (the last batch of a bucket may be smaller) and shuffles the batches;
all randomness of epoch e and batch b comes from (seed, e, b), so a resumed run sees exactly
the batches an uninterrupted one does. Regularization samples are balanced per dataset as in
sd-scripts: reg repeats are extended or cut so an epoch holds as many reg samples as train
samples (repeats x images).
"""
import json
import logging
import random
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .augment import color_augment, hflip
from ..distributed import shard
from .batch import Batch
from .buckets import Bucketer, Placement, cover, resize_and_crop
from .captions import base_caption, process_caption, tags_of
from .config import DatasetConfig, SubsetConfig, check_dataset
from .errors import DatasetError, DatasetProblems, Problem
from .folders import scan_image_dir
from .images import ImageItem, content_hash, item_path, load_image, load_mask
from .latent_cache import LatentCache, latent_key
from .npz_latents import SdScriptsLatents, agrees
from .metadata import scan_metadata

log = logging.getLogger(__name__)

EncodeLatents = Callable[[torch.Tensor], torch.Tensor]
Progress = Callable[[int, int], None]


TOO_SMALL = Problem(
    "Images smaller than bucket_reso_steps with bucket_no_upscale on",
    "no bucket fits them: enlarge them, or turn bucket_no_upscale off",
)
GUIDES_MIXED = Problem(
    "Subsets without guide images",
    "other subsets have guides; every subset needs conditioning_data_dir (or guide images) when one has",
)
GUIDES_REQUIRED = Problem(
    "Subsets without guide images",
    "this training needs guide images: set conditioning_data_dir on every subset (or wire guide images into the list)",
)
UNCACHEABLE = Problem(
    "Subsets whose latents cannot be cached",
    "the option named changes the pixels every step: turn off latent caching, or that option",
)
NO_SOURCE = Problem("Subsets with no images", "give image_dir, metadata_file or in-graph images")
NO_MASKS = Problem(
    "Subsets without loss masks",
    "masked_loss is on: give every training subset masks with alpha_mask = true (the images' alpha channel) or "
    "mask_dir (mask images by basename); for trainings without guide images conditioning_data_dir holds the masks, "
    "as in sd-scripts",
)


@dataclass(eq=False)
class _Entry:
    item: ImageItem
    subset: SubsetConfig
    dataset: int
    placement: Placement
    caption: str
    content: str | None = None  # content hash, computed on first use


class TrainingData:
    """Bucketed, cached, resumable batches for the training loop.

    datasets: DatasetConfigs (load_dataset_toml, or built around subsets_from_folder_tree /
        items_from_tensors).
    seed: decides the order and every augmentation.
    cache_latents: encode every image once in prepare() (and its mirror with flip_aug);
        refused for subsets with color_aug or random_crop, whose pixels change every step.
        When False each batch is encoded as it is made, so the VAE must stay available.
    cache_dir: also keep the latents on disk there, reused by later runs and processes.
    size_multiple: every bucket side must be a multiple of this (LLLite needs 32).
    require_guides: the adapter needs guide images (LLLite, ControlNet).
    masked_loss: sd-scripts' --masked_loss: every training subset must have loss masks, and
        for an adapter without guides (require_guides False) the conditioning_data_dir images
        are the masks, as in sd-scripts. Subsets with alpha_mask or mask_dir give their batches
        masks whatever this says; Batch.masks is None when no sample has one.
    npz_latents: reuse the latents sd-scripts cached beside the images (prepare_buckets_latents.py
        or cache_latents_to_disk .npz files) when they match (npz_latents.py); the first one
        reused is checked against this run's own encoding, and on disagreement none is.
    holdout: number of training images kept out of training for held-out evaluation
        (holdout_batches()), chosen by the seed.
    shard: (rank, world) of a data-parallel run: batches are planned at batch_size * world
        (the global batch, the same on every rank) and each rank gets its contiguous slice,
        with every augmentation drawn as the single-process run draws it.
    """

    def __init__(
        self,
        datasets: Sequence[DatasetConfig],
        *,
        encode_latents: EncodeLatents,
        vae_id: str,
        seed: int = 0,
        cache_latents: bool = True,
        cache_dir: str | Path | None = None,
        size_multiple: int = 8,
        require_guides: bool = False,
        masked_loss: bool = False,
        npz_latents: SdScriptsLatents | None = None,
        holdout: int = 0,
        shard: tuple[int, int] = (0, 1),
    ):
        if size_multiple <= 0 or size_multiple % 8:
            raise ValueError(f"size_multiple must be a positive multiple of 8, got {size_multiple}")
        self.datasets = list(datasets)
        if not self.datasets:
            raise DatasetError("No dataset given: add at least one dataset with images.")
        for i, ds in enumerate(self.datasets, 1):
            check_dataset(ds, f"dataset #{i}")
        self.encode_latents = encode_latents
        self.vae_id = vae_id
        self.seed = int(seed)
        self.cache_latents = cache_latents
        self.cache = LatentCache(cache_dir)
        self.npz = npz_latents
        self.npz_reused = 0  # latents taken from sd-scripts' .npz files by prepare()
        self.epoch = 0
        self.position = 0
        self.rank, self.world = shard
        if not 0 <= self.rank < self.world:
            raise ValueError(f"shard {shard}: rank must be in [0, world)")

        # Every problem of every dataset, subset and guide folder goes into one error.
        problems = DatasetProblems()
        self._entries = self._place_all(problems)
        self._check_sizes(size_multiple, problems)
        # sd-scripts' masked loss without guided training: the conditioning images are the masks
        self.guides_are_masks = masked_loss and not require_guides and any(e.item.guide is not None for e in self._entries)
        self.has_guides = False if self.guides_are_masks else self._check_guides(require_guides, problems)
        self.has_masks = self._check_masks(masked_loss, problems)
        self._check_caching(problems)
        problems.raise_if_any()
        self._holdout = self._pick_holdout(holdout)
        self._groups = [self._bucket_samples(d) for d in range(len(self.datasets))]
        self.steps_per_epoch = sum(
            -(-len(samples) // self._global_batch(d)) for d, groups in enumerate(self._groups) for _, samples in groups
        )
        self._latents: dict[tuple[int, bool], torch.Tensor] = {}
        self._masks: dict[tuple[int, bool], torch.Tensor] = {}  # (1, h/8, w/8) at the placement's crop
        self._prepared = False
        self._plan_epoch, self._plan = -1, []

    # ----- building -----

    def _place_all(self, problems: DatasetProblems) -> list[_Entry]:
        entries = []
        for d, ds in enumerate(self.datasets):
            bucketer = Bucketer(ds)
            for j, subset in enumerate(ds.subsets, 1):
                for item in _items_of(subset, f"dataset #{d + 1} subset #{j}", problems):
                    placement = cover(item.size, item.bucket) if item.bucket else bucketer.place(item.size)
                    if min(placement.bucket) <= 0:
                        problems.add(TOO_SMALL, item_path(item), f"{item.size[0]}x{item.size[1]}, bucket_reso_steps {ds.bucket_reso_steps} px")
                        continue
                    entries.append(_Entry(item, subset, d, placement, base_caption(item.caption, subset) or ""))
        return entries

    def _check_sizes(self, multiple: int, problems: DatasetProblems) -> None:
        off_grid = Problem(
            f"Buckets that are not multiples of {multiple} px",
            f"this adapter trains on sizes that are multiples of {multiple}: use a resolution and bucket_reso_steps that are",
        )
        off = {(e.dataset + 1, e.placement.bucket) for e in self._entries if e.placement.bucket[0] % multiple or e.placement.bucket[1] % multiple}
        for d, (w, h) in sorted(off):
            problems.add(off_grid, f"dataset #{d}: {w}x{h}")

    def _check_guides(self, required: bool, problems: DatasetProblems) -> bool:
        with_guides = [e.item.guide is not None for e in self._entries]
        lacking = {id(e.subset): _where(e.subset) for e in self._entries if e.item.guide is None}.values()
        if required and not all(with_guides):
            for location in lacking:
                problems.add(GUIDES_REQUIRED, location)
        elif any(with_guides) and not all(with_guides):
            for location in lacking:
                problems.add(GUIDES_MIXED, location)
        return all(with_guides)

    def _mask_source(self, e: _Entry) -> tuple | None:
        """load_mask's arguments for an entry's loss mask, or None when it has none."""
        if e.item.mask is not None:
            return e.item.mask, False
        if e.subset.alpha_mask:
            return e.item.source, True
        if self.guides_are_masks and e.item.guide is not None:
            return e.item.guide, False
        return None

    def _check_masks(self, masked_loss: bool, problems: DatasetProblems) -> bool:
        with_masks = [self._mask_source(e) is not None for e in self._entries]
        if masked_loss:
            for location in {id(e.subset): _where(e.subset) for e, m in zip(self._entries, with_masks)
                             if not m and not e.subset.is_reg}.values():
                problems.add(NO_MASKS, location)
        return any(with_masks)

    def _check_caching(self, problems: DatasetProblems) -> None:
        if not self.cache_latents:
            return
        for subset in {id(e.subset): e.subset for e in self._entries}.values():
            if subset.changes_pixels_each_step:
                problems.add(UNCACHEABLE, _where(subset), "color_aug" if subset.color_aug else "random_crop")

    def _pick_holdout(self, count: int) -> list[int]:
        if count <= 0:
            return []
        train = [i for i, e in enumerate(self._entries) if not e.subset.is_reg]
        if count >= len(train):
            raise DatasetError(f"holdout={count} would leave no training images (there are {len(train)}).")
        return sorted(random.Random(f"{self.seed}:holdout").sample(train, count))

    def _bucket_samples(self, d: int) -> list[tuple[tuple[int, int], list[int]]]:
        """(bucket, entry indices with repeats) for one dataset, reg samples balanced."""
        held = set(self._holdout)
        train = [i for i, e in enumerate(self._entries) if e.dataset == d and not e.subset.is_reg and i not in held]
        reg = [i for i, e in enumerate(self._entries) if e.dataset == d and e.subset.is_reg]
        if not train:
            raise DatasetError(f"Dataset #{d + 1} has no training images (only regularization or held-out images).")
        samples = [i for i in train for _ in range(self._entries[i].subset.num_repeats)]
        samples += [i for i, n in _balance_reg(reg, len(samples), self._entries) for _ in range(n)]
        groups: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i in samples:
            groups[self._entries[i].placement.bucket].append(i)
        return sorted(groups.items())

    # ----- latents -----

    def prepare(self, progress: Progress | None = None) -> int:
        """Encode and cache the latents of every image the run can use (no-op without
        cache_latents, or when already done). Returns how many images were encoded (cache
        misses); progress(done, total) is called after each encoded chunk."""
        if not self.cache_latents or self._prepared:
            return 0
        used = sorted({i for groups in self._groups for _, samples in groups for i in samples} | set(self._holdout))
        pending, theirs = [], []
        with torch.inference_mode(False), torch.no_grad():
            for i in used:
                e = self._entries[i]
                for flip in (False, True) if e.subset.flip_aug and i not in self._holdout else (False,):
                    key = latent_key(self._content(i), self.vae_id, e.placement, flip)
                    cached = self.cache.get(key)
                    if cached is not None:
                        self._latents[(i, flip)] = cached
                        continue
                    npz = self._npz(i, flip)
                    if npz is not None:
                        theirs.append((i, flip, key, npz))
                    else:
                        pending.append((i, flip, key))
            pending += self._reuse_npz(theirs)
            by_bucket: dict[tuple, list] = defaultdict(list)
            for job in pending:
                e = self._entries[job[0]]
                by_bucket[(e.dataset, e.placement.bucket)].append(job)
            done = 0
            for (d, _), jobs in sorted(by_bucket.items()):
                size = self.datasets[d].batch_size
                for start in range(0, len(jobs), size):
                    chunk = jobs[start : start + size]
                    pixels = torch.stack([self._pixels(i, self._entries[i].placement.crop, flip, None) for i, flip, _ in chunk])
                    for (i, flip, key), lat in zip(chunk, self._encode(pixels)):
                        lat = lat.clone()
                        self.cache.put(key, lat, self.vae_id)
                        self._latents[(i, flip)] = lat
                    done += len(chunk)
                    if progress is not None:
                        progress(done, len(pending))
        self._prepared = True
        return len(pending)

    def _npz(self, i: int, flip: bool) -> torch.Tensor | None:
        e = self._entries[i]
        if self.npz is None or not isinstance(e.item.source, Path):
            return None
        return self.npz.load(e.item.source, e.item.size, e.placement, flip)

    def _reuse_npz(self, found: list) -> list:
        """Take sd-scripts' latents when the first agrees with this run's encoding of its image;
        returns the jobs still to encode (all of them on disagreement)."""
        if not found:
            return []
        i, flip, key, npz = found[0]
        ours = self._encode(self._pixels(i, self._entries[i].placement.crop, flip, None).unsqueeze(0))[0].clone()
        self.cache.put(key, ours, self.vae_id)
        self._latents[(i, flip)] = ours
        if not agrees(npz, ours):
            log.warning("sd-scripts latent cache beside %s does not match this VAE's latents: encoding every image instead",
                        self._entries[i].item.source)
            return [(j, f, k) for j, f, k, _ in found[1:]]
        for j, f, _, latents in found[1:]:
            self._latents[(j, f)] = latents
        self.npz_reused = len(found) - 1
        log.info("reused %d latents from sd-scripts .npz caches", len(found) - 1)
        return []

    def _content(self, i: int) -> str:
        e = self._entries[i]
        if e.content is None:
            e.content = content_hash(e.item.source)
        return e.content

    def _encode(self, pixels: torch.Tensor) -> torch.Tensor:
        latents = self.encode_latents(pixels)
        b, _, h, w = pixels.shape
        if latents.dim() != 4 or latents.shape[0] != b or tuple(latents.shape[-2:]) != (h // 8, w // 8):
            raise ValueError(f"encode_latents returned shape {tuple(latents.shape)} for images {tuple(pixels.shape)}; expected (B, C, H/8, W/8)")
        return latents.detach().to("cpu")

    def _pixels(self, i: int, crop: tuple[int, int], flip: bool, color_rng: random.Random | None) -> torch.Tensor:
        """The image as trained: resized, cropped, flipped, colour-augmented, in [-1, 1]."""
        e = self._entries[i]
        image = resize_and_crop(load_image(e.item.source), e.placement, crop)
        if flip:
            image = hflip(image)
        if color_rng is not None:
            image = color_augment(image, color_rng)
        return image * 2 - 1

    def _mask(self, i: int, crop: tuple[int, int], flip: bool) -> torch.Tensor:
        """The loss mask as trained, (1, h/8, w/8) in [0, 1]: cropped and flipped like its image,
        then area-downsampled to the latent size as sd-scripts' apply_masked_loss does (the
        engine's own interpolation to the loss size is then exact). Ones for a sample without
        a mask in a batch with masks (sd-scripts' rule)."""
        e = self._entries[i]
        fixed = crop == e.placement.crop
        if fixed and (i, flip) in self._masks:
            return self._masks[(i, flip)]
        bw, bh = e.placement.bucket
        source = self._mask_source(e)
        if source is None:
            mask = torch.ones((1, bh // 8, bw // 8))
        else:
            mask = resize_and_crop(load_mask(*source), e.placement, crop)
            mask = F.interpolate((hflip(mask) if flip else mask).unsqueeze(0), size=(bh // 8, bw // 8), mode="area")[0]
        if fixed:
            self._masks[(i, flip)] = mask
        return mask

    def _guide(self, i: int, crop: tuple[int, int], flip: bool) -> torch.Tensor:
        e = self._entries[i]
        guide = resize_and_crop(load_image(e.item.guide), e.placement, crop)
        return (hflip(guide) if flip else guide) * 2 - 1

    # ----- batches -----

    def __len__(self) -> int:
        """Batches per epoch (steps_per_epoch)."""
        return self.steps_per_epoch

    def batches(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        """The batches of `epoch` (0-based) from index `start` on: the same batches for the
        same seed, epoch and index however the run got there."""
        for index in range(start, self.steps_per_epoch):
            yield self.batch_at(epoch, index)

    def batch_at(self, epoch: int, index: int) -> Batch:
        if not self._prepared:
            self.prepare()
        if self._plan_epoch != epoch:
            self._plan, self._plan_epoch = self._epoch_plan(epoch), epoch
        rng = random.Random(f"{self.seed}:batch:{epoch}:{index}")
        idxs = self._plan[index]
        mine = shard(len(idxs), self.rank, self.world) if self.world > 1 else slice(0, len(idxs))
        return self._make_batch(idxs, rng, epoch + 1, mine)

    def next_batch(self) -> Batch:
        """The batch at the cursor (epoch, position); advances, rolling over to the next epoch."""
        batch = self.batch_at(self.epoch, self.position)
        self.position += 1
        if self.position == self.steps_per_epoch:
            self.epoch, self.position = self.epoch + 1, 0
        return batch

    def holdout_batches(self) -> list[Batch]:
        """The held-out images as fixed batches: no flip, center crop, no colour change,
        captions without shuffle or dropout. The same on every call."""
        if not self._prepared:
            self.prepare()
        groups: dict[tuple, list[int]] = defaultdict(list)
        for i in self._holdout:
            groups[(self._entries[i].dataset, self._entries[i].placement.bucket)].append(i)
        batches = []
        for (d, _), idxs in sorted(groups.items()):
            size = self.datasets[d].batch_size
            batches += [self._make_batch(idxs[s : s + size], None, 1) for s in range(0, len(idxs), size)]
        return batches

    def _global_batch(self, d: int) -> int:
        return self.datasets[d].batch_size * self.world

    def _epoch_plan(self, epoch: int) -> list[list[int]]:
        rng = random.Random(f"{self.seed}:order:{epoch}")
        batches = []
        for d, groups in enumerate(self._groups):
            size = self._global_batch(d)
            for _, samples in groups:
                order = list(samples)
                rng.shuffle(order)
                batches += [order[s : s + size] for s in range(0, len(order), size)]
        rng.shuffle(batches)
        return batches

    def _make_batch(self, idxs: list[int], rng: random.Random | None, epoch: int, mine: slice | None = None) -> Batch:
        """The batch of samples idxs[mine] (all when None); the augmentations of the others are
        still drawn, so each sample gets what it gets in the single-process run."""
        mine = mine or slice(0, len(idxs))
        with torch.inference_mode(False), torch.no_grad():
            captions, originals, crops, targets, guides, pixels, latents, masks = [], [], [], [], [], [], [], []
            for n, i in enumerate(idxs):
                e, s = self._entries[i], self._entries[i].subset
                (bw, bh), (rw, rh) = e.placement.bucket, e.placement.resized
                flip = rng is not None and s.flip_aug and rng.random() < 0.5
                crop = e.placement.crop
                if rng is not None and s.random_crop:
                    crop = (rng.randint(0, rw - bw), rng.randint(0, rh - bh))
                caption = process_caption(e.caption, s, rng, epoch)
                color_rng = random.Random(rng.random()) if (rng is not None and s.color_aug) else None
                if not mine.start <= n < mine.stop:
                    continue
                captions.append(caption)
                if self.cache_latents:
                    latents.append(self._latents[(i, flip)])
                else:
                    pixels.append(self._pixels(i, crop, flip, color_rng))
                if self.has_guides:
                    guides.append(self._guide(i, crop, flip))
                if self.has_masks:
                    masks.append(self._mask(i, crop, flip))
                originals.append((e.item.size[1], e.item.size[0]))
                # SDXL's crop conditioning: (top, left) of the window in the resized image, mirrored with the image.
                crops.append((crop[1], rw - bw - crop[0] if flip else crop[0]))
                targets.append((bh, bw))
            if not captions:  # a short last global batch left this rank nothing; the loop still draws the step's noise
                bw, bh = self._entries[idxs[0]].placement.bucket
                stacked = torch.zeros((0, 0, bh // 8, bw // 8))
            else:
                stacked = torch.stack(latents) if self.cache_latents else self._encode(torch.stack(pixels)).clone()
            return Batch(
                latents=stacked,
                captions=captions,
                original_sizes=originals,
                crop_top_left=crops,
                target_sizes=targets,
                guides=torch.stack(guides) if guides else None,
                masks=torch.stack(masks) if masks else None,
                is_reg=[self._entries[i].subset.is_reg for i in idxs[mine]],
                offset=mine.start if self.world > 1 else 0,
                global_size=len(idxs) if self.world > 1 else 0,
            )

    # ----- resume -----

    def state_dict(self) -> dict:
        """Plain ints: epoch and position; with the seed (all randomness derives from it)
        they fix every later batch."""
        return {"seed": self.seed, "epoch": self.epoch, "position": self.position, "steps_per_epoch": self.steps_per_epoch}

    def load_state_dict(self, state: dict) -> None:
        """Continue at the saved epoch and position. The seed must be the run's seed: it also
        chose the held-out images, so it cannot change mid-run."""
        if int(state["seed"]) != self.seed:
            raise DatasetError(f"The resume state was saved with data seed {state['seed']}, this run uses {self.seed}; use the same seed to resume.")
        if state["steps_per_epoch"] != self.steps_per_epoch:
            raise DatasetError(
                f"The resume state was saved for a dataset with {state['steps_per_epoch']} steps per epoch, "
                f"this one has {self.steps_per_epoch}: the images or dataset options changed since."
            )
        self.epoch, self.position = int(state["epoch"]), int(state["position"])

    # ----- facts for the engine and the saved file -----

    def samples_per_dataset(self) -> list[int]:
        """Samples of each dataset in one epoch (repeats included, held-out images excluded)."""
        return [sum(len(samples) for _, samples in groups) for groups in self._groups]

    @property
    def num_train_images(self) -> int:
        """Training samples per epoch: repeats x images (sd-scripts' num_train_images)."""
        held = set(self._holdout)
        return sum(e.subset.num_repeats for i, e in enumerate(self._entries) if not e.subset.is_reg and i not in held)

    @property
    def num_reg_images(self) -> int:
        return sum(e.subset.num_repeats for e in self._entries if e.subset.is_reg)

    def fixed_captions(self) -> list[str] | None:
        """Every caption the run can see, when none is shuffled or dropped (so text-encoder
        outputs can be cached); None otherwise."""
        used = {i for groups in self._groups for _, samples in groups for i in samples} | set(self._holdout)
        if any(self._entries[i].subset.varies_captions for i in used):
            return None
        return sorted({process_caption(self._entries[i].caption, self._entries[i].subset, None) for i in used})

    def metadata(self) -> dict[str, str]:
        """sd-scripts' dataset metadata keys (ss_num_*, ss_datasets, ss_tag_frequency, ss_dataset_dirs)."""
        datasets, tag_frequency, dirs = [], {}, {}
        for d, ds in enumerate(self.datasets):
            entries = [e for e in self._entries if e.dataset == d]
            subsets, ds_tags = [], {}
            for subset in ds.subsets:
                mine = [e for e in entries if e.subset is subset]
                info = {
                    "img_count": len(mine), "num_repeats": subset.num_repeats, "color_aug": subset.color_aug,
                    "flip_aug": subset.flip_aug, "random_crop": subset.random_crop, "shuffle_caption": subset.shuffle_caption,
                    "keep_tokens": subset.keep_tokens, "keep_tokens_separator": subset.keep_tokens_separator,
                    "caption_prefix": subset.caption_prefix, "caption_suffix": subset.caption_suffix,
                    "class_tokens": subset.class_tokens, "is_reg": subset.is_reg,
                }
                if subset.image_dir is not None:
                    info["image_dir"] = subset.image_dir.name
                if subset.metadata_file is not None:
                    info["metadata_file"] = subset.metadata_file.name
                subsets.append(info)
                counts = ds_tags.setdefault(subset.name, {})
                for e in mine:
                    for tag in tags_of(e.caption, subset.caption_separator):
                        counts[tag.lower()] = counts.get(tag.lower(), 0) + 1
                if not subset.is_reg:
                    name, n = subset.name, 2
                    while name in dirs:
                        name, n = f"{subset.name} ({n})", n + 1
                    dirs[name] = {"n_repeats": subset.num_repeats, "img_count": len(mine)}
            buckets = {str(k): {"resolution": list(b), "count": len(s)} for k, (b, s) in enumerate(self._groups[d])}
            datasets.append({
                "is_dreambooth": any(s.metadata_file is None for s in ds.subsets),
                "batch_size_per_device": ds.batch_size,
                "num_train_images": sum(e.subset.num_repeats for e in entries if not e.subset.is_reg),
                "num_reg_images": sum(e.subset.num_repeats for e in entries if e.subset.is_reg),
                "resolution": list(ds.resolution), "enable_bucket": ds.enable_bucket,
                "min_bucket_reso": ds.min_bucket_reso, "max_bucket_reso": ds.max_bucket_reso,
                "tag_frequency": ds_tags, "bucket_info": {"buckets": buckets}, "subsets": subsets,
            })
            for name, counts in ds_tags.items():
                tag_frequency.setdefault(name, counts)
        return {
            "ss_num_train_images": str(self.num_train_images),
            "ss_num_reg_images": str(self.num_reg_images),
            "ss_num_batches_per_epoch": str(self.steps_per_epoch),
            "ss_datasets": json.dumps(datasets),
            "ss_tag_frequency": json.dumps(tag_frequency),
            "ss_dataset_dirs": json.dumps(dirs),
        }


def _items_of(subset: SubsetConfig, where: str, problems: DatasetProblems) -> list[ImageItem]:
    if subset.items is not None:
        return subset.items
    if subset.metadata_file is not None:
        return scan_metadata(subset, problems)
    if subset.image_dir is not None:
        return scan_image_dir(subset, problems)
    problems.add(NO_SOURCE, where)
    return []


def _where(subset: SubsetConfig) -> Path | str:
    """A subset in a problem report: its folder or metadata file (a path), else its description."""
    return subset.image_dir or subset.metadata_file or subset.location


def _balance_reg(reg: list[int], train_samples: int, entries: list[_Entry]) -> list[tuple[int, int]]:
    """sd-scripts' rule: walk the reg images taking each one's repeats, then one more each
    round, until the reg samples reach the train samples (the rest are unused)."""
    counts: dict[int, int] = {}
    n, first = 0, True
    while reg and n < train_samples:
        for i in reg:
            add = entries[i].subset.num_repeats if first else 1
            counts[i] = counts.get(i, 0) + add
            n += add
            if n >= train_samples:
                break
        first = False
    return list(counts.items())
