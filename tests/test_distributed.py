"""torchrun with 2 gloo ranks on the CPU: the same losses as one process training on both
ranks' batches at once, a checkpoint of the 2-rank run resumes in one process, gradients are
averaged, and leaving the process group leaves no thread of it behind."""

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml
from test_train import tiny_run, write_corpus

from orthoasr.checkpoint import load_checkpoint
from orthoasr.metrics import read_metrics
from orthoasr.train import train

# randomness that may differ per rank is off, so the runs must agree up to rounding
DETERMINISTIC = ("spec_augment=false", "model.dropout=0.0", "stochastic_depth=0.0",
                 "device=cpu", "backend=torch", "stage1_steps=3", "stage2_steps=3",
                 "max_frames=900", "log_every=1", "ckpt_every=2")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"), n=24)


def torchrun(config, work_dir, *args):
    """`orthoasr train` under torchrun with 2 CPU processes (gloo); its stdout."""
    done = torchrun_process(config, work_dir, *args)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def torchrun_process(config, work_dir, *args) -> subprocess.CompletedProcess:
    """The finished torchrun of `torchrun`, whatever its exit status."""
    # TMPDIR: torchrun's torchelastic_* folders go to the test's folder, not /tmp
    tmp = Path(work_dir).parent / "tmp"
    tmp.mkdir(exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", "TMPDIR": str(tmp)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "orthoasr", "train", "--config", str(config), "--work-dir", str(work_dir),
           *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def write_config(run, path: Path) -> Path:
    path.write_text(yaml.safe_dump(json.loads(json.dumps(run.to_dict()))))
    return path


@pytest.mark.parametrize("grad_sync", ["ddp", "flat"])
def test_two_ranks_match_one_process_with_their_batches(corpus, tmp_path, grad_sync):
    single = train(tiny_run(corpus, *DETERMINISTIC, "buckets_per_step=2"), tmp_path / "one")
    config = write_config(tiny_run(corpus, *DETERMINISTIC, f"grad_sync={grad_sync}"),
                          tmp_path / "run.yaml")
    out = torchrun(config, tmp_path / "two")
    assert "step 6/6" in out                      # rank 0 logs; the others stay quiet
    ranks = read_metrics(tmp_path / "two" / "metrics.csv")
    ones = [row for row in single.history]
    assert [r["step"] for r in ranks] == [r["step"] for r in ones] == list(range(1, 7))
    for two, one in zip(ranks, ones):
        for key in ("loss", "loss_sup", "loss_sub", "penalty"):
            assert two[key] == pytest.approx(one[key], rel=2e-3, abs=1e-5), (two, one)
    a = load_checkpoint(tmp_path / "one" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "two" / "checkpoint.pt")
    assert (a["frozen_masks"] == b["frozen_masks"]).all()   # same subnets chosen
    # and the same weights, within a fifth of one Adam step (lr 1e-3): the key bias's
    # gradient is rounding noise (softmax ignores it), which Adam scales up to ~5e-5
    for name, weight in a["model"].items():
        assert torch.allclose(b["model"][name], weight, rtol=0, atol=2e-4), name
    # throughput counts both ranks' utterances: those of the one process's merged batches
    assert sum(r["utt_per_s"] > 0 for r in ranks) == len(ranks)


def test_two_rank_checkpoint_resumes_in_one_process(corpus, tmp_path):
    config = write_config(tiny_run(corpus, *DETERMINISTIC), tmp_path / "run.yaml")
    torchrun(config, tmp_path / "two", "--stop-at", "4")
    state = load_checkpoint(tmp_path / "two" / "checkpoint.pt")
    assert state["step"] == 4 and state["frozen_masks"] is not None
    resumed = train(tiny_run(corpus, *DETERMINISTIC, "buckets_per_step=2"), tmp_path / "two",
                    resume=True)
    assert resumed.step == 6
    uninterrupted = train(tiny_run(corpus, *DETERMINISTIC, "buckets_per_step=2"),
                          tmp_path / "one")
    tail = {r["step"]: r["loss"] for r in uninterrupted.history}
    for row in resumed.history:          # steps 5 and 6, on the same batches and weights
        assert row["loss"] == pytest.approx(tail[row["step"]], rel=2e-3, abs=1e-5)


def test_a_resume_that_changes_the_batches_per_step_says_so(corpus, tmp_path, capsys):
    """A checkpoint resumes on any number of ranks, but a step then trains on another number
    of the plan's batches (ranks x buckets_per_step) at the same learning rate: a 2-rank run
    resumed in one process trained on half the data per step without a word. One process
    with buckets_per_step=2 stands in for the 2 ranks."""
    train(tiny_run(corpus, *DETERMINISTIC, "buckets_per_step=2"), tmp_path / "run", stop_at=2)
    capsys.readouterr()
    train(tiny_run(corpus, *DETERMINISTIC), tmp_path / "run", resume=True)
    assert ("a step of the checkpoint's run trained on 2 of the plan's batches, one of this "
            "run trains on 1 (1 rank(s) x buckets_per_step=1): buckets_per_step=2 keeps its "
            "steps") in capsys.readouterr().out


def test_ctrl_c_checkpoints_both_ranks_between_log_steps(corpus, tmp_path):
    """SIGINT to torchrun (which passes it to its ranks, then kills them 30 s later): the
    ranks agree to stop within a few steps, not at the next log step (here never), and the
    checkpoint of that step is written."""
    long_run = tiny_run(corpus, *DETERMINISTIC, "stage1_steps=2000", "log_every=5000",
                        "ckpt_every=5000", "ckpt_minutes=60")
    config = write_config(long_run, tmp_path / "run.yaml")
    work = tmp_path / "two"
    (tmp_path / "tmp").mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo",
           "TMPDIR": str(tmp_path / "tmp")}
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone",
                             "--nproc_per_node=2", "-m", "orthoasr", "train", "--config",
                             str(config), "--work-dir", str(work)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while not (work / "tokenizer.model").exists() and time.monotonic() < deadline:
        time.sleep(0.5)                    # the tokenizer is made before the first step
    time.sleep(5)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert "forcefully" not in out, out[-3000:]
    state = load_checkpoint(work / "checkpoint.pt")
    assert 0 < state["step"] < 2000, out[-3000:]


