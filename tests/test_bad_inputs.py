"""Bad input, as a hostile but realistic user of a shared cluster gives it: every one is a sentence naming the
field or the path (exit 2 before any compute, nothing written), or is repaired without losing anything.

The config values go through the command line's own parsing, validation and exit code in this process
(`cli_in_process`); paths, permissions and damaged files through real `python -m jaxens.train` processes
(as another user where the test runs as root, who can write anywhere) and `jaxens.sweep.run_all`.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import stat
import subprocess
import sys

import numpy as np
import pytest
from absl import logging
from conftest import ENSEMBLE_ARGS, REPO, cli, cli_in_process, file_tree, finish, small_config, timeless_summary

from jaxens import files, sweep
from jaxens import workdir as workdir_lib
from jaxens.data import cache
from jaxens.data.errors import DatasetError

ENSEMBLE = "configs/mnist1d_ensemble.py"
TINY = ENSEMBLE_ARGS


def _refused(monkeypatch, capsys, workdir, *args, config=ENSEMBLE) -> str:
    """Runs the command line in this process; asserts exit 2 with a one-sentence error and no traceback;
    returns stderr."""
    code = cli_in_process(monkeypatch, [f"--config={os.path.join(REPO, config)}", f"--workdir={workdir}", *args])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "error:" in err and "Traceback" not in err, err
    return err


# Inputs that reached compute (or a traceback) before: each must now be exit 2 naming the field.
FIELD_CASES = [
    # 1. Infinity and NaN.
    (["--config.optimizer.learning_rate=inf"], "config.optimizer.learning_rate=inf: every number must be finite"),
    (["--config.optimizer.learning_rate=1e999"], "config.optimizer.learning_rate=inf: every number must be finite"),
    (["--config.optimizer.learning_rate=nan"], "config.optimizer.learning_rate=nan: every number must be finite"),
    (["--config.optimizer.weight_decay=inf"], "config.optimizer.weight_decay=inf: every number must be finite"),
    (["--config.optimizer.member_lr_scale=(1,1,1,1e999)"], "config.optimizer.member_lr_scale=(1, 1, 1, inf)"),
    (["--config.optimizer.boundaries=(0.5,1e999)"], "config.optimizer.boundaries=(0.5, inf): every number"),
    (
        ["--config.optimizer.boundaries=(0.5,nan)"],
        "config.optimizer.boundaries=('(0.5,nan)',): expected a tuple of numbers",
    ),
    (["--config.model.widths=(32,'wide')"], "config.model.widths=(32, 'wide'): expected a tuple of integers"),
    # 2. Integers out of range: the seed, and counts that overflow the int32 step counters.
    (["--config.seed=1180591620717411303424"], "config.seed=1180591620717411303424: integers here must lie"),
    (["--config.seed=-1"], "config.seed=-1: must be >= 0"),
    (["--config.data.val_seed=-3"], "config.data.val_seed=-3: must be >= 0"),
    (["--config.train.num_epochs=4000000000"], "config.train.num_epochs=4000000000: integers here must lie"),
    (["--config.train.num_epochs=100000000"], "config.train.num_epochs=100000000: 4000000000 steps"),
    (["--config.ensemble.k=3000000000"], "config.ensemble.k=3000000000: integers here must lie"),
    # 9. Smaller ones.
    (
        ["--config.optimizer.boundaries=(0.5,0.5)"],
        "config.optimizer.boundaries=(0.5, 0.5): must be strictly increasing",
    ),
    (["--config.optimizer.momentum=1.5"], "config.optimizer.momentum=1.5: sgd needs momentum in [0, 1)"),
    (["--config.optimizer.momentum=1.0"], "config.optimizer.momentum=1.0: sgd needs momentum in [0, 1)"),
    # 10. Memory: estimated from the parameter count before anything is allocated.
    (["--config.ensemble.k=300000"], "config.ensemble.k=300000"),
]


@pytest.mark.parametrize("args, message", FIELD_CASES, ids=[" ".join(a) for a, _ in FIELD_CASES])
@pytest.mark.parametrize("existing", [False, True], ids=["new_workdir", "unfinished_run"])
def test_a_bad_field_exits_2_naming_it_and_writes_nothing(tmp_path, monkeypatch, capsys, args, message, existing):
    workdir = tmp_path / "run"
    if existing:
        workdir.mkdir()
        (workdir / "notes.txt").write_text("mine")
    before = file_tree(workdir)
    err = _refused(monkeypatch, capsys, workdir, *args)
    assert message in err
    assert file_tree(workdir) == before and (existing or not workdir.exists())


def test_a_batch_larger_than_the_training_set_is_one_error(tmp_path, monkeypatch, capsys):
    err = _refused(monkeypatch, capsys, tmp_path / "run", "--config.train.batch_size=5000")
    assert "config.train.batch_size=5000: larger than the 4000" in err
    assert "checkpoint_every" not in err and "num_epochs" not in err


def _write_idx(path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.mark.parametrize(
    "args", [(), ("--config.train.batch_size=128",), ("--config.data.val_size=5000",)], ids=["default", "b128", "val"]
)
def test_fashion_mnist_files_of_another_size_are_refused_naming_the_file(tmp_path, monkeypatch, capsys, args):
    """3. Valid IDX files holding 100 training examples: exit 2 naming the file and both counts, before
    the workdir is claimed (it was: silent training on 100 examples, or a crash after the claim)."""
    data = tmp_path / "fmnist"
    data.mkdir()
    rng = np.random.default_rng(0)
    for stem, n in (("train", 100), ("t10k", 10000)):
        _write_idx(data / f"{stem}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(data / f"{stem}-labels-idx1-ubyte.gz", rng.integers(0, 10, (n,)))
    workdir = tmp_path / "run"
    err = _refused(
        monkeypatch,
        capsys,
        workdir,
        f"--config.data.dir={data}",
        *args,
        config="configs/fmnist_ensemble.py",
    )
    assert f"{data}/train-images-idx3-ubyte.gz holds 100 examples, where fashion_mnist has 60000" in err
    assert not workdir.exists()


@pytest.mark.parametrize(
    "write, message",
    [
        (lambda p: p.write_text(""), "JSONDecodeError"),
        (lambda p: p.write_text('{"status": "runn'), "JSONDecodeError"),
        (lambda p: p.write_bytes(b"\xff\xfe garbage"), "cannot be read"),
        (lambda p: p.write_text('["a list"]'), "holds no jaxens status"),
    ],
    ids=["empty", "cut", "binary", "not_a_status"],
)
def test_an_unreadable_status_json_does_not_stop_a_sweep(tmp_path, write, message):
    """4. One run's status.json damaged: a finished run (its summary there) stays finished and untouched;
    an unfinished one is 'unknown', named, and run again; `statuses` reports both."""
    config = small_config(**{"train.num_epochs": 1, "ensemble.k": 2, "model.widths": (16,)})
    runs = {"done": config, "half": config}
    root = tmp_path / "sweep"
    sweep.run_all({"done": config}, str(root))
    finished = file_tree(root / "done")
    shutil.copytree(root / "done", root / "half")
    os.remove(root / "half" / "summary.json")  # Killed after its last checkpoint.
    for name in runs:
        write(root / name / "status.json")
    before = file_tree(root / "done")
    listed = sweep.statuses(str(root))
    assert listed["done"]["status"] == "finished"
    assert listed["half"]["status"] == "unknown" and message in listed["half"]["message"]
    assert str(root / "half" / "status.json") in listed["half"]["message"]
    outcomes = sweep.run_all(runs, str(root))
    assert outcomes["done"].status == "finished" and not outcomes["done"].ran
    assert outcomes["half"].status == "finished" and outcomes["half"].ran
    assert file_tree(root / "done") == before and set(before) == set(finished)
    assert json.load(open(root / "half" / "status.json"))["status"] == "finished"


def test_a_sweep_leaves_a_run_another_sweep_is_running_to_it(tmp_path):
    """9. Two sweeps on one root: the run the other holds is 'busy', never 'failed: Busy', and once the other
    finishes it the table says 'finished'."""
    config = small_config(**{"train.num_epochs": 1, "ensemble.k": 2, "model.widths": (16,)})
    root = tmp_path / "sweep"
    os.makedirs(root / "a")
    with workdir_lib.Lock(str(root / "a")):  # The other sweep, running run a.
        outcomes = sweep.run_all({"a": config, "b": config}, str(root))
    assert outcomes["a"].status == "busy" and outcomes["b"].status == "finished"
    table = json.load(open(root / "sweep.json"))
    assert table["a"]["status"] != "failed" and "Busy" not in table["a"]["message"]
    sweep.run_all({"a": config}, str(root))  # The other sweep finishing it.
    outcomes = sweep.run_all({"a": config, "b": config}, str(root))
    assert {name: o.status for name, o in outcomes.items()} == {"a": "finished", "b": "finished"}


def _unfinished_copy(ensemble_run, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(ensemble_run, workdir)
    for name in ("summary.json", "status.json"):
        os.remove(workdir / name)
    return workdir


def _damage_every_checkpoint(directory) -> None:
    for step in os.listdir(directory):
        state = os.path.join(directory, step, "state")
        for root, _, names in os.walk(state):
            for name in names:
                if os.path.getsize(os.path.join(root, name)) > 100:
                    open(os.path.join(root, name), "r+b").truncate(10)


def test_every_checkpoint_damaged_is_a_sentence_with_a_way_out(ensemble_run, tmp_path):
    """7. No checkpoint restores: exit 4, the checkpoints tried named with their reasons, no traceback, nothing
    moved; following the message (move the directory aside) the run starts over and finishes."""
    workdir = _unfinished_copy(ensemble_run, tmp_path)
    _damage_every_checkpoint(workdir / "checkpoints")
    before = file_tree(workdir / "checkpoints")
    rc, _, err = finish(cli(workdir, *TINY, config=ENSEMBLE))
    assert rc == 4, err
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 3, err
    directory = os.path.realpath(workdir / "checkpoints")
    assert f"no checkpoint in {directory} restores. Tried: 80 cannot be restored" in err and "; 40 " in err
    assert f"mv {directory} {directory}.damaged" in err
    assert file_tree(workdir / "checkpoints") == before
    shutil.move(directory, directory + ".damaged")
    rc, _, err = finish(cli(workdir, *TINY, config=ENSEMBLE))
    assert rc == 0, err
    assert timeless_summary(workdir) == timeless_summary(ensemble_run)


@pytest.mark.parametrize("content", [b"", b'{"seed": 0, "data'], ids=["empty", "cut"])
def test_a_damaged_config_json_is_rewritten_from_the_checkpoints_record(ensemble_run, tmp_path, content):
    """7. config.json cut short: another config is refused naming the file and what the checkpoints record
    (nothing changed); the run's own config rewrites it from the checkpoints and the run resumes."""
    workdir = _unfinished_copy(ensemble_run, tmp_path)
    (workdir / "config.json").write_bytes(content)
    before = file_tree(workdir)
    rc, _, err = finish(cli(workdir, *TINY, "--config.seed=1", config=ENSEMBLE))
    assert rc == 2, err
    assert f"{workdir}/config.json cannot be read" in err and "config.seed: 0 there, 1 now" in err
    assert "Traceback" not in err and file_tree(workdir) == before
    rc, out, err = finish(cli(workdir, *TINY, config=ENSEMBLE))
    assert rc == 0, err
    assert "resuming" in out
    assert json.load(open(workdir / "config.json")) == json.load(open(ensemble_run / "config.json"))
    (kept,) = [n for n in os.listdir(workdir) if n.startswith("config.json.damaged-")]
    assert (workdir / kept).read_bytes() == content


