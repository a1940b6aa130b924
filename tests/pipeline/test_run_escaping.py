"""End to end: prompts that are HTML (a script tag, attribute-breaking quotes) run through
``rlinterp run`` on two tiny checkpoints, and the report and every feature card show them
as text: the page has exactly the script elements rlinterp writes, no event-handler
attribute, and each card's contexts read back as the prompt."""

import re
from html.parser import HTMLParser

import pytest

from rlinterp.pipeline.config import config_from_dict

from ..conftest import tiny_hf_config


class _Page(HTMLParser):
    """Script elements, attribute names, and the text of each card's context lines."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.scripts = 0
        self.attributes: set[str] = set()
        self.cards: dict[str, list[str]] = {}
        self._card: str | None = None
        self._in_context = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.attributes |= set(attrs)
        self.scripts += tag == "script"
        if tag == "div" and attrs.get("class") == "card":
            self._card = attrs["id"]
            self.cards[self._card] = []
        if tag == "code" and attrs.get("class") == "ctx" and self._card:
            self._in_context = True
            self.cards[self._card].append("")

    def handle_endtag(self, tag):
        if tag == "code":
            self._in_context = False

    def handle_data(self, data):
        if self._in_context and self._card:
            self.cards[self._card][-1] += data


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory):
    import torch
    from transformers import AutoModelForCausalLM

    from rlinterp.organism.model import build_tokenizer
    from rlinterp.pipeline.runner import run_pipeline

    root = tmp_path_factory.mktemp("hostile")
    tokenizer = build_tokenizer("abcdefghijklmnopqrstuvwxyz0123456789 <>/=()\"'!?.:")
    config = tiny_hf_config("gpt2", vocab_size=len(tokenizer))
    config.bos_token_id = config.eos_token_id = tokenizer.bos_token_id
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    for step in (0, 1):
        if step:
            with torch.no_grad():
                model.transformer.h[-1].mlp.c_proj.weight.add_(0.5)
        model.save_pretrained(root / f"checkpoint-{step}")
        tokenizer.save_pretrained(root / f"checkpoint-{step}")
    prompts = [f"<script>alert(\"{i}\")</script>' onmouseover='x{i}'" for i in range(24)]
    (root / "prompts.txt").write_text("\n".join(prompts))
    run_config = config_from_dict(
        {
            "out": str(root / "run"),
            "series": {"checkpoints": [str(root / "checkpoint-0"), str(root / "checkpoint-1")]},
            "prompts": {"source": str(root / "prompts.txt")},
            "harvest": {"batch_size": 8},
            "dictionaries": {
                "d_sae": 16,
                "k": 2,
                "n_tokens": 2048,
                "batch_size": 32,
                "top_k": 3,
                "cards": 9,
            },
            # the random checkpoints' context (64) is too short to sample answers in; the
            # selection and circuits stages skip checkpoint series without labels or metric
            "tracking": {"sources": ["prompts"], "independent_tokens": 2048, "stagewise": {"n_tokens": 1024}},
        }
    )
    run_pipeline(run_config, progress=False)
    return root / "run"


def test_report_and_every_card_show_hostile_prompts_as_text(hostile_run):
    page = (hostile_run / "report.html").read_text()
    parsed = _Page()
    parsed.feed(page)
    figures = page.count("<div class='figure'>")
    # plotly's config and plotly.js (once), one per figure, the table script: none from the data
    assert parsed.scripts == figures + 3
    assert "onmouseover" not in parsed.attributes
    assert len(parsed.cards) == 9
    for card, contexts in parsed.cards.items():
        assert contexts, card
        for text in contexts:  # every context is a slice of a prompt, read back verbatim
            assert any(text.strip("\n") in p for p in _prompts()), (card, text)
        joined = "".join(contexts)
        assert any(c in joined for c in "<>\"'"), card
    # stages that cannot analyse a checkpoint series say so, with the reason
    assert "checkpoints: not analysed (the prompts have no &#x27;persona&#x27; label" in page
    assert "checkpoints: not analysed (checkpoint series need circuits.prompts" in page
    markdown = (hostile_run / "report.md").read_text()
    assert "<" not in re.sub(r"`[^`]*`", "", markdown)  # model text only inside code spans


def _prompts():
    return [f"<script>alert(\"{i}\")</script>' onmouseover='x{i}'" for i in range(24)]
