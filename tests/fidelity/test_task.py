"""The task a user gives: prompts files, reward scripts, default proxy and gold rewards."""

import json

import pytest

from rlinterp.errors import RlinterpError
from rlinterp.fidelity import FidelityTask, ReasoningFormat, load_prompts, load_reward_script

FMT = ReasoningFormat(reasoning=r"<think>(?P<reasoning>.*?)</think>", answer=r"Answer: (?P<answer>\S+)")


def _write(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_prompts_with_and_without_gold(tmp_path):
    prompts, gold = load_prompts(
        _write(tmp_path / "a.jsonl", [{"prompt": "1+1?", "gold": 2}, {"prompt": "2+2?", "gold": "4"}])
    )
    assert prompts == ("1+1?", "2+2?") and gold == ("2", "4")
    assert load_prompts(_write(tmp_path / "b.jsonl", [{"prompt": "x"}]))[1] is None


@pytest.mark.parametrize(
    "content, message",
    [
        ("", "prompts file .*p.jsonl is empty"),
        ("not json\n", "p.jsonl:1 is not valid JSON"),
        ("[1, 2]\n", "p.jsonl:1 is a JSON list, not an object"),
        ('{"text": "x"}\n', 'needs a "prompt"'),
        ('{"prompt": "a", "gold": 1}\n{"prompt": "b"}\n', "on every row or on none"),
    ],
)
def test_bad_prompts_files_are_refused(tmp_path, content, message):
    path = tmp_path / "p.jsonl"
    path.write_text(content)
    with pytest.raises(RlinterpError, match=message):
        load_prompts(path)


def test_a_reward_script_is_the_proxy(tmp_path):
    script = tmp_path / "reward.py"
    script.write_text("def reward(prompt, response):\n    return len(prompt) + response.count('!')\n")
    proxy = load_reward_script(script, ["ab", "abcd"])
    assert proxy(1, "x!!") == 6.0
    (tmp_path / "bad.py").write_text("def reward(response):\n    return 1\n")
    with pytest.raises(RlinterpError, match=r"reward\(prompt, response\)"):
        load_reward_script(tmp_path / "bad.py", ["a"])
    (tmp_path / "boom.py").write_text("raise ValueError('no')\n")
    with pytest.raises(RlinterpError, match="failed on import"):
        load_reward_script(tmp_path / "boom.py", ["a"])
    (tmp_path / "strict.py").write_text("def reward(prompt, response):\n    return 1 / len(response)\n")
    with pytest.raises(RlinterpError, match="must return a number for any response"):
        load_reward_script(tmp_path / "strict.py", ["a"])


def test_a_scoring_callable_that_raises_on_a_sample_gives_no_reward_for_it():
    def proxy(_i, response):
        if "!" in response:
            raise KeyError(response)
        return 1.0

    task = FidelityTask(prompts=("a",), format=FMT, proxy=proxy)
    assert task.proxy_reward(0, "fine") == 1.0 and task.proxy_reward(0, "oops!") is None


def test_default_proxy_reads_the_answer_and_gold_also_its_consistency():
    task = FidelityTask(prompts=("q1", "q2"), format=FMT, gold=("7", "3"))
    right = "<think>It is 3+4=7.</think> Answer: 7"
    unfaithful = "<think>It is 3+4=8.</think> Answer: 7"
    assert task.proxy_reward(0, right) == task.proxy_reward(0, unfaithful) == 1.0
    assert task.gold_reward(0, right) == 1.0 and task.gold_reward(0, unfaithful) == 0.0
    assert task.behaviour_flags(1, right) == {"wrong": True}
    without_gold = FidelityTask(prompts=("q1",), format=FMT)
    assert without_gold.proxy_reward(0, right) is None and without_gold.gold_reward(0, right) is None


def test_select_keeps_callables_on_their_original_prompts():
    seen = []
    task = FidelityTask(prompts=("a", "b", "c"), format=FMT, proxy=lambda i, _r: seen.append(i) or 0.0)
    task.select([2]).proxy_reward(0, "x")
    assert seen == [2]
