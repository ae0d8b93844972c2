"""The pages people share, in Chromium at 1,280 and 420 px: the shipped sweep grids' pages (long setting names),
a comparison page whose answers hold a 600-character unbroken string and Chinese, and a verdict page on too few
items. Nothing sits outside the window, nothing scrolls sideways, the thinking is folded, Chinese is drawn with a
CJK font. Screenshots go to runs/browser/. Needs what tests/test_browser.py needs, and a CJK font
(fonts-noto-cjk, which .ci/run installs)."""
import os
import pathlib
import random
import subprocess

import pytest

from medical_r1 import REPO_ROOT, benchmarks, generation, sweep, verdict_pages
from test_browser import SHOTS, WIDTHS, browser  # noqa: F401 (the fixture, and the module's skip without Chromium)

GRIDS = sorted((REPO_ROOT / "recipes" / "sweeps").glob("*.json"))
UNBROKEN = "https://example.org/" + "x" * 580  # 600 characters without a space: a URL, LaTeX, a drug list
CHINESE_THINKING = "患者空腹血糖升高，多次测量均高于七毫摩尔每升，应考虑糖尿病。" * 3

# Every cell's box inside the window; the page and every table box no wider than their windows.
LAYOUT = """() => ({
  page: document.documentElement.scrollWidth,
  boxes: [...document.querySelectorAll('.scroll')].filter(b => b.scrollWidth > b.clientWidth + 1).length,
  outside: [...document.querySelectorAll('td, th')].map(c => c.getBoundingClientRect())
    .filter(r => r.width > 0 && (r.left < -1 || r.right > window.innerWidth + 1)).length,
})"""


def assert_fits(page, width: int, name: str) -> None:
    layout = page.evaluate(LAYOUT)
    assert layout["page"] <= width + 1, (name, width, layout)  # no sideways scroll
    assert layout["boxes"] == 0 and layout["outside"] == 0, (name, width, layout)  # no cell outside the window


def made_up_row(setting: dict, rng: random.Random) -> dict:
    base, tuned = rng.uniform(0.3, 0.6), rng.uniform(0.3, 0.6)
    steps = setting["parameters"].get("MAX_STEPS", setting["parameters"].get("GRPO_MAX_STEPS", 60)) // 20 or 3
    return {"name": setting["name"], "parameters": setting["parameters"], "error": None, "items": 10,
            "tuned_model": "SFT + GRPO" if setting["grpo"] else "SFT", "base_accuracy": base,
            "base_interval": [base - 0.2, base + 0.2], "tuned_accuracy": tuned, "tuned_interval": [tuned - 0.2,
                                                                                                  tuned + 0.2],
            "difference": tuned - base, "difference_interval": [tuned - base - 0.3, tuned - base + 0.3],
            "verdict": "no detectable change", "p_value": rng.uniform(0.05, 1), "base_unfinished": 1,
            "tuned_unfinished": 2, "base_unreadable": 0, "tuned_unreadable": 1, "base_val_loss": 1.9,
            "tuned_val_loss": None if setting["grpo"] else 1.7, "train_runtime_s": 1800.0, "train_tokens": 447140,
            "steps": steps, "wandb": None}


