"""Retrieval and AUROC metrics on hand-computed cases."""
import numpy as np
import pytest

from cxrclip_jax.eval import retrieval, zeroshot


@pytest.mark.parametrize("sim,correct,expected", [
    ([[0.9, 0.1, 0.5]], [[1, 0, 0]], [1]),
    ([[0.9, 0.1, 0.5]], [[0, 0, 1]], [2]),
    ([[0.9, 0.1, 0.5]], [[0, 1, 0]], [3]),
    ([[0.9, 0.1, 0.5]], [[0, 1, 1]], [2]),  # best correct candidate counts
    ([[0.5, 0.5, 0.5]], [[0, 1, 0]], [3]),  # ties count against the model
])
def test_ranks(sim, correct, expected):
  np.testing.assert_array_equal(retrieval.ranks(np.array(sim), np.array(correct, bool)), expected)


def test_chance_recall_matches_simulation():
  correct = np.zeros((3, 20), bool)
  correct[0, 0] = True
  correct[1, :2] = True
  correct[2, :5] = True
  exact = np.mean([1 / 20 * 5, 1 - (18 * 17 * 16 * 15 * 14) / (20 * 19 * 18 * 17 * 16), 1 - (15 * 14 * 13 * 12 * 11) / (20 * 19 * 18 * 17 * 16)])
  assert retrieval.chance_recall(correct, 5) == pytest.approx(exact)
  rng = np.random.default_rng(0)
  sims = rng.random((4000, 3, 20))
  hits = np.mean([retrieval.ranks(s, correct) <= 5 for s in sims])
  assert hits == pytest.approx(exact, abs=0.02)


def test_retrieval_dedupes_identical_texts_and_scores_clinical_equivalence():
  # 4 studies; studies 0 and 2 have the identical report; 1 and 3 share findings but not text.
  img = np.array([[1, 0, 0], [0.1, 1, 0.2], [1, 0.1, 0], [0.1, 0.2, 1]], float)
  txt = np.array([[1, 0, 0], [0, 0, 1], [1, 0, 0], [0, 1, 0]], float)  # 1 and 3 swapped
  text_ids = np.array([7, 8, 7, 9])
  labels = np.array([[1, 0], [0, 1], [1, 0], [0, 1]])
  m = retrieval.retrieval_metrics(img, txt, text_ids, labels)
  assert m["n"] == {"images": 4, "unique_texts": 3}
  # i2t over 3 unique texts: image 0 -> text 7 rank 1; image 1 -> text 8 rank 2 (text 9 wins);
  # image 2 -> text 7 rank 1; image 3 -> text 9 rank 2.
  assert m["i2t"]["R@1"] == pytest.approx(0.5) and m["i2t"]["mean_rank"] == pytest.approx(1.5)
  # Clinically, texts 8 and 9 carry the same finding set, so every image hits at rank 1.
  assert m["i2t_clinical"]["R@1"] == pytest.approx(1.0)
  # t2i: text 7 is answered by image 0 or 2 (rank 1); texts 8 and 9 each rank their image 2nd.
  assert m["t2i"]["R@1"] == pytest.approx(1 / 3) and m["t2i"]["median_rank"] == 2
  assert m["i2t"]["chance"]["R@1"] == pytest.approx(1 / 3)
  assert "R@1" in retrieval.format_table(m).splitlines()[0]


@pytest.mark.parametrize("scores,labels,expected", [
    ([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1], 0.75),
    ([1, 2, 3, 4], [0, 0, 1, 1], 1.0),
    ([1, 2, 3, 4], [1, 1, 0, 0], 0.0),
    ([1, 1, 1, 1], [0, 1, 0, 1], 0.5),  # ties count half
    ([0.5, 0.5, 0.2, 0.9], [1, 0, 0, 1], 0.875),
])
def test_auroc(scores, labels, expected):
  assert zeroshot.auroc(np.array(scores), np.array(labels)) == pytest.approx(expected)


def test_zeroshot_auroc_skips_uncertain_and_rare_findings():
  img = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.2, 0.8], [0.5, 0.5]])
  pos = np.array([[1, 0], [0, 1]])
  neg = np.array([[0, 1], [1, 0]])
  labels = np.array([[1, 0], [1, 0], [0, 1], [0, -1], [-1, 0]])
  out = zeroshot.zeroshot_auroc(img, pos, neg, labels, ["A", "B"])
  assert out["A"] == {"auroc": 1.0, "positives": 2, "negatives": 2}
  assert out["B"]["positives"] == 1 and out["B"]["negatives"] == 3
  assert zeroshot.mean_auroc(out, min_positives=2) == 1.0


@pytest.mark.parametrize("where", ["image", "text"])
def test_non_finite_embeddings_fail_naming_the_split(where):
  """A NaN embedding once ranked every item first (i2t R@1 = 1.0 against chance 0.2)."""
  rng = np.random.default_rng(0)
  img, txt = rng.normal(size=(5, 4)), rng.normal(size=(5, 4))
  (img if where == "image" else txt)[[1, 3], 2] = np.nan
  with pytest.raises(retrieval.NonFiniteError, match=rf"split 'test'.*2 of 5 {where}_embeddings rows"):
    retrieval.retrieval_metrics(img, txt, np.arange(5), name="split 'test'")
  finite = rng.normal(size=(5, 4)) * 1e200  # finite features whose dot products overflow
  with pytest.raises(retrieval.NonFiniteError, match="similarity_rows"):
    retrieval.retrieval_metrics(finite, finite, np.arange(5), similarity=lambda a, b: a @ b.T)


def test_constant_embedding_scores_worst_not_chance():
  n = 6
  m = retrieval.retrieval_metrics(np.ones((n, 3)), np.ones((n, 3)), np.arange(n))
  for task in ("i2t", "t2i"):
    assert m[task]["R@1"] == 0.0 and m[task]["mean_rank"] == n  # every tie counts against it
    assert m[task]["chance"]["R@1"] == pytest.approx(1 / n)
