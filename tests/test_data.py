"""Loading, validating, measuring and splitting the training data; the sample data itself."""
import json

import pytest

from medical_r1 import artifacts, display, params
from medical_r1 import data as data_mod


def test_sample_data_sizes_and_schema():
    en = data_mod.load_sft_rows(str(data_mod.SAMPLE_DATA_DIR), "en")
    zh = data_mod.load_sft_rows(str(data_mod.SAMPLE_DATA_DIR), "zh")
    assert len(en) >= 40 and len(zh) >= 20
    for rows in (en, zh):
        data_mod.validate_rows(rows)
    assert all(any("\u4e00" <= ch <= "\u9fff" for ch in r["Question"]) for r in zh)
    assert len({r["Question"] for r in en + zh}) == len(en) + len(zh)  # no duplicates
    for config in params.DATA_CONFIG_FILES:
        data_mod.validate_rows(data_mod.load_sft_rows(str(data_mod.SAMPLE_DATA_DIR), config))


def test_sample_eval_data_follows_the_huatuogpt_schema():
    data = artifacts.read_json(data_mod.SAMPLE_DATA_DIR / "eval_data.json")
    assert set(data) == {"MedQA_USLME_test", "MedMCQA_validation", "PubMedQA_test", "MMLU-Pro_Medical_test",
                         "GPQA_Medical_test"}
    items = [item for items in data.values() for item in items]
    assert len(items) >= 30
    for item in items:
        assert set(item) == {"question", "options", "answer_idx", "answer"}
        assert item["options"][item["answer_idx"]] == item["answer"]


def test_max_examples_limits_rows():
    assert len(data_mod.load_sft_rows(str(data_mod.SAMPLE_DATA_DIR), "en", max_examples=5)) == 5


@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".csv"])
def test_local_files_load(tmp_path, suffix):
    rows = [{"Question": "q1", "Complex_CoT": "c1", "Response": "r1"}, {"Question": "q2", "Complex_CoT": "c2",
                                                                       "Response": "r2"}]
    path = tmp_path / f"data{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(rows))
    elif suffix == ".jsonl":
        artifacts.write_jsonl(path, rows)
    else:
        path.write_text("\ufeffQuestion,Complex_CoT,Response\nq1,c1,r1\nq2,c2,r2\n", encoding="utf-8")
    assert data_mod.load_sft_rows(str(path), "en") == rows


def test_missing_local_dataset_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="medical_o1_sft_Chinese.json"):
        data_mod.load_sft_rows(str(tmp_path), "zh")
    with pytest.raises(FileNotFoundError, match="neither a local file"):
        data_mod.load_sft_rows("./no/such/file.json", "en")
    with pytest.raises(ValueError, match="data_config"):
        data_mod.load_sft_rows(str(data_mod.SAMPLE_DATA_DIR), "fr")


@pytest.mark.parametrize("rows, message", [
    ([], "no rows"),
    ([{"question": "q", "Complex_CoT": "c", "Response": "r"}], "row 0 has no column 'Question'"),
    ([{"Question": "q", "Complex_CoT": "c", "Response": "r"}, {"Question": "q", "Complex_CoT": " ", "Response": "r"}],
     "row 1, column 'Complex_CoT' is empty"),
    ([{"Question": "q", "Complex_CoT": "c", "Response": None}], "row 0, column 'Response': expected a string"),
    ([{"Question": "q", "Complex_CoT": "c", "Response": "r"}, {"Question": 3, "Complex_CoT": "c", "Response": "r"}],
     "row 1, column 'Question': expected a string, got int"),
])
def test_schema_errors_name_row_and_column(rows, message):
    with pytest.raises(data_mod.SchemaError, match=message):
        data_mod.validate_rows(rows)


def test_split_is_deterministic_and_disjoint():
    records = [{"row": i} for i in range(50)]
    train, val = data_mod.split_train_val(records, 10, seed=3407)
    again_train, again_val = data_mod.split_train_val(records, 10, seed=3407)
    assert val == again_val and train == again_train
    assert len(val) == 10 and len(train) == 40
    assert not {r["row"] for r in train} & {r["row"] for r in val}
    assert data_mod.split_train_val(records, 10, seed=1)[1] != val
    with pytest.raises(ValueError, match="VAL_SIZE"):
        data_mod.split_train_val(records, 50, seed=0)


def test_a_broken_jsonl_line_is_named_with_its_file_and_number(tmp_path):
    path = tmp_path / "rows.jsonl"
    good = json.dumps({"Question": "q", "Complex_CoT": "c", "Response": "r"})
    path.write_text(f"{good}\n\n{good}\n{{\"Question\": \"q\", \"Complex_CoT\n{good}\n")
    with pytest.raises(ValueError, match=rf"{path}, line 4: not valid JSON"):
        data_mod.load_sft_rows(str(path), "en")


def test_a_max_seq_length_that_drops_every_row_stops_with_the_setting_named(tokenizer, en_rows):
    with pytest.raises(ValueError, match=r"MAX_SEQ_LENGTH \(16\) is shorter than every one of the 3 examples"):
        data_mod.format_rows(en_rows[:3], tokenizer, "r1_chat", 16)


def test_token_length_stats():
    stats = data_mod.token_length_stats(list(range(1, 101)))
    assert stats == {"count": 100, "mean": 50.5, "median": 51, "p90": 90, "p99": 99, "max": 100, "min": 1}


def test_histogram_is_written(tmp_path):
    path = display.plot_histogram([10, 20, 20, 30], 25, tmp_path / "h.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
