"""cpu_peers.py's plan, its duration estimate, and the command line of each server contender."""

from __future__ import annotations

from pathlib import Path

import cpu_peers
import pytest
from peers.multiturn import ChatWorkload
from peers.plan import Group, estimate_seconds, make_plan
from peers.report import LLAMA_SERVER, MANY_CHATS, MULTI_TURN, OURS, OURS_DEFAULT, SWEEP


def plan_of(*argv: str) -> list[Group]:
    return make_plan(cpu_peers.parse_args(list(argv)))


def test_quick_preset_is_the_documented_plan() -> None:
    plan = plan_of("--preset", "quick")
    assert [(g.name, g.concurrency, g.output_tokens) for g in plan] == [
        ("0.6b Q8_0", (1, 4, 8, 16), 64), ("0.6b Q4_0", (1, 4, 8, 16), 64), ("4b Q4_0", (1, 8), 32)]  # fmt: skip
    assert plan[0].contenders == ("llama-server", "ours", "ours-default", "openvino-int8")
    assert all(g.contenders == ("llama-server", "ours") for g in plan[1:])
    assert [g.multi_turn for g in plan] == [True, True, False]  # the workload on both 0.6b files
    assert [g.many_chats for g in plan] == [0, 4, 0]  # 12 conversations on 4 sequences, on 0.6b Q4_0
    assert [g.many_chats for g in plan_of("--preset", "quick", "--many-chats-sequences", "0")] == [0, 0, 0]


def test_full_preset_covers_both_shapes_and_three_quants() -> None:
    plan = plan_of("--preset", "full")
    assert {g.name for g in plan} == {f"{s} {q}" for s in ("0.6b", "4b") for q in ("Q8_0", "Q4_0", "Q4_K_M")}
    # The default path converts to Q8_0, so it serves only that file; OpenVINO int4 sits beside Q4_0.
    assert {g.name for g in plan if "ours-default" in g.contenders} == {"0.6b Q8_0", "4b Q8_0"}
    assert {g.name for g in plan if "openvino-int4" in g.contenders} == {"0.6b Q4_0"}


def test_a_custom_plan_and_the_contender_filter() -> None:
    plan = plan_of("--shapes", "tiny", "--qtypes", "Q8_0,Q4_0", "--concurrency", "1,2", "--contenders",
                   "ours,ours-default", "--no-multi-turn")  # fmt: skip
    assert [(g.name, g.concurrency, g.contenders, g.multi_turn) for g in plan] == [
        ("tiny Q8_0", (1, 2), ("ours", "ours-default"), False), ("tiny Q4_0", (1, 2), ("ours",), False)]  # fmt: skip
    assert [g.many_chats for g in plan] == [0, 0]
    many = plan_of("--shapes", "tiny", "--qtypes", "Q8_0,Q4_0", "--many-chats-sequences", "2")
    assert [g.many_chats for g in many] == [2, 0]  # a custom plan runs it on its first file


