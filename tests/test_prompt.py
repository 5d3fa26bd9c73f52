"""ReKV's prompt as its release builds it (docs/fidelity.md, "ReKV"): the text after the video is
tokenised once, the retrieval query is located in it by character offsets, and the multiple-choice
user turn carries the release's wording.

The tiny model's tokenizer has no merges, so any split of the text tokenises the same; here a byte-level
BPE *with merges* (Qwen's pre-tokenizer split, a handful of merges) is built in the test, on which the
old three-piece tokenisation (head | query | tail) gives other ids than the joint one.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from memstream.backbones.presets import byte_vocab
from memstream.backbones.qwen2_5_vl import SPECIAL_TOKENS
from memstream.evaluate.prompts import ANSWER_PREFIX, MC_INSTRUCTION, mc_prompt
from memstream.prompt import question_ids

# Qwen2's pre-tokenizer split: a word takes the space before it, punctuation takes the newlines after it
QWEN_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
              r"|\s*[\r\n]+|\s+(?!\S)|\s+")
CHAR = {b: c for c, b in byte_vocab().items()}  # byte -> the byte-level alphabet's character
SP, NL = CHAR[ord(" ")], CHAR[ord("\n")]  # "Ġ", "Ċ"


def bpe_tokenizer():
    """A fast byte-level BPE tokenizer with merges that join a word to the space before it (" What")
    and "?" to the newline after it ("?\\n"), and Qwen's special tokens."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    merges = [("W", "h"), ("Wh", "a"), ("Wha", "t"), (SP, "What"), ("?", NL), ("o", "v"), ("ov", "e"),
              ("m", "ove"), ("move", "d"), (SP, "moved")]
    vocab = byte_vocab()
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    core = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    core.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    core.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=core)
    tok.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS)})
    return tok


@pytest.fixture(scope="module")
def bpe_backbone(engine):
    """The tiny backbone's chat template with the BPE tokenizer: all `question_ids` reads of a backbone."""
    tok = bpe_tokenizer()
    return SimpleNamespace(tokenizer=tok, chat=engine.backbone.chat,
                           tokenize=lambda text: tok(text, add_special_tokens=False).input_ids)


def three_pieces(bb, question: str, query: str, answer_prefix: str) -> tuple[list[int], slice]:
    """The former `question_ids`: head, query and tail tokenised apart (kept here to show it fails)."""
    at = question.find(query)
    head = bb.tokenize(bb.chat.after_video) + (bb.tokenize(question[:at]) if at else [])
    body = bb.tokenize(query)
    rest = question[at + len(query):]
    tail = (bb.tokenize(rest) if rest else []) + bb.tokenize(bb.chat.assistant_turn) + bb.tokenize(answer_prefix)
    return head + body + tail, slice(len(head), len(head) + len(body))


MC = mc_prompt("What moved?", ["a ball", "a box"])


def check_joint(bb, question: str, query: str, answer_prefix: str, ids: list[int], qslice: slice) -> None:
    """The test every tokenisation of the prompt must pass: one joint tokenisation, and a query span made of
    exactly the tokens whose characters overlap the query."""
    text = bb.chat.after_video + question + bb.chat.assistant_turn + answer_prefix
    assert ids == bb.tokenize(text)
    enc = bb.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    start = len(bb.chat.after_video) + question.find(query)
    end = start + len(query)
    overlapping = [i for i, (a, b) in enumerate(enc["offset_mapping"]) if a < end and b > start]
    assert list(range(len(ids)))[qslice] == overlapping


def test_the_prompt_is_tokenised_once_with_merges_across_the_query_edges(bpe_backbone):
    bb = bpe_backbone
    ids, qslice = question_ids(bb, MC, "What moved?", ANSWER_PREFIX)
    check_joint(bb, MC, "What moved?", ANSWER_PREFIX, ids, qslice)
    tokens = bb.tokenizer.convert_ids_to_tokens(ids)
    # the merges really happen at both edges: " What" keeps its space, "?" keeps its newline
    assert tokens[qslice] == [SP + "What", SP + "moved", "?" + NL]
    assert bb.tokenizer.decode(ids[qslice]) == " What moved?\n"
    assert tokens[qslice.start - 1] == ":"  # no stray space token before the query


def test_the_old_three_piece_split_fails_that_test(bpe_backbone):
    bb = bpe_backbone
    old_ids, old_slice = three_pieces(bb, MC, "What moved?", ANSWER_PREFIX)
    with pytest.raises(AssertionError):
        check_joint(bb, MC, "What moved?", ANSWER_PREFIX, old_ids, old_slice)
    tokens = bb.tokenizer.convert_ids_to_tokens(old_ids)
    # what the issue saw with Qwen's tokenizer: a stray space, "What" without its space, "?" and "\n" apart
    assert tokens[old_slice.start - 1] == SP and tokens[old_slice][0] == "What" and tokens[old_slice][-1] == "?"
    assert tokens[old_slice.stop] == NL