def test_the_rerun_of_a_finished_run_says_finished_after_a_kill_in_its_last_status_write(ensemble_run, tmp_path):
    """9. Killed between summary.json and the final status.json (which says 'running'): the summary is the
    truth, for `read_status` and in status.json once the command is run again."""
    workdir = tmp_path / "run"
    shutil.copytree(ensemble_run, workdir)
    workdir_lib.write_status(str(workdir), "running")
    assert workdir_lib.read_status(str(workdir))["status"] == "finished"
    rc, _, err = finish(cli(workdir, *TINY, config=ENSEMBLE))
    assert rc == 0, err
    assert json.load(open(workdir / "status.json"))["status"] == "finished"


def test_result_files_follow_the_umask_and_temporaries_are_cleaned(ensemble_run, tmp_path):
    """8 and 9. Results readable as an ordinary open() makes them (0644 under umask 022, also after a resume,
    which rewrites metrics.jsonl); a `.tmp-*` left by a killed write is removed when the run next starts."""
    for name in ("config.json", "status.json", "summary.json", "metrics.jsonl"):
        assert stat.S_IMODE(os.stat(ensemble_run / name).st_mode) == 0o644, name
    workdir = _unfinished_copy(ensemble_run, tmp_path)
    (workdir / ".tmp-abc123").write_text('{"status": "runn')
    rc, _, err = finish(cli(workdir, *TINY, config=ENSEMBLE))
    assert rc == 0, err
    assert not (workdir / ".tmp-abc123").exists()
    for name in ("config.json", "status.json", "summary.json", "metrics.jsonl"):
        assert stat.S_IMODE(os.stat(workdir / name).st_mode) == 0o644, name


