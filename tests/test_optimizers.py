"""Optimizer and scheduler classes: only known packages are imported (a crafted name never runs
its payload), the command line widens the list explicitly, and the optional optimizer packages
sd-scripts users name are built by name with their optimizer_args and lower a loss."""
import sys

import pytest
import torch

from lllite_kit.training.class_allowlist import KNOWN_PACKAGES, DisallowedClass, allow_packages
from lllite_kit.training.config import parse_kv_args
from lllite_kit.training.optimizers import build_optimizer
from lllite_kit.training.schedulers import build_scheduler


def _payload(tmp_path, monkeypatch, name: str):
    """A module on sys.path whose import writes a file: the file must never appear."""
    marker = tmp_path / f"{name}.ran"
    (tmp_path / f"{name}.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('payload ran')\n"
        "import torch\nclass Opt(torch.optim.SGD):\n    pass\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    return marker


def _params():
    return [{"params": [torch.nn.Parameter(torch.zeros(2))], "lr": 0.1}]


@pytest.mark.parametrize("name", ["os.system", "subprocess.Popen", "builtins.exec", "payload_mod.Opt",
                                  "torch.optim_evil.Adam", "torch..optim.Adam", "payload_mod.sub.Opt"])
def test_unknown_packages_are_refused_before_import(name, tmp_path, monkeypatch):
    marker = _payload(tmp_path, monkeypatch, "payload_mod")
    with pytest.raises(DisallowedClass) as e:
        build_optimizer(name, _params(), 0.1)
    message = str(e.value)
    assert f"optimizer {name!r} refused" in message and "--allow_module" in message
    assert all(p in message for p in KNOWN_PACKAGES)
    opt = torch.optim.SGD(_params(), lr=0.1)
    with pytest.raises(DisallowedClass, match=f"lr_scheduler {name!r} refused"):
        build_scheduler(name, opt, 10)
    assert not marker.exists() and "payload_mod" not in sys.modules


def test_the_command_line_widens_the_list_explicitly(tmp_path, monkeypatch):
    marker = _payload(tmp_path, monkeypatch, "my_optimizers")
    opt = build_optimizer("my_optimizers.Opt", _params(), 0.1, allowed_modules=["my_optimizers"])
    assert type(opt).__name__ == "Opt" and marker.exists()
    with allow_packages(["my_optimizers"]):  # what scripts/train.py --allow_module does around a run
        assert type(build_optimizer("my_optimizers.Opt", _params(), 0.1)).__name__ == "Opt"
    with pytest.raises(DisallowedClass):  # only inside the block
        build_optimizer("my_optimizers.Opt", _params(), 0.1)
    with pytest.raises(ValueError, match="--allow_module 'a b'"):
        with allow_packages(["a b"]):
            pass


def test_known_package_but_not_an_optimizer_class():
    with pytest.raises(DisallowedClass, match="not a torch.optim.Optimizer"):
        build_optimizer("torch.optim.lr_scheduler.StepLR", _params(), 0.1)
    with pytest.raises(DisallowedClass, match="has no class named get_scheduler"):
        build_optimizer("transformers.optimization.get_scheduler", _params(), 0.1)


def test_schedule_free_optimizers_are_refused_with_the_reason():
    pytest.importorskip("schedulefree", reason="schedulefree is not installed (pip install schedulefree)")
    with pytest.raises(ValueError, match="'schedulefree.AdamWScheduleFree' is schedule-free"):
        build_optimizer("schedulefree.AdamWScheduleFree", _params(), 0.1)


# ---- the optional optimizers, for real ------------------------------------------------------------

def _overfit(optimizer_type: str, optimizer_args: str, lr: float, steps: int = 60, width: int = 64) -> tuple[float, float, torch.optim.Optimizer]:
    """(first loss, last loss) of a small regression (two linear layers) trained by the named
    optimizer built through our factory, with optimizer_args parsed as from a config."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, width, generator=g)
    y = torch.randn(32, 1, generator=g)
    model = torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.Tanh(), torch.nn.Linear(width, 1))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    opt = build_optimizer(optimizer_type, [{"params": list(model.parameters()), "lr": lr}], lr, parse_kv_args(optimizer_args))
    losses = []
    for _ in range(steps):
        loss = torch.nn.functional.mse_loss(model(x), y)
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return losses[0], losses[-1], opt


# sd-scripts users' optimizer_args, as written in their configs
REAL = [
    ("Prodigy", "prodigyopt", "decouple=True weight_decay=0.01 d_coef=2 use_bias_correction=True safeguard_warmup=True", 1.0),
    ("DAdaptAdam", "dadaptation", "decouple=True weight_decay=0.01", 1.0),
    ("DAdaptation", "dadaptation", "decouple=True", 1.0),
    ("DAdaptLion", "dadaptation", "weight_decay=0.01", 1.0),
    ("DAdaptSGD", "dadaptation", "", 1.0),
    ("DAdaptAdan", "dadaptation", "weight_decay=0.02", 1.0),
    ("DAdaptAdanIP", "dadaptation", "", 1.0),
    ("Lion", "lion_pytorch", "weight_decay=0.01 betas=0.9,0.99", 1e-3),
    ("prodigyopt.Prodigy", "prodigyopt", "d_coef=1", 1.0),
]


@pytest.mark.parametrize("name,package,args,lr", REAL, ids=[r[0] for r in REAL])
def test_optional_optimizer_by_name_lowers_the_loss(name, package, args, lr):
    pytest.importorskip(package, reason=f"{package} is not installed (pip install the test extra)")
    first, last, opt = _overfit(name, args, lr)
    assert type(opt).__module__.split(".")[0] == package
    for key, value in parse_kv_args(args).items():  # the user's arguments reached the optimizer
        assert opt.defaults[key] == (tuple(value) if isinstance(value, (list, tuple)) else value), key
    assert last < 0.5 * first, (name, first, last)


BNB = [("AdamW8bit", "weight_decay=0.01", 1e-3), ("Lion8bit", "weight_decay=0.01", 1e-3), ("PagedAdamW8bit", "", 1e-3),
       ("SGDNesterov8bit", "", 1e-2), ("PagedLion8bit", "", 1e-3)]


@pytest.mark.parametrize("name,args,lr", BNB, ids=[b[0] for b in BNB])
def test_bitsandbytes_8bit_optimizers(name, args, lr):
    bnb = pytest.importorskip("bitsandbytes", reason="bitsandbytes is not installed (pip install bitsandbytes)")
    probe = torch.nn.Parameter(torch.randn(64, 64))  # 4096 values: bitsandbytes' smallest 8-bit tensor
    try:
        opt = bnb.optim.AdamW8bit([probe], lr=1e-3)
        probe.grad = torch.ones_like(probe)
        opt.step()
    except (RuntimeError, NotImplementedError, AttributeError) as e:
        pytest.skip(f"bitsandbytes {bnb.__version__} has no 8-bit optimizer kernel for the CPU here: {e}")
    first, last, opt = _overfit(name, args, lr)  # the 64x64 weight is stored in 8 bits
    big = next(p for g in opt.param_groups for p in g["params"] if p.numel() >= 4096)
    assert opt.state[big]["state1"].dtype == torch.uint8  # really 8-bit state
    assert last < 0.5 * first, (name, first, last)


# ---- through the training engine ---------------------------------------------------------------

@pytest.fixture(scope="module")
def sd15(tiny):
    from lllite_kit.training.comfy_bridge import TextConditioner, trainable_model
    from training_helpers import ListData, unit_group_norms

    with torch.inference_mode():
        model, clip = tiny.build_model("sd15", 0), tiny.build_clip("sd15", 0)
        unit_group_norms(model)
    with torch.inference_mode(False), trainable_model(model) as tm:
        text = TextConditioner(clip, tm.family)
        text.precompute(ListData(2).captions)
        yield tm, text


def _engine(tm, text, out, **options):
    from lllite_kit.training.config import TrainConfig
    from lllite_kit.training.engine import TrainingEngine
    from lllite_kit.training.lora import LoRAAdapter, LoRAConfig
    from training_helpers import ListData, no_metadata

    adapter = LoRAAdapter(LoRAConfig(dim=4, alpha=4.0, train_text_encoder=False), tm.model_config)
    cfg = TrainConfig(**{"max_train_steps": 1, "output_name": "t", **options})
    return TrainingEngine(cfg, tm, text, adapter, ListData(n=2, bs=2), out, no_metadata)


def test_a_graph_config_cannot_name_an_unknown_class(sd15, tmp_path, monkeypatch):
    """The graph path (TrainConfig -> engine) refuses before importing; nothing widens it."""
    marker = _payload(tmp_path, monkeypatch, "graph_payload")
    tm, text = sd15
    with pytest.raises(DisallowedClass, match="'graph_payload.Opt' refused"):
        _engine(tm, text, tmp_path, optimizer_type="graph_payload.Opt").run()
    with pytest.raises(DisallowedClass, match="'graph_payload.Opt' refused"):
        _engine(tm, text, tmp_path, lr_scheduler="graph_payload.Opt").run()
    assert not marker.exists() and "graph_payload" not in sys.modules
    assert not list(tmp_path.glob("t*.safetensors"))  # refused before any training
