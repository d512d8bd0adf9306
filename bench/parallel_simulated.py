"""Parallel efficiency beyond this machine's cores: the real service, simulated time.

Real Fashion-MNIST trials (``bench/results/fashion_mnist_trials.json``: configurations drawn
at random from the shipped space, each trained for a whole trial on one core of this
machine, written by ``--record``) fit a surrogate of a trial: its validation accuracy after each epoch and the seconds an epoch
takes, from its parameters. Then N workers search one study together: real workers
(``search.worker.loop.Worker``: real claims and tells on a real PostgreSQL database (SQLite
where no server is installed), the real bounded TPE sampler and the study's real pruner,
each worker with its own history and sampler seed), each in a thread, with a training
stand-in that asks the surrogate for the trial's curve and *waits in simulated time*
for each epoch. A virtual clock advances only when every worker waits, to the earliest
wake-up, so N workers cost one process and seconds of real time.

The surrogate:

* the curve is the recorded trials' average curve plus how a configuration departs from
  it: an ensemble of small MLPs (torch) on (the parameters, encoded like TPE's view of
  them: logs of log-scaled ranges, one-hot choices; the epoch as a share of the trial's),
  fitted to every reported epoch of every recorded trial;
* a simulated trial adds noise as a real one has it: an offset of its own (what a
  training seed moves a whole curve by) plus noise per epoch, each with the standard
  deviation of the residuals of the recorded trials;
* an epoch's seconds are linear in its multiply-adds and its steps (least squares on the
  recorded trials' epoch times).

How well it predicts is printed first: fitted on four fifths of the recorded trials, each
trial of the fifth held out is predicted (its last value and its epoch time), for each
fifth in turn.

Then, for each setting (pruner, sampler) and each worker count, ``--repeats`` searches
with different seeds run until a trial finishes at or above the highest of ``--targets``;
the time to each target (simulated) is the median over repeats. Prints the speed-up over one worker and the
efficiency (speed-up / workers) per worker count and setting.

    python -m bench.parallel_simulated [--workers 1 2 4 8 16 32 64] [--repeats 5] [--targets 0.915 0.92] [--quick]
    python -m bench.parallel_simulated --record 40 --epochs 60    # first: the real trials (hours)
"""

from __future__ import annotations

import argparse
import json
import math
import random
import signal
import statistics
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import optuna
import torch

from objectives import space as spaces
from search.storage import parse_url
from search.study.spec import StudyRequest, StudySpec
from search.worker.config import WorkerConfig
from search.worker.signals import WorkerStopped
from search.worker.workload import Joined

REPO = Path(__file__).resolve().parents[1]
RECORDED = REPO / "bench" / "results" / "fashion_mnist_trials.json"
STUDY = "simulated"


# --- the surrogate ---------------------------------------------------------------------

class Encoding:
    """Parameters as numbers: a log-scaled range as its log, a range as itself, a choice
    one-hot; each column then standardised over the recorded trials."""

    def __init__(self, space: dict, records: list[dict]) -> None:
        self.columns: list[tuple[str, object]] = []
        for name, entry in space.items():
            if "choices" in entry and len(entry["choices"]) > 1:
                self.columns += [(name, choice) for choice in entry["choices"]]
            elif "low" in entry:
                self.columns.append((name, "log" if entry["log"] else "linear"))
        self.space = space
        raw = torch.tensor([self.raw(record["params"]) for record in records], dtype=torch.float32)
        self.mean, self.std = raw.mean(0), raw.std(0).clamp_min(1e-6)

    def raw(self, params: dict) -> list[float]:
        values = []
        for name, kind in self.columns:
            value = self.value(name, params)
            if kind == "log":
                values.append(math.log(value))
            elif kind == "linear":
                values.append(float(value))
            else:
                values.append(1.0 if value == kind else 0.0)
        return values

    def value(self, name: str, params: dict) -> object:
        if name == "n_units":  # one column per layer would not fit every depth: their mean width
            widths = [params[f"n_units_l{layer}"] for layer in range(params["n_layers"])]
            return math.exp(statistics.fmean(math.log(width) for width in widths))
        return params[name]

    def __call__(self, params: dict) -> torch.Tensor:
        return (torch.tensor(self.raw(params), dtype=torch.float32) - self.mean) / self.std


