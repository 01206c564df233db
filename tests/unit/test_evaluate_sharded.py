"""Evaluation spread over processes (issue 15): shards of a job array merged with ``--merge``, and
``torchrun`` with 2 gloo processes on the CPU; the merged results must equal a one-process run's, and
the guarantees of the faults issue (lock, identity, checked records, resume) must hold per shard.

Same tiny model and six-image folder as ``test_evaluate_faults`` (its reference run is one process,
one thread: the shards and ranks run with one thread each, as the identity demands).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_evaluate_faults import CASES, SRC, argv, errors, reference_run, results, spawn

from faithclip.cli.main import main

pytestmark = pytest.mark.usefixtures("one_thread")
TORCHRUN = Path(sys.executable).with_name("torchrun")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return reference_run(tmp_path_factory.mktemp("shards"))


def shard_keys(path: Path) -> list[tuple[str, str]]:
    return [(r["case"], r["method"]) for r in map(json.loads, path.read_text().splitlines())]


def test_job_array_shards_merged_equal_one_process(setup, tmp_path, capsys):
    model, data, reference = setup
    shared = tmp_path / "shared"  # every shard writes into one folder ...
    assert main(argv(model, data, shared, "--shard", "0/2")) == 0
    assert main(argv(model, data, shared, "--merge")) == 2  # ... shard 1 has not run: nothing is merged
    (message,) = errors(capsys)
    assert "cannot merge: 6 records are in none of the folders" in message and "shard 1/2" in message
    assert not (shared / "results.json").exists()
    assert main(argv(model, data, shared, "--shard", "1/2")) == 0
    assert sorted(p.name for p in shared.glob("records*")) == [
        "records.shard-0-of-2.jsonl",
        "records.shard-1-of-2.jsonl",
    ]
    # round-robin over positions: shard 0 holds cases 0, 2, 4 (2 records each)
    assert (
        len(shard_keys(shared / "records.shard-0-of-2.jsonl"))
        == len(shard_keys(shared / "records.shard-1-of-2.jsonl"))
        == CASES
    )
    assert main(argv(model, data, shared, "--merge")) == 0
    assert results(shared) == results(reference)

    apart = [tmp_path / "job0", tmp_path / "job1", tmp_path / "job2"]  # ... or each into its own
    for index, out in enumerate(apart):
        assert main(argv(model, data, out, "--shard", f"{index}/3")) == 0
    assert main(argv(model, data, apart[0], "--merge", str(apart[1]), str(apart[2]))) == 0
    assert results(apart[0]) == results(reference)
    # the merged folder is a complete run of its own: a plain run computes nothing and changes nothing
    before = {p.name: p.read_bytes() for p in apart[0].glob("records*")}
    assert main(argv(model, data, apart[0])) == 0
    assert {p.name: p.read_bytes() for p in apart[0].glob("records*")} == before


def test_merge_checks_every_folder_identity_and_records(setup, tmp_path, capsys):
    model, data, reference = setup
    good, other = tmp_path / "good", tmp_path / "other"
    assert main(argv(model, data, good, "--shard", "0/2")) == 0
    assert main(argv(model, data, other, "--shard", "1/2", "--seed", "7")) == 0
    assert main(argv(model, data, good, "--merge", str(other))) == 2
    (message,) = errors(capsys)
    assert f"{other} holds a run with different settings: seed: 7 -> 0" in message
    assert main(argv(model, data, tmp_path / "third", "--shard", "1/2")) == 0
    path = tmp_path / "third" / "records.shard-1-of-2.jsonl"
    lines = path.read_bytes().split(b"\n")
    path.write_bytes(b"\n".join(lines[:1] + [lines[1][:20] + b"#"] + lines[2:]))  # a damaged line
    assert main(argv(model, data, good, "--merge", str(tmp_path / "third"))) == 2
    (message,) = errors(capsys)
    assert "records.shard-1-of-2.jsonl:2: not valid JSON" in message and "--repair" in message
    # --repair drops it; the record is then missing, and the merge says which shard to run again
    assert main(argv(model, data, good, "--merge", str(tmp_path / "third"), "--repair")) == 2
    (message,) = errors(capsys)
    assert "cannot merge: 1 records are in none of the folders" in message
    assert main(argv(model, data, tmp_path / "third", "--shard", "1/2")) == 0  # recomputes only that record
    assert len(shard_keys(path)) == CASES
    assert main(argv(model, data, good, "--merge", str(tmp_path / "third"))) == 0
    assert results(good) == results(reference)


def test_a_running_shard_holds_its_shard_and_shares_the_folder(setup, tmp_path, capsys):
    model, data, reference = setup
    out = tmp_path / "run"
    first = spawn(argv(model, data, out, "--shard", "0/2"))
    path, deadline = out / "records.shard-0-of-2.jsonl", time.monotonic() + 120
    while (
        not (path.exists() and path.read_bytes().count(b"\n") >= 1)
        and first.poll() is None
        and time.monotonic() < deadline
    ):
        time.sleep(0.005)
    first.send_signal(signal.SIGSTOP)  # shard 0 holds its lock and the folder's (shared), mid-run
    try:
        assert main(argv(model, data, out, "--shard", "0/2")) == 2  # the same shard twice: refused
        (message,) = errors(capsys)
        assert f"is in use by another evaluation (pid {first.pid} on " in message
        assert main(argv(model, data, out)) == 2  # a whole-folder run (or a merge) while a shard runs: refused
        (message,) = errors(capsys)
        assert f"in use by another evaluation (shards: pid {first.pid} on " in message
        assert main(argv(model, data, out, "--shard", "1/2")) == 0  # the other shard runs beside it
    finally:
        first.send_signal(signal.SIGCONT)
    assert first.wait(timeout=120) == 0
    assert main(argv(model, data, out, "--merge")) == 0
    assert results(out) == results(reference)


def torchrun(model: Path, data: Path, out: Path, processes: int = 2) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    command = [
        str(TORCHRUN),
        "--standalone",
        "--nproc-per-node",
        str(processes),
        "-m",
        "faithclip",
        *argv(model, data, out),
    ]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


def finish(process: subprocess.Popen, timeout: float = 180) -> tuple[bytes, bytes]:
    try:
        return process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # the group this test started: torchrun and its ranks
        raise


def rank_process(launcher: int, rank: int) -> int | None:
    """The pid of torchrun's worker with ``RANK=rank`` (a child of ``launcher``), from /proc."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environment = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if parent == launcher and f"RANK={rank}".encode() in environment:
            return int(entry.name)
    return None


