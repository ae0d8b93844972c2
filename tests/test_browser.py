"""What people see, in a real browser: 06's chat on the tiny model, and 04's and the sweep's pages, in Chromium
(Debian's package) driven by Playwright, at 1280 and 420 px wide. Screenshots go to runs/browser/.
Needs /usr/bin/chromium and the playwright package; .ci/run installs both (MEDICAL_R1_BROWSER=required makes
their absence a failure rather than a skip)."""
import os
import pathlib
import re
import shutil
import socket
import time

import pytest

from medical_r1 import REPO_ROOT, benchmarks, chat, generation, sweep, verdict_pages

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = REPO_ROOT / "runs" / "browser"
if not pathlib.Path(CHROMIUM).exists() or not shutil.which("chromium"):
    if os.environ.get("MEDICAL_R1_BROWSER") == "required":
        raise RuntimeError("MEDICAL_R1_BROWSER=required but Chromium is not installed (apt-get install chromium)")
    pytest.skip("Chromium is not installed (apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api")
WIDTHS = (1280, 420)
ENGLISH = "A 3-year-old has fever and a rash. What is the diagnosis?"
CHINESE = "患者空腹血糖升高，应考虑什么？"
NEW_TOKENS = 90


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        yield chromium
        chromium.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def chat_url(adapter_model):
    """06's app on the tiny model, each token slowed to 30 ms so that a reply streams for a few seconds."""
    model, tok = adapter_model
    slow = model.get_base_model().register_forward_pre_hook(lambda module, args: time.sleep(0.03))
    app = chat.build_chat_app(model, tok, "r1_chat", NEW_TOKENS, 0.0, 0.95, max_seq_length=2048)  # greedy: never an early end
    port = free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, share=False, quiet=True,
               js=chat.FOLD_SCRIPT)
    yield f"http://127.0.0.1:{port}/"
    app.close()
    slow.remove()


def bot_messages(page):
    return page.locator("[data-testid='bot']")


def ask(page, question: str) -> None:
    box = page.locator("textarea").first
    box.fill(question)
    box.press("Enter")


def fold_of_last_reply(page):
    return bot_messages(page).last.locator("details").first


def wait_for_note(page, count: int, timeout_s: float = 60) -> str:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        text = bot_messages(page).last.inner_text() if bot_messages(page).count() else ""
        if text.count("Stopped at the token limit") >= count:
            return text
        time.sleep(0.2)
    raise AssertionError(f"no token-limit note after {timeout_s} s: {text[-500:]!r}")


def test_the_chat_streams_keeps_an_opened_fold_open_labels_replies_and_says_when_it_ran_out(browser, chat_url):
    SHOTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(chat_url)
    ask(page, ENGLISH)
    fold_of_last_reply(page).wait_for(timeout=30_000)
    first = bot_messages(page).last.inner_text()
    fold_of_last_reply(page).locator("summary").click()
    time.sleep(1.0)
    assert fold_of_last_reply(page).evaluate("d => d.open"), "the fold closed again while the reply streamed"
    assert bot_messages(page).last.inner_text() != first, "the reply did not stream"
    text = wait_for_note(page, 1)
    assert text.startswith("Fine-tuned model") and "while still thinking" in text and "max new tokens" in text
    assert fold_of_last_reply(page).evaluate("d => d.open")  # the reader opened it: it stays open
    page.screenshot(path=str(SHOTS / "chat-1280.png"), full_page=True)

    page.locator("button", has_text="Additional inputs").first.click()
    page.get_by_label("model", exact=True).click()
    page.get_by_role("option", name="both").click()
    ask(page, CHINESE)
    text = wait_for_note(page, 2, timeout_s=90)
    reply = bot_messages(page).last
    assert text.startswith("Fine-tuned model") and "Base model (adapter off)" in text
    folds = reply.locator("details")
    assert folds.count() == 2 and not any(folds.nth(i).evaluate("d => d.open") for i in range(2))  # closed at the end
    # Both models' replies side by side at desktop width, one above the other on a phone.
    columns = "r => [...r.querySelectorAll('.both-models > div')].map(c => c.getBoundingClientRect())" \
              ".map(b => [Math.round(b.left), Math.round(b.top)])"
    (left_a, top_a), (left_b, top_b) = reply.evaluate(columns)
    assert top_a == top_b and left_b > left_a, "not side by side at 1280 px"
    assert page.locator("[data-testid='block-label']").filter(has_text="Chatbot").count() == 0  # no bar over replies
    page.set_viewport_size({"width": 420, "height": 900})
    time.sleep(0.5)
    (left_a, top_a), (left_b, top_b) = reply.evaluate(columns)
    assert left_a == left_b and top_b > top_a, "not stacked at 420 px"
    page.screenshot(path=str(SHOTS / "chat-420.png"), full_page=True)
    page.close()