def multiply_adds(params: dict, n_inputs: int = 784, n_classes: int = 10) -> float:
    widths = [n_inputs, *(params[f"n_units_l{layer}"] for layer in range(params["n_layers"])), n_classes]
    return float(sum(a * b for a, b in zip(widths, widths[1:])))


class Surrogate:
    MEMBERS = 5

    def __init__(self, records: list[dict], space: dict, train_size: int = 55_000, seed: int = 0) -> None:
        self.epochs = records[0]["epochs"]
        self.train_size = train_size
        self.encode = Encoding(space, records)
        torch.manual_seed(seed)
        inputs, targets, trials = [], [], []
        for index, record in enumerate(records):
            features = self.encode(record["params"])
            for epoch, value in enumerate(record["curve"], start=1):
                inputs.append(torch.cat([features, torch.tensor([epoch / self.epochs])]))
                targets.append(value)
                trials.append(index)
        x, y = torch.stack(inputs), torch.tensor(targets)
        # The average curve of the recorded trials, epoch by epoch; the MLPs learn how a
        # configuration departs from it (fitting whole curves left the last epochs biased).
        epoch_of = (x[:, -1] * self.epochs).round().long() - 1
        self.mean_curve = (torch.zeros(self.epochs).index_add_(0, epoch_of, y)
                           / torch.bincount(epoch_of, minlength=self.epochs).clamp_min(1))
        self.members = [self._fit(x, y - self.mean_curve[epoch_of]) for _ in range(self.MEMBERS)]
        # Residuals: a per-trial offset (a training seed moves a whole curve) and, per epoch,
        # the rest (early epochs, at a high learning rate, swing more than the last ones).
        with torch.no_grad():
            residual = y - self._predict(x)
        index = torch.tensor(trials)
        offsets = torch.zeros(len(records)).index_add_(0, index, residual) / torch.bincount(index).clamp_min(1)
        self.trial_sd = float(offsets.std())
        epochs = torch.tensor([float(row[-1]) for row in inputs]) * self.epochs
        rest = residual - offsets[index]
        self.epoch_sd = [float(rest[(epochs - epoch).abs() < 0.5].std()) if (epochs - epoch).abs().lt(0.5).sum() > 2
                         else float(rest.std()) for epoch in range(1, self.epochs + 1)]
        # Seconds per epoch: a + b * multiply-adds per epoch + c * steps per epoch.
        design = torch.tensor([self._cost(record["params"]) for record in records], dtype=torch.float64)
        seconds = torch.tensor([record["epoch_s"] for record in records], dtype=torch.float64)
        self.cost = torch.linalg.lstsq(design, seconds.unsqueeze(1)).solution.squeeze(1)

    @staticmethod
    def _fit(x: torch.Tensor, y: torch.Tensor) -> torch.nn.Module:
        model = torch.nn.Sequential(torch.nn.Linear(x.shape[1], 64), torch.nn.SiLU(), torch.nn.Linear(64, 64),
                                    torch.nn.SiLU(), torch.nn.Linear(64, 1))
        optimizer = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-4)
        centre = y.mean()
        for step in range(1500):
            batch = torch.randint(0, len(x), (256,))
            loss = torch.nn.functional.mse_loss(model(x[batch]).squeeze(1) + centre, y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.centre = centre
        return model.eval()

    def _predict(self, x: torch.Tensor) -> torch.Tensor:
        epoch_of = (x[:, -1] * self.epochs).round().long() - 1
        departure = torch.stack([member(x).squeeze(1) + member.centre for member in self.members]).mean(0)
        return self.mean_curve[epoch_of] + departure

    def _cost(self, params: dict) -> list[float]:
        steps = math.ceil(self.train_size / params["batch_size"])
        return [1.0, multiply_adds(params) * self.train_size / 1e9, steps / 1e3]

    def curve(self, params: dict) -> list[float]:
        features = self.encode(params)
        x = torch.stack([torch.cat([features, torch.tensor([epoch / self.epochs])])
                         for epoch in range(1, self.epochs + 1)])
        with torch.no_grad():
            return self._predict(x).tolist()

    def epoch_seconds(self, params: dict) -> float:
        return max(0.05, float(torch.tensor(self._cost(params), dtype=torch.float64) @ self.cost))

    def sample(self, params: dict, rng: random.Random) -> tuple[list[float], float]:
        """A simulated trial: its curve, with a real trial's noise, and its epoch time."""
        offset = rng.gauss(0, self.trial_sd)
        curve = [min(1.0, value + offset + rng.gauss(0, sd)) for value, sd in zip(self.curve(params), self.epoch_sd)]
        return curve, self.epoch_seconds(params)


def record_one(job: tuple[int, dict, int, str | None]) -> dict:
    """Train one configuration for the whole trial, on one core: its curve and epoch time."""
    from objectives.datasets import load_dataset
    from objectives.recipe import Recipe
    from objectives.training.device import choose_precision
    from objectives.training.trainer import accuracy

    torch.set_num_threads(1)
    number, params, epochs, data_dir = job
    dataset = load_dataset("fashion_mnist", data_dir)
    device = torch.device("cpu")
    trainer = Recipe.of(params, dataset, epochs).trainer(dataset.train, device, number,
                                                         choose_precision("auto", device))
    curve, started = [], time.perf_counter()
    for _ in range(epochs):
        trainer.run_epoch()
        curve.append(accuracy(trainer.model, dataset.validation))
    return {"params": params, "state": "COMPLETE", "value": curve[-1], "curve": curve,
            "epoch_s": (time.perf_counter() - started) / epochs, "epochs": epochs}


def record(path: Path, trials: int, epochs: int, jobs: int, data_dir: str | None) -> None:
    """Train ``trials`` configurations drawn at random from the shipped space, each for all
    ``epochs`` (no pruning: whole curves), ``jobs`` at a time; write them to ``path``."""
    import multiprocessing

    space = spaces.load_space(None, "fashion_mnist")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    configurations = []
    for number in range(trials):
        trial = study.ask()
        configurations.append((number, spaces.suggest(trial, space), epochs, data_dir))
        study.tell(trial, 0.0)
    rows: dict[str, list[dict]] = {}
    with multiprocessing.get_context("spawn").Pool(jobs) as pool:
        for number, row in enumerate(pool.imap(record_one, configurations)):
            rows.setdefault(f"fold-{number % 5}", []).append(row)
            print(f"  {number + 1}/{trials}: {row['value']:.2%} after {epochs} epochs, {row['epoch_s']:.1f} s an epoch",
                  flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"recipe": f"{trials} random configurations of the shipped space, {epochs} epochs, "
                                          "one core each", "seeds": rows}, indent=1))


