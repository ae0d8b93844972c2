"""06's chat as people share it, in Chromium: the CHAT_PASSWORD protecting the page and its API, questions shown as
typed, code in the thinking as written, the thinking counted in tokens (Chinese too) and split at the last
</think>, a question typed while a reply streams answered after it, the fold closed again after Clear, progress
while folded, and a question too long for a useful reply refused with the room it leaves. The replies are planted
(a stand-in for stream_reply that writes given text slowly), so that what the page must show is known.
Screenshots go to runs/browser/."""
import json
import time
import urllib.error
import urllib.request

import pytest

from medical_r1 import chat
from src_helpers import encode_prompt
from test_browser import SHOTS, ask, bot_messages, browser, free_port  # noqa: F401 (the fixture; skips sans Chromium)

CODE_THINKING = "Hypokalaemia if `K+ < 3.5` mmol/L:\n```\nif potassium < 3.5 and <b>:\n    replace()\n```\nSo: low."
CHINESE_THINKING = "患者空腹血糖升高，多次测量均高于七毫摩尔每升，应考虑糖尿病。"
PLANTED = {  # question -> the model's reply
    "Code?": f"{CODE_THINKING}\n</think>\n\nReplace potassium.",
    "患者空腹血糖升高，应考虑什么？": f"{CHINESE_THINKING}\n</think>\n\n糖尿病。",
    "Twice?": "First thought.</think>Second thought.</think>\n\nThe answer after the last.",
}
PIECE_S = 0.05  # a planted piece every 50 ms: a reply streams for a few seconds
MAX_SEQ_LENGTH = 512


def planted_stream(model, tokenizer, question, template, max_new_tokens, temperature, top_p, use_adapter=True,
                   outcome=None):
    """stream_reply's stand-in: the planted reply (or a long default one) a few characters at a time."""
    reply = PLANTED.get(question, f"Thinking about {question[:20]} " + "step " * 30 + "</think>\n\nAnswered: "
                        + question[:20])
    text = ""
    for start in range(0, len(reply), 4):
        time.sleep(PIECE_S)
        text += reply[start:start + 4]
        if outcome is not None:
            outcome["tokens_so_far"] = outcome.get("tokens_so_far", 0) + 1
        yield text
    if outcome is not None:
        outcome.update(new_tokens=outcome.get("tokens_so_far", 0), stopped_at_limit=False)


@pytest.fixture(scope="module")
def tok():
    from medical_r1 import models

    return models.load_tokenizer(str(models.TOKENIZER_FIXTURE))


def launch(tok, environ=None, show_api=False):
    app = chat.build_chat_app(None, tok, "r1_chat", 200, 0.0, 0.95, can_switch=False,
                              max_seq_length=MAX_SEQ_LENGTH, stream=planted_stream)
    access, note = chat.chat_access(True, show_api, environ or {})
    port = free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, share=False, quiet=True,
               js=chat.FOLD_SCRIPT, **access)
    return app, f"http://127.0.0.1:{port}/", note


@pytest.fixture(scope="module")
def open_chat(tok):
    app, url, note = launch(tok)
    yield url
    app.close()


def wait_for(condition, timeout_s: float = 30, what: str = ""):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout_s} s: {what}")


def user_messages(page):
    return page.locator("[data-testid='user']")


def answered(page, count: int, timeout_s: float = 30) -> None:
    """Waits until `count` replies have ended (the stop button gone, each reply past its thinking)."""
    wait_for(lambda: bot_messages(page).count() >= count and
             all("Thought for" in bot_messages(page).nth(i).inner_text() for i in range(count)) and
             page.locator("button.stop-button").count() == 0, timeout_s, f"{count} replies")