@pytest.mark.parametrize("question, query", [
    ("What moved?", None),  # the default query: the whole question
    ("Où est-il? Options: (A) là", "Où est-il?"),  # multi-byte characters: several tokens per character
    ("Say  what moved", "what moved"),  # a lone space before the query stays outside it
    ("What moved? What moved?", "What moved?"),  # the first occurrence
])
def test_query_span_by_character_offsets(engine, bpe_backbone, question, query):
    for bb in (engine.backbone, bpe_backbone):
        ids, qslice = question_ids(bb, question, query)
        check_joint(bb, question, question if query is None else query, "", ids, qslice)
    # the tiny tokenizer has no merges: its span decodes to the query exactly
    ids, qslice = question_ids(engine.backbone, question, query)
    assert engine.backbone.tokenizer.decode(ids[qslice]) == (question if query is None else query)


def test_empty_or_missing_query_is_refused(engine):
    for query in ("", "not in it"):
        with pytest.raises(ValueError):
            question_ids(engine.backbone, "What moved?", query)


def test_multiple_choice_prompt_is_reKVs():
    assert MC == "Question: What moved?\nOptions:\n(A) a ball\n(B) a box\nOnly give the best option."
    assert MC.endswith("\n" + MC_INSTRUCTION) and ANSWER_PREFIX == "Best option: ("


def test_eval_asks_the_released_prompt(engine, monkeypatch, tmp_path):
    """What the evaluation hands the stream: the release's user turn, the question alone as the query, and
    "Best option: (" opening the answer."""
    from pathlib import Path

    from memstream.engine import Stream
    from memstream.evaluate import EvalSettings, load_annotations, run_eval

    asked = []
    real_ask = Stream.ask

    def spy(self, question, *args, **kwargs):
        asked.append((question, kwargs.get("query"), kwargs.get("answer_prefix")))
        return real_ask(self, question, *args, **kwargs)

    monkeypatch.setattr(Stream, "ask", spy)
    sample = Path(__file__).resolve().parent.parent / "assets" / "sample.mp4"
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps([{"video_id": "v", "video_path": str(sample), "conversations": [
        {"question": "What moved?", "choices": ["a ball", "a box"], "answer": "a box"}]}]))
    videos, _ = load_annotations(str(ann))
    run_eval(engine, videos, EvalSettings.from_options(policy="rekv", tokens_per_frame=16), progress=False)
    assert asked == [(MC, "What moved?", ANSWER_PREFIX)]


# ---- the reproduction commands of docs/fidelity.md, as written ----------------------------------
def fidelity_commands(section: str) -> list[list[str]]:
    """The `python -m memstream eval` commands of a "### section" of docs/fidelity.md's reproduction
    part, expanded by bash as a user would run them (with `python` printing its arguments instead)."""
    import re
    import shlex
    import subprocess

    text = (Path(__file__).resolve().parent.parent / "docs" / "fidelity.md").read_text()
    part = text.split("## Reproducing published rows", 1)[1]
    block = re.search(rf"### {re.escape(section)}.*?```bash\n(.*?)```", part, re.S).group(1)
    script = "python() { printf '%s\\n' \"$*\"; }\n" + block
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True).stdout
    return [shlex.split(line)[2:] for line in out.splitlines() if line.startswith("-m memstream eval ")]


def parsed(argv: list[str]):
    from memstream.cli import _parser
    from memstream.options import check_expert_flag, stream_options

    args = _parser().parse_args(argv)
    check_expert_flag([args.policy], args.expert)  # what the CLI checks before loading
    return args, stream_options(args)


def test_rekv_reproduction_commands_are_rekvs_budget():
    commands = fidelity_commands("ReKV on RVS-Ego and RVS-Movie")
    assert len(commands) == 2
    for argv in commands:
        args, opts = parsed(argv)
        assert (opts["policy"], opts["fps"], opts["topk"], opts["n_local"]) == ("rekv", 0.5, 32, 15000)
        assert opts["fps"] * 2 == 1.0 and opts["topk"] * 2 == 64  # 2-frame blocks: ReKV's 64 frames at 0.5 fps
        assert args.max_new_tokens == 256 and args.judge == "openai"
        assert args.annotations.endswith(("rvs/ego/ego4d_oe.json", "rvs/movie/movienet_oe.json"))


def test_memstream_reproduction_commands_are_the_four_aks_only_rows(engine):
    from memstream.config import StreamConfig
    from memstream.engine import Engine
    from memstream.experts import build_tiny_expert

    expert_engine = Engine(engine.backbone, build_tiny_expert())

    commands = fidelity_commands("MemStream")
    assert len(commands) == 12  # 4 rows x CG-Bench, LVBench, VideoMME-Long
    rows = {}
    for argv in commands:
        args, opts = parsed(argv)
        bench = Path(args.annotations).stem  # results/{bench}_{row}.jsonl
        rows.setdefault(Path(args.out).stem.removeprefix(bench + "_"), set()).add(args.annotations)
        cfg = StreamConfig.from_options(**opts)
        assert (cfg.fps, cfg.topk, cfg.tokens_per_frame) == (0.5, 32, 256)
        assert (args.expert == "clip-b32") == (cfg.policy in ("external", "memstream"))
        # the same flags open a stream (the offline tiny expert standing in for clip-b32)
        memory = expert_engine.stream(**{**opts, "expert": "tiny" if args.expert != "none" else "none"}).memory
        assert not getattr(memory, "compress", False)  # AKS-only rows: no patch compression
        assert getattr(memory, "aks", False) == (cfg.policy in ("memstream-internal", "memstream"))
    assert rows == {r: {"ann/cgbench.json", "ann/lvbench.json", "ann/videomme_long.json"}
                    for r in ("rekv", "aks_internal", "external", "aks_moe")}
