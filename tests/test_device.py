"""The device paths: a search on each device this machine has (the CPU everywhere, and a
CUDA GPU where there is one), its exported file loaded on a CPU with weights_only, and
checkpoints resumed on the same device and on the other one. On a machine without a
GPU every test runs for the CPU alone; `bench/gpu_check.py` runs them on a GPU
(`pytest -m device`)."""

from __future__ import annotations

import pytest
import torch

from models import build_mlp
from models.exported import load_exported
from objectives.data import Split
from objectives.errors import DeviceError
from objectives.training.device import PRECISIONS, choose_device, choose_precision
from objectives.training.trainer import Trainer, TrainingSettings, accuracy
from search.artifacts.files import read_tensors, serialized
from tests.support.datafiles import write_table
from tests.support.workers import run_search

pytestmark = pytest.mark.device

DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]
HYPERPARAMETERS = {"n_inputs": 12, "hidden_sizes": [32, 16], "n_classes": 3,
                   "input_mean": [0.0] * 12, "input_std": [1.0] * 12}
SETTINGS = TrainingSettings("adam", 1e-2, 0.0, 64)


def split() -> Split:
    generator = torch.Generator().manual_seed(3)
    features = torch.randn(640, 12, generator=generator)
    return Split(features, (features[:, 0] > 0).long() + (features[:, 1] > 0.5).long())


def trainer_on(device: str, precision: torch.dtype = torch.float32, dropout: float = 0.0) -> Trainer:
    torch.manual_seed(7)
    return Trainer(build_mlp({**HYPERPARAMETERS, "dropout": dropout}), SETTINGS, split(), choose_device(device),
                   seed=7, precision=precision)


def weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().cpu() for name, tensor in trainer.model.state_dict().items()}


@pytest.mark.parametrize("device", DEVICES)
def test_a_search_on_the_device_exports_a_model_that_loads_on_a_cpu(device, tmp_path):
    data = write_table(tmp_path / "data")
    common = ("--storage", f"sqlite:///{tmp_path / 'plants.db'}", "--artifacts", str(tmp_path / "artifacts"),
              "--study", "plants", "--device", device)
    done = run_search("run", "--objective", "table", "--label", "species", "--data-dir", str(data),
                      "--n-trials", "2", "--epochs", "2", *common)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"on {choose_device(device)}" in done.stdout  # the worker's join line names its device
    exported = tmp_path / "best.pt"
    done = run_search("best", "--export", str(exported), *common)
    assert done.returncode == 0, done.stdout + done.stderr
    state = torch.load(exported, weights_only=True, map_location="cpu")
    model = load_exported(exported)
    assert all(tensor.device.type == "cpu" for tensor in state["model_state_dict"].values())
    with torch.no_grad():
        assert model(torch.zeros(4, state["model_hyperparameters"]["n_inputs"])).shape == (4, 3)


@pytest.mark.parametrize(("source", "target"), [(a, b) for a in DEVICES for b in DEVICES])
def test_a_checkpoint_resumes_on_the_same_device_and_on_another(source, target):
    first = trainer_on(source)
    first.run_epoch()
    payload = read_tensors(bytes(serialized(first.state_dict())))  # as a worker stores and reads it
    assert ("cuda_rng" in payload) == (source == "cuda")
    resumed = trainer_on(target)
    resumed.load_state_dict(payload)
    assert resumed.epochs_done == 1
    loss = resumed.run_epoch()
    assert resumed.epochs_done == 2 and loss == loss
    if source == target:  # the same run as one never stopped
        whole = trainer_on(source)
        whole.run_epoch()
        whole.run_epoch()
        for name, tensor in weights(whole).items():
            torch.testing.assert_close(weights(resumed)[name], tensor, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_a_checkpoint_whose_shuffle_state_is_another_devices_resumes(device):
    """A CUDA generator's state is 16 bytes, a CPU one's 5,056: a checkpoint written on
    the other kind of device still resumes, with an order of its own for the epochs left."""
    first = trainer_on(device)
    first.run_epoch()
    payload = dict(first.state_dict())
    foreign = torch.Generator(device="cpu").get_state() if device == "cuda" else torch.zeros(16, dtype=torch.uint8)
    payload["shuffle_rng"] = foreign
    resumed = trainer_on(device)
    with pytest.raises(RuntimeError):
        resumed.shuffle.set_state(foreign)  # what the trainer has to get round
    resumed.load_state_dict(payload)
    loss = resumed.run_epoch()
    assert resumed.epochs_done == 2 and loss == loss


@pytest.mark.parametrize("device", DEVICES)
def test_the_precision_is_what_was_asked_or_the_faster(device):
    where = choose_device(device)
    assert choose_precision("float32", where) == torch.float32
    assert choose_precision("bfloat16", where) == torch.bfloat16
    chosen = choose_precision("auto", where)
    assert chosen in (torch.float32, torch.bfloat16)
    assert all(choose_precision("auto", where) == chosen for _ in range(3))  # measured once, then kept
    with pytest.raises(DeviceError, match="unknown --precision 'half'"):
        choose_precision("half", where)
    assert PRECISIONS == ("auto", "float32", "bfloat16")


@pytest.mark.parametrize("device", DEVICES)
def test_bfloat16_training_learns_as_float32_does_and_resumes_exactly(device):
    """Autocast multiplies in bfloat16; the weights, their updates and the evaluation stay
    float32. The same data is learnt as well, and a checkpoint resumes bit for bit."""
    accuracies = {}
    for precision in (torch.float32, torch.bfloat16):
        trainer = trainer_on(device, precision, dropout=0.2)
        for _ in range(6):
            trainer.run_epoch()
        assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
        data = split().to(trainer.device)
        accuracies[precision] = accuracy(trainer.model, data)
    assert accuracies[torch.float32] > 0.9
    assert abs(accuracies[torch.bfloat16] - accuracies[torch.float32]) < 0.03, accuracies

    first = trainer_on(device, torch.bfloat16, dropout=0.2)
    first.run_epoch()
    payload = read_tensors(bytes(serialized(first.state_dict())))  # before another trainer seeds the RNG
    resumed = trainer_on(device, torch.bfloat16, dropout=0.2)
    resumed.load_state_dict(payload)
    resumed.run_epoch()
    whole = trainer_on(device, torch.bfloat16, dropout=0.2)
    whole.run_epoch()
    whole.run_epoch()
    for name, tensor in weights(whole).items():
        assert torch.equal(weights(resumed)[name], tensor), name
