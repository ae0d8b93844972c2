"""06's chat, headless: the Gradio app on the tiny model with a saved adapter, called through Gradio's own Python
client; the reply streams in, the thinking is folded apart from the answer at </think>, Chinese works, and
the base-model switch turns the adapter off."""
import html
import re
import socket

import pytest

from medical_r1 import chat

gradio = pytest.importorskip("gradio")


def test_the_reply_is_split_at_think_into_a_fold_and_the_answer():
    done = chat.format_reply("Kidney, because of casts.\n</think>\n\nAcute pyelonephritis.")
    assert done.startswith("<details><summary>Thought for 4 words</summary>") and "casts." in done
    assert done.endswith("</details>\n\nAcute pyelonephritis.")
    still = chat.format_reply("Weighing cystitis against <b>")
    assert still.startswith("<details><summary>Thinking…</summary>") and "&lt;b&gt;" in still
    assert "</details>\n\n" not in still.rstrip("</details>")


def test_share_is_public_only_on_colab_and_kaggle_unless_forced():
    assert chat.share_link("auto", "colab") and chat.share_link("auto", "kaggle")
    assert not chat.share_link("auto", "local")
    assert chat.share_link(True, "local") and not chat.share_link(False, "colab")
    with pytest.raises(ValueError, match="SHARE"):
        chat.share_link("yes", "local")


def test_the_base_switch_turns_the_adapter_off(adapter_model):
    model, tok = adapter_model
    tuned = list(chat.stream_reply(model, tok, "Chest pain?", "r1_chat", 6, 0.0, 1.0, use_adapter=True))[-1]
    base = list(chat.stream_reply(model, tok, "Chest pain?", "r1_chat", 6, 0.0, 1.0, use_adapter=False))[-1]
    assert tuned != base


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_app_answers_through_gradios_client_in_english_and_chinese(adapter_model, monkeypatch):
    from gradio_client import Client

    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    model, tok = adapter_model
    app = chat.build_chat_app(model, tok, "r1_chat", 12, 0.6, 0.95)
    port = free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, share=False, quiet=True)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        for question in ("A 3-year-old has fever and a rash. What is the diagnosis?", "患者空腹血糖升高，应考虑什么？"):
            for which in chat.MODELS:
                reply = client.predict(question, which, 0.0, 0.95, 12, api_name="/chat")  # greedy: no early end
                labels = [chat.LABELS[name] for name in (("fine-tuned", "base") if which == "both" else (which,))]
                assert isinstance(reply, str) and f"**{labels[0]}**" in reply[:200], reply
                assert ("class='both-models'" in reply) == (which == "both")  # two columns, or one above the other
                assert reply.count("<details><summary>Thinking") == len(labels) and all(f"**{x}**" in reply for x in labels)
                assert "Stopped at the token limit (12 new tokens) while still thinking" in reply
                job = client.submit(question, which, 0.0, 1.0, 12, api_name="/chat")
                job.result()
                assert len(job.outputs()) > 1  # streamed: more than one partial reply arrived
    finally:
        app.close()


@pytest.mark.parametrize("text, stopped_at, note", [
    ("Weighing cystitis against", 90, "Stopped at the token limit (90 new tokens) while still thinking"),
    ("Weighing cystitis against", 0, "The model stopped while still thinking, without an answer."),
    ("Casts mean kidney.</think>", 0, "The model closed its thinking without writing an answer."),
    ("Casts mean kidney.</think>\n\nAcute pyelo", 90, "the answer may be cut short"),
    ("Casts mean kidney.</think>\n\nAcute pyelonephritis.", 0, None),
])
def test_a_reply_that_gives_no_answer_or_runs_out_says_so_once_it_ends(text, stopped_at, note):
    streaming = chat.format_reply(text, "Base model (adapter off)", stopped_at)
    final = chat.format_reply(text, "Base model (adapter off)", stopped_at, final=True)
    assert streaming.startswith("**Base model (adapter off)**") and "*" not in streaming.split("</details>")[-1]
    assert (note in final) if note else final == streaming


