"""Several processes on one RESULTS folder: launcher environment, rank barrier, sharded scoring, submitit launcher.

The end-to-end tests start real launches on the CPU: ``torchrun --nproc_per_node 2`` (as
``python -m torch.distributed.run``) generating and scoring the smoke suite, a SIGKILL of a whole torchrun job and
its restart, and submitit's LocalExecutor running the shards of ``--launcher local``.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mediaio.video import is_valid_video
from tests.test_cli import invoke
from tests.test_score import refs  # noqa: F401 (fixture)
from videobench.cli import EXIT_SETUP_ERROR
from videobench.distributed import Launch, launch_from_environment, local_device, resolve_shard
from videobench.generation import _TEMP_FILE
from videobench.results import read_cases_jsonl
from videobench.scoring.runner import score_results
from videobench.scoring.shares import compute_share, score_share
from videobench.sync import FileBoard, RankSync, SyncError

SMOKE = ["red_circle-p01", "red_circle-p02", "blue_square-p03", "green_triangle-p04"]  # the smoke suite's cases
# Fast, weight-free CLIP for the scoring launches: a small open_clip tower, random-initialised.
T_CONS = ["--random-weights", "--metrics", "t_cons", "-M", "clip.model=ViT-S-32"]


# ------------------------------------------------------------------------------------------ environment


TORCHRUN = {"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}
SRUN = {"SLURM_JOB_ID": "77", "SLURM_STEP_ID": "0", "SLURM_PROCID": "5", "SLURM_STEP_NUM_TASKS": "8",
        "SLURM_NTASKS": "8", "SLURM_LOCALID": "1"}


def test_launch_from_torchrun_srun_and_neither():
    assert launch_from_environment(TORCHRUN) == Launch(1, 4, 1, "torchrun")
    assert launch_from_environment(SRUN) == Launch(5, 8, 1, "srun")
    assert launch_from_environment({**SRUN, **TORCHRUN}).launcher == "torchrun"  # srun torchrun: the workers count
    batch_script = {key: value for key, value in SRUN.items() if not key.startswith("SLURM_STEP")}
    assert launch_from_environment(batch_script) is None  # sbatch's script is one process, whatever SLURM_NTASKS says
    assert launch_from_environment({"RANK": "0", "WORLD_SIZE": "1"}) is None
    assert launch_from_environment({}) is None
    with pytest.raises(ValueError, match="rank 4 with world size 4"):
        launch_from_environment({"RANK": "4", "WORLD_SIZE": "4"})
    with pytest.raises(ValueError, match="RANK='x'"):
        launch_from_environment({"RANK": "x", "WORLD_SIZE": "4"})


def test_shard_explicit_environment_and_disagreement():
    assert resolve_shard(None, {}) is None
    assert resolve_shard("2/5", {}) == "2/5"  # a SLURM array task or a manual run
    assert resolve_shard(None, TORCHRUN) == "1/4"
    assert resolve_shard("1/4", TORCHRUN) == "1/4"  # --shard $RANK/$WORLD_SIZE agrees
    assert resolve_shard("3/7", {"RANK": "0", "WORLD_SIZE": "1"}) == "3/7"  # a world of one is no launch
    for bad in ("0/4", "1/2", "0/1"):
        with pytest.raises(ValueError, match="disagrees with torchrun.*rank 1 of 4"):
            resolve_shard(bad, TORCHRUN)


def test_local_device(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert local_device("cuda", TORCHRUN) == "cuda:1"
    assert local_device("cuda:3", TORCHRUN) == "cuda:3" and local_device("cpu", TORCHRUN) == "cpu"
    assert local_device("cuda", {}) == "cuda"
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # srun --gpus-per-task=1: one GPU visible per task
    assert local_device("cuda", {**SRUN, "SLURM_LOCALID": "3"}) == "cuda:0"


# ------------------------------------------------------------------------------------------ the barrier


def _syncs(folder: Path, world: int, **kwargs) -> list[RankSync]:
    return [RankSync(FileBoard(folder), Launch(rank, world, rank, "srun"), poll=0.02, **kwargs)
            for rank in range(world)]


def test_barrier_waits_for_a_slow_living_rank(tmp_path):
    syncs = _syncs(tmp_path, 3, stale_after=1.0)
    passed: dict[int, float] = {}

    def rank(r: int, delay: float) -> None:
        time.sleep(delay)
        for name in ("one", "two"):
            syncs[r].barrier(name)
        passed[r] = time.monotonic()

    start = time.monotonic()
    threads = [threading.Thread(target=rank, args=(r, 2.5 if r == 2 else 0)) for r in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(passed) == [0, 1, 2]  # waited 2.5 s, longer than stale_after: the heartbeat kept rank 2 alive
    assert min(passed.values()) - start >= 2.5
    for sync in syncs:
        sync.close()


def test_barrier_gives_up_on_a_rank_that_exited_or_hangs(tmp_path):
    exited = _syncs(tmp_path / "a", 2, stale_after=5)
    exited[1].close()  # what an exiting process does at exit
    with pytest.raises(SyncError, match="rank 1 exited before the barrier 'score'"):
        exited[0].barrier("score")
    hung = _syncs(tmp_path / "b", 2, stale_after=5, timeout=0.5)
    with pytest.raises(SyncError, match=r"rank\(s\) 1 .*alive but not there.*VIDEOBENCH_SYNC_TIMEOUT"):
        hung[0].barrier("score")
    never = RankSync(FileBoard(tmp_path / "c"), Launch(0, 2, 0, "srun"), stale_after=0.3, poll=0.02)
    with pytest.raises(SyncError, match="rank 1 never started"):
        never.barrier("score")
    for sync in (*exited, *hung, never):
        sync.close()


def test_barrier_detects_a_sigkilled_rank(tmp_path):
    """A rank killed with SIGKILL runs no exit handler: its silent heartbeat gives it away."""
    env = {**os.environ, "RANK": "1", "WORLD_SIZE": "2", "VIDEOBENCH_SYNC_ID": "kill-test",
           "VIDEOBENCH_SYNC_STALE": "2"}
    child = subprocess.Popen([sys.executable, "-c", (
        "import time, videobench.sync as s; s.rank_sync(r'%s'); print('beating', flush=True); time.sleep(600)"
    ) % tmp_path], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "beating"
        board = FileBoard(tmp_path / ".videobench-sync" / "kill-test")
        rank0 = RankSync(board, Launch(0, 2, 0, "srun"), stale_after=2, poll=0.02)
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        start = time.monotonic()
        with pytest.raises(SyncError, match="rank 1 stopped beating .* ago"):
            rank0.barrier("generate")
        assert time.monotonic() - start < 10
        rank0.close()
    finally:
        child.kill()
        child.wait()


def test_the_board_of_each_launcher(tmp_path):
    from videobench.sync import _board

    board = _board(launch_from_environment(SRUN), tmp_path, SRUN)
    assert isinstance(board, FileBoard) and board.folder == tmp_path / ".videobench-sync" / "slurm-77.0"
    named = {"RANK": "0", "WORLD_SIZE": "2", "VIDEOBENCH_SYNC_ID": "my run/7"}
    assert _board(launch_from_environment(named), tmp_path, named).folder.name == "my_run_7"
    bare = {"RANK": "0", "WORLD_SIZE": "2"}
    with pytest.raises(SyncError, match="set VIDEOBENCH_SYNC_ID"):
        _board(launch_from_environment(bare), tmp_path, bare)


# ------------------------------------------------------------------------------------------ sharded scoring


def test_shares_then_writer_equal_one_process(tmp_path, refs):
    """Three shares into one cache, then the writer: every value computed once, the same scores.csv as one run."""
    from tests.test_score import build_results, fake_metrics

    results = build_results(tmp_path, refs)
    tables = ("alpha/scores.csv", "reference-still/scores.csv", "leaderboard.csv")
    score_results(results, fake_metrics(), cache_dir=tmp_path / "cache-single", progress=False, log=lambda m: None)
    single = {name: (results / name).read_bytes() for name in tables}
    for name in tables:
        (results / name).unlink()

    cache, calls = tmp_path / "cache-shared", 0
    for index in range(3):
        metrics = fake_metrics()
        summary = score_share(results, metrics, f"{index}/3", cache_dir=cache, progress=False, log=lambda m: None)
        assert summary.ok and "without --shard writes" in summary.describe()
        calls += metrics[0].calls
        assert not (results / "leaderboard.csv").exists() and not (results / "alpha" / "scores.csv").exists()
    assert calls == 4  # alpha's 2 decodable cases and reference-still's 2, each once
    writer = fake_metrics()
    summary = score_results(results, writer, cache_dir=cache, progress=False, log=lambda m: None)
    assert writer[0].calls == 0 and summary.metric_calls == 0
    for name in tables:
        assert (results / name).read_bytes() == single[name], name


def test_a_share_is_a_slice_of_the_scorable_cases(tmp_path, refs):
    from tests.test_score import build_results, fake_metrics

    results = build_results(tmp_path, refs)
    counts = [compute_share(results, fake_metrics(), f"{i}/2", cache_dir=tmp_path / "c", progress=False)[0]
              for i in range(2)]
    assert counts == [3, 3]  # 6 records a full run computes (4 alpha lines that parse + 2), dealt in turn


# ------------------------------------------------------------------------------------------ CLI, launcher


def test_cli_refuses_a_shard_that_disagrees_with_the_launch(env, monkeypatch):
    for key, value in TORCHRUN.items():
        monkeypatch.setenv(key, value)
    out = invoke("generate", "--method", "reference-still", "--out", str(env / "r"), "--shard", "0/2")
    assert out.exit_code == EXIT_SETUP_ERROR and "--shard 0/2 disagrees with torchrun" in out.output
    out = invoke("score", str(env / "r"), "--shard", "0/2", *T_CONS)
    assert out.exit_code == EXIT_SETUP_ERROR and "disagrees with torchrun" in out.output
    assert not (env / "r" / "reference-still").exists()


def test_cli_shard_of_score_writes_only_the_cache(env):
    results = env / "results"
    assert invoke("generate", "--method", "reference-still", "--out", str(results), "--limit", "2").exit_code == 0
    out = invoke("score", str(results), "--shard", "1/2", *T_CONS)
    assert out.exit_code == 0, out.output
    assert "share 1/2: 1 case(s), 1 metric computation(s)" in out.output
    assert "without --shard writes scores.csv and leaderboard.csv" in out.output
    assert not (results / "leaderboard.csv").exists()
    out = invoke("score", str(results), *T_CONS)
    assert out.exit_code == 0 and "1 metric computation(s), 1 from the cache" in out.output


FAKE_SBATCH = """#!/bin/sh
# stands in for SLURM's sbatch: keeps the script, answers as sbatch does
n=$(ls "$FAKE_SBATCH_DIR" | wc -l)
cp "$1" "$FAKE_SBATCH_DIR/script-$n.sh"
echo "Submitted batch job $((4242 + n))"
"""


@pytest.fixture()
def fake_slurm(env, monkeypatch):
    """``sbatch`` and ``srun`` stand-ins on PATH; returns the folder where the submitted scripts land."""
    bin_dir, scripts = env / "bin", env / "sbatch-scripts"
    bin_dir.mkdir()
    scripts.mkdir()
    (bin_dir / "sbatch").write_text(FAKE_SBATCH)
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    for tool in ("sbatch", "srun"):
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SBATCH_DIR", str(scripts))
    return scripts


def test_slurm_launcher_submits_an_array_and_a_dependent_writer(env, fake_slurm):
    results = env / "results"
    config = env / "cluster.yaml"
    config.write_text("slurm_account: vision\nslurm_partition: from-file\ntimeout_min: 30\n")
    out = invoke("generate", "--method", "reference-still", "--out", str(results), "--launcher", "slurm",
                 "--shards", "3", "--partition", "gpu", "--gpus", "1", "--launcher-config", str(config))
    assert out.exit_code == 0, out.output
    for i in range(3):
        assert f"shard {i}/3: job 4242_{i}" in out.output
    script = (fake_slurm / "script-0.sh").read_text()
    for line in ("--array=0-2%3", "--partition=gpu", "--account=vision", "--time=30", "--gpus-per-node=1",
                 "--ntasks-per-node=1", f"--output={results}/.slurm/%A_%a/"):
        assert f"#SBATCH {line}" in script, line
    assert not (results / "reference-still" / "cases.jsonl").exists()  # submitted, not run here

    out = invoke("score", str(results), "--launcher", "slurm", "--shards", "2", "--log-dir", str(env / "logs"),
                 *T_CONS)
    assert out.exit_code == 0, out.output
    assert "share 1/2: job 4243_1" in out.output and "writer of scores.csv and leaderboard.csv: job 4244" in out.output
    writer = (fake_slurm / "script-2.sh").read_text()
    assert "#SBATCH --dependency=afterany:4243" in writer and "--array" not in writer
    assert f"{env}/logs/%j/" in writer and "--time=1440" in writer


def test_launcher_errors_are_one_line(env, fake_slurm, monkeypatch):
    results = str(env / "results")
    bad = env / "bad.yaml"
    bad.write_text("slurm_no_such_thing: 1\n")
    out = invoke("generate", "--method", "reference-still", "--out", results, "--launcher", "slurm",
                 "--launcher-config", str(bad))
    assert out.exit_code == EXIT_SETUP_ERROR and "no_such_thing" in out.output
    out = invoke("generate", "--method", "reference-still", "--out", results, "--launcher", "local", "--shard", "0/2")
    assert out.exit_code == EXIT_SETUP_ERROR and "--shard and --launcher do not go together" in out.output
    monkeypatch.setenv("PATH", "/nonexistent")
    out = invoke("generate", "--method", "reference-still", "--out", results, "--launcher", "slurm")
    assert out.exit_code == EXIT_SETUP_ERROR and "srun" in out.output


# ------------------------------------------------------------------------------------------ real launches


def _env() -> dict[str, str]:
    """The environment of a launch: this test's data, weights and score cache; no launcher variables."""
    env = {key: value for key, value in os.environ.items()
           if key not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.setdefault("PYTHONPATH", "")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]), env["PYTHONPATH"]]))
    return env


