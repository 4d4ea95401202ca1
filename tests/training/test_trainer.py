"""The trainer: exact evaluation at the truth, bit-identical resume, safe run folders, and checkpoints
that rebuild their model on their own."""

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

import interp.training.trainer as trainer_module
from interp.cli import main
from interp.hmm import forward_filter
from interp.hmm.sampling import sample
from interp.io import read_jsonl, read_tensors
from interp.models import build_model
from interp.training.checkpoint import list_checkpoints, load_model
from interp.training.runconfig import RunConfig, run_config_from_dict
from interp.training.trainer import EvalSet, RunExistsError, Trainer, TrainResult, evaluate

TINY_TRANSFORMER = {"family": "transformer", "n_layers": 1, "n_heads": 1, "d_model": 8, "d_head": 8}
TINY_MODELS = {
    "transformer": TINY_TRANSFORMER,
    "fixed_attention": {"family": "fixed_attention", "d_model": 8, "d_head": 8},
    "ssm": {"family": "ssm", "n_layers": 2, "d_model": 8, "d_state": 4, "transition": "complex"},
    "belief_net": {"family": "belief_net", "n_states": 3, "init": "random"},
}


def make_cfg(model: dict | None = None, *, seed: int = 0, **train) -> RunConfig:
    t = {"context": 8, "steps": 12, "batch_size": 16, "eval_sequences": 128, "eval_every": 4,
         "checkpoint_every": 6, "lr": 1e-2}
    t.update(train)
    return run_config_from_dict({"name": "tiny", "seed": seed, "process": {"name": "mess3"},
                                 "model": model or TINY_TRANSFORMER, "train": t})


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return read_tensors(run_dir / "model.safetensors")


def assert_bit_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"tensors differ: {different}"


def metric_rows(run_dir: Path) -> list[dict]:
    return read_jsonl(run_dir / "metrics.jsonl")


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``folder`` with its bytes and modification time."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


# --------------------------------------------------- the Belief Net at the truth
BELIEF_AT_TRUTH = {"family": "belief_net", "n_states": 3, "init": "truth"}


def test_evaluate_belief_net_at_the_truth_equals_the_exact_optimal_loss():
    cfg = make_cfg(BELIEF_AT_TRUTH, context=10, eval_sequences=512, dtype="float64")
    hmm = cfg.process.build()
    data = EvalSet.build(hmm, cfg, "cpu")
    # EvalSet's optimum is the filter's loss on these very sequences.
    log_z = forward_filter(hmm, data.tokens, return_beliefs=False).log_normalizers[:, 1:]
    assert data.optimal == pytest.approx(float(-log_z.mean()), abs=1e-12)
    assert data.tokens.shape == (512, 10)

    model = build_model(cfg.model, hmm.n_tokens, 10, hmm=hmm, dtype=torch.float64)
    ev = evaluate(model, data)
    assert ev["eval_loss"] == pytest.approx(data.optimal, abs=1e-9)
    assert ev["relative_loss"] == pytest.approx(1.0, abs=1e-9)
    assert ev["gap_fraction"] == pytest.approx(0.0, abs=1e-9)
    assert_close(torch.tensor(ev["eval_loss_per_position"], dtype=torch.float64),
                 torch.tensor(data.optimal_per_position, dtype=torch.float64), rtol=0, atol=1e-9)
    # The held-out optimum is close to the expectation over all sequences, and far below the unigram loss.
    assert data.optimal == pytest.approx(data.optimal_expected, abs=0.02)
    assert data.unigram > data.optimal_expected

    # The same check tells a wrong model apart: a random Belief Net is clearly worse.
    wrong = build_model(run_config_from_dict({**cfg.to_dict(), "model": {**BELIEF_AT_TRUTH, "init": "random"}}).model,
                        hmm.n_tokens, 10, seed=1, dtype=torch.float64)
    assert evaluate(wrong, data)["relative_loss"] > 1.01