@pytest.mark.parametrize("message, said", [
    ("", "an empty message is not sent"), ("   \n ", "an empty message is not sent"),
    ({"text": "", "files": []}, "an empty message is not sent"),
    ("fever " * 3400, r"The question alone is [\d,]+ tokens, more than the model's limit of 2,048 tokens"),
    ("fever " * 2000, r"The question is [\d,]+ tokens, which leaves room for only \d+ tokens? of reply within the "
                      r"model's limit of 2,048 tokens .*; a reply needs at least 128"),
    ("What causes a fever?", None),
])
def test_a_question_that_cannot_be_answered_is_refused_with_why(tokenizer, message, said):
    refusal = chat.question_refusal(tokenizer, message, "r1_chat", 2048)
    assert (re.search(said, refusal) is not None) if said else refusal == ""


def test_one_new_token_is_singular():
    assert "(1 new token)" in chat.format_reply("thinking", stopped_at=1, final=True)
    assert "(24 new tokens)" in chat.format_reply("thinking", stopped_at=24, final=True)


def test_a_stopped_reply_says_so_once():
    history = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "**Fine-tuned model** ..."}]
    once = chat.note_stopped(history)
    assert once[-1]["content"].endswith(chat.STOPPED_NOTE) and chat.note_stopped(once) == once
    assert history[-1]["content"] == "**Fine-tuned model** ..."  # the messages given are not changed in place
    listed = [{"role": "assistant", "content": [{"type": "text", "text": "part"}]}]
    assert chat.note_stopped(listed)[-1]["content"][-1]["text"].endswith(chat.STOPPED_NOTE)
    assert chat.note_stopped([{"role": "user", "content": "Q"}]) == [{"role": "user", "content": "Q"}]


def test_stopping_a_reply_ends_its_generation(adapter_model):
    """Gradio closes the reply's generator when Stop is pressed; the generation thread must end with it, or it
    would keep the model busy (and the adapter switched) under the next question."""
    import threading

    model, tok = adapter_model
    before = threading.active_count()
    replies = chat.stream_reply(model, tok, "What causes a fever?", "r1_chat", 2000, 0.0, 0.95)
    next(replies)
    next(replies)
    replies.close()
    assert threading.active_count() == before


def test_the_thinking_is_counted_in_tokens_split_at_the_last_think_and_shown_as_written():
    reply = chat.format_reply("Weigh `K+ < 3.5` and <b>.</think>Aside.</think>\n\nHypokalaemia.", thinking_tokens=1)
    assert "<summary>Thought for 1 token</summary>" in reply and reply.endswith("</details>\n\nHypokalaemia.")
    assert "`K+ < 3.5`" in reply and "&lt;b&gt;" in reply  # code as written, HTML outside it escaped
    chinese = "患者空腹血糖升高，多次测量均高于七毫摩尔每升，应考虑糖尿病。" * 2
    assert f"Thought for {len(chinese)} characters" in chat.format_reply(chinese + "</think>糖尿病。")
    still = chat.format_reply("```\nif k < 3.5:", progress="12 tokens so far, 3 s")
    assert "<summary>Thinking… 12 tokens so far, 3 s</summary>" in still
    assert still.count("```") == 2 and still.index("```", still.index("```") + 1) < still.index("</details>")
    cut = chat.format_reply("long", stopped_at=5, final=True, advice="A shorter question leaves the reply more room.")
    assert "max new tokens" not in cut and "shorter question" in cut


def test_a_question_shows_as_typed_not_as_html_or_markdown():
    shown = chat.as_typed("What does the <b> tag do in <script>? **x** [a](http://e.org)")
    assert not re.search(r"[<>*\[\]()]", shown) and "&#60;b&#62;" in shown and html.unescape(shown).startswith("What")
    assert html.unescape(shown) == "What does the <b> tag do in <script>? **x** [a](http://e.org)"


def test_the_chat_password_and_the_api_page(adapter_model):
    access, note = chat.chat_access(True, False, {"CHAT_PASSWORD": "pw"})
    assert access["auth"]("anyone", "pw") and not access["auth"]("anyone", "px") and "pw" not in note
    assert access["footer_links"] == ["gradio", "settings"]  # no "Use via API" unless asked
    assert "api" in chat.chat_access(False, True, {})[0]["footer_links"]
    open_link = chat.chat_access(True, False, {})
    assert "auth" not in open_link[0] and "open" in open_link[1] and "CHAT_PASSWORD" in open_link[1]
    model, tok = adapter_model
    app = chat.build_chat_app(model, tok, "r1_chat", 12, 0.6, 0.95)
    assert chat.keep_typed_question(app) == 0  # build_chat_app already changed Gradio's one step that empties the box