@pytest.mark.parametrize("grid_path", GRIDS, ids=[p.stem for p in GRIDS])
def test_the_shipped_grids_sweep_pages_fit_the_window_and_say_what_ran(browser, tmp_path, grid_path):  # noqa: F811
    grid = sweep.load_grid(grid_path)
    rng = random.Random(0)
    rows = [made_up_row(s, rng) for s in grid["settings"]]
    rows.append(sweep.error_row("broken", {**grid["settings"][-1]["parameters"], "LORA_R": 64},
                                RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB " + "x" * 200)))
    page_path = sweep.write_page(tmp_path, grid, rows)
    steps = {r["steps"] for r in rows if not r["error"]}
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    for width in WIDTHS:
        page.set_viewport_size({"width": width, "height": 900})
        page.goto(page_path.as_uri())
        assert_fits(page, width, grid["name"])
        shown = {int(t.replace(",", "")) for t in page.locator("td[data-label='steps']").all_inner_texts() if t != "-"}
        assert shown == steps  # the steps column holds each row's steps
        said = page.locator("strong.measured").inner_text()
        assert f"{min(steps)}" in said and "trained for" in said, said  # the run's steps, not only the grid's words
        text = page.locator("table").inner_text()
        assert "0.0002" not in text and "e-05" not in text  # one number format: lr 2e-4, lr 2e-5
        # The plot's tick labels, as drawn: its font size in pixels times the shrink the page applies.
        natural, drawn = page.locator("img").evaluate("i => [i.naturalWidth, i.getBoundingClientRect().width]")
        assert natural > 0 and sweep.PLOT_FONT_PT * 100 / 72 * drawn / natural >= 9, (natural, drawn)
        page.screenshot(path=str(SHOTS / f"sweep-{grid['name']}-{width}.png"), full_page=True)
    page.close()
    if "LEARNING_RATE" in str(grid):
        assert "lr 2e-4" in page_path.read_text() or "lr 2e-5" in page_path.read_text()


def test_settings_are_named_alike_on_the_plot_and_in_the_table():
    assert [sweep.number(v) for v in (0.0002, 2e-05, 5e-06, 1.5e-4, 0.05, 300)] == \
        ["2e-4", "2e-5", "5e-6", "1.5e-4", "0.05", "300"]
    assert sweep.short_setting({"LEARNING_RATE": 2e-05, "MAX_STEPS": 300}) == "lr 2e-5, steps 300"
    assert sweep.short_setting({"GRPO_MAX_STEPS": 50}, grpo=True) == "GRPO steps 50 (SFT + GRPO)"
    said = sweep.steps_ran([{"error": None, "steps": 3}], "Learning rate x LoRA rank, 60 steps each")
    assert said == "In this run every setting trained for 3 steps, not the steps the grid's description names."


def cjk_font_installed() -> bool:
    try:
        fonts = subprocess.run(["fc-list", ":lang=zh"], capture_output=True, text=True).stdout
    except FileNotFoundError:  # no fontconfig: no font at all
        return False
    return "CJK" in fonts or "Noto Sans SC" in fonts


def comparison_page(tmp_path) -> pathlib.Path:
    thinking = "Fever and a rash in a child: measles, rubella, roseola, scarlet fever. " * 25
    answers = [{"question": "A 3-year-old has fever and a rash. What is the diagnosis? " + UNBROKEN,
                "base": f"<think>\n{thinking} {UNBROKEN}\n</think>\n\nMeasles. See {UNBROKEN}",
                "tuned": f"{thinking}\n</think>\n\nMeasles (rubeola): {UNBROKEN}"},
               {"question": "患者空腹血糖升高，应考虑什么？", "base": f"{CHINESE_THINKING}</think>\n\n糖尿病。",
                "tuned": CHINESE_THINKING * 2}]  # never closed its thinking: no answer
    answers += [{"question": f"Question {i}?", "base": f"{thinking}</think>Answer {i}.",
                 "tuned": f"{thinking}</think>Aside.</think>Answer {i}."} for i in range(3)]
    path = tmp_path / "comparison.html"
    path.write_text(generation.comparison_html(answers, {"base_val_loss": 1.2, "tuned_val_loss": 1.1}), "utf-8")
    return path


def test_the_comparison_page_folds_the_thinking_wraps_long_strings_and_draws_chinese(browser, tmp_path):  # noqa: F811
    if not cjk_font_installed():
        message = "no CJK font: apt-get install fonts-noto-cjk (Chinese would draw as boxes)"
        if os.environ.get("MEDICAL_R1_BROWSER") == "required":
            pytest.fail(f"MEDICAL_R1_BROWSER=required but {message}")
        pytest.skip(message)
    path = comparison_page(tmp_path)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    for width in WIDTHS:
        page.set_viewport_size({"width": width, "height": 900})
        page.goto(path.as_uri())
        assert_fits(page, width, "comparison")
        folds = page.locator("details.thinking")
        assert folds.count() == 10 and not any(folds.nth(i).evaluate("d => d.open") for i in range(10))
        text = page.locator("body").inner_text()
        assert "<think>" not in text and "</think>" not in text  # no raw tags; the thinking is folded away
        assert "Thinking" not in text and "fever. Fever" not in text
        summaries = folds.locator("summary").all_inner_texts()
        assert summaries[2] == f"Thought for {len(CHINESE_THINKING)} characters"  # Chinese: characters, not 1 word
        assert summaries[3].startswith("Still thinking at the token limit") and summaries[0].endswith(" words")
        assert page.locator("td[data-label='Fine-tuned'] .answer").last.inner_text() == "Answer 2."  # after the last
        height = page.evaluate("document.documentElement.scrollHeight")
        assert height < (2600 if width >= 1280 else 6000), height  # five questions, folded
        page.screenshot(path=str(SHOTS / f"comparison-long-{width}.png"), full_page=True)
        if width == 1280:  # opened, a fold still fits its column
            folds.first.locator("summary").click()
            assert folds.first.evaluate("d => d.open")
            assert_fits(page, width, "comparison, a fold open")
    # The Chinese question is drawn with a CJK font, found through the page's font stack.
    cdp = page.context.new_cdp_session(page)
    cdp.send("DOM.enable")
    cdp.send("CSS.enable")
    root = cdp.send("DOM.getDocument")["root"]["nodeId"]
    cell = cdp.send("DOM.querySelector", {"nodeId": root, "selector": "tr:nth-of-type(3) td[data-label='Question']"})
    fonts = [f["familyName"] for f in cdp.send("CSS.getPlatformFontsForNode", {"nodeId": cell["nodeId"]})["fonts"]]
    assert any("CJK" in f or " SC" in f for f in fonts), fonts
    page.close()


def test_the_verdict_page_says_when_too_few_items_detect_any_change(browser, tmp_path):  # noqa: F811
    rng = random.Random(1)
    base, tuned = [], []
    for name in benchmarks.EVAL_BENCHMARKS:
        for i in range(3):  # 3 items: the anytime-valid interval spans every difference
            for scored in (base, tuned):
                ok = rng.random() < 0.5
                scored.append({"id": f"{name}/{i}", "benchmark": name, "gold": "A", "pred": "A" if ok else "B",
                               "rule": "answer_is", "correct": ok})
    rows = benchmarks.verdict_rows(base, tuned)
    assert any(max(-r["difference_interval"][0], r["difference_interval"][1]) >= 1 for r in rows)
    path = tmp_path / "verdict.html"
    path.write_text(verdict_pages.verdict_html(rows), "utf-8")
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    for width in WIDTHS:
        page.set_viewport_size({"width": width, "height": 900})
        page.goto(path.as_uri())
        assert_fits(page, width, "verdict")
        cells = page.locator("td[data-label='largest change left open']").all_inner_texts()
        assert cells and all(c == "too few items to detect any change" or
                             (c.endswith(" points") and int(c.split()[0]) <= 100) for c in cells), cells
        assert "too few items to detect any change" in cells
        page.screenshot(path=str(SHOTS / f"verdict-few-items-{width}.png"), full_page=True)
    page.close()
