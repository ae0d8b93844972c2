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

MODELS = ("fine-tuned", "base", "both")  # "base" is the same model with its adapter off; "both" answers twice
LABELS = {"fine-tuned": "Fine-tuned model", "base": "Base model (adapter off)"}
# Keeps a thinking fold the reader opened open while the reply streams: every streamed update re-renders the
# message, which would close it. Passed to app.launch(js=...) (Gradio 6 takes page scripts there).
FOLD_SCRIPT = """() => {
  const isFold = (d) => /^(Thinking|Thought for)/.test(((d.querySelector('summary') || {}).textContent || '').trim());
  const folds = () => [...document.querySelectorAll('details')].filter(isFold);
  const opened = new Set();
  document.addEventListener('click', (event) => {
    const summary = event.target.closest('summary');
    const fold = summary && summary.parentElement;
    if (!fold || !isFold(fold)) return;
    const index = folds().indexOf(fold);
    setTimeout(() => { if (fold.open) opened.add(index); else opened.delete(index); }, 0);
  }, true);
  new MutationObserver(() => folds().forEach((fold, index) => { if (opened.has(index) && !fold.open) fold.open = true; }))
    .observe(document.body, {subtree: true, childList: true, characterData: true});
}"""


def share_link(share: str, platform: str | None = None) -> bool:
    """SHARE = "auto" opens a public gradio.live link on Colab and Kaggle, where a local address cannot be
    reached from your browser, and not on your own machine; True or False forces it."""
    check_share(share, "SHARE")
    if share == "auto":
        return (platform or detect_platform()) in ("colab", "kaggle")
    return share


def format_reply(text: str, label: str = "", stopped_at: int = 0, final: bool = False) -> str:
    """The chat's view of a reply: which model wrote it (`label`), the thinking folded in a <details> block, the
    answer after it. While the model is still thinking (no </think> yet) the fold says so. Once generation has
    ended (`final`), a reply that gives no answer, or used all its new tokens (`stopped_at` > 0), says so."""
    thinking, closed, answer = text.partition("</think>")
    answer = answer.strip()
    summary = f"Thought for {len(thinking.split())} words" if closed else "Thinking…"
    reply = (f"**{label}**\n\n" if label else "") + \
        f"<details><summary>{summary}</summary>\n\n{html.escape(thinking.strip())}\n\n</details>"
    if answer:
        reply += f"\n\n{answer}"
    if not final:
        return reply
    limit = f"Stopped at the token limit ({stopped_at} new token{'' if stopped_at == 1 else 's'})"
    if not closed:
        note = (f"{limit} while still thinking: no answer yet. Raise \"max new tokens\" to let it finish."
                if stopped_at else "The model stopped while still thinking, without an answer.")
    elif not answer:
        note = f"{limit} right after thinking: no answer yet." if stopped_at else \
            "The model closed its thinking without writing an answer."
    else:
        note = f"{limit}: the answer may be cut short." if stopped_at else ""
    return reply + (f"\n\n*{note}*" if note else "")


STOPPED_NOTE = "*Stopped with the Stop button: the reply ends here.*"


def side_by_side(replies: list[str]) -> str:
    """One reply as it is; two (both models) in columns where the window is wide enough, one above the other on a
    phone (a grid whose columns are at least 18rem wide)."""
    if len(replies) == 1:
        return replies[0]
    columns = "".join(f"<div>\n\n{reply}\n\n</div>" for reply in replies)
    return ("<div class='both-models' style='display: grid; gap: 1rem; "
            f"grid-template-columns: repeat(auto-fit, minmax(18rem, 1fr))'>{columns}</div>")


def note_stopped(history: list) -> list:
    """The chat's messages with STOPPED_NOTE under the last reply (Gradio keeps what the reply had streamed)."""
    if history and history[-1].get("role") == "assistant":
        last = dict(history[-1])
        content = last.get("content")
        if isinstance(content, str) and STOPPED_NOTE not in content:
            last["content"] = f"{content}\n\n{STOPPED_NOTE}"
        elif isinstance(content, list) and content and content[-1].get("type") == "text":
            last["content"] = [*content[:-1], {**content[-1], "text": f"{content[-1]['text']}\n\n{STOPPED_NOTE}"}]
        history = [*history[:-1], last]
    return history


def question_refusal(tokenizer, message, template: str, max_seq_length: int) -> str:
    """Why a question is not sent, or "": an empty one (Enter in an empty box, only spaces), or one whose prompt
    alone takes the model's whole context, leaving no room for a reply."""
    text = message if isinstance(message, str) else (message or {}).get("text", "")
    if not text.strip():
        return "Type a question first: an empty message is not sent."
    tokens = len(encode_prompt(tokenizer, text, template))
    if tokens >= max_seq_length:
        return (f"The question alone is {tokens:,} tokens, longer than the model's limit of {max_seq_length:,} tokens "
                "for the question and the reply together: shorten it.")
    return ""