def test_trainer_starts_a_belief_net_at_the_truth_with_relative_loss_one(tmp_path):
    # The step-0 evaluation inside the trainer (model built with the data's HMM, in float64) is exact;
    # one AdamW step of size ~1e-12 keeps the final model exact to 1e-9 as well.
    cfg = make_cfg(BELIEF_AT_TRUTH, steps=1, lr=1e-12, eval_sequences=256, dtype="float64")
    result = Trainer(cfg, tmp_path / "run").run()
    first = metric_rows(tmp_path / "run")[0]
    assert first["step"] == 0
    assert first["relative_loss"] == pytest.approx(1.0, abs=1e-9)
    assert first["eval_loss"] == pytest.approx(result.optimal_loss, abs=1e-9)
    assert result.relative_loss == pytest.approx(1.0, abs=1e-9)
    assert result.steps == 1
    saved = json.loads((tmp_path / "run" / "result.json").read_text())
    assert saved == result.to_dict() and TrainResult.from_dict(saved) == result == TrainResult.read(tmp_path / "run")
    model, _ = load_model(tmp_path / "run")
    assert all(p.dtype == torch.float64 for p in model.parameters())


# ------------------------------------------------------------------ resume
def test_resume_is_bit_identical_with_fresh_data(tmp_path):
    cfg = make_cfg(steps=12, eval_every=4, checkpoint_every=5)
    Trainer(cfg, tmp_path / "full").run()
    Trainer(cfg.with_steps(6), tmp_path / "split").run()
    Trainer(cfg, tmp_path / "split", resume=True).run()
    assert_bit_identical(final_weights(tmp_path / "full"), final_weights(tmp_path / "split"))
    # The optimiser moments of the last checkpoints agree too.
    full_ckpt, split_ckpt = list_checkpoints(tmp_path / "full")[-1], list_checkpoints(tmp_path / "split")[-1]
    assert full_ckpt.name == split_ckpt.name == "step_0000012"
    assert_bit_identical(read_tensors(full_ckpt / "optimizer.safetensors"),
                         read_tensors(split_ckpt / "optimizer.safetensors"))
    # One row per evaluation: the full run's steps, plus step 6 where the shorter run ended.
    rows = metric_rows(tmp_path / "split")
    assert [r["step"] for r in rows] == [0, 4, 6, 8, 12]
    full = {r["step"]: r for r in metric_rows(tmp_path / "full")}
    for r in rows:
        if r["step"] in full:
            assert r["eval_loss"] == full[r["step"]]["eval_loss"]
            assert r["tokens"] == full[r["step"]]["tokens"]
    assert json.loads((tmp_path / "split" / "config.json").read_text())["config"]["train"]["steps"] == 12


def test_resume_is_bit_identical_with_a_fixed_dataset_over_several_epochs(tmp_path):
    # 64 sequences in batches of 16: 4 steps per epoch, 3 epochs, and the resume lands mid-epoch.
    cfg = make_cfg(TINY_MODELS["ssm"], data="fixed", dataset_size=64, steps=12, eval_every=4, checkpoint_every=5)
    Trainer(cfg, tmp_path / "full").run()
    Trainer(cfg.with_steps(6), tmp_path / "split").run()
    Trainer(cfg, tmp_path / "split", resume=True).run()
    assert_bit_identical(final_weights(tmp_path / "full"), final_weights(tmp_path / "split"))
    assert [r["step"] for r in metric_rows(tmp_path / "split")] == [0, 4, 6, 8, 12]


class Crash(Exception):
    pass


def test_resume_after_a_crash_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    # A cosine schedule with warm-up depends on train.steps, so the crash is simulated inside the
    # 12-step run itself: saving the step-8 checkpoint fails, after evaluations at 0, 3, 6.
    cfg = make_cfg(steps=12, eval_every=3, checkpoint_every=4, schedule="cosine", warmup_steps=2,
                   min_lr_ratio=0.1, grad_clip=1.0)
    Trainer(cfg, tmp_path / "full").run()

    real_save = trainer_module.save_checkpoint

    def save_or_crash(run_dir, step, *args, **kwargs):
        if step == 8:
            raise Crash
        return real_save(run_dir, step, *args, **kwargs)

    monkeypatch.setattr(trainer_module, "save_checkpoint", save_or_crash)
    with pytest.raises(Crash):
        Trainer(cfg, tmp_path / "crashed").run()
    monkeypatch.undo()
    assert [r["step"] for r in metric_rows(tmp_path / "crashed")] == [0, 3, 6]
    assert [p.name for p in list_checkpoints(tmp_path / "crashed")] == ["step_0000004"]

    Trainer(cfg, tmp_path / "crashed", resume=True).run()
    assert_bit_identical(final_weights(tmp_path / "full"), final_weights(tmp_path / "crashed"))
    full, resumed = metric_rows(tmp_path / "full"), metric_rows(tmp_path / "crashed")
    assert [r["step"] for r in resumed] == [r["step"] for r in full] == [0, 3, 6, 9, 12]
    for a, b in zip(full, resumed):
        for key in ("eval_loss", "train_loss", "lr", "tokens"):
            assert a[key] == b[key] or (a[key] != a[key] and b[key] != b[key]), (a["step"], key)


