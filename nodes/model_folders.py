"""The pack's model folders inside ComfyUI's models directory (folder_paths names)."""
import logging
import os

import folder_paths

# name -> subfolder of ComfyUI's models dir. LLLite files are also read from core's
# "controlnet" folder, where most users already keep them.
PACK_FOLDERS = {
    "lllite": "lllite",
    "preprocessors": "preprocessors",
    "captioners": "captioners",  # BLIP / GIT folders as published (config.json + model.safetensors ...)
    "taggers": "taggers",  # WD14 tagger folders as published (model.safetensors + selected_tags.csv ...)
}


def register_model_folders() -> None:
    """Registers the folders and creates them, so a fresh ComfyUI shows where files go."""
    for name, sub in PACK_FOLDERS.items():
        path = os.path.join(folder_paths.models_dir, sub)
        if name not in folder_paths.folder_names_and_paths or path not in folder_paths.get_folder_paths(name):
            folder_paths.add_model_folder_path(name, path)
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as e:  # a read-only install still loads; the folder is merely not there yet
            logging.warning("LLLite Kit: could not create %s: %s", path, e)