def test_the_password_protects_the_page_and_the_api_and_an_open_link_says_so(browser, tok):  # noqa: F811
    access, note = chat.chat_access(True, False, {})
    assert "open" in note and "CHAT_PASSWORD" in note and "auth" not in access
    assert chat.chat_access(False, False, {})[1] == ""  # a local link: nothing to say
    app, url, note = launch(tok, {"CHAT_PASSWORD": "correct horse"})
    try:
        assert "asks for a password" in note and "correct horse" not in note
        for path in ("gradio_api/info", "config"):  # the API without the password: refused
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(url + path, timeout=10)
            assert refused.value.code in (401, 403), (path, refused.value.code)
        request = urllib.request.Request(url + "gradio_api/call/chat", data=json.dumps({"data": ["Hi?"]}).encode(),
                                         headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code in (401, 403)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(url)
        password = page.locator("input[type='password']")
        password.wait_for(timeout=30_000)
        assert page.locator("textarea").count() == 0  # no chat before the password
        page.locator("input").first.fill("anyone")
        password.fill("wrong")
        password.press("Enter")
        time.sleep(1.5)
        assert page.locator("textarea").count() == 0
        page.screenshot(path=str(SHOTS / "chat-password-1280.png"), full_page=True)
        page.locator("input").first.fill("anyone")
        password.fill("correct horse")
        password.press("Enter")
        page.locator("textarea").first.wait_for(timeout=30_000)
        ask(page, "Twice?")
        answered(page, 1)
        assert "Use via API" not in page.locator("body").inner_text()  # the API page is not offered
        page.close()
    finally:
        app.close()
    from gradio_client import Client

    app, url, _ = launch(tok, {"CHAT_PASSWORD": "correct horse"}, show_api=True)
    try:  # the API with the password answers
        reply = Client(url, auth=("anyone", "correct horse"), verbose=False).predict("Twice?", "fine-tuned", 0.0, 0.95,
                                                                                     200, api_name="/chat")
        assert reply.endswith("The answer after the last.")
    finally:
        app.close()


def test_questions_show_as_typed_and_the_thinking_as_written_and_counted(browser, open_chat, tok):  # noqa: F811
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(open_chat)
    typed = ["What does the <b> tag do in <script> blocks? **Not bold** 1. _x_ [link](http://e.org)",
             "<script>alert(1)</script>", "Code?", "患者空腹血糖升高，应考虑什么？", "Twice?"]
    for i, question in enumerate(typed):
        ask(page, question)
        answered(page, i + 1)
        assert user_messages(page).nth(i).inner_text().strip() == question  # as typed
    replies = [bot_messages(page).nth(i) for i in range(len(typed))]
    replies[2].locator("summary").click()
    shown = replies[2].locator("details").inner_text()
    assert "K+ < 3.5" in shown and "potassium < 3.5 and <b>:" in shown and "&lt;" not in shown, shown
    assert replies[2].inner_text().strip().endswith("Replace potassium.")
    thought = len(tok.encode(CHINESE_THINKING, add_special_tokens=False))
    assert thought > 1 and replies[3].locator("summary").inner_text() == f"Thought for {thought} tokens"
    last = replies[4].inner_text()  # split at the last </think>, as 04's scorer reads it
    assert last.strip().endswith("The answer after the last.") and "</think>" not in last
    assert "Second thought" not in last  # folded, with the thinking
    page.screenshot(path=str(SHOTS / "chat-as-typed-1280.png"), full_page=True)
    page.close()


def test_a_question_typed_while_a_reply_streams_is_answered_after_it(browser, open_chat):  # noqa: F811
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(open_chat)
    ask(page, "First question?")
    wait_for(lambda: user_messages(page).count() == 1, 10, "the first question shown")
    ask(page, "Second question?")  # typed at once, as the first reply starts
    page.locator(".queued-note").wait_for(timeout=5_000)
    answered(page, 2, timeout_s=60)
    assert [m.strip() for m in user_messages(page).all_inner_texts()] == ["First question?", "Second question?"]
    replies = bot_messages(page).all_inner_texts()
    assert replies[0].strip().endswith("Answered: First question?") and \
        replies[1].strip().endswith("Answered: Second question?")
    assert page.locator(".queued-note").count() == 0
    page.screenshot(path=str(SHOTS / "chat-two-questions-1280.png"), full_page=True)
    page.close()


def test_folds_progress_while_closed_and_a_fold_opened_before_clear_does_not_open_the_next(browser,  # noqa: F811
                                                                                            open_chat):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(open_chat)
    ask(page, "Progress?")
    summary = bot_messages(page).last.locator("summary")
    summary.wait_for(timeout=10_000)
    seen = set()
    while page.locator("button.stop-button").count() and "Thought for" not in summary.inner_text():
        seen.add(summary.inner_text())
        time.sleep(0.2)
    progress = [s for s in seen if s.startswith("Thinking…") and " so far, " in s and s.endswith(" s")]
    assert len(progress) >= 3, seen  # tokens so far and the time, changing while the fold is closed
    answered(page, 1)
    summary.click()
    assert bot_messages(page).last.locator("details").evaluate("d => d.open")
    page.locator("button[aria-label='Clear']").first.click()
    wait_for(lambda: bot_messages(page).count() == 0, 10, "the chat cleared")
    ask(page, "After clear?")
    bot_messages(page).last.locator("details").wait_for(timeout=10_000)
    time.sleep(1.0)
    assert not bot_messages(page).last.locator("details").evaluate("d => d.open"), "the new fold opened by itself"
    answered(page, 1)
    assert not bot_messages(page).last.locator("details").evaluate("d => d.open")
    page.screenshot(path=str(SHOTS / "chat-after-clear-1280.png"), full_page=True)
    page.close()


def test_a_question_that_leaves_no_room_for_a_useful_reply_is_refused_with_the_room_left(
        browser, open_chat, tok):  # noqa: F811
    words = next(n for n in range(1, 2000) if MAX_SEQ_LENGTH - len(encode_prompt(tok, "fever " * n, "r1_chat"))
                 < chat.MIN_REPLY_TOKENS // 2)
    question = "fever " * words
    room = MAX_SEQ_LENGTH - len(encode_prompt(tok, question, "r1_chat"))
    assert 0 < room < chat.MIN_REPLY_TOKENS
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(open_chat)
    ask(page, question)
    page.get_by_text(f"leaves room for only {room} tokens of reply").first.wait_for(timeout=10_000)
    said = page.locator("body").inner_text()
    assert f"the model's limit of {MAX_SEQ_LENGTH} tokens" in said and f"at least {chat.MIN_REPLY_TOKENS}" in said
    time.sleep(1.0)
    assert user_messages(page).count() == 0 and bot_messages(page).count() == 0  # nothing sent
    page.screenshot(path=str(SHOTS / "chat-near-limit-1280.png"), full_page=True)
    page.close()
    over = chat.question_refusal(tok, "fever " * (words * 2), "r1_chat", MAX_SEQ_LENGTH)
    assert f"more than the model's limit of {MAX_SEQ_LENGTH} tokens" in over
