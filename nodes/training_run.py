"""What both training nodes do around the library call: where the run writes (only inside
ComfyUI's folders; an existing output name is kept, resumed or replaced by explicit choice),
and which user-typed paths a graph may read."""
from pathlib import Path

from comfy_api.latest import io

from ..files.roots import check_readable, check_writable
from ..training.config import TrainConfig
from ..training.data.errors import DatasetError
from ..training.output_files import IF_EXISTS, plan_output

PROMPT_FILE_SUFFIXES = (".txt", ".toml", ".json")


def if_exists_input() -> io.Combo.Input:
    return io.Combo.Input("if_exists", options=list(IF_EXISTS), default=IF_EXISTS[0],
                          tooltip="When output_name already exists: new name (keeps it, writes name_2 ...), resume (continue "
                                  "from its last saved state), or overwrite (replaces it).")


def resolve_path(value: str, what: str) -> Path:
    """A user-typed path: absolute as given, relative against ComfyUI's input folder (not the
    folder ComfyUI happened to be started from); it must exist and be readable by graphs."""
    import folder_paths

    if not value.strip():
        raise DatasetError(f"{what}: no path given.")
    path = Path(value.strip()).expanduser()
    if not path.is_absolute():
        path = Path(folder_paths.get_input_directory()) / path
    check_readable(path, what)
    if not path.exists():
        raise DatasetError(f"{what} {path} does not exist (relative paths are read from ComfyUI's input folder).")
    return path


def check_dataset_paths(datasets) -> None:
    """The folders and files a dataset (e.g. from a TOML) names must be readable by graphs too."""
    for dataset in datasets:
        for subset in dataset.subsets:
            for what in ("image_dir", "metadata_file", "conditioning_data_dir"):
                path = getattr(subset, what, None)
                if path is not None:
                    check_readable(path, what)


def _prompt_text(value: str | None) -> str | None:
    """sample_prompts typed as a file name -> the file's lines (read under the graph read rule)."""
    if not value or "\n" in value.strip() or Path(value.strip()).suffix.lower() not in PROMPT_FILE_SUFFIXES:
        return value
    return resolve_path(value, "sample_prompts file").read_text(encoding="utf-8")


def plan_run(cfg: TrainConfig, default_dir: str, if_exists: str, datasets) -> tuple[TrainConfig, Path]:
    """(config to train with, output folder): checked before any work starts."""
    out_dir = check_writable(cfg.output_dir or default_dir)
    check_dataset_paths(datasets)
    name, state = plan_output(out_dir, cfg.output_name, if_exists)
    return cfg.replace(output_name=name, resume=str(state) if state else cfg.resume,
                       sample_prompts=_prompt_text(cfg.sample_prompts)), out_dir
