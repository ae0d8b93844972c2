"""Talk to the tuned model: a Gradio chat that streams tokens, folds the thinking under the answer, and switches
between the tuned model and the base model (the adapter off). Every question is rendered by the same
`render_prompt` as training, and answered on its own: R1 distills are trained single-turn.
"""
from __future__ import annotations

import hmac
import html
import re
import threading
import time

from medical_r1.credentials import resolve_secret
from medical_r1.display import plural, thought_length
from medical_r1.generation import input_device
from medical_r1.params import check_share
from medical_r1.runtime import detect_platform
from src_helpers import encode_prompt, split_thinking

MODELS = ("fine-tuned", "base", "both")  # "base" is the same model with its adapter off; "both" answers twice
LABELS = {"fine-tuned": "Fine-tuned model", "base": "Base model (adapter off)"}
# The page's script, passed to app.launch(js=...) (Gradio 6 takes page scripts there). (1) Keeps a thinking fold the
# reader opened open while the reply streams: every streamed update re-renders the message, which would close it.
# Folds are remembered by their place in the chat, forgotten when Clear empties it (else the next reply's fold would
# open by itself). (2) Enter while a reply streams does not send (the page answers one question at a time, and a
# question sent then was lost): the question waits in the box, saying so, and is sent when the reply ends.
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
  new MutationObserver(() => {
    const all = folds();
    if (!all.length) opened.clear();
    all.forEach((fold, index) => { if (opened.has(index) && !fold.open) fold.open = true; });
  }).observe(document.body, {subtree: true, childList: true, characterData: true});
  // Sent, and not yet streaming (for up to 3 s): still in the box as sent (being checked), or accepted (the box
  // emptied, or the question shown). A refused question stays in the box; edited, it is sent at once.
  const asked = () => document.querySelectorAll("[data-testid='user']").length;
  let sentAt = 0, askedBefore = 0, sentText = '';
  const streaming = () => {
    const stop = !!document.querySelector("button.stop-button, button[aria-label='Stop']");
    if (stop) sentAt = 0;
    const inBox = (document.querySelector('textarea') || {}).value;
    const pending = asked() > askedBefore || !inBox || inBox === sentText;
    return stop || (Date.now() - sentAt < 3000 && pending);
  };
  let waiting = null;
  document.addEventListener('keydown', (event) => {
    const box = event.target;
    if (event.key !== 'Enter' || event.shiftKey || !(box instanceof HTMLTextAreaElement) || !box.value.trim()) return;
    if (!streaming()) {
      [sentAt, askedBefore, sentText] = [Date.now(), asked(), box.value];
      return;
    }
    event.preventDefault();
    event.stopImmediatePropagation();
    if (waiting) return;
    waiting = document.createElement('div');
    waiting.className = 'queued-note';
    waiting.textContent = 'Waiting: this question is sent when the reply above ends.';
    box.closest('.block, form, div').after(waiting);
  }, true);
  setInterval(() => {
    const send = document.querySelector("button.submit-button, button[aria-label='Submit']");
    const box = document.querySelector('textarea');
    if (!waiting || streaming() || !send || !box || box.disabled) return;
    waiting.remove();
    waiting = null;
    if (box.value.trim()) {
      [sentAt, askedBefore, sentText] = [Date.now(), asked(), box.value];
      send.click();
    }
  }, 300);
}"""
MIN_REPLY_TOKENS = 128  # a question must leave this much room: R1 thinks before it answers, and less is no reply


def share_link(share: str, platform: str | None = None) -> bool:
    """SHARE = "auto" opens a public gradio.live link on Colab and Kaggle, where a local address cannot be
    reached from your browser, and not on your own machine; True or False forces it."""
    check_share(share, "SHARE")
    if share == "auto":
        return (platform or detect_platform()) in ("colab", "kaggle")
    return share


def thinking_markdown(thinking: str) -> str:
    """The thinking as the chat's Markdown shows it: HTML escaped, so that the model's "<b>" or "<script>" shows as
    written, except inside code (`...`, ```...```), which Markdown shows as written itself (escaping there showed
    "K+ &lt; 3.5"). A code block still open (streaming) is closed, so that it cannot swallow the fold's end."""
    parts = re.split(r"(```.*?(?:```|$)|`[^`\n]*`)", thinking, flags=re.S)
    text = "".join(part if i % 2 else html.escape(part, quote=False) for i, part in enumerate(parts))
    return text + ("\n```" if text.count("```") % 2 else "")