def torchrun_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            "-m", "videobench.cli", *args]


def torchrun(*args: str, env: dict[str, str] | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(torchrun_command(*args), env=env or _env(), capture_output=True, text=True,
                          timeout=timeout)


def generated_by_rank(output: str) -> dict[int, list[str]]:
    """``rank r/2 (...): generated a, b`` lines -> {r: [a, b]}."""
    found: dict[int, list[str]] = {}
    for rank, ids in re.findall(r"rank (\d+)/2 \([^)]*\): generated (.*)", output):
        found.setdefault(int(rank), []).extend([] if ids.strip() == "nothing" else ids.strip().split(", "))
    return found


def check_done_once(method_dir: Path) -> None:
    lines = read_cases_jsonl(method_dir / "cases.jsonl")
    ids = [line.record["case_id"] for line in lines]
    assert ids == SMOKE, "every case exactly once, in suite order"
    assert all(line.record["status"] == "ok" for line in lines)
    assert all(is_valid_video(method_dir / "videos" / f"{case_id}.mp4") for case_id in SMOKE)
    assert not [p for p in (method_dir / "videos").iterdir() if not p.name.startswith(".") and p.stem not in SMOKE]


@pytest.fixture(scope="module")
def torchrun_results(tmp_path_factory):
    """The smoke suite generated by 2 ranks of torchrun: (RESULTS, the launch's output)."""
    base = tmp_path_factory.mktemp("torchrun")
    results = base / "results"
    env = {**_env(), "VIDEOBENCH_DATA": str(base / "data"), "VIDEOBENCH_WEIGHTS": str(base / "no-weights")}
    run = torchrun("generate", "--method", "reference-still", "--suite", "smoke", "--out", str(results), env=env)
    return results, run


@pytest.mark.slow
def test_torchrun_two_ranks_generate_each_case_once(torchrun_results):
    results, run = torchrun_results
    assert run.returncode == 0, run.stdout + run.stderr
    check_done_once(results / "reference-still")
    by_rank = generated_by_rank(run.stdout)
    assert by_rank == {0: SMOKE[0::2], 1: SMOKE[1::2]}  # rank r took shard r/2, nothing twice, nothing lost
    assert "all 2 ranks: 4 of 4 case(s) ok, 0 failed, 0 missing" in run.stdout


@pytest.mark.slow
def test_accelerate_launch_two_processes_generate_each_case_once(env, tmp_path):
    """``accelerate launch --multi_gpu`` starts its processes through torchrun's launcher (it runs on CPUs too).

    Three large videos: rank 0 makes two, rank 1 one, and waits at the final barrier for seconds, far longer than
    the 1 s after which a silent rank counts as dead: rank 0's heartbeat runs while it generates.
    """
    results = tmp_path / "results"
    three = SMOKE[:3]
    run = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
         "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
         "-m", "videobench.cli", "generate", "--method", "reference-still", "--suite", "smoke", "--out", str(results),
         "--cases", ",".join(three), "--frames", "160", "--height", "480", "--width", "720"],
        env={**_env(), "VIDEOBENCH_SYNC_STALE": "1"}, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stdout + run.stderr
    assert generated_by_rank(run.stdout) == {0: three[0::2], 1: three[1::2]}
    assert "all 2 ranks: 3 of 3 case(s) ok" in run.stdout
    records = [line.record["case_id"] for line in read_cases_jsonl(results / "reference-still" / "cases.jsonl")]
    assert records == three


