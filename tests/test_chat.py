"""06's chat, headless: the Gradio app on the tiny model with a saved adapter, called through Gradio's own Python
client; the reply streams in, the thinking is folded apart from the answer at </think>, Chinese works, and
the base-model switch turns the adapter off."""
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
    ("fever " * 3400, r"The question alone is [\d,]+ tokens, longer than the model's limit of 2,048 tokens"),
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
