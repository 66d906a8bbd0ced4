"""The one exception the data side raises for problems in the user's dataset."""


class DatasetError(ValueError):
    """A dataset problem the user can fix; the message names the files, folders or keys."""


def name_list(paths, limit: int = 20) -> str:
    """Bulleted list of names for an error message, cut after `limit` with a count of the rest."""
    names = [str(p) for p in paths]
    shown = "\n".join(f"  - {n}" for n in names[:limit])
    if len(names) > limit:
        shown += f"\n  ... and {len(names) - limit} more"
    return shown
