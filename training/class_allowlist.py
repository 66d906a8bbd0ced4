"""Optimizer and scheduler classes named as `module.Class` (sd-scripts' optimizer_type and
lr_scheduler): imported only from known optimizer packages, so a config file or a graph's form
field cannot make the process import and call arbitrary code. The name is checked before
anything is imported. The command line may add packages for one run (allow_packages, fed by
scripts/train.py --allow_module); graph nodes never do.
"""
import contextlib
import contextvars
import importlib
import re
from collections.abc import Iterable, Iterator

from ..errors import user_error

# What sd-scripts users name in optimizer_type / lr_scheduler_type (sd-scripts' own
# get_optimizer imports, its docs' `bitsandbytes.optim.lamb.LAMB`, and the packages its
# community configs use: CAME, pytorch_optimizer, prodigy-plus-schedule-free, torchao).
KNOWN_PACKAGES = (
    "torch.optim",  # torch.optim.* and torch.optim.lr_scheduler.*
    "transformers.optimization",
    "bitsandbytes.optim",
    "prodigyopt",
    "prodigyplus",
    "dadaptation",
    "lion_pytorch",
    "schedulefree",
    "came_pytorch",
    "pytorch_optimizer",
    "torchao.optim",
)

_DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+", re.ASCII)
_command_line_packages: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("command_line_packages", default=())


@user_error
class DisallowedClass(ValueError):
    pass


@user_error
class OptimizerUnavailable(ImportError):
    pass


@contextlib.contextmanager
def allow_packages(packages: Iterable[str]) -> Iterator[None]:
    """Within the block, also import classes from `packages` (the command line's --allow_module)."""
    packages = tuple(packages)
    for p in packages:
        if not _DOTTED.fullmatch(p + ".X"):
            raise ValueError(f"--allow_module {p!r}: give a Python package name such as my_optimizers or pkg.optim")
    token = _command_line_packages.set(_command_line_packages.get() + packages)
    try:
        yield
    finally:
        _command_line_packages.reset(token)


def allowed_packages(extra: Iterable[str] = ()) -> tuple[str, ...]:
    return KNOWN_PACKAGES + _command_line_packages.get() + tuple(extra)


def import_class(dotted: str, kind: str, extra_packages: Iterable[str] = (), install: str | None = None,
                 shown_as: str | None = None) -> type:
    """The class `dotted` ("package.module.Class") if its module lies in an allowed package.
    `kind` ("optimizer", "lr_scheduler"), `install` (the pip name) and `shown_as` (the name the
    user gave, e.g. AdamW8bit) word the errors."""
    packages = allowed_packages(extra_packages)
    module_name, _, class_name = dotted.rpartition(".")
    if not _DOTTED.fullmatch(dotted) or not any(module_name == p or module_name.startswith(p + ".") for p in packages):
        raise DisallowedClass(
            f"{kind} {dotted!r} refused: classes are imported only from the known optimizer packages "
            f"({', '.join(packages)}). To use another package from the command line, pass "
            "scripts/train.py --allow_module PACKAGE."
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        package = install or module_name.split(".")[0]
        raise OptimizerUnavailable(
            f"{kind} {shown_as or dotted!r} needs the Python package '{package}', which is not installed ({e}). "
            f"Install it into ComfyUI's Python (pip install {package}) or choose AdamW or Lion."
        ) from e
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type):
        raise DisallowedClass(f"{kind} {dotted!r}: {module_name} has no class named {class_name}")
    return cls
