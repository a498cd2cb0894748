"""Stage I prompt learning (SPEC §2, Eq. 11-12): ID-specific learnable prompts on a frozen CLIP text tower.

Each identity c gets the prompt "A photo of a [X1]c [X2]c [X3]c [X4]c person." (Eq. 11): the template is
tokenised with open_clip's tokenizer, its frozen token embeddings are kept for the prefix
("[SOS] a photo of a") and the suffix ("person . [EOS]" + padding), and the placeholder words are replaced
by learnable vectors ``ctx[c]`` (C, n_ctx, D_text), initialised N(0, 0.02). The frozen text transformer maps a
prompt to its text feature t_c (Eq. 12); T stacks t_c over all identities.
"""
import functools
import logging

import torch
from torch import nn

from .module_utils import freeze_model

logger = logging.getLogger("fastreid.dpmpp.prompt_learner")

__all__ = ["PromptLearner", "TextEncoder", "tokenize_template"]

CTX_INIT_STD = 0.02


@functools.lru_cache(maxsize=4)
def _tokenizer(context_length):
    # The BPE vocabulary ships inside the open_clip wheel: nothing is downloaded.
    from open_clip.tokenizer import SimpleTokenizer
    return SimpleTokenizer(context_length=context_length)


def tokenize_template(template, context_length, n_ctx, placeholder="X"):
    """Token ids (1, L) of ``template`` and the index of its first placeholder token.

    The template must hold exactly one run of ``n_ctx`` consecutive placeholder words (each one BPE token),
    e.g. "A photo of a X X X X person." with n_ctx = 4.
    """
    if int(n_ctx) < 1:
        raise ValueError(f"STAGE1.N_CTX must be >= 1, got {n_ctx}")
    tokenizer = _tokenizer(context_length)
    words = template.split()
    runs = [i for i in range(len(words) - n_ctx + 1) if words[i:i + n_ctx] == [placeholder] * n_ctx]
    if len(runs) != 1 or words.count(placeholder) != n_ctx:
        raise ValueError(f"STAGE1.PROMPT {template!r} must contain exactly one run of STAGE1.N_CTX={n_ctx} "
                         f"consecutive placeholder words {placeholder!r}")
    placeholder_ids = tokenizer.encode(placeholder)
    if len(placeholder_ids) != 1:
        raise ValueError(f"the placeholder {placeholder!r} is {len(placeholder_ids)} BPE tokens; it must be one")
    prefix_ids = tokenizer.encode(" ".join(words[:runs[0]]))
    start = 1 + len(prefix_ids)  # after [SOS]
    num_tokens = 2 + len(tokenizer.encode(template))  # [SOS] ... [EOT]
    if num_tokens > context_length:
        raise ValueError(f"STAGE1.PROMPT {template!r} is {num_tokens} tokens, longer than the text context "
                         f"length {context_length}")
    tokens = tokenizer([template], context_length=context_length)
    if not bool((tokens[0, start:start + n_ctx] == placeholder_ids[0]).all()):
        raise ValueError(f"could not locate the placeholders of STAGE1.PROMPT {template!r} in its token ids")
    return tokens, start


class PromptLearner(nn.Module):
    """Learnable ID-specific context tokens inside a frozen prompt (Eq. 11).

    Args:
        token_embedding: the CLIP text tower's ``nn.Embedding`` (read once; not kept).
        context_length: the model's text context length (77 for CLIP).
        num_classes: C, identities.
        n_ctx: learnable tokens per identity (4).
        template: the prompt, with ``n_ctx`` consecutive placeholder words.

    ``forward(labels)`` -> prompt embeddings (B, L, D_text): [prefix; ctx[labels]; suffix].
    """

    def __init__(self, token_embedding, context_length, num_classes, n_ctx=4,
                 template="A photo of a X X X X person.", placeholder="X"):
        super().__init__()
        if int(num_classes) < 1:
            raise ValueError(f"PromptLearner needs at least one identity, got num_classes={num_classes}")
        tokens, start = tokenize_template(template, context_length, n_ctx, placeholder)
        with torch.no_grad():
            embedded = token_embedding(tokens.to(token_embedding.weight.device)).detach().float().cpu()
        self.num_classes, self.n_ctx, self.placeholder_start = int(num_classes), int(n_ctx), start
        self.register_buffer("token_ids", tokens, persistent=False)
        # (1, ., D) and shared by all identities: expanded per batch, never copied per class.
        self.register_buffer("token_prefix", embedded[:, :start].clone())
        self.register_buffer("token_suffix", embedded[:, start + n_ctx:].clone())
        self.ctx = nn.Parameter(torch.empty(self.num_classes, self.n_ctx, embedded.shape[-1]))
        nn.init.normal_(self.ctx, std=CTX_INIT_STD)

    @property
    def eot_index(self):
        """Position of [EOT] (the largest token id) in every prompt."""
        return int(self.token_ids.argmax(dim=-1))

    def forward(self, labels):
        labels = torch.as_tensor(labels, device=self.ctx.device).long().reshape(-1)
        batch = labels.shape[0]
        ctx = self.ctx[labels]
        return torch.cat([self.token_prefix.expand(batch, -1, -1).to(ctx.dtype), ctx,
                          self.token_suffix.expand(batch, -1, -1).to(ctx.dtype)], dim=1)


class TextEncoder(nn.Module):
    """The frozen CLIP text tower applied to prompt *embeddings* (Eq. 12).

    Same computation as open_clip's ``CLIP.encode_text`` after its token-embedding lookup: + positional
    embedding, the transformer with CLIP's causal ``attn_mask`` (open_clip's Transformer takes (B, L, D)
    and handles ``batch_first`` itself), ``ln_final``, the feature at the [EOT] position, ``@ text_projection``.
    """

    def __init__(self, clip_model):
        super().__init__()
        pool_type = getattr(clip_model, "text_pool_type", "argmax")
        if pool_type != "argmax":
            raise ValueError(f"the CLIP text tower pools with {pool_type!r}; prompt learning needs the "
                             f"[EOT]-position (argmax) pooling of CLIP")
        self.transformer = clip_model.transformer
        self.positional_embedding = clip_model.positional_embedding
        self.ln_final = clip_model.ln_final
        self.text_projection = clip_model.text_projection
        self.register_buffer("attn_mask", clip_model.attn_mask, persistent=False)
        freeze_model(self)

    @property
    def embed_dim(self):
        proj = self.text_projection
        if proj is None:
            return self.ln_final.normalized_shape[0]
        return proj.out_features if isinstance(proj, nn.Linear) else proj.shape[1]

    def train(self, mode=True):
        # Always frozen: stays in eval mode whatever the parent does.
        return super().train(False)

    def forward(self, prompts, eot_index):
        """prompts: (B, L, D_text) embeddings; eot_index: int or (B,) -> text features (B, D_t)."""
        dtype = self.transformer.get_cast_dtype()
        x = prompts.to(dtype) + self.positional_embedding.to(dtype)
        x = self.transformer(x, attn_mask=self.attn_mask)
        eot = torch.as_tensor(eot_index, device=x.device).long().expand(x.shape[0])
        x = self.ln_final(x[torch.arange(x.shape[0], device=x.device), eot])
        proj = self.text_projection
        if proj is None:
            return x
        return proj(x) if isinstance(proj, nn.Linear) else x @ proj
