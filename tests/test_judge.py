"""The optional LLM judge against a fake OpenAI-compatible server on localhost, and the verdict in W&B offline."""
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from medical_r1 import artifacts, judge, params, tracking

KEY = "judge-key-for-tests-only"


@pytest.fixture
def fake_endpoint():
    """Prefers whichever answer says CORRECT; replies garbage to questions containing 'garble'."""
    seen = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's name)
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
            prompt = body["messages"][0]["content"]
            first = prompt.split("Answer 1:")[1].split("Answer 2:")[0]
            content = ("I cannot decide" if "garble" in prompt
                       else json.dumps({"better": 1 if "CORRECT" in first else 2, "reason": "r"}))
            out = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/v1", seen
    server.shutdown()


def pairs(n_tuned_better, n_base_better):
    good, bad = "CORRECT: pulmonary embolism.", "Probably a cold."
    return ([{"question": f"q{i}", "reference": "PE", "tuned": good, "base": bad} for i in range(n_tuned_better)]
            + [{"question": f"p{i}", "reference": "PE", "tuned": bad, "base": good} for i in range(n_base_better)])


def test_blind_judge_counts_wins_whatever_the_order(fake_endpoint):
    url, seen = fake_endpoint
    result = judge.run_judge(pairs(7, 3), "judge-model", url, seed=1, environ={"JUDGE_API_KEY": KEY})
    assert (result["tuned_wins"], result["base_wins"], result["ties"], result["no_verdict"]) == (7, 3, 0, 0)
    orders = {d["tuned_shown_first"] for d in result["decisions"]}
    assert orders == {True, False}  # the order is drawn per question
    assert result["tuned_win_interval"][0] < 0.7 < result["tuned_win_interval"][1]
    for request in seen:
        assert request["path"] == "/v1/chat/completions" and request["auth"] == f"Bearer {KEY}"
        prompt = request["body"]["messages"][0]["content"].lower()
        assert "tuned" not in prompt and "base" not in prompt and "fine-tun" not in prompt  # blind
        assert request["body"]["model"] == "judge-model" and request["body"]["temperature"] == 0
    assert KEY not in json.dumps(result) and KEY not in judge.judge_summary(result)
    assert "tuned 7, base 3" in judge.judge_summary(result)


def test_unreadable_replies_and_failed_requests_are_counted_not_guessed(fake_endpoint):
    url, _ = fake_endpoint
    garbled = [{"question": "garble", "reference": "x", "tuned": "a", "base": "b"}]
    result = judge.run_judge(garbled, "m", url, seed=0, environ={"JUDGE_API_KEY": KEY})
    assert result["no_verdict"] == 1 and result["tuned_win_rate"] is None
    down = judge.run_judge(pairs(1, 0), "m", "http://127.0.0.1:9/v1", seed=0, environ={"JUDGE_API_KEY": KEY})
    assert down["no_verdict"] == 1 and down["decisions"][0]["error"]


def test_judge_is_off_by_default_and_says_why_without_a_key():
    assert "off" in judge.run_judge(pairs(1, 0), "", "https://x/v1", 0, environ={})["skipped"]
    assert "JUDGE_API_KEY" in judge.run_judge(pairs(1, 0), "m", "https://x/v1", 0, environ={})["skipped"]
    with pytest.raises(ValueError, match="judge_base_url"):
        params.Params(judge_model="m", judge_base_url="api.openai.com")
    with pytest.raises(ValueError, match="judge_base_url"):  # 04 passes its parameters straight to run_judge
        judge.run_judge(pairs(1, 0), "m", "api.openai.com", 0, environ={"JUDGE_API_KEY": KEY})


@pytest.mark.parametrize(("reply", "expected"), [('{"better": 2, "reason": "x"}', 2), ('```json\n{"better":"1"}\n```', 1),
                                                 ('{"better": 0}', 0), ("Answer 2 is better", None)])
def test_parse_judgement(reply, expected):
    assert judge.parse_judgement(reply) == expected


def test_verdict_is_logged_into_the_training_runs_id_offline(tmp_path, monkeypatch, request):
    wandb = pytest.importorskip("wandb")
    request.addfinalizer(wandb.teardown)  # wandb keeps its first directory for the process; later tests need theirs
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    artifacts.write_json(artifacts.artifact(tmp_path, "train_metrics"), {"wandb_run_id": "abc123train"})
    verdict = [{"benchmark": "MedQA_USLME_test", "items": 3, "base_accuracy": 0.3, "tuned_accuracy": 0.6,
                "difference": 0.3, "difference_interval": [-0.1, 0.6], "decided": 0, "base_no_answer": 0,
                "tuned_no_answer": 1, "verdict": "no change larger than ±60 points"}]
    pairs = [{"before": "tuned", "after": "grpo", "verdict": "no detectable change", "overall": {
        "items": 3, "base_accuracy": 0.6, "tuned_accuracy": 0.6, "difference": 0.0, "decided": 0}}]
    stopping = {"items": 3, "rounds": 1, "minutes": 1.5, "budget_minutes": 1, "stopped": "budget",
                "decide": "headline", "outcome": "Not decided when the budget of 1 minutes ran out"}
    link = tracking.log_comparison_to_wandb(tmp_path, "wandb", verdict, {"base_val_loss": 2.0, "tuned_val_loss": 1.5},
                                      {"base_rouge_l": 0.1, "tuned_rouge_l": 0.2}, {"skipped": "off"}, pairs, stopping)
    runs = list((tmp_path / "wandb").glob("offline-run-*-abc123train"))
    assert len(runs) == 1 and link == f"wandb sync {runs[0]}"
    data = b""
    for _ in range(60):  # the wandb service writes the run file from its own process
        data = b"".join(p.read_bytes() for p in runs[0].glob("run-*.wandb"))
        if b"compare/verdict" in data and b"compare/tuned_val_loss" in data and b"compare/stopping/stopped" in data:
            break
        time.sleep(0.5)
    assert b"compare/verdict" in data and b"compare/MedQA_USLME_test/tuned_accuracy" in data
    assert b"compare/pairs" in data and b"compare/grpo_vs_tuned/difference" in data
    assert b"compare/stopping/items" in data and b"compare/stopping/stopped" in data  # the items used, why it stopped
    assert tracking.log_comparison_to_wandb(tmp_path, "none", verdict, {}, {}, {}) is None