def load_records(path: Path) -> tuple[list[dict], dict[str, list[dict]]]:
    recorded = json.loads(path.read_text())
    by_seed = recorded["seeds"]
    return [record for records in by_seed.values() for record in records], by_seed


def validate(by_seed: dict[str, list[dict]], space: dict) -> None:
    """Leave-one-search-out: fitted on the other seeds' trials, each held-out trial's last
    reported value and epoch time predicted."""
    errors, time_errors, pairs = [], [], []
    for held_out, records in by_seed.items():  # a search's trials, or a fifth of the random ones
        others = [record for seed, rows in by_seed.items() if seed != held_out for record in rows]
        surrogate = Surrogate(others, space)
        for record in records:
            predicted = surrogate.curve(record["params"])[len(record["curve"]) - 1]
            errors.append(abs(predicted - record["curve"][-1]))
            pairs.append((predicted, record["curve"][-1]))
            time_errors.append(abs(surrogate.epoch_seconds(record["params"]) - record["epoch_s"]) / record["epoch_s"])
    predicted, actual = zip(*pairs)
    print(f"surrogate, {len(by_seed)}-fold cross-validation over {len(errors)} trials: last reported "
          f"accuracy off by {statistics.fmean(errors):.2%} on average (median {statistics.median(errors):.2%}), "
          f"rank correlation {spearman(predicted, actual):.2f}; epoch time off by "
          f"{statistics.fmean(time_errors):.0%} on average", flush=True)


