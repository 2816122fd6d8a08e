"""Causal-LM PEFs (npeff/models/causal_lm.py, npeff/fisher/lm_classes.py) against a dense
reference: every next-token gradient of each example run alone (no padding) by an autograd loop."""

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from npeff.artifacts.pefs import load_pefs
from npeff.fisher import compute_pefs
from npeff.fisher.lm_classes import LMClasses, label_word_ids, sample_tokens
from npeff.models.causal_lm import CausalLMExplainer, build_tiny_gpt2

V, L, N = 24, 9, 4


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def lm():
    torch.manual_seed(0)
    model = build_tiny_gpt2(V, max_length=L, hidden_size=8, num_layers=1, num_heads=2)
    model = model.double().eval()
    with torch.no_grad():  # sharper next-token distributions than the 0.02 init gives
        for p in model.parameters():
            p.mul_(40.0) if p.ndim == 2 else None
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, V, (N, L), generator=gen)
    lengths = torch.tensor([9, 6, 4, 7])
    mask = (torch.arange(L)[None, :] < lengths[:, None]).long()
    ids = ids * mask  # padding id 0 after each example's end
    labels = torch.tensor([3, 5, 7, 11])
    rows = exact_rows(model, ids, lengths)
    return model, {"input_ids": ids, "attention_mask": mask, "labels": labels}, lengths, rows