def test_resume_without_a_checkpoint_starts_over(tmp_path, monkeypatch):
    def crash(*args, **kwargs):
        raise Crash

    cfg = make_cfg(steps=4, eval_every=2, checkpoint_every=4)
    monkeypatch.setattr(trainer_module, "save_checkpoint", crash)
    with pytest.raises(Crash):
        Trainer(cfg, tmp_path / "run").run()
    monkeypatch.undo()
    assert [r["step"] for r in metric_rows(tmp_path / "run")] == [0, 2, 4]
    Trainer(cfg, tmp_path / "run", resume=True).run()
    assert [r["step"] for r in metric_rows(tmp_path / "run")] == [0, 2, 4]
    Trainer(cfg, tmp_path / "clean").run()
    assert_bit_identical(final_weights(tmp_path / "clean"), final_weights(tmp_path / "run"))


# ------------------------------------------------------------- run folders
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> tuple[RunConfig, Path]:
    cfg = make_cfg(steps=4, eval_every=2, checkpoint_every=2)
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    Trainer(cfg, run_dir).run()
    return cfg, run_dir


def test_a_second_run_into_an_existing_folder_is_refused_and_changes_nothing(finished_run):
    cfg, run_dir = finished_run
    before = snapshot(run_dir)
    with pytest.raises(RunExistsError, match="already exists"):
        Trainer(cfg, run_dir).run()
    assert snapshot(run_dir) == before


def test_resume_with_a_changed_config_is_refused_and_changes_nothing(finished_run):
    cfg, run_dir = finished_run
    before = snapshot(run_dir)
    changed = run_config_from_dict({**cfg.to_dict(), "train": {**cfg.to_dict()["train"], "lr": 0.5}})
    with pytest.raises(ValueError, match="config differs"):
        Trainer(changed, run_dir, resume=True).run()
    assert snapshot(run_dir) == before


def test_force_overwrites_a_run_folder_the_lab_made(tmp_path, finished_run):
    from interp.rundir import claim

    cfg, _ = finished_run
    run_dir = claim(tmp_path / "run", "run")
    (run_dir / "stale.txt").write_text("from an older run")
    (run_dir / "metrics.jsonl").write_text('{"step": 99}\n')
    Trainer(cfg, run_dir, force=True).run()
    assert not (run_dir / "stale.txt").exists()
    assert [r["step"] for r in metric_rows(run_dir)] == [0, 2, 4]
    assert json.loads((run_dir / "result.json").read_text())["steps"] == 4


def test_an_empty_existing_folder_is_used(tmp_path, finished_run):
    cfg, _ = finished_run
    (tmp_path / "run").mkdir()
    Trainer(cfg, tmp_path / "run").run()
    assert (tmp_path / "run" / "model.safetensors").is_file()