def test_atomic_writes_give_the_mode_an_ordinary_open_gives(tmp_path):
    old = os.umask(0o027)
    try:
        files.write_bytes_atomic(str(tmp_path / "new"), b"x")
        with open(tmp_path / "plain", "wb") as f:
            f.write(b"x")
        (tmp_path / "kept").write_bytes(b"old")
        os.chmod(tmp_path / "kept", 0o604)
        files.write_bytes_atomic(str(tmp_path / "kept"), b"new")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "new").st_mode) == stat.S_IMODE(os.stat(tmp_path / "plain").st_mode)
    assert stat.S_IMODE(os.stat(tmp_path / "new").st_mode) == 0o640
    assert stat.S_IMODE(os.stat(tmp_path / "kept").st_mode) == 0o604


def test_a_truncated_cache_entry_is_built_again_and_logged(tmp_path, monkeypatch):
    """6. A cut .npz in the cache: built again (the event logged, naming it) and replaced by a good entry; where
    it cannot be built again, the error names the entry."""
    warnings = []
    monkeypatch.setattr(logging, "warning", lambda msg, *a: warnings.append(msg % a))
    built = {"x": np.arange(1000.0)}
    cache.cached(str(tmp_path), "mnist1d", {"k": 1}, lambda: built)
    (path,) = tmp_path.glob("mnist1d-*.npz")
    path.write_bytes(path.read_bytes()[:300])
    again = cache.cached(str(tmp_path), "mnist1d", {"k": 1}, lambda: built)
    np.testing.assert_array_equal(again["x"], built["x"])
    assert any(str(path) in w and "building it again" in w for w in warnings), warnings
    np.testing.assert_array_equal(cache.cached(str(tmp_path), "mnist1d", {"k": 1}, None)["x"], built["x"])
    path.write_bytes(b"PK\x03\x04")

    def offline():
        raise DatasetError("cifar10: not prepared")

    with pytest.raises(DatasetError, match=f"cifar10: not prepared\n\\(the cache entry {path} does not load"):
        cache.cached(str(tmp_path), "mnist1d", {"k": 1}, offline)