def test_a_start_refused_on_rank_0_alone_ends_every_rank_at_once(corpus, tmp_path):
    """Rank 0 alone checks and locks the work dir; refused there (a run already in it, say),
    it ended while the other rank waited for it in the process group's set-up, deaf to
    torchrun's SIGTERM until torchrun killed it 30 s later ("forcefully exiting")."""
    config = write_config(tiny_run(corpus, *DETERMINISTIC), tmp_path / "run.yaml")
    work = tmp_path / "two"
    work.mkdir()
    (work / "metrics.csv").write_text("step\n")          # a run is there
    done = torchrun_process(config, work)
    out = done.stdout + done.stderr
    assert done.returncode != 0
    assert "forcefully" not in out, out[-3000:]
    assert f"work dir {work} already holds a run" in out
    assert f"rank 0 could not start the run in --work-dir {work}" in out, out[-3000:]


def _average_on_rank(rank: int, init_file: str, out: str) -> None:
    import torch.distributed as dist

    from orthoasr.distributed import World, average_gradients
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    params = [torch.zeros(3, 2), torch.zeros(4, dtype=torch.float64), torch.zeros(5),
              torch.zeros(2, 3).t()]                # a non-contiguous gradient
    for i, p in enumerate(params):
        if i != 2:                                  # p 2 unused on every rank: stays None
            p.grad = torch.full_like(p, float(rank + 1) * (i + 1))
    average_gradients(params, World(rank, 2, rank))
    dist.destroy_process_group()
    torch.save([None if p.grad is None else p.grad for p in params], f"{out}.{rank}")