def format_reply(text: str, label: str = "", stopped_at: int = 0, final: bool = False,
                 thinking_tokens: int | None = None, progress: str = "", advice: str = "") -> str:
    """The chat's view of a reply: which model wrote it (`label`), the thinking folded in a <details> block, the
    answer after it: after the last </think>, the rule 04's scorer reads answers by (src_helpers.split_thinking).
    The fold says how long the model thought (`thinking_tokens`, else counted in the text), and while it is still
    thinking, `progress` (tokens so far, time). Once generation has ended (`final`), a reply that gives no answer,
    or used all its new tokens (`stopped_at` > 0), says so, and what would help (`advice`; by default raising
    "max new tokens")."""
    thinking, answer, closed = split_thinking(text)
    summary = f"Thought for {thought_length(thinking, thinking_tokens)}" if closed else \
        f"Thinking… {progress}".strip()
    reply = (f"**{label}**\n\n" if label else "") + \
        f"<details><summary>{summary}</summary>\n\n{thinking_markdown(thinking)}\n\n</details>"
    if answer:
        reply += f"\n\n{answer}"
    if not final:
        return reply
    limit = f"Stopped at the token limit ({plural(stopped_at, 'new token')})"
    advice = advice or "Raise \"max new tokens\" to let it finish."
    if not closed:
        note = (f"{limit} while still thinking: no answer yet. {advice}"
                if stopped_at else "The model stopped while still thinking, without an answer.")
    elif not answer:
        note = f"{limit} right after thinking: no answer yet." if stopped_at else \
            "The model closed its thinking without writing an answer."
    else:
        note = f"{limit}: the answer may be cut short." if stopped_at else ""
    return reply + (f"\n\n*{note}*" if note else "")


def as_typed(question: str) -> str:
    """A question as the chat shows it: as typed, not read as HTML or Markdown ("What does the <b> tag do?" showed
    as bold; a question of only <script> showed an empty bubble). Every ASCII punctuation mark becomes its
    character reference, which Markdown shows as the character and never reads as syntax (backslash escapes are
    not undone inside a bare URL)."""
    return re.sub(r"[!-/:-@\[-`{-~]", lambda mark: f"&#{ord(mark.group())};", question)


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
    leaves less than MIN_REPLY_TOKENS of the model's context for the reply."""
    text = message if isinstance(message, str) else (message or {}).get("text", "")
    if not text.strip():
        return "Type a question first: an empty message is not sent."
    tokens = len(encode_prompt(tokenizer, text, template))
    room = max_seq_length - tokens
    limit = f"the model's limit of {max_seq_length:,} tokens for the question and the reply together"
    if room <= 0:
        return (f"The question alone is {plural(tokens, 'token')}, "
                f"{'more than' if room < 0 else 'all of'} {limit}: shorten it.")
    if room < MIN_REPLY_TOKENS:
        return (f"The question is {plural(tokens, 'token')}, which leaves room for only {plural(room, 'token')} of "
                f"reply within {limit}; a reply needs at least {MIN_REPLY_TOKENS} to think and answer: shorten it.")
    return ""


def stream_reply(model, tokenizer, question: str, template: str, max_new_tokens: int, temperature: float,
                 top_p: float, use_adapter: bool = True, outcome: dict | None = None):
    """Yield the reply's text so far, token by token; closing the generator early (the Stop button) ends the
    generation at the next token. Generation runs in a thread (transformers'
    TextIteratorStreamer); with use_adapter False the adapter is switched off for it: the base model. When done,
    `outcome` (if given) holds "new_tokens" and "stopped_at_limit" (all max_new_tokens used, no end token); while
    it streams, "tokens_so_far"."""
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
    class CountingStreamer(TextIteratorStreamer):  # counts the new tokens as they come, for the fold's progress
        def put(self, value):
            if not (self.skip_prompt and self.next_tokens_are_prompt) and outcome is not None:
                outcome["tokens_so_far"] = outcome.get("tokens_so_far", 0) + value.numel()
            super().put(value)

    streamer = CountingStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=600)
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


def chat_access(share: bool, show_api: bool = False, environ=None) -> tuple[dict, str]:
    """app.launch()'s access arguments, and what to print next to the link. With a CHAT_PASSWORD secret (Kaggle or
    Colab secrets, or the environment) the page and its API ask for it (any user name); without one, a public link
    is open to anyone who has it, and the note says so and how to close it. The API page ("Use via API") is
    listed only with `show_api`."""
    import os

    password, where = resolve_secret("CHAT_PASSWORD", os.environ if environ is None else environ)
    access = {"footer_links": ["api", "gradio", "settings"] if show_api else ["gradio", "settings"]}
    if password:
        access.update(auth=lambda user, typed: hmac.compare_digest(typed.encode(), password.encode()),
                      auth_message="The password is this notebook's CHAT_PASSWORD secret; any user name.")
        return access, f"The chat asks for a password (CHAT_PASSWORD, from the {where}); any user name."
    if not share:
        return access, ""
    return access, ("This public link is open: anyone who has it can chat with the model on your GPU, through the "
                    "page or its API. To close it, add a CHAT_PASSWORD secret (Kaggle: Add-ons > Secrets; Colab: "
                    "the key icon) and run this cell again.")


