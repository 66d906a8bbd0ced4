"""The captioner and tagger folders users copy from their published repositories into
ComfyUI's models/captioners/ and models/taggers/ (folder named as the repository, files as
published), and the error that names the missing file, the folder and where it is published.
Nothing is ever downloaded."""
from dataclasses import dataclass
from pathlib import Path

from ...errors import user_error


@user_error
class ModelFileMissing(FileNotFoundError):
    pass


@dataclass(frozen=True)
class ModelFolder:
    name: str      # folder name in the model folder (the repository's name)
    repo: str      # "owner/name" on Hugging Face
    kind: str      # "blip", "git", "wd14"
    licence: str

    @property
    def url(self) -> str:
        return f"https://huggingface.co/{self.repo}"


CAPTIONERS = (
    ModelFolder("blip-image-captioning-base", "Salesforce/blip-image-captioning-base", "blip", "BSD-3-Clause"),
    ModelFolder("blip-image-captioning-large", "Salesforce/blip-image-captioning-large", "blip", "BSD-3-Clause"),
    ModelFolder("git-large-textcaps", "microsoft/git-large-textcaps", "git", "MIT"),  # sd-scripts' default
    ModelFolder("git-large-coco", "microsoft/git-large-coco", "git", "MIT"),
    ModelFolder("git-base-coco", "microsoft/git-base-coco", "git", "MIT"),
    ModelFolder("git-base", "microsoft/git-base", "git", "MIT"),
    ModelFolder("git-large", "microsoft/git-large", "git", "MIT"),
)
TAGGERS = tuple(
    ModelFolder(name, f"SmilingWolf/{name}", "wd14", "Apache-2.0")
    for name in ("wd-eva02-large-tagger-v3", "wd-vit-large-tagger-v3", "wd-vit-tagger-v3", "wd-swinv2-tagger-v3",
                 "wd-convnext-tagger-v3")
)


def folder_choices(catalogue: tuple[ModelFolder, ...], dirs: list[str]) -> list[str]:
    """The catalogue's names first (present or not, so users see what to get), then any other
    folder found in `dirs` (a fine-tune saved in the same layout)."""
    names = [m.name for m in catalogue]
    for d in dirs:
        if Path(d).is_dir():
            names += sorted(p.name for p in Path(d).iterdir() if p.is_dir() and p.name not in names)
    return names


def spec_for(name: str, catalogue: tuple[ModelFolder, ...]) -> ModelFolder | None:
    return next((m for m in catalogue if m.name == name), None)


def locate(name: str, dirs: list[str], required: tuple[str, ...], catalogue: tuple[ModelFolder, ...],
           folder_kind: str) -> Path:
    """The folder `name` in the first of `dirs` that holds it, with every `required` file; else
    ModelFileMissing naming the file, the folder and where it is published."""
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise ModelFileMissing(f"{name!r} is not a folder name in models/{folder_kind}/.")
    spec = spec_for(name, catalogue)
    where = f"published at {spec.url} ({spec.licence})" if spec else "a folder saved with save_pretrained"
    candidates = [Path(d) / name for d in dirs]
    folder = next((c for c in candidates if c.is_dir()), None)
    if folder is None:
        looked = ", ".join(str(c) for c in candidates) or f"models/{folder_kind}/{name}"
        raise ModelFileMissing(f"model folder {name} not found (looked at {looked}). Copy the files "
                               f"{', '.join(required)} into models/{folder_kind}/{name}/: {where}. Nothing is downloaded.")
    for file in required:
        options = file.split("|")  # "a|b": either file will do
        if not any((folder / f).is_file() for f in options):
            raise ModelFileMissing(f"{' or '.join(options)} is missing in models/{folder_kind}/{name}/ ({folder}): "
                                   f"{where}. Nothing is downloaded.")
    return folder
