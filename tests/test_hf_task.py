"""task=hf against the real `datasets` library: every supported format built on the fly, offline."""

from __future__ import annotations

import json
import os

import pytest

datasets = pytest.importorskip("datasets")

import rlvr  # noqa: E402
from rlvr.plugins.models.tiny import byte_tokenizer  # noqa: E402

ROWS = [
    {"problem": f"What is {i} + {i}?", "solution": str(2 * i), "level": "easy" if i % 2 else "hard", "tests": [i, i]}
    for i in range(20)
]


def _task(**params):
    return rlvr.create("task", "hf", **params)


def _write(tmp_path, fmt: str) -> str:
    ds = datasets.Dataset.from_list(ROWS)
    path = tmp_path / f"data.{fmt}"
    if fmt == "parquet":
        ds.to_parquet(str(path))
    elif fmt == "csv":
        ds.remove_columns("tests").to_csv(str(path), index=False)
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    elif fmt == "json":
        ds.to_json(str(path))  # datasets writes JSON lines
    elif fmt == "arrow":
        ds.save_to_disk(str(tmp_path / "saved"))
        path = next((tmp_path / "saved").glob("*.arrow"))
    elif fmt == "saved":
        path = tmp_path / "saved_dict"
        datasets.DatasetDict({"train": ds, "test": ds.select(range(4))}).save_to_disk(str(path))
    return str(path)


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl", "json", "arrow", "saved"])
def test_every_format_loads_with_column_mapping(tmp_path, fmt):
    task = _task(path=_write(tmp_path, fmt), columns={"problem": "question", "solution": "answer"}, seed=3)
    rows = task.train_rows + task.eval_rows
    assert len(rows) == 20 and len(task.eval_rows) == 2  # 10% held out
    assert {r["question"] for r in rows} == {r["problem"] for r in ROWS}
    row = task.train_rows[0]
    assert str(row["answer"]) == str(2 * int(row["question"].split()[2]))  # answer stays with its question
    assert "level" in row  # extra columns reach the rewards
    assert task.prompt_text(row) == row["question"]


def test_saved_dict_uses_named_splits(tmp_path):
    task = _task(
        path=_write(tmp_path, "saved"),
        columns={"problem": "question", "solution": "answer"},
        split="train",
        eval_split="test",
    )
    assert len(task.train_rows) == 20 and len(task.eval_rows) == 4


def test_seeded_shuffle_filter_and_keep_columns(tmp_path):
    path = _write(tmp_path, "parquet")
    kw = {"path": path, "prompt_template": "{problem}", "answer_column": "solution"}
    a, b, c = _task(seed=1, **kw), _task(seed=1, **kw), _task(seed=2, **kw)
    assert [r["problem"] for r in a.train_rows] == [r["problem"] for r in b.train_rows]
    assert [r["problem"] for r in a.train_rows] != [r["problem"] for r in c.train_rows]
    easy = _task(filter={"level": "easy"}, keep_columns=["tests"], **kw)
    rows = easy.train_rows + easy.eval_rows
    assert len(rows) == 10 and all(int(r["solution"]) % 4 == 2 for r in rows)
    assert set(rows[0]) == {"problem", "solution", "tests"}  # level dropped; template and answer columns kept
    both = _task(filter={"level": ["easy", "hard"]}, max_train_rows=5, max_eval_rows=1, **kw)
    assert len(both.train_rows) == 5 and len(both.eval_rows) == 1


def test_messages_column_and_system_prompt(tmp_path):
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"add {i} and {i}"},
                {"role": "assistant", "content": str(2 * i)},
            ],
            "answer": str(2 * i),
        }
        for i in range(10)
    ]
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = _task(path=str(path), messages_column="messages", system_prompt="Be brief.")
    row = task.train_rows[0]
    msgs = task.messages(row)
    assert [m["role"] for m in msgs] == ["system", "user"]  # the reference reply is not in the prompt
    text = task.render(row, byte_tokenizer())
    assert "Be brief." in text and msgs[1]["content"] in text and text.endswith("<|im_start|>assistant\n")
    assert row["answer"] not in text.split("add")[-1].split("<|im_end|>")[1]


def test_streaming_reads_only_what_it_needs(tmp_path):
    path = _write(tmp_path, "parquet")
    task = _task(
        path=path,
        columns={"problem": "question", "solution": "answer"},
        streaming=True,
        max_train_rows=6,
        max_eval_rows=2,
    )
    assert len(task.train_rows) == 6 and len(task.eval_rows) == 2
    with pytest.raises(ValueError, match="task.max_train_rows"):
        _task(path=path, streaming=True)


def _hub_cache(root, repo_id: str, config: str, splits: dict) -> None:
    """A genuine datasets cache entry for Hub dataset ``repo_id`` (what load_dataset leaves after a download)."""
    from datasets.packaged_modules.parquet.parquet import Parquet

    files = {}
    for name, rows in splits.items():
        files[name] = str(root / f"{name}.parquet")
        datasets.Dataset.from_list(rows).to_parquet(files[name])
    builder = Parquet(
        cache_dir=str(root / "cache"),
        dataset_name=repo_id.split("/")[1],
        config_name=config,
        data_files=files,
        hash="0123abcd",
    )
    builder.repo_id, builder.config_id = repo_id, config
    builder._cache_dir = builder._build_cache_dir()
    builder.download_and_prepare()


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    return tmp_path


