"""The web demo's entry point (a Hugging Face Space runs this file).

For now a minimal page: pick a video, ask a question, read the answer and what was retrieved.
The full demo (live ingestion, chat, heatmaps, policy comparison) replaces it.
"""

from __future__ import annotations

import argparse
import os

import gradio as gr

import memstream

SAMPLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "sample.mp4")


def build(engine: memstream.Engine, banner: str) -> gr.Blocks:
    def answer(video_path: str | None, question: str, policy: str) -> tuple[str, str]:
        try:
            stream = engine.stream(policy=policy, tokens_per_frame=64)
            stream.add_video(video_path or SAMPLE)
            ans = stream.ask(question)
        except memstream.MemStreamError as exc:
            return f"⚠️ {exc}", ""
        sel = ans.trace.selection_counts()
        picked = ", ".join(f"{t:.1f}s" for t, c in zip(ans.trace.block_times.tolist(), sel.tolist()) if c)
        return ans.text, f"{ans.summary()}\nretrieved blocks at: {picked}"

    with gr.Blocks(title="memstream") as demo:
        gr.Markdown(f"# memstream\nStreaming video QA over a KV-cache memory. {banner}")
        video = gr.Video(value=SAMPLE, label="video")
        question = gr.Textbox(label="question", value="What is moving?")
        policy = gr.Radio(["rekv", "full"], value="rekv", label="policy")
        go = gr.Button("Ask")
        out = gr.Textbox(label="answer")
        info = gr.Textbox(label="what it saw")
        go.click(answer, [video, question, policy], [out, info])
    return demo


def main() -> None:
    ap = argparse.ArgumentParser(description="memstream web demo")
    ap.add_argument("--model", default=None, help="hub id, local directory or 'tiny' (default: the real model)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--server-name", default="0.0.0.0")
    ap.add_argument("--server-port", type=int, default=int(os.environ.get("PORT", 7860)))
    ap.add_argument("--share", action="store_true")
    args = ap.parse_args()
    banner = ""
    try:
        engine = memstream.load(model=args.model, device=args.device)
    except memstream.ModelLoadError as exc:
        print(f"warning: {exc} Falling back to the tiny random-weight model.")
        engine = memstream.load(model="tiny", device=args.device)
        banner = "**The real model could not be loaded: answers come from a tiny random-weight model.**"
    build(engine, banner).launch(server_name=args.server_name, server_port=args.server_port, share=args.share)


if __name__ == "__main__":
    main()
