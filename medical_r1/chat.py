"""Talk to the tuned model: a Gradio chat that streams tokens, folds the thinking under the answer, and switches
between the tuned model and the base model (the adapter off). Every question is rendered by the same
`render_prompt` as training, and answered on its own: R1 distills are trained single-turn.
"""
from __future__ import annotations

import html
import threading

from medical_r1.generation import input_device
from medical_r1.params import check_share
from medical_r1.runtime import detect_platform
from src_helpers import encode_prompt

MODELS = ("fine-tuned", "base")  # the switch in the chat; "base" is the same model with its adapter off


def share_link(share: str, platform: str | None = None) -> bool:
    """SHARE = "auto" opens a public gradio.live link on Colab and Kaggle, where a local address cannot be
    reached from your browser, and not on your own machine; True or False forces it."""
    check_share(share, "SHARE")
    if share == "auto":
        return (platform or detect_platform()) in ("colab", "kaggle")
    return share


def format_reply(text: str) -> str:
    """The chat's view of a reply: the thinking folded in a <details> block, the answer after it. While the
    model is still thinking (no </think> yet) the fold says so and there is no answer yet."""
    thinking, closed, answer = text.partition("</think>")
    if not closed:
        return f"<details><summary>Thinking…</summary>\n\n{html.escape(thinking.strip())}\n\n</details>"
    return (f"<details><summary>Thought for {len(thinking.split())} words</summary>\n\n"
            f"{html.escape(thinking.strip())}\n\n</details>\n\n{answer.strip()}")


def stream_reply(model, tokenizer, question: str, template: str, max_new_tokens: int, temperature: float,
                 top_p: float, use_adapter: bool = True):
    """Yield the reply's text so far, token by token. Generation runs in a thread (transformers'
    TextIteratorStreamer); with use_adapter False the adapter is switched off for it: the base model."""
    import contextlib

    import torch
    from transformers import TextIteratorStreamer

    device = input_device(model)
    ids = torch.tensor([encode_prompt(tokenizer, question, template)], device=device)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=600)
    sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 else {"do_sample": False}

    def generate():
        switch = contextlib.nullcontext() if use_adapter else model.disable_adapter()
        with switch, torch.no_grad():
            model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                           pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, streamer=streamer,
                           **sampling)

    worker = threading.Thread(target=generate, daemon=True)
    worker.start()
    text = ""
    for piece in streamer:
        text += piece
        yield text
    worker.join()


def build_chat_app(model, tokenizer, template: str, max_new_tokens: int, temperature: float, top_p: float,
                   can_switch: bool = True):
    """A gr.ChatInterface whose reply streams, with the model switch and the sampling settings (defaults from
    the parameters cell) under "Additional inputs". Its API endpoint is /chat."""
    import gradio as gr

    lock = threading.Lock()  # one generation at a time: the adapter switch is the model's own state

    def reply(message, history, which, temperature, top_p, max_new_tokens):
        with lock:
            for text in stream_reply(model, tokenizer, message, template, int(max_new_tokens), temperature, top_p,
                                     use_adapter=which == MODELS[0]):
                yield format_reply(text)

    choices = list(MODELS) if can_switch else [MODELS[0]]
    return gr.ChatInterface(
        reply, title="Medical R1", api_name="chat",
        description="DeepSeek-R1 distill fine-tuned on medical chains of thought. Research artefact, not medical "
                    "advice. Each question is answered on its own, with the training prompt.",
        additional_inputs=[
            gr.Radio(choices, value=MODELS[0], label="model"),
            gr.Slider(0.0, 1.5, value=temperature, step=0.05, label="temperature (0 = greedy)"),
            gr.Slider(0.05, 1.0, value=top_p, step=0.05, label="top_p"),
            gr.Slider(1, 4096, value=max_new_tokens, step=1, label="max new tokens"),
        ],
        examples=[["A 58-year-old man has crushing chest pain and ST elevation in V1-V4. Which artery is occluded?"],
                  ["一位60岁长期吸烟的男性，痰中带血三个月，应首先考虑什么疾病？"]],
        cache_examples=False,
    )