def test_hub_id_from_the_local_cache_offline(offline_cache):
    _hub_cache(offline_cache, "someorg/arith", "main", {"train": ROWS, "test": ROWS[:3]})
    task = _task(
        path="someorg/arith",
        config_name="main",
        eval_split="test",
        columns={"problem": "question", "solution": "answer"},
    )
    assert len(task.train_rows) == 20 and len(task.eval_rows) == 3
    with pytest.raises(ValueError, match="no split 'validation'.*train, test"):
        _task(path="someorg/arith", config_name="main", split="validation")
    with pytest.raises(FileNotFoundError, match="not in the local datasets cache"):
        _task(path="someorg/not-cached")


def test_gsm8k_uses_the_cached_hub_dataset(offline_cache, monkeypatch):
    monkeypatch.setenv("RLVR_GSM8K_DIR", str(offline_cache / "no-local-copy"))
    rows = [{"question": f"q{i}", "answer": f"step\n#### {i}"} for i in range(5)]
    with pytest.raises(FileNotFoundError, match="task.data_dir"):
        rlvr.create("task", "gsm8k")
    _hub_cache(offline_cache, "openai/gsm8k", "main", {"train": rows, "test": rows[:2]})
    task = rlvr.create("task", "gsm8k")
    assert sorted(r["answer"] for r in task.train_rows) == ["0", "1", "2", "3", "4"]
    assert len(task.eval_rows) == 2 and task.train_rows[0]["solution"].startswith("step")


def test_gsm8k_falls_back_to_the_local_copy(offline_cache, monkeypatch):
    local = offline_cache / "gsm8k"
    local.mkdir()
    (local / "train.jsonl").write_text(
        "".join(json.dumps({"question": "q", "answer": f"x #### {i}"}) + "\n" for i in range(3))
    )
    (local / "test.jsonl").write_text(json.dumps({"question": "t", "answer": "y #### 9"}) + "\n")
    monkeypatch.setenv("RLVR_GSM8K_DIR", str(local))
    task = rlvr.create("task", "gsm8k")  # not cached (offline): the local copy
    assert sorted(r["answer"] for r in task.train_rows) == ["0", "1", "2"] and task.eval_rows[0]["answer"] == "9"


# ----- bad input: clear errors naming the row / split / column -------------------------------------------------
def test_missing_answer_column_names_the_row(tmp_path):
    rows = [{"question": "a", "answer": "1"}, {"question": "b", "answer": "2"}, {"question": "c", "reply": "3"}]
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match=r"row 2 has an empty \(null\) 'answer'|row 2 has no 'answer'"):
        _task(path=str(path), shuffle=False)


def test_missing_prompt_column_and_wrong_types(tmp_path):
    path = _write(tmp_path, "parquet")
    with pytest.raises(ValueError, match=r"row 0 has no column 'question'.*prompt_template"):
        _task(path=path, answer_column="solution", shuffle=False)
    with pytest.raises(ValueError, match=r"row 0: column 'tests' used by task.prompt_template is list"):
        _task(path=path, answer_column="solution", prompt_template="{tests}", shuffle=False)
    with pytest.raises(ValueError, match=r"row 0: column 'problem' must be a non-empty list"):
        _task(path=path, answer_column="solution", messages_column="problem", shuffle=False)
    with pytest.raises(ValueError, match=r"no column 'nope' named in task.columns"):
        _task(path=path, columns={"nope": "question"})


def test_empty_split_bad_split_and_missing_file(tmp_path):
    datasets.Dataset.from_list(ROWS).select([]).to_parquet(str(tmp_path / "empty.parquet"))
    with pytest.raises(ValueError, match="split 'train' is empty"):
        _task(path=str(tmp_path / "empty.parquet"), answer_column="solution", prompt_template="{problem}")
    datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS)}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(ValueError, match=r"no split 'dev'; its splits are: train\."):
        _task(path=str(tmp_path / "dd"), split="dev")
    with pytest.raises(ValueError, match="no rows left after task.filter"):
        _task(path=str(tmp_path / "dd"), answer_column="solution", prompt_template="{problem}", filter={"level": "x"})
    with pytest.raises(FileNotFoundError, match="no such"):
        _task(path=str(tmp_path / "missing.parquet"))
    with pytest.raises(ValueError, match="task=hf needs task.path"):
        _task()


def test_train_with_task_hf_on_the_tiny_model(tmp_path, tiny_overrides):
    path = _write(tmp_path, "parquet")
    cfg = rlvr.compose(
        [
            *tiny_overrides,
            "task=hf",
            f"task.path={path}",
            "task.columns={problem:question,solution:answer}",
            "trainer.max_steps=1",
            "trainer.seed=5",
            f"trainer.output_dir={tmp_path}/run",
        ]
    )
    assert cfg.task.seed == 5  # shuffled with the run's seed
    trainer = rlvr.Trainer(cfg)
    trainer.train()
    sample = json.loads((tmp_path / "run" / "completions.jsonl").read_text().splitlines()[0])
    assert "What is" in sample["prompt"] and sample["answer"].isdigit()
    assert os.path.isdir(tmp_path / "run" / "final")