def exact_rows(model: CausalLMExplainer, ids, lengths) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per example: (p [V], rows [V, m] = sqrt(p_c)·∇log p_c) with the raw HF model on the
    unpadded tokens (no mask), one backward per vocabulary entry."""
    params = [p for _, p in model.named_parameters()]
    out = []
    for i in range(len(ids)):
        x = ids[i : i + 1, : int(lengths[i])]
        logp = torch.log_softmax(model.lm(input_ids=x).logits[0, -1], -1)
        grads = []
        for c in range(V):
            g = torch.autograd.grad(logp[c], params, retain_graph=True)
            grads.append(torch.cat([t.reshape(-1) for t in g]))
        p = logp.exp().detach()
        out.append((p.numpy(), (p.sqrt()[:, None] * torch.stack(grads)).numpy()))
    return out


def loader(batch, bs=2):
    items = [{k: v[i] for k, v in batch.items()} for i in range(len(batch["labels"]))]
    return DataLoader(items, batch_size=bs)


def file_rows(P, i) -> np.ndarray:
    """Dense rows [R, m] of example i of a file that stores every entry."""
    m = P.n_parameters
    if P.kind == "lrm":
        offs = P.col_offsets[i]
        counts = np.diff(offs)
    else:
        start = int(P.ranks[:i].sum())
        counts = P.col_sizes[start : start + int(P.ranks[i])]
        offs = np.concatenate([[0], np.cumsum(counts)])
    rows = np.zeros((len(counts), m))
    for c in range(len(counts)):
        sl = slice(offs[c], offs[c + 1])
        rows[c, P.indices[i, sl]] = P.values[i, sl]
    return rows


def pefs_of(model, batch, tmp_path, name, classes, engine="auto", bs=2, **kw):
    m = sum(p.numel() for p in model.parameters())
    n_values = kw.pop("n_values", classes.n_rows(V) * m)
    path = compute_pefs(
        model,
        loader(batch, bs),
        tmp_path / f"{name}.h5",
        n_values=n_values,
        classes=classes,
        engine=engine,
        progress=False,
        **kw,
    )
    return load_pefs(path)


def frob_err(B: np.ndarray, A: np.ndarray) -> float:
    """‖BᵀB − AᵀA‖_F / ‖AᵀA‖_F via the small Gram matrices."""
    aa, bb, ab = A @ A.T, B @ B.T, A @ B.T
    sq = (bb**2).sum() + (aa**2).sum() - 2 * (ab**2).sum()
    return float(np.sqrt(max(sq, 0.0) / (aa**2).sum()))


def test_padded_batch_gives_each_examples_own_next_token_logits(lm):
    model, batch, lengths, _ = lm
    with torch.no_grad():
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        pos = torch.tensor([2, 1, 3, 0])
        at = model(batch["input_ids"], batch["attention_mask"], explain_pos=pos)
        for i in range(N):
            alone = model.lm(input_ids=batch["input_ids"][i : i + 1, : int(lengths[i])]).logits[0]
            torch.testing.assert_close(out[i], alone[-1])
            torch.testing.assert_close(at[i], alone[int(pos[i])])


@pytest.mark.parametrize("engine", ["auto", "func"])
def test_all_classes_equal_the_exact_pef_rows(lm, tmp_path, engine):
    model, batch, _, rows = lm
    P = pefs_of(model, batch, tmp_path, "all", LMClasses("all"), engine)
    if engine == "auto":  # GPT-2 (HF Conv1D, tied embeddings, LayerNorm) is wholly on the fast path
        assert P.metadata["fisher_engine"]["func"] == []
    assert P.metadata["fisher_classes"] == {"mode": "all"}
    for i in range(N):
        np.testing.assert_allclose(file_rows(P, i), rows[i][1], atol=1e-6)


@pytest.mark.parametrize("engine", ["auto", "func"])
def test_top_p_rows_equal_the_exact_rows_of_the_kept_tokens(lm, tmp_path, engine):
    model, batch, _, rows = lm
    q, k = 0.6, 5
    P = pefs_of(model, batch, tmp_path, "top_p", LMClasses("top_p", q=q, k=k), engine)
    assert P.kind == "lvrm" and P.metadata["fisher_classes"] == {"mode": "top_p", "q": q, "k": k}
    for i in range(N):
        p, exact = rows[i]
        order = np.argsort(-p, kind="stable")
        want = min(int(np.searchsorted(np.cumsum(p[order]), q) + 1), k)  # smallest set ≥ q
        assert P.ranks[i] == want
        assert np.cumsum(p[order])[want - 1] >= q or want == k
        np.testing.assert_allclose(file_rows(P, i), exact[order[:want]], atol=1e-6)
    assert len(set(P.ranks.tolist())) > 1  # variable ranks actually occur here


def test_sampled_pefs_are_unbiased_draws_converging_like_one_over_sqrt_s(lm, tmp_path):
    model, batch, _, rows = lm
    # rows are g_{y_s}/√S for the seeded draws (per example index: batching does not matter)
    S = 4
    P1 = pefs_of(model, batch, tmp_path, "s_a", LMClasses("sample", n_samples=S, seed=3), bs=1)
    P3 = pefs_of(model, batch, tmp_path, "s_b", LMClasses("sample", n_samples=S, seed=3), bs=3)
    np.testing.assert_array_equal(P1.indices, P3.indices)  # same draws, same rows
    np.testing.assert_allclose(P1.values, P3.values, atol=1e-12)
    # a shard (as a DDP rank or a resumed run computes it: index_offset) draws the same tokens
    shard = {k: v[2:] for k, v in batch.items()}
    P2 = pefs_of(
        model, shard, tmp_path, "s_c", LMClasses("sample", n_samples=S, seed=3), index_offset=2
    )
    np.testing.assert_array_equal(P2.indices, P1.indices[2:])
    np.testing.assert_allclose(P2.values, P1.values[2:], atol=1e-12)
    for i in range(N):
        p, exact = rows[i]
        y = sample_tokens(torch.as_tensor(p)[None], S, 3, i)[0].numpy()
        want = exact[y] / np.sqrt(p[y])[:, None] / np.sqrt(S)
        np.testing.assert_allclose(file_rows(P1, i), want, atol=1e-6)
    # relative Frobenius error of the Monte-Carlo PEF vs the exact one, at S = 4, 16, 64
    errs = {}
    for S in (4, 16, 64):
        sq = []
        for seed in range(5):
            P = pefs_of(
                model, batch, tmp_path, f"s{S}_{seed}", LMClasses("sample", n_samples=S, seed=seed)
            )
            sq += [frob_err(file_rows(P, i), rows[i][1]) ** 2 for i in range(N)]
        errs[S] = float(np.sqrt(np.mean(sq)))
    # E‖F̂ − F‖² = (E‖ggᵀ‖² − ‖F‖²)/S exactly: the RMS error times √S is constant
    scaled = [errs[S] * np.sqrt(S) for S in (4, 16, 64)]
    assert max(scaled) / min(scaled) < 1.5, errs
    slope = np.polyfit(np.log([4, 16, 64]), np.log([errs[S] for S in (4, 16, 64)]), 1)[0]
    assert -0.65 < slope < -0.35, (slope, errs)


class LabelLogits(nn.Module):
    """An independent classifier: the LM's next-token logits of the label tokens only."""

    def __init__(self, lm, ids):
        super().__init__()
        self.inner = lm
        self.ids = list(ids)

    def forward(self, **kw):
        return self.inner(**kw)[..., self.ids]