@pytest.mark.slow  # The rebuild itself is tested above in seconds; this is the whole command line around it.
def test_a_truncated_mnist1d_cache_entry_does_not_break_a_run(tmp_path, monkeypatch, capsys):
    cache_dir = tmp_path / "cache"
    config = ("--config.train.num_epochs=1", "--config.ensemble.k=2", f"--config.data.cache_dir={cache_dir}")
    argv = [f"--config={os.path.join(REPO, ENSEMBLE)}", *config]
    assert cli_in_process(monkeypatch, [*argv, f"--workdir={tmp_path / 'a'}"]) == 0
    (path,) = cache_dir.glob("mnist1d-*.npz")
    path.write_bytes(path.read_bytes()[:1000])
    assert cli_in_process(monkeypatch, [*argv, f"--workdir={tmp_path / 'b'}"]) == 0
    assert timeless_summary(tmp_path / "a") == timeless_summary(tmp_path / "b")


def _as_other_user(cmd, home: str, cache: str):
    """`cmd` run so that permission bits bind it: where this test runs as root, without the capabilities
    that let root write through them (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH)."""
    if os.geteuid() == 0:
        cmd = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", *cmd]
    env = dict(os.environ, CI="true", HOME=home, XDG_CACHE_HOME=cache)
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def _train_cmd(workdir, *args):
    return [sys.executable, "-m", "jaxens.train", f"--config={ENSEMBLE}", f"--workdir={workdir}", *TINY, *args]


