"""Text tower and caption aggregation (WFA, arXiv 2505.11121): shapes, padding invariance, EOS pooling, the four
weighting modes against numpy references, folding of duplicate captions, and the packing of distinct captions."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from oceansar.models import aggregation as agg
from oceansar.models.text import TextTransformer, attention_mask, check_caption_ids, eos_positions

VOCAB, CONTEXT, EMBED, BOS, EOS = 64, 16, 24, 1, 2


@pytest.fixture(scope="module", autouse=True)
def _fast_compiles():
    # Tiny programs: XLA's optimisation passes cost more compile time than they save.
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", False)


def _make_tower(dtype=jnp.float32):
    return TextTransformer("mu", vocab_size=VOCAB, context_length=CONTEXT, embed_dim=EMBED, dtype=dtype,
                           rngs=nnx.Rngs(0))


def _encoder(graphdef, state):
    encode = jax.jit(lambda state, ids: nnx.merge(graphdef, state)(ids))
    return lambda ids: np.asarray(encode(state, jnp.asarray(ids, jnp.int32)))


@pytest.fixture(scope="module")
def tower():
    # Initialised and run under jit: eager NNX calls compile every small op on its own, several times slower.
    graphdef, _ = nnx.split(nnx.eval_shape(_make_tower))
    state = jax.jit(lambda: nnx.split(_make_tower())[1])()
    return nnx.merge(graphdef, state), _encoder(graphdef, state)


@nnx.jit
def _aggregate(module, feats, valid, count, key=None):
    """module(feats, valid, count, key=key) under jit, compiled once per aggregator graph and shapes."""
    return module(feats, valid, count, key=key)


def _call(module, *args, fn=None, **kwargs):
    """fn(module, *args) under jit; by default module(*args, **kwargs)."""
    graphdef, state = nnx.split(module)
    fn = fn or (lambda m, *a: m(*a, **kwargs))
    return jax.jit(lambda state, *a: fn(nnx.merge(graphdef, state), *a))(state, *args)


def _caption(rng, n_words, length=CONTEXT):
    """BOS, n_words word ids (>= 3), EOS, then pads: one row of the data contract."""
    row = np.zeros(length, np.int32)
    row[0], row[1:n_words + 1], row[n_words + 1] = BOS, rng.integers(3, VOCAB, n_words), EOS
    return row


def test_shapes_dtypes_and_errors(tower):
    model, encode = tower
    rng = np.random.default_rng(0)
    ids = np.stack([_caption(rng, n) for n in (1, 5, 14)])
    out = encode(ids)
    assert out.shape == (3, EMBED) and out.dtype == np.float32 and np.isfinite(out).all()
    assert model.proj.bias is None
    # bfloat16 compute on the same float32 parameters: float32 features close to the float32 ones.
    bf16_graphdef, _ = nnx.split(nnx.eval_shape(lambda: _make_tower(jnp.bfloat16)))
    out_bf16 = _encoder(bf16_graphdef, nnx.state(model))(ids)
    assert out_bf16.dtype == np.float32
    np.testing.assert_allclose(out_bf16, out, atol=0.1 * np.abs(out).max())
    with pytest.raises(ValueError, match="exceed context_length 16"):
        model(jnp.zeros((1, CONTEXT + 1), jnp.int32))
    with pytest.raises(ValueError, match="model.text.size: unknown size 'XL'"):
        TextTransformer("XL", vocab_size=VOCAB, context_length=CONTEXT, embed_dim=EMBED, rngs=nnx.Rngs(0))
    # An all-pad row (a padding caption slot) is finite.
    assert np.isfinite(encode(np.zeros((3, CONTEXT), np.int32))).all()


def test_padding_never_changes_a_feature(tower):
    _, encode = tower
    rng = np.random.default_rng(1)
    lengths = (1, 4, 9, 14)
    ids = np.stack([_caption(rng, n) for n in lengths])
    full = encode(ids)
    for i in (0, 2):
        tight = encode(ids[i:i + 1, :lengths[i] + 2])  # no padding at all
        np.testing.assert_allclose(tight[0], full[i], rtol=1e-5, atol=1e-6)
    # Surrounded by all-pad rows and other captions, in another order: the same features.
    mixed = np.concatenate([np.zeros((3, CONTEXT), np.int32), ids[::-1], np.zeros((1, CONTEXT), np.int32)])
    np.testing.assert_allclose(encode(mixed)[3:7], full[::-1], rtol=1e-5, atol=1e-6)
    # A word before the EOS matters (the EOS sees the whole caption under the causal mask).
    changed = ids.copy()
    changed[:, 1] = np.where(changed[:, 1] == 3, 4, 3)
    assert not np.allclose(encode(changed), full, atol=1e-4)


def test_eos_pooling_picks_the_last_non_pad_token(tower):
    model, encode = tower
    ids = np.array([[BOS, 7, 8, EOS, 0, 0], [BOS, EOS, 0, 0, 0, 0], [BOS, 5, 6, 7, 8, EOS], [0] * 6], np.int32)
    np.testing.assert_array_equal(eos_positions(jnp.asarray(ids)), [3, 1, 5, 0])
    # Reference: the tower's own layers run on every position, then the row picked by numpy.
    def every_position(model, ids):
        x = model.token_embed(ids) + model.pos_embed[:6]
        for blk in model.blocks:
            x = blk(x, None, attention_mask(ids))
        return model.proj(model.norm(x))

    every = np.asarray(_call(model, jnp.asarray(ids), fn=every_position))  # [4, 6, EMBED]
    out = encode(ids)
    for i, pos in enumerate([3, 1, 5]):
        np.testing.assert_allclose(out[i], every[i, pos], rtol=1e-5, atol=1e-6)
        assert not np.allclose(out[i], every[i, pos - 1], atol=1e-4)


def test_check_caption_ids():
    good = np.array([[[BOS, 9, EOS, 0], [0, 0, 0, 0]]], np.int32)
    check_caption_ids(good, eos_id=EOS)
    with pytest.raises(ValueError, match=r"row \(0, 1\) has a pad before its last token"):
        check_caption_ids(np.array([[[BOS, 9, EOS, 0], [BOS, 0, EOS, 0]]]), eos_id=EOS)
    with pytest.raises(ValueError, match="not EOS"):
        check_caption_ids(np.array([[BOS, 9, 9, 0]]), eos_id=EOS)


# Aggregation. Batch of 4 images, m = 5 rows: image 3 has no valid caption.
VALID = np.array([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]], bool)
COUNT = np.array([[3, 1, 1, 0, 0], [5, 0, 0, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]], np.int32)
MEAN = COUNT / np.maximum(COUNT.sum(1, keepdims=True), 1)  # each original caption weighs the same
BLEU = np.array([[0.2, 0.5, 0.3, 0, 0], [1, 0, 0, 0, 0], [0.1, 0.2, 0.3, 0.2, 0.2], [0, 0, 0, 0, 0]], np.float32)


def _reference_aggregate(h, w):
    t = (w[..., None] * h).sum(1)
    return t / np.maximum(np.linalg.norm(t, axis=-1, keepdims=True), 1e-12)


def _check_weights(w):
    w = np.asarray(w)
    assert (w[~VALID] == 0).all()
    np.testing.assert_allclose(w[VALID.any(1)].sum(1), 1.0, rtol=1e-6)
    assert (w[~VALID.any(1)] == 0).all()


def test_mean_bleu_and_single_weights_match_numpy():
    h = np.random.default_rng(2).normal(size=(4, 5, 6)).astype(np.float32)
    mean = np.asarray(jax.jit(agg.mean_weights)(VALID, COUNT))
    np.testing.assert_allclose(mean, MEAN, rtol=1e-6)
    bleu = jax.jit(agg.bleu_weights)(VALID, BLEU)
    np.testing.assert_allclose(bleu, BLEU, rtol=1e-6)
    for w in (mean, bleu):
        _check_weights(w)
    # A caption dropped by packing: the remaining BLEU weights of its image are renormalised.
    dropped = VALID.copy()
    dropped[0, 1] = False
    np.testing.assert_allclose(jax.jit(agg.bleu_weights)(dropped, BLEU)[0], [0.4, 0, 0.6, 0, 0], rtol=1e-6)
    with pytest.raises(ValueError, match="needs the batch's `caption_weights`"):
        _aggregate(agg.CaptionAggregator("bleu", 6, rngs=nnx.Rngs(0)), h, VALID, COUNT)
    text, w = _aggregate(agg.CaptionAggregator("mean", 6, rngs=nnx.Rngs(0)), h, VALID, COUNT)
    np.testing.assert_allclose(text, _reference_aggregate(h, MEAN), rtol=1e-5, atol=1e-6)
    assert (np.asarray(text)[3] == 0).all()  # no caption: the zero vector, not NaN
    # single: one-hot on a valid row, drawn with probability count / sum(count).
    draws = jax.jit(jax.vmap(lambda k: agg.single_weights(k, VALID, COUNT)))(jax.random.split(jax.random.key(0), 4000))
    draws = np.asarray(draws)
    for w in draws[:5]:
        _check_weights(w)
    np.testing.assert_allclose(draws.mean(0)[:3], MEAN[:3], atol=0.03)
    single = agg.CaptionAggregator("single", 6, rngs=nnx.Rngs(0))
    text, w = _aggregate(single, h, VALID, COUNT, jax.random.key(1))
    np.testing.assert_allclose(text, _reference_aggregate(h, np.asarray(w)), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="needs `key`"):
        single(h, VALID, COUNT)
    with pytest.raises(ValueError, match="unknown mode 'max'"):
        agg.CaptionAggregator("max", 6, rngs=nnx.Rngs(0))


def _attention_reference(module, h, count, valid):
    kernel, bias = np.asarray(module.hidden.kernel[...]), np.asarray(module.hidden.bias[...])
    v = np.asarray(module.score.kernel[...])[:, 0]
    a = np.tanh(h.astype(np.float64) @ kernel + bias) @ v / module.temperature
    a = np.where(valid, a + np.log(np.maximum(count, 1)), -np.inf)
    e = np.exp(a - np.where(valid.any(1), a.max(1), 0)[:, None])
    return e / np.maximum(e.sum(1, keepdims=True), 1e-30)


def _randomised_attention(dim, seed=3):
    module = agg.CaptionAggregator("attention", dim, hidden_dim=8, temperature=0.5, rngs=nnx.Rngs(seed))
    module.attention.score.kernel[...] = jax.random.normal(jax.random.key(seed), (8, 1))
    return module


def test_attention_weights_match_numpy_start_at_mean_and_have_finite_gradients():
    h = np.random.default_rng(4).normal(size=(4, 5, 6)).astype(np.float32)
    untrained = agg.CaptionAggregator("attention", 6, rngs=nnx.Rngs(0))
    np.testing.assert_allclose(_aggregate(untrained, h, VALID, COUNT)[1], MEAN, rtol=1e-6)
    module = _randomised_attention(6)
    text, w = _aggregate(module, h, VALID, COUNT)
    _check_weights(w)
    np.testing.assert_allclose(w, _attention_reference(module.attention, h, COUNT, VALID), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(text, _reference_aggregate(h, np.asarray(w)), rtol=1e-5, atol=1e-6)

    def loss(module, h):
        return jnp.sum(module(h, VALID, COUNT)[0] * jnp.arange(6.0))

    grads = _call(module, jnp.asarray(h), fn=nnx.grad(loss, argnums=(0, 1)))
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
    assert not np.asarray(grads[1])[~VALID].any()


def test_five_identical_captions_folded_equal_five_copies():
    h = np.random.default_rng(5).normal(size=(1, 5, 6)).astype(np.float32)
    folded_h = np.concatenate([h[:, :1], np.zeros((1, 4, 6), np.float32)], axis=1)
    copies_h = np.repeat(h[:, :1], 5, axis=1)
    folded = dict(valid=np.eye(1, 5, dtype=bool), count=np.array([[5, 0, 0, 0, 0]]))
    copies = dict(valid=np.ones((1, 5), bool), count=np.ones((1, 5), np.int32))
    for mode in ("mean", "attention", "single"):
        module = _randomised_attention(6) if mode == "attention" else agg.CaptionAggregator(mode, 6,
                                                                                            rngs=nnx.Rngs(0))
        key = jax.random.key(7)
        t_folded, w_folded = _aggregate(module, folded_h, folded["valid"], folded["count"], key)
        t_copies, _ = _aggregate(module, copies_h, copies["valid"], copies["count"], key)
        np.testing.assert_allclose(t_folded, t_copies, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(w_folded, [[1, 0, 0, 0, 0]], atol=1e-6)


def _fold(captions, m):
    """The data side's folding of one image's captions: distinct rows first with their counts, then pad rows."""
    rows, counts = [], []
    for c in captions:
        for j, r in enumerate(rows):
            if np.array_equal(r, c):
                counts[j] += 1
                break
        else:
            rows.append(c)
            counts.append(1)
    pad = m - len(rows)
    return (np.concatenate([np.stack(rows), np.zeros((pad, len(captions[0])), np.int32)]),
            np.array([True] * len(rows) + [False] * pad), np.array(counts + [0] * pad, np.int32))


def test_folding_and_packing_equal_encoding_every_original_caption(tower):
    _, encode = tower
    rng = np.random.default_rng(6)
    pool = [_caption(rng, n) for n in (3, 6, 2, 9, 4, 5, 7)]
    picks = [[0, 0, 1, 0, 2], [3, 3, 3, 3, 3], [4, 5, 6, 1, 4], [2, 1, 2, 1, 2]]  # 5 original captions per image
    original = np.stack([np.stack([pool[k] for k in p]) for p in picks])  # [4, 5, L]
    folded = [_fold(list(rows), 5) for rows in original]
    ids, valid, count = (np.stack(x) for x in zip(*folded))
    capacity = 12
    flat_ids, slot, n_overflow = jax.jit(agg.pack_captions, static_argnums=2)(ids, valid, capacity)
    assert int(n_overflow) == 0 and valid.sum() == 10 < capacity < original.shape[0] * 5
    feats = agg.unpack_features(jnp.asarray(encode(flat_ids)), slot, 4, 5)
    all_feats = encode(original.reshape(20, CONTEXT)).reshape(4, 5, EMBED)
    ones = np.ones((4, 5), np.int32)
    for mode in ("mean", "attention"):
        module = _randomised_attention(EMBED) if mode == "attention" else agg.CaptionAggregator(mode, EMBED,
                                                                                                rngs=nnx.Rngs(0))
        t_packed, _ = _aggregate(module, np.asarray(feats), valid & (np.asarray(slot) >= 0), count)
        t_all, _ = _aggregate(module, all_feats, ones.astype(bool), ones)
        np.testing.assert_allclose(t_packed, t_all, rtol=1e-5, atol=1e-5)


def test_pack_unpack_round_trip_and_overflow():
    rng = np.random.default_rng(8)
    b, m, length = 6, 5, 4
    ids = rng.integers(1, VOCAB, (b, m, length)).astype(np.int32)
    valid = rng.random((b, m)) < 0.6
    valid[:, 0] = True
    valid[2] = False  # an image without captions
    pack = jax.jit(agg.pack_captions, static_argnums=2)
    flat, slot, n_overflow = pack(ids, valid, 32)
    flat, slot = np.asarray(flat), np.asarray(slot)
    assert int(n_overflow) == 0 and flat.shape == (32, length) and slot.dtype == np.int32
    np.testing.assert_array_equal(slot >= 0, valid)
    np.testing.assert_array_equal(flat[slot[valid]], ids[valid])  # row-major order kept
    np.testing.assert_array_equal(slot[valid], np.arange(valid.sum()))
    assert not flat[valid.sum():].any()
    back = np.asarray(agg.unpack_features(jnp.asarray(flat, jnp.float32), slot, b, m))
    np.testing.assert_array_equal(back[valid], ids[valid])
    assert not back[~valid].any()
    # Overflow, default priority: every image with a caption keeps its first one before any keeps a second.
    capacity = b - 1 + 2
    flat, slot, n_overflow = pack(ids, valid, capacity)
    slot = np.asarray(slot)
    assert int(n_overflow) == valid.sum() - capacity and (slot >= 0).sum() == capacity
    assert (slot[valid[:, 0], 0] >= 0).all()
    np.testing.assert_array_equal(np.asarray(flat)[slot[slot >= 0]], ids[slot >= 0])
    # Overflow by weight: the lowest-priority captions go.
    priority = rng.random((b, m)).astype(np.float32)
    _, slot, n_overflow = jax.jit(agg.pack_captions, static_argnums=2)(ids, valid, 4, priority=priority)
    kept = np.asarray(slot) >= 0
    assert int(n_overflow) == valid.sum() - 4
    assert priority[kept].min() > priority[valid & ~kept].max()
