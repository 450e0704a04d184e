"""``qwave speed`` end to end on tiny settings: table, audit, CSV/JSON outputs, fallback warning."""

from __future__ import annotations

import csv
import json

import pytest

from qwave import kernels
from qwave.commands import speed
from qwave.errors import ConfigError


@pytest.fixture(autouse=True)
def _restore_threads():
    import torch

    threads = torch.get_num_threads()
    yield
    speed.timing.set_threads(threads)


FAST = ["--batch-sizes", "1,4", "--repeats", "2", "--warmup", "1", "--max-seconds", "0.2", "--threads", "1"]


def test_speed_writes_table_csv_json_and_plot(tmp_path, capsys):
    assert speed.run(["--formats", "int8,binary", "--output-dir", str(tmp_path), "--plot", *FAST]) == 0
    out = capsys.readouterr().out
    assert "fp32-eager" in out and "torch-dynamic-int8" in out and "qwave int8" in out
    assert "per-layer kernel audit" in out
    rows = list(csv.DictReader(open(tmp_path / "speed.csv")))
    methods = {r["method"] for r in rows}
    assert {"fp32-eager", "torch-dynamic-int8", "qwave-int8", "qwave-binary"} <= methods
    activation = {r["method"]: r["activation"] for r in rows}
    assert activation["qwave-binary"] == activation["qwave-binary-fused"] == "hardtanh"
    assert activation["qwave-int8"] == activation["fp32-eager"] == "relu"
    assert "trains with" in out
    data = json.loads((tmp_path / "speed.json").read_text())
    assert data["meta"]["threads"] == 1 and data["audit"]
    assert (tmp_path / "speed.png").exists()


def test_speed_reports_resident_beside_stored_bytes_and_flags_a_layout_wider_than_stored(tmp_path, capsys):
    import torch

    from qwave.eval.speed import packed_reference, reference_mlp
    from qwave.size import resident_bytes

    assert speed.run(["--formats", "int8,ternary", "--no-fused", "--output-dir", str(tmp_path), *FAST]) == 0
    out = capsys.readouterr().out
    assert "resident memory" in out
    memory = {m["method"]: m for m in json.loads((tmp_path / "speed.json").read_text())["memory"]}
    for fmt in ("int8", "ternary"):
        model = packed_reference(reference_mlp(0), fmt)
        stored = memory[f"qwave-{fmt}"]["stored_bytes"]
        assert stored == resident_bytes(model)  # before any forward the model holds what it stores
        with torch.no_grad():
            model(torch.zeros(1, 1536))
        assert memory[f"qwave-{fmt}"]["resident_bytes"] == resident_bytes(model)
    flagged = {m for m, row in memory.items() if row["resident_flag"]}
    assert flagged == ({"qwave-ternary"} if kernels.status()["fast_kernels"] else set())
    assert ("FLAG: resident over 1.1x stored" in out) == bool(flagged)


def test_speed_audit_warns_when_fast_path_is_off(capsys):
    previous = kernels.set_fast_kernels(False)
    try:
        assert speed.run(["--formats", "int8", "--no-fused", *FAST]) == 0
    finally:
        kernels.set_fast_kernels(previous)
    out = capsys.readouterr().out
    assert "WARNING: fallback to the PyTorch reference" in out
    assert "WARNING: fast kernels are off" in out


def test_speed_rejects_bad_batch_sizes():
    with pytest.raises(ConfigError):
        speed.run(["--batch-sizes", "0"])


def test_speed_times_a_saved_artifact(fp32_artifact, capsys):
    assert speed.run(["--artifact", str(fp32_artifact), "--no-reference", *FAST]) == 0
    out = capsys.readouterr().out
    assert "fp32" in out and "artifact" in out


def test_isa_avx2_reruns_the_command_in_a_process_with_an_avx2_only_target(monkeypatch):
    seen = {}
    monkeypatch.setattr(speed.subprocess, "call", lambda cmd, env: seen.update(cmd=cmd, env=env) or 0)
    assert speed.run(["--isa", "avx2", "--formats", "int8", *FAST]) == 0
    env = seen["env"]
    assert env["NUMBA_CPU_NAME"] == "znver3" and "+avx512" not in env["NUMBA_CPU_FEATURES"]
    assert env["ATEN_CPU_CAPABILITY"] == "avx2" and env[speed.FORCED_ISA] == "avx2"
    assert seen["cmd"][-len(FAST) - 4 :] == ["speed", "--isa", "avx2", "--formats", "int8", *FAST][-len(FAST) - 4 :]


def test_onnx_runtime_appears_as_users_run_it_in_its_own_block_and_without_spinning_interleaved(tmp_path, monkeypatch,
                                                                                                  capsys):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    made = []  # (model file, whether the session lets its idle threads spin)
    real_session = ort.InferenceSession

    def session(path, options, **kw):
        try:
            spinning = options.get_session_config_entry("session.intra_op.allow_spinning") != "0"
        except Exception:  # the entry is unset: ONNX Runtime's default, spinning
            spinning = True
        made.append((path, spinning))
        return real_session(path, options, **kw)

    timed = {}
    real_calls = speed.timing.time_calls
    monkeypatch.setattr(ort, "InferenceSession", session)
    monkeypatch.setattr(speed.timing, "time_calls", lambda fns, **kw: timed.setdefault(
        "rounds" if kw.get("interleaved", True) else "block", set(fns)) and real_calls(fns, **kw))
    assert speed.run(["--formats", "int8", "--no-fused", "--output-dir", str(tmp_path), *FAST]) == 0
    out = capsys.readouterr().out
    assert sorted(spin for _, spin in made) == [False, False, True, True]  # fp32 and int8, each both ways
    assert timed["block"] == {"onnxruntime-fp32-default", "onnxruntime-int8-default"}
    assert {"onnxruntime-fp32-nospin", "onnxruntime-int8-nospin", "fp32-eager", "qwave-int8"} <= timed["rounds"]
    assert not timed["block"] & timed["rounds"]
    rows = list(csv.DictReader(open(tmp_path / "speed.csv")))
    timing = {r["method"]: r["timing"] for r in rows}
    assert timing["onnxruntime-int8-default"] == timing["onnxruntime-fp32-default"] == "own block"
    assert timing["onnxruntime-int8-nospin"] == timing["qwave-int8"] == timing["fp32-eager"] == "interleaved"
    order = [r["method"] for r in rows if r["batch"] == "1"]
    assert order.index("onnxruntime-int8-default") + 1 == order.index("onnxruntime-int8-nospin")
    for line in ("onnxruntime-int8-default", "onnxruntime-int8-nospin"):
        assert any(line in row and ("own block" in row) == line.endswith("default") for row in out.splitlines())