@pytest.mark.parametrize("engine", ["auto", "func"])
def test_label_words_equal_a_classifier_on_those_tokens_logits(lm, tmp_path, engine):
    model, batch, _, _ = lm
    ids = (5, 11, 2)
    P = pefs_of(
        model,
        batch,
        tmp_path,
        "lw",
        LMClasses("label_words", label_token_ids=ids),
        engine,
        n_values=300,
    )
    clf = LabelLogits(model, ids).eval()
    Q = load_pefs(
        compute_pefs(
            clf, loader(batch), tmp_path / "clf.h5", n_values=300, engine=engine, progress=False
        )
    )
    assert P.kind == Q.kind == "lrm" and P.n_classes == 3
    np.testing.assert_array_equal(P.indices, Q.indices)
    np.testing.assert_allclose(P.values, Q.values, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(P.norms, Q.norms, rtol=1e-6)
    np.testing.assert_allclose(P.logits, Q.logits, rtol=1e-6)
    np.testing.assert_array_equal(P.labels, [-1, 0, -1, 1])  # token 5 → 0, 11 → 1, others −1
    assert P.metadata["fisher_classes"]["label_token_ids"] == list(ids)


def test_projected_file_stores_dense_rows_seed_and_kind(lm, tmp_path):
    model, batch, _, rows = lm
    from npeff.fisher.projection import SparseProjection

    m = rows[0][1].shape[1]
    comp = {"kind": "projection", "projection": "sparse_jl", "d": 64, "seed": 2, "s": 4}
    P = pefs_of(model, batch, tmp_path, "proj", LMClasses("all"), compression=comp)
    assert P.n_parameters == 64 and P.values.shape == (N, V * 64)
    c = P.metadata["compression"]
    assert (c["kind"], c["projection"], c["seed"], c["d"], c["m"]) == (
        "projection",
        "sparse_jl",
        2,
        64,
        m,
    )
    proj = SparseProjection.from_settings(c)
    for i in range(N):
        want = proj.apply(torch.as_tensor(rows[i][1])).numpy()
        np.testing.assert_allclose(file_rows(P, i), want, atol=1e-6)
        aa = rows[i][1] @ rows[i][1].T
        np.testing.assert_allclose(P.norms[i], np.sqrt((aa**2).sum()), rtol=1e-5)  # dense norm


# ------------------------------------------------------------------ bad input, before any work
def test_q_outside_0_1_is_refused():
    for q in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match=r"must be in \(0, 1\]"):
            LMClasses("top_p", q=q)
    LMClasses("top_p", q=1.0)


def test_label_words_that_are_not_single_tokens_are_refused():
    from npeff.tasks import build_task

    task = build_task({"name": "tiny_lm", "n_train": 4, "n_fit": 2, "n_eval": 2})
    assert label_word_ids(["sum", "copy", 5], task.word_token_ids) == (
        task.word_token_ids("sum")[0],
        task.word_token_ids("copy")[0],
        5,
    )
    with pytest.raises(ValueError, match="is 2 tokens"):
        label_word_ids(["sum 3", "copy"], task.word_token_ids)


def test_d_larger_than_m_is_refused_before_any_work(lm, tmp_path):
    model, batch, _, _ = lm
    comp = {"kind": "projection", "d": 10**7}
    with pytest.raises(ValueError, match="larger than the"):
        pefs_of(model, batch, tmp_path, "big", LMClasses("all"), compression=comp)
    assert not (tmp_path / "big.h5").exists()