def spearman(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    def ranks(values: tuple[float, ...]) -> list[float]:
        order = sorted(range(len(values)), key=values.__getitem__)
        result = [0.0] * len(values)
        for rank, index in enumerate(order):
            result[index] = float(rank)
        return result
    return statistics.correlation(ranks(a), ranks(b))


# --- simulated time ----------------------------------------------------------------------

class VirtualClock:
    """Time that passes only when every worker waits: then it jumps to the earliest
    wake-up. ``monotonic`` and ``sleep`` stand in for the ``time`` module's in the worker
    loop and its history, so their waits and ages are simulated too."""

    def __init__(self) -> None:
        self.now = 0.0
        self.condition = threading.Condition()
        self.actors = 0
        self.waking: dict[int, float] = {}
        self.halted = False

    def monotonic(self) -> float:
        return self.now

    def join(self) -> None:
        with self.condition:
            self.actors += 1

    def leave(self) -> None:
        with self.condition:
            self.actors -= 1
            self._advance()

    def halt(self) -> None:
        with self.condition:
            self.halted = True
            self.condition.notify_all()

    def sleep(self, seconds: float) -> None:
        me = threading.get_ident()
        with self.condition:
            wake = self.now + max(seconds, 0.0)
            self.waking[me] = wake
            self._advance()
            while self.now < wake and not self.halted:
                self.condition.wait()
            del self.waking[me]

    def _advance(self) -> None:
        if self.waking and len(self.waking) >= self.actors:
            self.now = max(self.now, min(self.waking.values()))
            self.condition.notify_all()


class ClockModule:
    """What ``search.worker.loop`` and ``search.study.history`` see as ``time``."""

    def __init__(self, clock: VirtualClock) -> None:
        self.monotonic = clock.monotonic
        self.sleep = clock.sleep
        self.time = time.time
        self.perf_counter = time.perf_counter


@dataclass
class Race:
    """One simulated search: every finished trial's time and value; stops every worker once
    a trial reaches the highest target (or at the horizon)."""

    clock: VirtualClock
    target: float
    horizon: float
    finished_at: list[tuple[float, float]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def finished(self, value: float) -> None:
        with self.lock:
            self.finished_at.append((self.clock.now, value))
            if value >= self.target:
                self.clock.halt()

    def reached(self, target: float) -> float:
        """Simulated seconds to the first finished trial at ``target`` (inf: never)."""
        return min((at for at, value in self.finished_at if value >= target), default=math.inf)

    @property
    def over(self) -> bool:
        return self.clock.halted or self.clock.now > self.horizon


class SimulatedTraining:
    """The worker's ``Workload``: the surrogate's curve, one epoch per simulated wait."""

    device = "simulated"
    precision = "bfloat16"

    def __init__(self, surrogate: Surrogate, race: Race, seed: int) -> None:
        self.surrogate = surrogate
        self.race = race
        self.seed = seed

    def check(self, spec: StudySpec) -> None:
        return None

    def objective(self, joined: Joined) -> Callable[[optuna.Trial], float]:
        rng = random.Random(self.seed * 1_000 + joined.index)

        def objective(trial: optuna.Trial) -> float:
            params = spaces.suggest(trial, joined.space)
            curve, seconds = self.surrogate.sample(params, rng)
            for epoch, value in enumerate(curve, start=1):
                self.race.clock.sleep(seconds)
                if self.race.over:
                    raise WorkerStopped(signal.SIGTERM)
                trial.report(value, epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at epoch {epoch}")
            self.race.finished(curve[-1])
            return curve[-1]
        return objective


# --- the searches --------------------------------------------------------------------------

@dataclass(frozen=True)
class Setting:
    name: str
    pruner: str
    liar: bool = True  # TPE's constant liar (the default): running trials count as bad guesses
    startup: int | None = None  # TPE's random trials before it models (None: the default)

    @property
    def key(self) -> str:
        return self.pruner + ("" if self.liar else "-noliar") + (f"-startup{self.startup}" if self.startup else "")


SETTINGS = (Setting("median pruner (default)", "median"), Setting("successive halving", "successive-halving"),
            Setting("hyperband", "hyperband"), Setting("median, TPE without constant liar", "median", liar=False),
            Setting("median, TPE random for 5 trials, not 10", "median", startup=5))


def race(url: str, workers: int, setting: Setting, seed: int, surrogate: Surrogate, target: float,
         horizon: float, artifacts: Path) -> Race:
    """``workers`` real workers on a fresh study at ``url`` until a trial reaches ``target``."""
    from search.study import history as history_module
    from search.study.sampler import make_sampler, worker_seed
    from search.worker import loop as loop_module
    from search.worker.assembly import assemble

    clock = VirtualClock()
    contest = Race(clock, target, horizon)
    loop_module.time = history_module.time = ClockModule(clock)
    built = []
    for _ in range(workers):
        config = WorkerConfig(storage=parse_url(url), artifacts=str(artifacts), seed=seed, heartbeat_interval=3600,
                              grace_period=7200, keep_best=1)
        request = StudyRequest(name=STUDY, dataset="fashion_mnist", epochs=surrogate.epochs, n_trials=1_000_000,
                               pruner=setting.pruner)
        worker = assemble(config, request, say=lambda line: None,
                          workload=SimulatedTraining(surrogate, contest, seed))
        if not setting.liar or setting.startup is not None:
            worker.study.sampler.inner = make_sampler(worker_seed(seed, worker.index), gamma=worker.history.gamma,
                                                      constant_liar=setting.liar, startup=setting.startup)
        built.append(worker)

    def work(worker) -> None:
        try:
            worker.loop()
        except WorkerStopped:
            pass
        finally:
            clock.leave()
            worker.storage.close()

    for _ in built:
        clock.join()
    threads = [threading.Thread(target=work, args=(worker,), daemon=True) for worker in built]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return contest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    parser.add_argument("--repeats", type=int, default=5, help="searches per worker count and setting (seeds)")
    parser.add_argument("--targets", type=float, nargs="+", default=[0.915, 0.92],
                        help="validation accuracies to reach; a search runs until it reaches the highest")
    parser.add_argument("--hours", type=float, default=12, help="simulated time a search may take at most")
    parser.add_argument("--settings", nargs="+", choices=[setting.key for setting in SETTINGS])
    parser.add_argument("--recorded", type=Path, default=RECORDED)
    parser.add_argument("--quick", action="store_true", help="1 and 2 workers, one setting, a low target (CI)")
    parser.add_argument("--plot", type=Path, help="also draw the speed-up per worker count to this PNG")
    parser.add_argument("--record", type=int, metavar="N", help="first train N random configurations of the "
                        "shipped space for whole trials and write them to --recorded (real training: hours)")
    parser.add_argument("--epochs", type=int, default=60, help="with --record: epochs per trial")
    parser.add_argument("--jobs", type=int, default=2, help="with --record: trainings at once, one core each")
    parser.add_argument("--data-dir", help="with --record: Fashion-MNIST's directory (default: the system copy)")
    args = parser.parse_args()
    if args.record:
        record(args.recorded, args.record, args.epochs, args.jobs, args.data_dir)
    warnings.simplefilter("ignore")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    torch.set_num_threads(1)
    records, by_seed = load_records(args.recorded)
    space = spaces.load_space(None, "fashion_mnist")
    settings = [setting for setting in SETTINGS if not args.settings or setting.key in args.settings]
    if args.quick:
        args.workers, args.repeats, settings = [1, 2], 1, settings[:1]
        args.targets = [sorted(record["curve"][-1] for record in records)[len(records) // 2]]
    else:
        validate(by_seed, space)
    surrogate = Surrogate(records, space)
    print(f"surrogate from {len(records)} real trials ({surrogate.epochs} epochs each): trial noise "
          f"{surrogate.trial_sd:.2%}, epoch noise {surrogate.epoch_sd[0]:.2%} at the first epoch and "
          f"{surrogate.epoch_sd[-1]:.2%} at the last; {args.repeats} searches per cell, "
          f"the median time to each target", flush=True)

    server = None
    try:
        from tests.support.postgres import PostgresServer, find_pg_bin

        find_pg_bin()
        server = PostgresServer(settings="-c max_connections=400")
        server.start()
    except RuntimeError:
        server = None  # no PostgreSQL here: an SQLite file per search
    started = time.monotonic()
    table: dict[str, dict[int, list[Race]]] = {}
    with tempfile.TemporaryDirectory(prefix="hpsearch-simulated-") as tmp:
        try:
            for setting in settings:
                table[setting.name] = {}
                for workers in args.workers:
                    races = []
                    for repeat in range(args.repeats):
                        url = (server.new_database() if server is not None
                               else f"sqlite:///{Path(tmp) / f'{setting.key}-{workers}-{repeat}.db'}")
                        races.append(race(url, workers, setting, repeat, surrogate, max(args.targets),
                                          args.hours * 3600, Path(tmp) / "artifacts"))
                    table[setting.name][workers] = races
                    print(f"  {setting.name}, {workers} workers: " + ", ".join(
                        f"{median_time(races, target) / 60:.1f} min to {target:.1%}" for target in args.targets)
                        + f" (median of {args.repeats}; {statistics.fmean(len(r.finished_at) for r in races):.0f} "
                        f"trials finished on average)", flush=True)
        finally:
            if server is not None:
                server.stop()

    for target in args.targets:
        print(f"\nspeed-up to {target:.2%} over one worker, and efficiency (speed-up / workers); simulated")
        print(f"{'setting':36} " + " ".join(f"{n:>12}" for n in args.workers))
        for name, by_workers in table.items():
            times = {n: median_time(races, target) for n, races in by_workers.items()}
            base = times[args.workers[0]] * args.workers[0]
            cells = [f"{base / times[n]:5.2f}x {base / times[n] / n:4.2f}" if math.isfinite(times[n] + base)
                     else f"{'-':>12}" for n in args.workers]
            print(f"{name:36} " + " ".join(f"{cell:>12}" for cell in cells))
            print(f"{'  minutes to the target':36} " + " ".join(f"{times[n] / 60:12.1f}" for n in args.workers))
    print(f"\n{(time.monotonic() - started) / 60:.1f} min of real time")
    if args.plot:
        plot(args.plot, table, args.targets, args.workers)


def plot(path: Path, table: dict[str, dict[int, list[Race]]], targets: list[float], counts: list[int]) -> None:
    """Speed-up against workers, one panel per target, a line per setting, and the ideal."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(1, len(targets), figsize=(5.5 * len(targets), 4.2), squeeze=False)
    for axis, target in zip(axes[0], targets):
        axis.plot(counts, counts, color="grey", linestyle=":", label="ideal")
        for name, by_workers in table.items():
            times = [median_time(by_workers[n], target) for n in counts]
            base = times[0] * counts[0]
            axis.plot(counts, [base / t if math.isfinite(t) else math.nan for t in times], marker="o", label=name)
        axis.set_xscale("log", base=2)
        axis.set_yscale("log", base=2)
        axis.set_xticks(counts, [str(n) for n in counts])
        axis.set_yticks(counts, [str(n) for n in counts])
        axis.set_xlabel("workers")
        axis.set_ylabel(f"speed-up to {target:.1%} validation accuracy")
        axis.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    figure.suptitle("Time to a target, relative to one worker (simulated: the real service, surrogate trials)")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)


def median_time(races: list[Race], target: float) -> float:
    return statistics.median(race.reached(target) for race in races)


if __name__ == "__main__":
    main()
