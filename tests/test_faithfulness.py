"""bgekit.rag.check_support: sentence splitting, which sources each sentence is checked against, and scores equal
to the real cross-encoder's own scores of the expected (claim, passage) pairs (a tiny MiniLM reranker with a seeded
head, as in test_reranker.py; no test double)."""
from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from bgekit.rag import SupportCheck, check_support, split_sentences
from bgekit.reranker import Reranker

PASSAGES = [
    "Succulents store water in their leaves; water them only when the soil has dried out completely.",
    "Tomatoes need a deep watering two or three times a week in summer, more in pots.",
    "Fungus gnats breed in damp compost; let the top few centimetres dry between waterings.",
]


@pytest.fixture(scope="module")
def rr(tmp_path_factory, minilm_path):
    torch.manual_seed(4321)
    model = AutoModelForSequenceClassification.from_pretrained(minilm_path, num_labels=1)
    with torch.no_grad():                       # spread the scores so that a mix-up of pairs would show
        model.classifier.weight.normal_(0.0, 1.0)
        model.classifier.bias.fill_(-0.5)
    out = tmp_path_factory.mktemp("support_reranker")
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(minilm_path).save_pretrained(out)
    return Reranker(out, device="cpu")


@pytest.mark.parametrize("text, expected", [
    ("Water weekly [1]. Feed in spring [2].  ", ["Water weekly [1].", "Feed in spring [2]."]),
    ("Use rainwater. [3] It has no lime.", ["Use rainwater. [3]", "It has no lime."]),
    ("Add 2.5 g per litre! Is that all? Yes", ["Add 2.5 g per litre!", "Is that all?", "Yes"]),
    ("one line\nno stop", ["one line\nno stop"]),
    ("", []),
    ("   ", []),
])
def test_split_sentences(text, expected):
    assert split_sentences(text) == expected


def test_each_sentence_is_scored_against_its_own_citations_and_the_best_score_is_kept(rr):
    answer = "Water succulents only when the soil is dry [1]. Tomatoes want water several times a week [2][3]."
    chk = check_support(answer, PASSAGES, rr, threshold=0.5)
    assert chk.sentences == ["Water succulents only when the soil is dry [1].",
                             "Tomatoes want water several times a week [2][3]."]
    assert chk.checked == [[1], [2, 3]]
    # reference: the reranker's own scores of the claims (citation marks removed) with each cited passage
    c1, c2 = "Water succulents only when the soil is dry.", "Tomatoes want water several times a week."
    ref1 = rr.compute_score([(c1, PASSAGES[0])], normalize=True)[0]
    ref2 = rr.compute_score([(c2, PASSAGES[1]), (c2, PASSAGES[2])], normalize=True)
    assert chk.scores[0] == pytest.approx(ref1, abs=1e-5)
    assert chk.scores[1] == pytest.approx(max(ref2), abs=1e-5)
    assert chk.best_source == [1, 2 + int(ref2[1] > ref2[0])]
    assert chk.supported == [s >= 0.5 for s in chk.scores]
    assert chk.support_rate == pytest.approx(sum(chk.supported) / 2)


def test_uncited_sentences_fall_back_to_the_answers_citations_then_to_every_source(rr):
    chk = check_support("Let the compost dry out. That stops the gnats [3].", PASSAGES, rr)
    assert chk.checked == [[3], [3]]          # the first sentence cites nothing: the answer's citations
    chk = check_support("Let the compost dry out. Then water less.", PASSAGES, rr)
    assert chk.checked == [[1, 2, 3], [1, 2, 3]]
    claim = "Let the compost dry out."
    ref = rr.compute_score([(claim, p) for p in PASSAGES], normalize=True)
    assert chk.scores[0] == pytest.approx(max(ref), abs=1e-5)
    assert chk.best_source[0] == 1 + max(range(3), key=ref.__getitem__)


def test_raw_logits_and_the_threshold_scale(rr):
    answer = "Water succulents only when the soil is dry [1]."
    logit = check_support(answer, PASSAGES, rr, normalize=False, threshold=0.0).scores[0]
    prob = check_support(answer, PASSAGES, rr).scores[0]
    assert prob == pytest.approx(float(torch.sigmoid(torch.tensor(logit))), abs=1e-5)
    assert check_support(answer, PASSAGES, rr, threshold=prob).all_supported            # score >= threshold
    assert not check_support(answer, PASSAGES, rr, threshold=prob + 1e-3).all_supported


def test_made_up_citations_are_ignored_and_marks_alone_carry_no_claim(rr):
    chk = check_support("Dry soil first [9]. [1]", PASSAGES, rr)
    assert chk.sentences == ["Dry soil first [9]. [1]"]
    assert chk.checked == [[1]]               # [9] does not exist; [1] is cited
    chk = check_support("[2]", PASSAGES, rr)
    assert chk.sentences == [] and chk.support_rate == 0.0 and not chk.all_supported
    assert check_support("", PASSAGES, rr).as_dict()["support_rate"] == 0.0


def test_bad_input_is_named(rr):
    with pytest.raises(ValueError, match="passages is empty"):
        check_support("Anything.", [], rr)

    class Short:        # a broken scorer (a real one cannot be made to drop a score): the error says so
        def compute_score(self, pairs, normalize=True):
            return [0.5] * (len(pairs) - 1)

    with pytest.raises(ValueError, match="returned 2 scores for 3"):
        check_support("Claim one.", PASSAGES, Short())
    assert isinstance(check_support("Claim one [1].", PASSAGES, rr), SupportCheck)