def test_cli_train_runs_and_refuses_to_overwrite(tmp_path, capsys):
    path = tmp_path / "tiny.toml"
    path.write_text(
        '[process]\nname = "mess3"\n\n[model]\nfamily = "fixed_attention"\nd_model = 8\nd_head = 8\n\n'
        '[train]\ncontext = 8\nsteps = 100\nbatch_size = 16\neval_sequences = 64\neval_every = 2\n'
    )
    out = tmp_path / "out"
    assert main(["train", str(path), "--out", str(out), "--steps", "2"]) == 0
    assert json.loads((out / "result.json").read_text())["steps"] == 2
    assert json.loads((out / "config.json").read_text())["config"]["name"] == "tiny"
    capsys.readouterr()
    before = snapshot(out)
    assert main(["train", str(path), "--out", str(out), "--steps", "2"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("interp: error:") and "already exists" in lines[0]
    assert snapshot(out) == before


# ------------------------------------------------------------- checkpoints
@pytest.fixture(scope="module", params=list(TINY_MODELS))
def trained(request, tmp_path_factory):
    """A finished 6-step run of each family, with the very model object the Trainer trained."""
    built = []

    def spy(*args, **kwargs):
        built.append(build_model(*args, **kwargs))
        return built[-1]

    dtype = "float64" if request.param == "belief_net" else "float32"
    cfg = make_cfg(TINY_MODELS[request.param], steps=6, eval_every=3, checkpoint_every=2, dtype=dtype)
    run_dir = tmp_path_factory.mktemp(request.param) / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trainer_module, "build_model", spy)
        Trainer(cfg, run_dir).run()
    assert len(built) == 1
    return cfg, run_dir, built[0].eval()


def test_load_model_from_the_run_folder_and_its_checkpoint_reproduces_the_logits(trained):
    cfg, run_dir, model = trained
    tokens = sample(cfg.process.build(), 8, cfg.train.context, seed=9)
    with torch.no_grad():
        expected = model(tokens)
    ckpts = list_checkpoints(run_dir)
    assert [p.name for p in ckpts] == ["step_0000004", "step_0000006"]  # the 2 newest are kept
    for folder in (run_dir, ckpts[-1]):
        loaded, loaded_cfg = load_model(folder)
        assert loaded_cfg == cfg
        assert not loaded.training
        assert next(loaded.parameters()).dtype == getattr(torch, cfg.train.dtype)
        with torch.no_grad():
            assert torch.equal(loaded(tokens), expected), folder
    # An earlier checkpoint is a different model.
    older, _ = load_model(ckpts[0])
    with torch.no_grad():
        assert not torch.equal(older(tokens), expected)


def test_a_run_folder_without_final_weights_loads_its_latest_checkpoint(trained, tmp_path):
    cfg, run_dir, _ = trained
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    (copy / "model.safetensors").unlink()
    loaded, _ = load_model(copy)
    assert_bit_identical(loaded.state_dict(), read_tensors(list_checkpoints(copy)[-1] / "model.safetensors"))


@pytest.fixture
def run_copy(tmp_path, finished_run) -> Path:
    shutil.copytree(finished_run[1], tmp_path / "run")
    return tmp_path / "run"


@pytest.mark.parametrize("where", ["run", "checkpoint"])
def test_a_truncated_safetensors_file_is_a_clear_value_error(run_copy, where):
    folder = run_copy if where == "run" else list_checkpoints(run_copy)[-1]
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ValueError, match=re.escape(str(weights)) + ".*corrupt"):
        load_model(folder)


@pytest.mark.parametrize("where", ["run", "checkpoint"])
def test_a_missing_model_json_is_a_clear_file_not_found_error(run_copy, where):
    folder = run_copy if where == "run" else list_checkpoints(run_copy)[-1]
    (folder / "model.json").unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(str(folder / "model.json"))):
        load_model(folder)


def test_a_corrupt_model_json_is_a_clear_value_error(run_copy):
    (run_copy / "model.json").write_text('{"config": ')
    with pytest.raises(ValueError, match=re.escape(f"{run_copy / 'model.json'} is not valid JSON")):
        load_model(run_copy)
    (run_copy / "model.json").write_text('{"family": "transformer"}')
    with pytest.raises(ValueError, match=re.escape(f"{run_copy / 'model.json'} is incomplete or corrupt")):
        load_model(run_copy)


def test_weights_that_do_not_match_the_config_are_a_clear_value_error(run_copy):
    meta = json.loads((run_copy / "model.json").read_text())
    meta["config"]["model"]["d_model"] = 16
    (run_copy / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="does not match its config"):
        load_model(run_copy)


def test_load_model_of_a_missing_or_empty_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no run or checkpoint folder"):
        load_model(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="neither model.safetensors nor any checkpoint"):
        load_model(tmp_path / "empty")