def build_chat_app(model, tokenizer, template: str, max_new_tokens: int, temperature: float, top_p: float,
                   can_switch: bool = True, max_seq_length: int = 2048, stream=stream_reply):
    """A gr.ChatInterface whose reply streams, labelled with the model that wrote it, with the model choice
    (fine-tuned, base, or both one after the other) and the sampling settings (defaults from the parameters cell)
    under "Additional inputs". "max new tokens" goes up to max_seq_length and is cut, with a note, to what the
    prompt leaves. Questions show as typed; the box stays open while a reply streams (FOLD_SCRIPT keeps a question
    typed then until the reply ends). Its API endpoint is /chat. Launch it with js=FOLD_SCRIPT and chat_access's
    arguments. `stream`: the function that streams a reply (stream_reply; tests plant replies with it)."""
    import gradio as gr

    lock = threading.Lock()  # one generation at a time: the adapter switch is the model's own state

    class Chat(gr.ChatInterface):
        def _append_message_to_history(self, message, history, role="user"):
            if role == "user" and isinstance(message, str):
                message = as_typed(message)
            return super()._append_message_to_history(message, history, role)

        def _clear_and_save_textbox(self, message):  # the box stays open: a question typed meanwhile is kept
            return type(self.textbox)("", interactive=True, placeholder=""), message

    def refusal(message) -> str:
        return question_refusal(tokenizer, message, template, max_seq_length)

    def check(message):  # in the page, before anything is sent: the box keeps the text and shows why
        said = refusal(message)
        return gr.validate(not said, said)

    def thinking_length(text: str) -> int:
        return len(tokenizer.encode(split_thinking(text)[0], add_special_tokens=False))

    def reply(message, history, which, temperature, top_p, max_new_tokens):
        said = refusal(message)
        if said:  # the API (/chat) bypasses the page's check: the same refusal, and nothing generated
            yield f"*{said}*"
            return
        room = max_seq_length - len(encode_prompt(tokenizer, message, template))
        limit = min(int(max_new_tokens), room)
        cut = (f"*\"max new tokens\" cut from {int(max_new_tokens)} to {limit}: the question and the reply must fit "
               f"{max_seq_length:,} tokens.*\n\n") if limit < int(max_new_tokens) else ""
        advice = "A shorter question leaves the reply more room." if cut else ""
        done = []
        with lock:
            for name in (("fine-tuned", "base") if which == "both" else (which,)):
                outcome, start, counted = {}, time.monotonic(), None
                for text in stream(model, tokenizer, message, template, limit, temperature, top_p,
                                   use_adapter=name == "fine-tuned", outcome=outcome):
                    if "</think>" in text and counted is None:
                        counted = thinking_length(text)
                    progress = (f"{plural(outcome.get('tokens_so_far', 0), 'token')} so far, "
                                f"{time.monotonic() - start:.0f} s")
                    yield cut + side_by_side(done + [format_reply(text, LABELS[name], thinking_tokens=counted,
                                                                  progress=progress)])
                stopped_at = limit if outcome.get("stopped_at_limit") else 0
                done.append(format_reply(text, LABELS[name], stopped_at, final=True, advice=advice,
                                         thinking_tokens=thinking_length(text) if "</think>" in text else None))
                yield cut + side_by_side(done)

    choices = list(MODELS) if can_switch else [MODELS[0]]
    app = Chat(
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
    keep_typed_question(app)
    with app:  # the Stop button leaves the reply as far as it got: say so under it
        app.textbox.stop(note_stopped, [app.chatbot], [app.chatbot], queue=False)
    return app


def keep_typed_question(app) -> int:
    """Gradio's ChatInterface empties the box when a reply ends, which would drop a question typed while it
    streamed: that step now only reopens the box (its emptying, when the question is sent, stays)."""
    import inspect

    from gradio import update

    kept = 0
    for block_fn in app.fns.values():
        if block_fn.fn is None or block_fn.inputs or [o._id for o in block_fn.outputs] != [app.textbox._id] or \
                inspect.iscoroutinefunction(block_fn.fn):
            continue
        try:
            made = block_fn.fn() if getattr(block_fn.fn, "__name__", "") == "<lambda>" else None
        except TypeError:
            continue
        if isinstance(made, dict) and made.get("value", "") is None and made.get("interactive") is True:
            block_fn.fn = lambda: update(interactive=True)
            kept += 1
    return kept
