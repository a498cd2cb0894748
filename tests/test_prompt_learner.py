"""Stage I prompt learner and text encoder (SPEC §2, Eq. 11-12) on a tiny random open_clip CLIP."""
import pytest
import torch
import torch.nn.functional as F

import fastreid_dpmpp  # noqa: F401  (fast-reid import fixes first)
from open_clip.model import CLIP
from open_clip.tokenizer import SimpleTokenizer

from fastreid_dpmpp.modeling.meta_arch.prompt_learning import CLIPPromptLearning, prompt_learning_losses
from fastreid_dpmpp.modeling.stage1_prompts import PromptLearner, TextEncoder, tokenize_template

TEMPLATE = "A photo of a X X X X person."
CONTEXT = 77


def tiny_clip(seed=0, embed_dim=24):
    torch.manual_seed(seed)
    model = CLIP(embed_dim,
                 {"image_size": (32, 16), "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
                 {"context_length": CONTEXT, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2})
    # open_clip zero-initialises nothing that matters here, but make LayerNorms non-trivial so that a wrong
    # token position or a skipped ln_final shows up in the outputs.
    with torch.no_grad():
        model.ln_final.weight.uniform_(0.5, 1.5)
        model.ln_final.bias.normal_(std=0.1)
    return model.eval()


@pytest.fixture(scope="module")
def clip():
    return tiny_clip()


@pytest.fixture(scope="module")
def tokenizer():
    return SimpleTokenizer(context_length=CONTEXT)


def word_id(tokenizer, word):
    return tokenizer.encoder[word.lower() + "</w>"]


# ----------------------------------------------------------------------------- prompt assembly (Eq. 11)
def test_placeholders_are_the_four_tokens_after_sos_a_photo_of_a(clip, tokenizer):
    learner = PromptLearner(clip.token_embedding, CONTEXT, num_classes=3, n_ctx=4, template=TEMPLATE)
    ids = learner.token_ids[0]
    expected_start = [tokenizer.sot_token_id] + [word_id(tokenizer, w) for w in ("a", "photo", "of", "a")]
    assert ids[:5].tolist() == expected_start
    assert learner.placeholder_start == 5
    assert ids[5:9].tolist() == [word_id(tokenizer, "x")] * 4
    assert ids[9:12].tolist() == [word_id(tokenizer, "person"), tokenizer.encoder[".</w>"], tokenizer.eot_token_id]
    assert int(ids[12:].abs().sum()) == 0 and learner.eot_index == 11
    assert learner.ctx.shape == (3, 4, 32)
    assert 0.01 < float(learner.ctx.detach().std()) < 0.03  # N(0, 0.02)


def test_prompt_embeddings_replace_exactly_the_placeholders(clip):
    learner = PromptLearner(clip.token_embedding, CONTEXT, num_classes=5, n_ctx=4, template=TEMPLATE)
    labels = torch.tensor([4, 0, 4, 2])
    prompts = learner(labels)
    frozen = clip.token_embedding(learner.token_ids)[0]
    assert prompts.shape == (4, CONTEXT, 32)
    for b, label in enumerate(labels.tolist()):
        assert torch.equal(prompts[b, :5], frozen[:5])
        assert torch.equal(prompts[b, 5:9], learner.ctx[label])
        assert torch.equal(prompts[b, 9:], frozen[9:])


def test_other_templates_and_bad_templates(clip, tokenizer):
    tokens, start = tokenize_template("X X person", CONTEXT, n_ctx=2)
    assert start == 1 and tokens[0, 1:3].tolist() == [word_id(tokenizer, "x")] * 2
    for bad, n_ctx in (("A photo of a X X X person.", 4), ("X X a X X person", 4), ("a photo", 1), ("X", 0)):
        with pytest.raises(ValueError, match="STAGE1.N_CTX"):
            tokenize_template(bad, CONTEXT, n_ctx=n_ctx)
    with pytest.raises(ValueError, match="context length"):
        tokenize_template("X " + "word " * 80, CONTEXT, n_ctx=1)


# ----------------------------------------------------------------------------- text encoder (Eq. 12)
def set_context_to_words(learner, clip, tokenizer, words):
    ids = torch.tensor([word_id(tokenizer, w) for w in words])
    with torch.no_grad():
        learner.ctx.copy_(clip.token_embedding.weight[ids].expand_as(learner.ctx))


@pytest.mark.parametrize("words", [("X", "X", "X", "X"), ("tall", "man", "in", "red")])
def test_text_encoder_reproduces_open_clip_encode_text(clip, tokenizer, words):
    learner = PromptLearner(clip.token_embedding, CONTEXT, num_classes=3, n_ctx=4, template=TEMPLATE)
    encoder = TextEncoder(clip)
    set_context_to_words(learner, clip, tokenizer, words)
    sentence = "A photo of a " + " ".join(words) + " person."
    expected = clip.encode_text(tokenizer([sentence], context_length=CONTEXT).expand(3, -1))
    got = encoder(learner(torch.tensor([0, 1, 2])), learner.eot_index)
    assert got.shape == (3, 24)
    assert torch.allclose(got, expected, atol=1e-5)
    with torch.no_grad():  # negative control: other context words give other features
        learner.ctx[1].normal_(std=0.02)
    changed = encoder(learner(torch.tensor([0, 1, 2])), learner.eot_index)
    assert torch.allclose(changed[[0, 2]], expected[[0, 2]], atol=1e-5)
    assert not torch.allclose(changed[1], expected[1], atol=1e-3)


def test_only_the_context_receives_gradients(clip):
    model = CLIPPromptLearning(clip_model=clip, num_classes=6, n_ctx=4, template=TEMPLATE)
    model.train()
    assert not model.text_encoder.training
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable == ["prompt_learner.ctx"]
    labels = torch.tensor([1, 1, 3, 4])
    losses = model({"features": torch.randn(4, 24), "targets": labels})
    sum(losses.values()).backward()
    grad = model.prompt_learner.ctx.grad
    assert grad is not None
    row_norms = grad.flatten(1).norm(dim=1)
    assert (row_norms[[1, 3, 4]] > 0).all() and (row_norms[[0, 2, 5]] == 0).all()
    assert all(p.grad is None for name, p in clip.named_parameters())


# ----------------------------------------------------------------------------- loss
def naive_supcon(anchors, contrasts, labels):
    """−mean_i mean_{k: y_k = y_i} log softmax_k(a_i · c_k), written with loops."""
    total = 0.0
    for i in range(len(anchors)):
        logits = torch.stack([anchors[i] @ contrasts[k] for k in range(len(contrasts))])
        log_probs = logits - torch.logsumexp(logits, dim=0)
        positives = [k for k in range(len(contrasts)) if labels[k] == labels[i]]
        total = total + sum(log_probs[k] for k in positives) / len(positives)
    return -total / len(anchors)


def test_losses_match_a_naive_implementation():
    torch.manual_seed(1)
    images, texts = torch.randn(6, 5), torch.randn(6, 5)
    labels = torch.tensor([0, 2, 0, 1, 2, 2])
    losses = prompt_learning_losses(images, texts, labels)
    assert torch.allclose(losses["loss_i2t"], naive_supcon(images, texts, labels), atol=1e-5)
    assert torch.allclose(losses["loss_t2i"], naive_supcon(texts, images, labels), atol=1e-5)


def test_model_forward_losses_use_the_text_features_of_the_batch_labels(clip):
    model = CLIPPromptLearning(clip_model=clip, num_classes=4, n_ctx=4, template=TEMPLATE)
    features, labels = torch.randn(5, 24), torch.tensor([3, 0, 3, 1, 0])
    model.eval()
    texts = model({"targets": labels})
    assert torch.allclose(texts[0], texts[2]) and texts.shape == (5, 24)
    model.train()
    losses = model({"features": features, "targets": labels})
    assert set(losses) == {"loss_i2t", "loss_t2i"}
    assert torch.allclose(losses["loss_i2t"], naive_supcon(features, texts.detach(), labels), atol=1e-5)
    assert torch.allclose(losses["loss_t2i"], naive_supcon(texts.detach(), features, labels), atol=1e-5)
    all_texts = model.all_text_features(chunk_size=3)
    assert all_texts.shape == (4, 24) and not all_texts.requires_grad
    assert torch.allclose(all_texts[labels], texts, atol=1e-5)


def test_loss_decreases_when_training_the_context(clip):
    torch.manual_seed(2)
    model = CLIPPromptLearning(clip_model=clip, num_classes=4, n_ctx=4, template=TEMPLATE).train()
    centres = F.normalize(torch.randn(4, 24), dim=1) * 3
    labels = torch.arange(4).repeat_interleave(2)
    features = centres[labels] + 0.1 * torch.randn(8, 24)
    optimizer = torch.optim.Adam([model.prompt_learner.ctx], lr=0.05)
    history = []
    for _ in range(10):
        loss = sum(model({"features": features, "targets": labels}).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(loss.item())
    assert history[-1] < 0.7 * history[0], history


def test_state_dict_leaves_out_a_text_encoder_rebuilt_from_a_weights_file(clip):
    kept = CLIPPromptLearning(clip_model=clip, num_classes=2, save_text_encoder=True)
    left_out = CLIPPromptLearning(clip_model=clip, num_classes=2, save_text_encoder=False)
    assert any(k.startswith("text_encoder.") for k in kept.state_dict())
    assert sorted(left_out.state_dict()) == ["prompt_learner.ctx", "prompt_learner.token_prefix",
                                            "prompt_learner.token_suffix"]
    fresh = CLIPPromptLearning(clip_model=clip, num_classes=2, save_text_encoder=False)
    result = fresh.load_state_dict(left_out.state_dict())
    assert result.missing_keys == [] and torch.equal(fresh.prompt_learner.ctx, left_out.prompt_learner.ctx)
    with pytest.raises(RuntimeError, match="missing keys"):
        kept.load_state_dict(left_out.state_dict())
