"""What a `cpu_peers.py` run measures: groups of contenders per file (shape x quant), the presets, and a rough
duration estimate printed before the run starts."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace

from peers.multiturn import ChatWorkload
from peers.report import LLAMA_SERVER, OPENVINO, OURS, OURS_DEFAULT

CONTENDERS = {"llama-server": LLAMA_SERVER, "ours": OURS, "ours-default": OURS_DEFAULT,
              "openvino-int8": f"{OPENVINO} int8", "openvino-int4": f"{OPENVINO} int4"}  # fmt: skip
# Which file each contender needs: the default path converts to Q8_0 (--quantize auto on CPU); OpenVINO's int8 and
# int4 exports sit beside Q8_0 and Q4_0.
ONLY_ON = {"ours-default": "Q8_0", "openvino-int8": "Q8_0", "openvino-int4": "Q4_0"}
# Rough rates of an idle 2-core box (benchmarks/README.md), for the up-front estimate only:
# c=1 decode tok/s per file, prefill tok/s per shape, and what batching gains at c >= 4.
DECODE = {("0.6b", "Q8_0"): 22, ("0.6b", "Q4_0"): 23, ("0.6b", "Q4_K_M"): 20, ("4b", "Q8_0"): 3.5,
          ("4b", "Q4_0"): 5.0, ("4b", "Q4_K_M"): 4.5}  # fmt: skip
PREFILL = {"tiny": 5000, "0.6b": 85, "4b": 17}
BATCH_GAIN, START_S = 1.7, {"tiny": 5, "0.6b": 15, "4b": 60}
# The many-chats workload: this many conversations per server sequence.
MANY_CHATS_PER_SEQUENCE = 3


@dataclass(frozen=True)
class Group:
    """One file (shape x quant), its concurrency levels and request sizes, and the contenders that serve it."""

    shape: str
    qtype: str
    concurrency: tuple[int, ...]
    output_tokens: int
    num_requests: int
    contenders: tuple[str, ...]
    multi_turn: bool = False
    many_chats: int = 0  # sequences of the servers for the many-chats workload (0: not run)

    @property
    def name(self) -> str:
        return f"{self.shape} {self.qtype}"


def contenders_for(qtype: str, wanted: list[str]) -> tuple[str, ...]:
    return tuple(c for c in wanted if ONLY_ON.get(c, qtype) == qtype)


def preset_plan(preset: str) -> list[Group]:
    """quick: 0.6b Q8_0 (every contender) and Q4_0 at c = 1, 4, 8, 16, both with the multi-turn workload, Q4_0 also
    with many chats on 4 sequences; 4b Q4_0 at c = 1 and 8 with 32 output tokens. full: 0.6b and 4b, Q8_0, Q4_0 and
    Q4_K_M, c = 1, 4, 8, 16, 64 output tokens, multi-turn on every 0.6b file."""
    every = list(CONTENDERS)
    if preset == "quick":
        return [Group("0.6b", "Q8_0", (1, 4, 8, 16), 64, 12, contenders_for("Q8_0", every), multi_turn=True),
                Group("0.6b", "Q4_0", (1, 4, 8, 16), 64, 12, ("llama-server", "ours"), multi_turn=True, many_chats=4),
                Group("4b", "Q4_0", (1, 8), 32, 8, ("llama-server", "ours"))]  # fmt: skip
    if preset != "full":
        raise ValueError(f"unknown preset {preset!r}")
    return [Group(shape, q, (1, 4, 8, 16), 64, 16 if shape == "0.6b" else 8,
                  contenders_for(q, every if shape == "0.6b" else ["llama-server", "ours", "ours-default"]),
                  multi_turn=shape == "0.6b")
            for shape in ("0.6b", "4b") for q in ("Q8_0", "Q4_0", "Q4_K_M")]  # fmt: skip


def make_plan(args: argparse.Namespace) -> list[Group]:
    """The preset, or a uniform plan where --shapes/--qtypes/--concurrency/... say otherwise; --contenders filters."""
    plan = preset_plan(args.preset)
    if args.shapes or args.qtypes or args.concurrency or args.output_tokens or args.num_requests:
        base = plan[0]
        plan = [Group(shape, q, tuple(args.concurrency or base.concurrency), args.output_tokens or base.output_tokens,
                      args.num_requests or base.num_requests, contenders_for(q, list(CONTENDERS)), multi_turn=i == 0)
                for i, (shape, q) in enumerate((s, q) for s in args.shapes or ["0.6b"]
                                               for q in args.qtypes or ["Q8_0", "Q4_0"])]  # fmt: skip
    wanted = args.contenders or list(CONTENDERS)
    many = args.many_chats_sequences

    def many_chats(g: Group, first: bool) -> int:
        return (many if first else 0) if many is not None else g.many_chats

    plan = [replace(g, contenders=tuple(c for c in g.contenders if c in wanted),
                    multi_turn=g.multi_turn and not args.no_multi_turn, many_chats=many_chats(g, i == 0))
            for i, g in enumerate(plan)]  # fmt: skip
    return [g for g in plan if g.contenders]


def estimate_seconds(plan: list[Group], prompt_tokens: int, chat: ChatWorkload) -> float:
    """A rough duration of `plan` on an idle 2-core box, from the rates above (builds and exports not counted)."""
    total = 0.0
    for g in plan:
        decode, prefill = DECODE.get((g.shape, g.qtype), 20.0), PREFILL.get(g.shape, 85)
        per_contender = float(START_S.get(g.shape, 15))
        for c in g.concurrency:
            n = max(g.num_requests, c)
            gain = BATCH_GAIN if c >= 4 else 1.0
            per_contender += n * g.output_tokens / (decode * gain) + n * prompt_tokens / prefill
        total += per_contender * len(g.contenders)
        # Prefilled per conversation where the server reuses its history: turn 1, then each turn's new part.
        new_tokens = chat.first_tokens + (chat.turns - 1) * (chat.turn_tokens + chat.output_tokens)
        for conversations in ([chat.conversations] if g.multi_turn else []) + (
                [MANY_CHATS_PER_SEQUENCE * g.many_chats] if g.many_chats else []):  # fmt: skip
            turns = conversations * chat.turns
            total += 2 * (turns * chat.output_tokens / (decode * BATCH_GAIN) + conversations * new_tokens / prefill)
    return total