def test_average_gradients_means_each_gradient_over_ranks(tmp_path):
    import torch.multiprocessing as mp
    out = str(tmp_path / "grads")
    mp.spawn(_average_on_rank, args=(str(tmp_path / "init"), out), nprocs=2)
    for rank in (0, 1):
        grads = torch.load(f"{out}.{rank}")
        assert grads[2] is None
        for i in (0, 1, 3):            # mean of 1*(i+1) and 2*(i+1)
            assert grads[i].dtype == (torch.float64 if i == 1 else torch.float32)
            assert torch.equal(grads[i], torch.full_like(grads[i], 1.5 * (i + 1)))


def _failed_starts(rank: int, port: int, corpus: str, work: str, out: str) -> None:
    """train() refused twice in this process: a run already in the work dir (rank 0's
    refusal, shared), then a resume with nothing to resume (every rank's); each error's
    name and whether the process group was still joined after it."""
    import torch.distributed as dist
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    seen = []
    for resume in (False, True):
        try:
            train(tiny_run(Path(corpus), "device=cpu"), Path(work), resume=resume)
        except Exception as err:
            seen.append([type(err).__name__, dist.is_initialized()])
    Path(f"{out}.{rank}").write_text(json.dumps(seen))


def test_a_failed_start_leaves_the_process_group(corpus, tmp_path):
    """A start refused after the group was joined left it joined: a caller that catches the
    error (a notebook) kept a group whose peers may be gone, and its gloo threads could
    abort the process at exit. Each rank now leaves it before the error propagates, so a
    second train() in the same process joins a fresh one."""
    import socket

    import torch.multiprocessing as mp
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    work = tmp_path / "run"
    work.mkdir()
    (work / "metrics.csv").write_text("step\n")          # a run is there, no checkpoint
    out = str(tmp_path / "seen")
    mp.spawn(_failed_starts, args=(port, str(corpus), str(work), out), nprocs=2)
    for rank, refused in ((0, "WorkDirError"), (1, "RuntimeError")):
        assert json.loads(Path(f"{out}.{rank}").read_text()) == \
            [[refused, False], ["WorkDirError", False]], rank


def _native_threads() -> list[str]:
    """Names of this process's OS threads (gloo's are native: threading does not see them);
    one that ends while they are read is left out."""
    names = []
    for task in os.listdir("/proc/self/task"):
        try:
            names.append(Path(f"/proc/self/task/{task}/comm").read_text().strip())
        except FileNotFoundError:
            pass
    return sorted(names)


def _threads_left_by_shutdown(rank: int, port: int, out: str) -> None:
    from torch.nn.parallel import DistributedDataParallel

    from orthoasr.distributed import init_world, shutdown
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    before = _native_threads()
    world = init_world("cpu")
    ddp = DistributedDataParallel(torch.nn.Linear(3, 2))   # imports torch._dynamo, as train's
    ddp(torch.ones(4, 3)).sum().backward()
    del ddp
    shutdown(world)
    Path(f"{out}.{rank}").write_text(json.dumps({"before": before, "after": _native_threads()}))


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux's /proc")
def test_shutdown_ends_the_process_groups_threads(tmp_path):
    """After shutdown no gloo thread is left for interpreter exit to tear down: one left
    there could abort the rank ("terminate called without an active exception")."""
    import socket

    import torch.multiprocessing as mp
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / "threads")
    mp.spawn(_threads_left_by_shutdown, args=(port, out), nprocs=2)
    for rank in (0, 1):
        threads = json.loads(Path(f"{out}.{rank}").read_text())
        left = Counter(threads["after"]) - Counter(threads["before"])
        assert not left, (f"rank {rank}: threads left after shutdown: {sorted(left.elements())}",
                          threads)