@pytest.fixture
def shared(tmp_path):
    """A home and a cache directory for `_as_other_user`."""
    for name in ("home", "cache"):
        (tmp_path / name).mkdir()
    return tmp_path


def test_unusable_workdirs_are_sentences_naming_the_path(shared, tmp_path):
    """5. A --workdir that is a file, under a file, empty, under a read-only directory, or a partial run's
    directory made read-only: exit 2, the path named, no traceback, nothing written."""
    (tmp_path / "file").write_text("mine")
    readonly = tmp_path / "readonly"
    readonly.mkdir(mode=0o555)
    os.chmod(readonly, 0o555)
    partial = tmp_path / "partial"
    shutil.copytree(REPO + "/configs", partial / "unrelated")  # Stands for a user's files.
    (partial / "config.json").write_text("{}")
    os.chmod(partial, 0o555)
    cases = [
        (tmp_path / "file", "is a file, not a directory"),
        (tmp_path / "file" / "run", f"cannot be created, as {tmp_path / 'file'} is a file"),
        ("", "--workdir='': give the directory"),
        (readonly / "run", f"cannot be created: {readonly} is not writable by this user"),
        (partial, "not a jaxens run's config"),
    ]
    before = file_tree(tmp_path)
    for workdir, message in cases:
        result = _as_other_user(_train_cmd(workdir), home=str(shared / "home"), cache=str(shared / "cache"))
        assert result.returncode == 2, (workdir, result.stderr)
        assert message in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert file_tree(tmp_path) == before


def test_a_read_only_partial_run_is_a_sentence(shared, ensemble_run, tmp_path):
    workdir = _unfinished_copy(ensemble_run, tmp_path)
    os.chmod(workdir, 0o555)
    before = file_tree(workdir)
    result = _as_other_user(_train_cmd(workdir), home=str(shared / "home"), cache=str(shared / "cache"))
    assert result.returncode == 2, result.stderr
    assert f"--workdir={workdir}: is not writable by this user" in result.stderr, result.stderr
    assert file_tree(workdir) == before