@pytest.mark.slow
def test_two_srun_tasks_generate_each_case_once(env, tmp_path):
    """Two processes with the variables srun gives the tasks of one job step (no srun here): files as the board."""
    results = tmp_path / "results"
    tasks = [subprocess.Popen(
        [sys.executable, "-m", "videobench.cli", "generate", "--method", "reference-still", "--suite", "smoke",
         "--out", str(results)],
        env={**_env(), "SLURM_JOB_ID": "4242", "SLURM_STEP_ID": "0", "SLURM_PROCID": str(task),
             "SLURM_STEP_NUM_TASKS": "2", "SLURM_NTASKS": "2", "SLURM_LOCALID": str(task)},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for task in range(2)]
    outputs = [task.communicate(timeout=240)[0] for task in tasks]
    assert [task.returncode for task in tasks] == [0, 0], outputs
    check_done_once(results / "reference-still")
    assert generated_by_rank("".join(outputs)) == {0: SMOKE[0::2], 1: SMOKE[1::2]}
    assert "all 2 ranks: 4 of 4 case(s) ok" in outputs[0]
    assert (results / ".videobench-sync" / "slurm-4242.0").is_dir()


@pytest.mark.slow
def test_torchrun_two_ranks_generate_with_customvideox_tiny(env, tmp_path):
    results = tmp_path / "results"
    run = torchrun("generate", "--method", "customvideox", "--preset", "tiny", "--random-weights", "-o", "steps=2",
                   "--suite", "smoke", "--out", str(results))
    assert run.returncode == 0, run.stdout + run.stderr
    check_done_once(results / "customvideox-tiny")
    assert generated_by_rank(run.stdout) == {0: SMOKE[0::2], 1: SMOKE[1::2]}


def kill_tree(job: subprocess.Popen) -> None:
    """SIGKILL torchrun's agent and every worker (torchrun starts each worker in a session of its own, so the
    agent's process group alone would leave them running), as ``scancel`` or a node failure would."""
    import psutil

    agent = psutil.Process(job.pid)
    everyone = [agent, *agent.children(recursive=True)]
    for process in everyone:
        try:
            process.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    job.wait(30)
    psutil.wait_procs(everyone, timeout=30)


@pytest.mark.slow
def test_sigkill_of_the_torchrun_job_then_restart_completes(env, tmp_path):
    """Kill the whole job (agent and both ranks) after the first video; the restart finishes the rest."""
    results = tmp_path / "results"
    method_dir = results / "reference-still"
    # 160 frames of 480x720 take seconds to encode: the kill lands while the ranks are mid-suite
    args = ("generate", "--method", "reference-still", "--suite", "smoke", "--out", str(results),
            "--frames", "160", "--height", "480", "--width", "720")
    with open(tmp_path / "first.log", "w") as log:
        job = subprocess.Popen(torchrun_command(*args), env=_env(), stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
        deadline = time.monotonic() + 180
        finished: list[Path] = []
        while not finished and time.monotonic() < deadline and job.poll() is None:
            time.sleep(0.05)
            videos = method_dir / "videos"
            finished = [p for p in videos.iterdir() if not p.name.startswith(".")] if videos.is_dir() else []
        kill_tree(job)
    assert finished, "no video appeared before the job ended: " + (tmp_path / "first.log").read_text()[-2000:]
    records = {line.record["case_id"]: line.record for line in read_cases_jsonl(method_dir / "cases.jsonl")
               if line.record} if (method_dir / "cases.jsonl").exists() else {}
    done = {case_id for case_id, record in records.items()
            if record["status"] == "ok" and is_valid_video(method_dir / record["video"])}
    assert len(done) < len(SMOKE), "the job finished before the kill; nothing was interrupted"
    for case_id, record in records.items():  # an ok record always points at a whole video, even under SIGKILL
        assert record["status"] != "ok" or case_id in done
    stamps = {case_id: (method_dir / "videos" / f"{case_id}.mp4").stat().st_mtime_ns for case_id in done}

    again = subprocess.run(torchrun_command(*args), env=_env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    check_done_once(method_dir)
    regenerated = [case_id for ids in generated_by_rank(again.stdout).values() for case_id in ids]
    assert sorted(regenerated) == sorted(set(SMOKE) - done)  # nothing done twice, nothing lost
    assert {case_id: (method_dir / "videos" / f"{case_id}.mp4").stat().st_mtime_ns for case_id in done} == stamps

    # Half-written files of the killed job are hidden temporaries: they broke nothing, and once stale
    # (older than the runner's 10 minutes) a run sweeps them.
    leftovers = [p for folder in (method_dir, method_dir / "videos") for p in folder.iterdir()
                 if p.is_file() and _TEMP_FILE.match(p.name)]
    for path in leftovers:
        os.utime(path, (time.time() - 3600, time.time() - 3600))
    final = invoke("generate", "--method", "reference-still", "--suite", "smoke", "--out", str(results),
                   "--frames", "160", "--height", "480", "--width", "720")
    assert final.exit_code == 0 and "0 generated, 4 already done" in final.output
    assert not any(path.exists() for path in leftovers)


@pytest.mark.slow
@pytest.mark.numerics
def test_torchrun_sharded_scoring_equals_one_process(torchrun_results, env, tmp_path):
    source, _run = torchrun_results
    results = tmp_path / "results"
    shutil.copytree(source, results)
    pan = invoke("generate", "--method", "reference-pan", "--suite", "smoke", "--out", str(results))
    assert pan.exit_code == 0  # moving frames: T.Cons differs from case to case

    # Equal bytes need equal arithmetic: each video is embedded in its own batches whatever the sharding, but the
    # thread count also sets how oneDNN/MKL split a GEMM's sums. torchrun starts its ranks with OMP_NUM_THREADS=1,
    # so the single process gets the same.
    env = {**_env(), "OMP_NUM_THREADS": "1"}
    single = subprocess.run([sys.executable, "-m", "videobench.cli", "score", str(results), *T_CONS],
                            env={**env, "VIDEOBENCH_SCORE_CACHE": str(tmp_path / "cache-single")},
                            capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr
    tables = ("reference-still/scores.csv", "reference-pan/scores.csv", "leaderboard.csv")
    expected = {name: (results / name).read_bytes() for name in tables}
    for name in tables:
        (results / name).unlink()

    ranks = torchrun("score", str(results), *T_CONS, env={**env, "VIDEOBENCH_SCORE_CACHE": str(tmp_path / "c2")})
    assert ranks.returncode == 0, ranks.stdout + ranks.stderr
    shares = re.findall(r"share (\d)/2: (\d) case\(s\), (\d) metric computation", ranks.stdout + ranks.stderr)
    assert shares == [("1", "4", "4")]  # rank 1's report (rank 0 reports as the writer)
    assert "0 metric computation(s), 8 from the cache" in ranks.stdout  # the writer computed nothing itself
    for name in tables:
        assert (results / name).read_bytes() == expected[name], name


@pytest.mark.slow
def test_submitit_local_launcher_generates_and_scores_in_two_shards(env, tmp_path):
    results = tmp_path / "results"
    out = invoke("generate", "--method", "reference-still", "--suite", "smoke", "--out", str(results),
                 "--launcher", "local", "--shards", "2", "--time", "10")
    assert out.exit_code == 0, out.output
    assert "shard 0/2: job" in out.output and re.search(r"shard 1/2: job \d+ ok", out.output)
    check_done_once(results / "reference-still")
    logs = [path.read_text() for path in (results / ".slurm").glob("*/*_log.out")]
    assert sorted(re.search(r"reference-still: (\d) generated", log).group(1) for log in logs) == ["2", "2"]

    out = invoke("score", str(results), "--launcher", "local", "--shards", "2", "--time", "10", *T_CONS)
    assert out.exit_code == 0, out.output
    assert re.search(r"share 1/2: job \d+ ok", out.output) and re.search(r"writer .*: job \d+ ok", out.output)
    writer_log = max((results / ".slurm").glob("*/*_log.out"), key=lambda path: path.stat().st_mtime).read_text()
    assert "0 metric computation(s), 4 from the cache" in writer_log
    assert len(read_cases_jsonl(results / "reference-still" / "cases.jsonl")) == 4
    assert (results / "leaderboard.csv").is_file()


@pytest.mark.slow
def test_torchrun_reproduce_table1_equals_one_process(env, tmp_path):
    """``reproduce table1`` with the tiny presets under torchrun: every rank takes its share of every row and of
    the scoring, rank 0 writes the tables and the page; a job killed midway and restarted completes it, and the
    videos and scores are those of one process."""
    args = ("--suite", "smoke", "--preset", "tiny", "--random-weights", "--limit", "2", *T_CONS)
    # torchrun gives its workers OMP_NUM_THREADS=1, and the tiny models' float sums (hence pixels) depend on the
    # number of intra-op threads: both launches use one thread, so that only the sharding differs
    env_vars = {**_env(), "OMP_NUM_THREADS": "1"}
    single = subprocess.run(
        [sys.executable, "-m", "videobench.cli", "reproduce", "table1", "--out", str(tmp_path / "one"), *args],
        env={**env_vars, "VIDEOBENCH_SCORE_CACHE": str(tmp_path / "cache-one")}, capture_output=True, text=True,
        timeout=1800)
    assert single.returncode == 0, single.stdout + single.stderr
    two_env = {**env_vars, "VIDEOBENCH_SCORE_CACHE": str(tmp_path / "cache-two")}
    # the whole torchrun job is killed once the first videos exist; the same command restarted completes the plan
    with open(tmp_path / "killed.log", "w") as log:
        job = subprocess.Popen(torchrun_command("reproduce", "table1", "--out", str(tmp_path / "two"), *args),
                               env=two_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 600
        made: list[Path] = []
        while not made and time.monotonic() < deadline and job.poll() is None:
            time.sleep(0.05)
            made = [p for p in (tmp_path / "two").rglob("videos/*.mp4") if not p.name.startswith(".")]
        kill_tree(job)
    assert made, "no video before the job ended: " + (tmp_path / "killed.log").read_text()[-2000:]
    assert len(list((tmp_path / "two").rglob("videos/*.mp4"))) < 9 * 2, "the job finished before the kill"
    ranks = torchrun("reproduce", "table1", "--out", str(tmp_path / "two"), *args, env=two_env, timeout=1800)
    assert ranks.returncode == 0, ranks.stdout + ranks.stderr
    assert ranks.stdout.count("table1: 9 row(s)") == 1  # rank 0 prints the plan
    one, two = tmp_path / "one" / "smoke", tmp_path / "two" / "smoke"
    compared = [path.relative_to(one) for path in sorted(one.rglob("*"))
                if path.suffix in (".mp4", ".png") or path.name in ("scores.csv", "leaderboard.csv")]
    assert len([path for path in compared if path.suffix == ".mp4"]) == 9 * 2
    for relative in compared:
        assert (two / relative).read_bytes() == (one / relative).read_bytes(), relative
    assert (tmp_path / "two" / "table1.html").is_file()
    # after the restart each rank made only what the killed job had not: rank 1 at most the second case of a row
    assert all(ids in ([], ["red_circle-p02"]) for rank, ids in _rows_by_rank(ranks.stdout) if rank == 1)
    for method_dir in (folder for folder in two.iterdir() if (folder / "cases.jsonl").is_file()):
        lines = read_cases_jsonl(method_dir / "cases.jsonl")  # every case once, every video whole
        assert [line.record["case_id"] for line in lines] == SMOKE[:2]
        assert all(line.record["status"] == "ok" and is_valid_video(method_dir / line.record["video"])
                   for line in lines)


def _rows_by_rank(output: str) -> list[tuple[int, list[str]]]:
    return [(int(rank), [] if ids.strip() == "nothing" else ids.strip().split(", "))
            for rank, ids in re.findall(r"rank (\d+)/2 \([^)]*\): generated (.*)", output)]