def test_a_reply_stopped_with_the_stop_button_says_so(browser, chat_url):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(chat_url)
    ask(page, ENGLISH)
    fold_of_last_reply(page).wait_for(timeout=30_000)
    time.sleep(0.5)
    page.locator("button.stop-button, button[aria-label='Stop']").first.click()
    deadline = time.time() + 20
    while time.time() < deadline and chat.STOPPED_NOTE.strip("*") not in bot_messages(page).last.inner_text():
        time.sleep(0.2)
    text = bot_messages(page).last.inner_text()
    assert chat.STOPPED_NOTE.strip("*") in text and "Stopped at the token limit" not in text, text[-300:]
    page.screenshot(path=str(SHOTS / "chat-stopped-1280.png"), full_page=True)
    page.close()


def test_the_chat_refuses_empty_and_over_long_questions_without_answering(browser, chat_url):
    """Enter in an untouched box, the send button, only spaces, and a 20,000-character question: nothing is sent,
    no reply starts, and the page says why (for the long one, in tokens, with the limit)."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(chat_url)
    box = page.locator("textarea").first
    box.wait_for(timeout=30_000)
    attempts = [("", lambda: box.press("Enter")),
                ("", lambda: page.locator("button.submit-button, button[aria-label='Submit']").first.click()),
                ("   ", lambda: box.press("Enter")),
                ("fever " * 3400, lambda: box.press("Enter"))]
    for text, send in attempts:
        box.fill(text)
        send()
        time.sleep(1.5)
        assert page.locator("[data-testid='user']").count() == 0 and bot_messages(page).count() == 0, repr(text[:20])
    page.get_by_text("more than the model's limit of 2,048 tokens").first.wait_for(timeout=10_000)
    said = page.locator("body").inner_text()
    assert "The question alone is" in said and "tokens" in said
    box.fill("")
    box.press("Enter")
    page.get_by_text("an empty message is not sent").first.wait_for(timeout=10_000)
    page.screenshot(path=str(SHOTS / "chat-refusals-1280.png"), full_page=True)
    page.close()


def pages(tmp_path) -> dict:
    """verdict.html, verdict_pairs.html, comparison.html and sweep.html as 04 and the sweep write them, on made-up
    results."""
    import random

    rng = random.Random(0)
    base, tuned = [], []
    for name in benchmarks.EVAL_BENCHMARKS:
        for i in range(30):
            right = rng.random() < 0.5
            for scored, ok in ((base, right), (tuned, right if rng.random() > 0.2 else not right)):
                scored.append({"id": f"{name}/{i}", "benchmark": name, "gold": "A", "pred": "A" if ok else "B",
                               "rule": "answer_is", "correct": ok})
    rows = benchmarks.verdict_rows(base, tuned)
    grpo = [{**s, "correct": True, "pred": "A"} if rng.random() < 0.3 else s for s in tuned]
    pairs = benchmarks.pair_verdicts({"base": base, "tuned": tuned, "grpo": grpo})
    answers = [{"question": ENGLISH, "base": "<think>" + "Fever, rash... " * 30 + "</think> Measles.",
                "tuned": "Considering Koplik spots... " * 20 + "</think> Measles (rubeola)."},
               {"question": CHINESE, "base": "可能是糖尿病。" * 10, "tuned": "空腹血糖升高提示糖尿病。" * 8}]
    setting = {k: v for k, v in rows[-1].items()}
    setting.update(name="learning_rate-0.0002", parameters={"LEARNING_RATE": 2e-4}, error=None,
                   base_right=[s["correct"] for s in base], tuned_right=[s["correct"] for s in tuned],
                   base_unfinished=3, tuned_unfinished=5, base_unreadable=1, tuned_unreadable=0, base_val_loss=1.234,
                   tuned_val_loss=1.101, train_runtime_s=812.0, train_tokens=447140, steps=60)
    failed = sweep.error_row("learning_rate-0.002", {"LEARNING_RATE": 2e-3}, RuntimeError("the training loss became NaN"))
    out = {"verdict": verdict_pages.verdict_html(rows), "verdict_pairs": verdict_pages.pairs_html(pairs), "comparison": generation.comparison_html(answers, {
               "base_val_loss": 1.234, "tuned_val_loss": 1.101}),
           "sweep": sweep.sweep_html({"name": "tutorial_vs_gentle", "description": "Three schedules."}, [setting, failed])}
    paths = {}
    for name, text in out.items():
        paths[name] = tmp_path / f"{name}.html"
        paths[name].write_text(text, encoding="utf-8")
    return paths


@pytest.mark.parametrize("width", WIDTHS)
def test_the_pages_people_share_are_readable_at_desktop_and_phone_width(browser, tmp_path, width):
    SHOTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": width, "height": 900})
    for name, path in pages(tmp_path).items():
        page.goto(path.as_uri())
        # The page itself never runs wider than the window: a wide table scrolls inside its own box.
        assert page.evaluate("document.documentElement.scrollWidth") <= width + 1, name
        font = page.evaluate("getComputedStyle(document.body).fontFamily")
        assert "serif" not in font.replace("sans-serif", ""), (name, font)
        cells = page.locator("td.verdict")
        for i in range(cells.count()):  # a verdict reads as a sentence, not a word per line
            assert cells.nth(i).evaluate("c => c.getBoundingClientRect().width") >= 190, (name, i)
        labels = page.locator("td.label")
        for i in range(labels.count()):  # a pair's name is never broken inside a word
            assert labels.nth(i).evaluate("c => c.getBoundingClientRect().width") >= 140, (name, i)
        # No table is clipped: at 1,280 px every table shows whole; at 420 px each row is a card.
        assert page.evaluate("[...document.querySelectorAll('.scroll')].every(b => b.scrollWidth <= b.clientWidth + 1)"), name
        verdicts = page.evaluate("[...document.querySelectorAll('td.verdict')].map(c => c.getBoundingClientRect())"
                                 ".map(r => [r.left, r.right])")
        assert all(0 <= left and right <= width + 1 for left, right in verdicts), (name, verdicts)  # in the window
        if name == "sweep":  # the heading's figures come from the run, as the table's do
            said = int(re.search(r"the same (\d+) benchmark items", page.locator("strong.measured").inner_text()).group(1))
            items = {int(t) for t in page.locator("td[data-label='items']").all_inner_texts() if t.isdigit()}
            assert items == {said}, (said, items)
        numbers = page.locator("td.num")  # aligned in a desktop's columns; in a phone's cards, after their label
        align = "right" if width >= 1280 else "left"
        assert numbers.count() == 0 or numbers.first.evaluate("c => getComputedStyle(c).textAlign") == align
        page.screenshot(path=str(SHOTS / f"{name}-{width}.png"), full_page=True)
    verdict = pages(tmp_path)["verdict"].read_text()
    assert "points</td>" in verdict and "class='verdict" in verdict
    page.close()