def stream_reply(model, tokenizer, question: str, template: str, max_new_tokens: int, temperature: float,
                 top_p: float, use_adapter: bool = True, outcome: dict | None = None):
    """Yield the reply's text so far, token by token; closing the generator early (the Stop button) ends the
    generation at the next token. Generation runs in a thread (transformers'
    TextIteratorStreamer); with use_adapter False the adapter is switched off for it: the base model. When done,
    `outcome` (if given) holds "new_tokens" and "stopped_at_limit" (all max_new_tokens used, no end token)."""
    import contextlib

    import torch
    from transformers import TextIteratorStreamer

    from transformers import StoppingCriteria, StoppingCriteriaList

    class StopWhenAsked(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return torch.full((input_ids.shape[0],), stop.is_set(), dtype=torch.bool, device=input_ids.device)

    stop = threading.Event()  # set when the reader stops reading (the Stop button): the generation ends too
    device = input_device(model)
    ids = torch.tensor([encode_prompt(tokenizer, question, template)], device=device)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=600)
    sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 else {"do_sample": False}

    result = {}

    def generate():
        switch = contextlib.nullcontext() if use_adapter else model.disable_adapter()
        with switch, torch.no_grad():
            result["ids"] = model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, streamer=streamer,
                stopping_criteria=StoppingCriteriaList([StopWhenAsked()]), **sampling)

    worker = threading.Thread(target=generate, daemon=True)
    worker.start()
    text = ""
    try:
        for piece in streamer:
            text += piece
            yield text
    finally:  # also when the reader stops early: no generation is left running on the model
        stop.set()
        worker.join()
    if outcome is not None and "ids" in result:
        new = result["ids"][0, ids.shape[1]:].tolist()
        outcome.update(new_tokens=len(new), stopped_at_limit=len(new) >= max_new_tokens and
                       tokenizer.eos_token_id not in new)


def build_chat_app(model, tokenizer, template: str, max_new_tokens: int, temperature: float, top_p: float,
                   can_switch: bool = True, max_seq_length: int = 2048):
    """A gr.ChatInterface whose reply streams, labelled with the model that wrote it, with the model choice
    (fine-tuned, base, or both one after the other) and the sampling settings (defaults from the parameters cell)
    under "Additional inputs". "max new tokens" goes up to max_seq_length and is cut, with a note, to what the
    prompt leaves. Its API endpoint is /chat. Launch it with js=FOLD_SCRIPT."""
    import gradio as gr

    lock = threading.Lock()  # one generation at a time: the adapter switch is the model's own state

    def refusal(message) -> str:
        return question_refusal(tokenizer, message, template, max_seq_length)

    def check(message):  # in the page, before anything is sent: the box keeps the text and shows why
        said = refusal(message)
        return gr.validate(not said, said)

    def reply(message, history, which, temperature, top_p, max_new_tokens):
        said = refusal(message)
        if said:  # the API (/chat) bypasses the page's check: the same refusal, and nothing generated
            yield f"*{said}*"
            return
        room = max_seq_length - len(encode_prompt(tokenizer, message, template))
        limit = max(1, min(int(max_new_tokens), room))
        cut = (f"*\"max new tokens\" cut from {int(max_new_tokens)} to {limit}: the prompt and the reply must fit "
               f"{max_seq_length} tokens.*\n\n") if limit < int(max_new_tokens) else ""
        done = []
        with lock:
            for name in (("fine-tuned", "base") if which == "both" else (which,)):
                outcome = {}
                for text in stream_reply(model, tokenizer, message, template, limit, temperature, top_p,
                                         use_adapter=name == "fine-tuned", outcome=outcome):
                    yield cut + side_by_side(done + [format_reply(text, LABELS[name])])
                stopped_at = limit if outcome.get("stopped_at_limit") else 0
                done.append(format_reply(text, LABELS[name], stopped_at, final=True))
                yield cut + side_by_side(done)

    choices = list(MODELS) if can_switch else [MODELS[0]]
    app = gr.ChatInterface(
        reply, title="Medical R1", api_name="chat",
        description="DeepSeek-R1 distill fine-tuned on medical chains of thought. Research artefact, not medical "
                    "advice. Each question is answered on its own, with the training prompt. Each reply says which "
                    "model wrote it; choose \"both\" under Additional inputs to put the base model beside it.",
        additional_inputs=[
            gr.Dropdown(choices, value=MODELS[0], label="model"),
            gr.Slider(0.0, 1.5, value=temperature, step=0.05, label="temperature (0 = greedy)"),
            gr.Slider(0.05, 1.0, value=top_p, step=0.05, label="top_p"),
            gr.Slider(1, max_seq_length, value=min(max_new_tokens, max_seq_length), step=1,
                      label=f"max new tokens (prompt + reply fit {max_seq_length})"),
        ],
        examples=[["A 58-year-old man has crushing chest pain and ST elevation in V1-V4. Which artery is occluded?"],
                  ["一位60岁长期吸烟的男性，痰中带血三个月，应首先考虑什么疾病？"]],
        cache_examples=False,
        validator=check,
        chatbot=gr.Chatbot(show_label=False, height="70vh"),  # no label bar for the replies to scroll under
    )
    with app:  # the Stop button leaves the reply as far as it got: say so under it
        app.textbox.stop(note_stopped, [app.chatbot], [app.chatbot], queue=False)
    return app
