"""Length-sorted sub-batches (bgekit._batching): the split is a permutation of the rows, each sub-batch is cut to its
own longest row within its limits, and a real model gives the same outputs and gradients as on the whole batch."""
from __future__ import annotations

import pytest
import torch
from gradients import assert_same_gradients, param_grads
from transformers import AutoModel, AutoTokenizer

from bgekit._batching import forward_sorted, length_sorted_chunks

TEXTS = ["a", "a much longer text about watering tomato plants in the summer heat", "two words", "",
         "a middling text about basil", "soil", "fungus gnats fly over wet soil in pots", "light"]


def _mask(lengths: list[int], width: int) -> dict[str, torch.Tensor]:
    m = torch.zeros(len(lengths), width, dtype=torch.long)
    for i, n in enumerate(lengths):
        m[i, :n] = 1
    return {"input_ids": m * torch.arange(1, width + 1), "attention_mask": m}


def test_hand_worked_split():
    b = _mask([2, 5, 1, 5, 3], width=6)        # one column of padding everywhere, lengths tie at 5
    chunks = length_sorted_chunks(b, rows=2)
    assert [i.tolist() for i, _ in chunks] == [[1, 3], [4, 0], [2]]        # longest first, ties in order
    assert [tuple(c["attention_mask"].shape) for _, c in chunks] == [(2, 5), (2, 3), (1, 1)]
    for idx, c in chunks:                       # each row unchanged but for the padding cut off
        for k, v in c.items():
            assert torch.equal(v, b[k][idx, :v.shape[1]]) and not b[k][idx, v.shape[1]:].any()


@pytest.mark.parametrize("rows,tokens", [(0, 0), (3, 0), (0, 10), (2, 7), (0, 1)])
def test_split_is_a_permutation_within_limits(rows, tokens):
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 9, (13,), generator=g).tolist()
    chunks = length_sorted_chunks(_mask(lengths, 10), rows=rows, tokens=tokens)
    order = torch.cat([i for i, _ in chunks]).tolist()
    assert sorted(order) == list(range(13))
    assert [lengths[i] for i in order] == sorted(lengths, reverse=True)
    for idx, c in chunks:
        n, w = c["attention_mask"].shape
        assert w == max(lengths[i] for i in idx.tolist())          # cut to the sub-batch's longest row
        assert rows == 0 or n <= rows
        assert tokens == 0 or n * w <= tokens or n == 1            # a row over the budget goes alone
    if rows == tokens == 0:
        assert len(chunks) == 1


def test_bad_batches_are_named():
    with pytest.raises(ValueError, match="attention_mask"):
        length_sorted_chunks({"input_ids": torch.ones(2, 3)})
    with pytest.raises(ValueError, match=r"\(2, 3\) like attention_mask; not: \['token_type_ids'\]"):
        length_sorted_chunks({"attention_mask": torch.ones(2, 3), "token_type_ids": torch.ones(2, 4)})


@pytest.mark.parametrize("rows,tokens", [(3, 0), (0, 40), (1, 0)])
def test_a_real_model_gives_the_whole_batch_outputs_and_gradients(minilm_path, rows, tokens):
    """all-MiniLM-L6-v2 through plain transformers, dropout off: sub-batches vs the whole padded batch."""
    tok = AutoTokenizer.from_pretrained(minilm_path)
    model = AutoModel.from_pretrained(minilm_path).eval()
    batch = dict(tok(TEXTS, padding=True, return_tensors="pt"))
    results = []
    for sub in (False, True):
        model.zero_grad()

        def fwd(b):
            return model(**b).last_hidden_state[:, 0]
        out = forward_sorted(fwd, batch, rows, tokens) if sub else fwd(batch)
        (out * torch.linspace(-1, 1, out.shape[1])).sum().backward()
        results.append((out.detach(), param_grads(model)))
    (whole, g_whole), (parts, g_parts) = results
    assert len(length_sorted_chunks(batch, rows, tokens)) > 1
    assert torch.allclose(parts, whole, atol=1e-5)
    assert_same_gradients(g_whole, g_parts, min_params=50)


def test_left_padding_keeps_the_token_budget():
    """With left padding nothing can be cut (a row's length is its last token's column + 1 = the width), so a
    token budget must count every row at the full width: 4096 tokens of width 256 is 16 rows, never more."""
    lengths = [256] + [10] * 500
    m = torch.zeros(len(lengths), 256, dtype=torch.long)
    for i, n in enumerate(lengths):
        m[i, 256 - n:] = 1
    chunks = length_sorted_chunks({"input_ids": m * 7, "attention_mask": m}, tokens=4096)
    assert all(tuple(c["attention_mask"].shape) == (len(i), 256) for i, c in chunks)
    assert max(len(i) for i, _ in chunks) == 16 and sum(len(i) for i, _ in chunks) == 501


def test_an_empty_batch_and_non_tensors():
    empty = {"input_ids": torch.zeros(0, 4, dtype=torch.long), "attention_mask": torch.zeros(0, 4, dtype=torch.long)}
    assert length_sorted_chunks(empty, rows=2) == []
    assert forward_sorted(lambda b: b["input_ids"].sum(1), empty, rows=2).shape == (0,)
    with pytest.raises(ValueError, match=r"not: \['labels'\]"):
        length_sorted_chunks({"attention_mask": torch.ones(2, 3), "labels": [0, 1]})