@pytest.mark.slow  # a soak: torchrun ranks, one killed and resumed
@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not beside the Python interpreter")
def test_torchrun_two_gloo_processes_equal_one_process_and_resume_after_a_killed_rank(setup, tmp_path):
    model, data, reference = setup
    out = tmp_path / "ranks"
    stdout, stderr = finish(run := torchrun(model, data, out))
    assert run.returncode == 0, stderr.decode()[-2000:]
    assert sorted(p.name for p in out.glob("records*")) == ["records.shard-0-of-2.jsonl", "records.shard-1-of-2.jsonl"]
    assert results(out) == results(reference)
    assert stdout.count(b"deletion AUC (top-1)") == 1  # rank 0 printed the results table, once

    killed = tmp_path / "killed"
    run = torchrun(model, data, killed)
    rank_file, deadline = killed / "records.shard-1-of-2.jsonl", time.monotonic() + 120
    while run.poll() is None and time.monotonic() < deadline:
        if rank_file.exists() and rank_file.read_bytes().count(b"\n") >= 1:
            break
        time.sleep(0.001)
    rank_one = rank_process(run.pid, 1)
    assert rank_one is not None, "torchrun's rank 1 was not found"
    os.kill(rank_one, signal.SIGSTOP)  # frozen mid-shard, then killed: the job fails
    written = rank_file.read_bytes().count(b"\n")
    os.kill(rank_one, signal.SIGKILL)
    finish(run)
    assert run.returncode != 0 and 1 <= written < CASES
    before = {p.name: p.read_bytes() for p in killed.glob("records.shard-*")}
    _, stderr = finish(resumed := torchrun(model, data, killed))
    assert resumed.returncode == 0, stderr.decode()[-2000:]
    for name, old in before.items():  # finished records are kept, not recomputed; none is written twice
        assert (killed / name).read_bytes().startswith(old[: old.rfind(b"\n") + 1])
        keys = shard_keys(killed / name)
        assert len(keys) == len(set(keys)) == CASES
    assert results(killed) == results(reference)


def test_images_per_step_is_deprecated_and_changes_no_number(setup, tmp_path, capsys):
    """--images-per-step has had no effect since the perturbed images of consecutive images are streamed
    into full forwards (evaluation/streaming.py): an old command still runs, says so, and gives the numbers."""
    model, data, reference = setup
    out = tmp_path / "step6"
    assert main(argv(model, data, out, "--images-per-step", "6")) == 0
    assert results(out) == results(reference)
    (notice,) = errors(capsys)
    assert "--images-per-step has no effect" in notice and "drop it" in notice