def test_a_classifier_folder_or_task_is_refused_by_the_causal_lm_builders(tmp_path):
    from transformers import BertConfig, BertForSequenceClassification

    from npeff.models import build_model

    cfg = BertConfig(
        vocab_size=30,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
        num_labels=3,
    )
    BertForSequenceClassification(cfg).save_pretrained(tmp_path / "clf")
    with pytest.raises(ValueError, match="not a causal language model"):
        build_model({"name": "hf_causal_lm", "path": str(tmp_path / "clf")}, {"num_classes": 3})
    with pytest.raises(ValueError, match="num_classes == vocab_size"):
        build_model({"name": "tiny_gpt2"}, {"num_classes": 3, "vocab_size": 30})


def test_hf_causal_lm_loads_a_local_gpt2_folder(lm, tmp_path):
    from npeff.models import build_model

    model = lm[0]
    model.lm.save_pretrained(tmp_path / "gpt2")
    loaded = build_model(
        {"name": "hf_causal_lm", "path": str(tmp_path / "gpt2")}, {"num_classes": V}
    )
    x = lm[1]
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.double()(x["input_ids"], x["attention_mask"]),
            model(x["input_ids"], x["attention_mask"]),
        )


# ------------------------------------------------------------------ multi-token answers
@pytest.mark.parametrize("engine", ["auto", "func"])
def test_a_multi_token_answer_sums_its_positions_fishers(lm, tmp_path, engine):
    model, batch, lengths, _ = lm
    # answers at the last 2 or 3 real positions (teacher forcing: the inputs hold the answer);
    # example 2 has a 2-token answer (third slot unused)
    pos = torch.stack([lengths - 3, lengths - 2, lengths - 1], 1)
    pos[2, 0] = -1
    pos[2] = torch.tensor([lengths[2] - 2, lengths[2] - 1, -1])
    ans = {**batch, "explain_pos": pos}
    params = [p for _, p in model.named_parameters()]

    def exact_at(i, t):  # exact rows sqrt(p_c) ∇log p_c(· | prefix up to t), example alone
        x = batch["input_ids"][i : i + 1, : int(lengths[i])]
        logp = torch.log_softmax(model.lm(input_ids=x).logits[0, t], -1)
        g = [
            torch.cat(
                [q.reshape(-1) for q in torch.autograd.grad(logp[c], params, retain_graph=True)]
            )
            for c in range(V)
        ]
        return logp.exp().detach().numpy(), (
            logp.exp().sqrt()[:, None] * torch.stack(g)
        ).detach().numpy()

    P = pefs_of(model, ans, tmp_path, "ans_all", LMClasses("all"), engine, n_values=500)
    assert P.n_classes == 3 * V
    m = sum(q.numel() for q in params)
    T = pefs_of(
        model, ans, tmp_path, "ans_top", LMClasses("top_p", q=0.6, k=4), engine, n_values=12 * m
    )
    for i in range(N):
        used = [int(t) for t in pos[i] if t >= 0]
        per = [exact_at(i, t) for t in used]
        A = np.concatenate([r for _, r in per])  # F = Σ_t A_tᵀA_t
        aa = A @ A.T
        np.testing.assert_allclose(P.norms[i], np.sqrt((aa**2).sum()), rtol=1e-6)
        kept = []
        for p, r in per:
            order = np.argsort(-p, kind="stable")
            kept.append(r[order[: min(int(np.searchsorted(np.cumsum(p[order]), 0.6) + 1), 4)]])
        assert T.ranks[i] == sum(len(k) for k in kept)
        np.testing.assert_allclose(file_rows(T, i), np.concatenate(kept), atol=1e-6)
    # stored logits: the first answer position's
    with torch.no_grad():
        first = model(
            batch["input_ids"], batch["attention_mask"], explain_pos=pos[:, 0].clamp_min(0)
        )
    first[2] = model(
        batch["input_ids"][2:3], batch["attention_mask"][2:3], explain_pos=pos[2:3, 0]
    )[0].detach()
    np.testing.assert_allclose(P.logits, first.numpy(), rtol=1e-5, atol=1e-6)