def test_an_unknown_contender_is_refused_by_name(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cpu_peers.parse_args(["--contenders", "ours,vllm"])
    assert "vllm" in capsys.readouterr().err


def test_the_quick_preset_fits_an_idle_half_hour_and_full_takes_longer() -> None:
    chat = ChatWorkload()
    quick = estimate_seconds(plan_of("--preset", "quick"), 64, chat)
    full = estimate_seconds(plan_of("--preset", "full"), 64, chat)
    assert 10 * 60 < quick < 30 * 60 < full
    fewer = estimate_seconds(plan_of("--preset", "quick", "--contenders", "ours"), 64, chat)
    assert fewer < quick


def test_each_server_gets_the_same_slots_and_context(tmp_path: Path) -> None:
    args = cpu_peers.parse_args(["--threads", "2", "--max-model-len", "512", "--ours-flag=--no-llamacpp-kv-unified"])
    group = Group("0.6b", "Q8_0", (1, 4), 64, 16, ("llama-server", "ours", "ours-default"))
    peers = cpu_peers.Peers(binary=Path("/cache/bin/llama-server"), llama_server_flags=("--no-repack",))
    gguf, model_dir = Path("/m/x-Q8_0.gguf"), Path("/m/x")
    theirs = cpu_peers.server_for("llama-server", group, gguf, model_dir, args, peers, tmp_path)
    ours = cpu_peers.server_for("ours", group, gguf, model_dir, args, peers, tmp_path)
    default = cpu_peers.server_for("ours-default", group, gguf, model_dir, args, peers, tmp_path)
    assert theirs.name == LLAMA_SERVER and ours.name == OURS and default.name == OURS_DEFAULT
    assert theirs.env["LD_LIBRARY_PATH"] == "/cache/bin" and "--no-repack" in theirs.command
    assert theirs.command[theirs.command.index("-np") + 1] == "4"
    assert theirs.command[theirs.command.index("-c") + 1] == str(4 * 512)
    for server in (ours, default):
        assert server.command[server.command.index("--max-num-seqs") + 1] == "4"
        assert server.command[server.command.index("--max-model-len") + 1] == "512"
    assert ours.command[ours.command.index("--model") + 1] == str(gguf) and "--no-llamacpp-kv-unified" in ours.command
    # The default path: the checkpoint directory and nothing but sizes, so --quantize/--backend auto decide.
    assert default.command[default.command.index("--model") + 1] == str(model_dir)
    assert not any(flag in default.command for flag in ("--backend", "--quantize", "--llamacpp-threads"))


def test_llama_server_that_is_not_built_is_an_error_naming_why(tmp_path: Path) -> None:
    args = cpu_peers.parse_args([])
    group = Group("0.6b", "Q8_0", (1,), 64, 16, ("llama-server",))
    peers = cpu_peers.Peers(llama_server_error="RuntimeError: llama-server is not built at /x")
    with pytest.raises(RuntimeError, match="not built at /x"):
        cpu_peers.server_for("llama-server", group, Path("f.gguf"), Path("d"), args, peers, tmp_path)


def test_prepare_makes_the_file_and_measures_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from qwen3_api.demo_models.checkpoints import cached_test_model
    from qwen3_api.models.gguf_convert import converted_path

    argv = ["--prepare", "--shapes", "tiny", "--qtypes", "Q8_0", "--contenders", "ours", "--out-dir", str(tmp_path)]
    assert cpu_peers.main(argv) == 0
    gguf = converted_path(cached_test_model("tiny"), "q8_0")
    assert gguf.is_file() and f"tiny Q8_0: {gguf}" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []  # no rows, no JSON, no plot


def test_repeats_run_every_contender_once_per_pass_in_alternating_order(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    argv = ["--shapes", "tiny", "--qtypes", "Q8_0", "--contenders", "ours,llama-server", "--concurrency", "1",
            "--num-requests", "1", "--output-tokens", "2", "--no-build", "--repeats", "2", "--chat-conversations", "1",
            "--chat-turns", "2", "--chat-first-tokens", "8", "--chat-turn-tokens", "4", "--chat-output-tokens", "2",
            "--many-chats-sequences", "1", "--cache-dir", str(tmp_path / "no-build"),
            "--out-dir", str(tmp_path / "out")]  # fmt: skip
    assert cpu_peers.main(argv) == 0
    out = capsys.readouterr().out
    assert "pass 1 of 2: llama-server, ours" in out and "pass 2 of 2: ours, llama-server" in out
    (saved,) = (tmp_path / "out").glob("cpu_peers-*.json")
    rows = json.loads(saved.read_text())["rows"]
    sweep = [r for r in rows if r["contender"] == OURS and r["workload"] == SWEEP]
    assert [(r["repeat"], r["result"]["completed"]) for r in sweep] == [(0, 1), (1, 1)]  # a real server each pass
    # The engine's counters over the timed requests alone (not the warm-up): a prefill step that samples the first
    # token, then one decode step for the second; in the chat, that for each of its two turns.
    chats = [r for r in rows if r["contender"] == OURS and r["workload"] == MULTI_TURN]
    assert [(r["repeat"], r["result"]["completed"]) for r in chats] == [(0, 2), (1, 2)]
    engines = [r["engine"] for r in sweep + chats]
    assert [(e["steps"], e["decode_steps"]) for e in engines] == [(2, 1), (2, 1), (4, 2), (4, 2)]
    assert all(e["decode_step_ms"] > 0 and 0 < e["forward_share"] <= 1 and 0 < e["busy"] <= 1 for e in engines)
    assert "engine: 2 steps, 1 decode-only at" in out and "engine: 4 steps, 2 decode-only at" in out
    # many chats: 3 conversations x 2 turns on a server of one sequence, every turn answered
    many = [r for r in rows if r["contender"] == OURS and r["workload"] == MANY_CHATS]
    assert [(r["repeat"], r["concurrency"], r["result"]["completed"]) for r in many] == [(0, 3, 6), (1, 3, 6)]
    assert "ours llamacpp on 1 sequences: ready after" in out
    theirs = [(r["repeat"], r["status"].startswith("failed")) for r in rows if r["contender"] == LLAMA_SERVER]
    assert theirs == [(0, True), (1, True)]
    # llama-server never ran: a skip, not a ratio of nothing
    assert "SKIP  tiny Q8_0 sweep c=1: ours llamacpp / llama-server output tok/s = - (target >= 1.0)" in out