def test_an_unusable_cache_dir_is_a_sentence_or_only_a_warning(shared, tmp_path):
    """5. config.data.cache_dir a file: exit 2 naming the field. Read-only: the run reads the data without
    caching it (warned) and finishes."""
    (tmp_path / "file").write_text("mine")
    home, cache_dir = str(shared / "home"), str(shared / "cache")
    result = _as_other_user(
        _train_cmd(shared / "a", f"--config.data.cache_dir={tmp_path / 'file'}"), home=home, cache=cache_dir
    )
    assert result.returncode == 2, result.stderr
    assert f"config.data.cache_dir='{tmp_path / 'file'}': is a file" in result.stderr
    assert not (shared / "a").exists()
    readonly = tmp_path / "readonly_cache"
    readonly.mkdir(mode=0o555)
    os.chmod(readonly, 0o555)
    result = _as_other_user(_train_cmd(shared / "b", f"--config.data.cache_dir={readonly}"), home=home, cache=cache_dir)
    assert result.returncode == 0, result.stderr
    assert f"could not cache the data at {readonly}/mnist1d-" in result.stderr
    assert os.listdir(readonly) == []


@pytest.mark.parametrize(
    "source, suffix, message",
    [
        ("def get_config(:\n    pass\n", "", "a syntax error at line 1"),
        (
            "def get_config():\n    x = 1\n    raise ValueError('no such preset')\n",
            "",
            "get_config() raised ValueError: no such preset (line 3 of",
        ),
        ("import no_such_module_here\n", "", "importing it raised ModuleNotFoundError"),
        ("def get_config():\n    return None\n", ":wide", "its get_config() takes no argument; drop ':wide'"),
        ("def get_config(size):\n    return None\n", "", "its get_config(size) needs an argument"),
        ("x = 1\n", "", "defines no get_config()"),
    ],
    ids=["syntax", "raises", "import", "extra_arg", "missing_arg", "no_get_config"],
)
def test_a_broken_config_file_is_a_sentence_naming_it(tmp_path, source, suffix, message):
    """5. The config file itself: a real process (the file is loaded while the flags are parsed)."""
    path = tmp_path / "my_config.py"
    path.write_text(source)
    cmd = [sys.executable, "-m", "jaxens.train", f"--config={path}{suffix}", f"--workdir={tmp_path / 'run'}"]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120, env=dict(os.environ, CI="true"))
    assert result.returncode == 2, result.stderr
    assert f"--config={path}" in result.stderr and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "content, found",
    [
        ('{"learning_rate": 0.1, "layers": 3}', "a JSON object with the fields layers, learning_rate"),
        ("model: resnet\n", "cannot be read"),
    ],
    ids=["other_json", "yaml"],
)
def test_overwrite_never_deletes_another_programs_files(tmp_path, monkeypatch, capsys, content, found):
    """11. --overwrite on a directory whose config.json is another program's: refused, nothing deleted."""
    workdir = tmp_path / "theirs"
    (workdir / "checkpoints" / "100").mkdir(parents=True)
    (workdir / "checkpoints" / "100" / "weights.pt").write_bytes(b"\x00" * 64)
    (workdir / "config.json").write_text(content)
    before = file_tree(workdir)
    err = _refused(monkeypatch, capsys, workdir, "--overwrite", *TINY)
    assert "--overwrite" in err and found in err and "nothing was deleted" in err
    assert file_tree(workdir) == before
    err = _refused(monkeypatch, capsys, workdir, *TINY)  # Without --overwrite: named too.
    assert "config.json" in err and file_tree(workdir) == before


def test_memory_estimate_can_be_overridden_by_its_flag(tmp_path, monkeypatch, capsys):
    """10. The refusal names the estimate, the limit and the override; the flag skips the check (here on a run
    that fits, so that the test allocates nothing large)."""
    from jaxens.trainer import memory

    err = _refused(monkeypatch, capsys, tmp_path / "run", "--config.ensemble.k=300000")
    assert "--ignore_memory_estimate" in err
    monkeypatch.setattr(memory, "limit", lambda: (1, "a test's limit of 1 byte"))
    err = _refused(monkeypatch, capsys, tmp_path / "run", *TINY)
    assert "a test's limit of 1 byte" in err and not (tmp_path / "run").exists()
    argv = [f"--config={os.path.join(REPO, ENSEMBLE)}", f"--workdir={tmp_path / 'run'}", *TINY]
    assert cli_in_process(monkeypatch, [*argv, "--ignore_memory_estimate"]) == 0
